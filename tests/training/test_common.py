"""What both training loops share (``pipeline.training.common``): step and time budgets, checkpoint
schedules."""
import pytest


def test_budgets_zero_means_no_limit_and_a_negative_value_names_the_key():
    from pipeline.training.common import Budget, CheckpointSchedule

    unlimited = Budget(max_steps=10, max_time_s=0.0)
    assert not unlimited.done(9, 1e9) and unlimited.done(10, 0.0) and unlimited.progress(5, 1e9) == 0.5
    timed = Budget(max_steps=10, max_time_s=100.0)
    assert timed.done(1, 100.0) and timed.progress(5, 75.0) == 0.75
    with pytest.raises(ValueError, match="max_time_s"):
        Budget(max_steps=10, max_time_s=-1.0)
    assert not CheckpointSchedule(0, 0.0).due(100)
    assert CheckpointSchedule(25, 0.0).due(100) and not CheckpointSchedule(25, 0.0).due(101)
    with pytest.raises(ValueError, match="checkpoint_every_s"):
        CheckpointSchedule(0, -1.0)
