"""What both training loops share (``pipeline.training.common``): step and time budgets, checkpoint
schedules, what a checkpoint must match to be resumed."""
import pytest


def test_budgets_zero_means_no_limit_and_a_negative_value_names_the_key():
    from pipeline.runner.config import ConfigError
    from pipeline.training.common import Budget, CheckpointSchedule

    unlimited = Budget(max_steps=10, max_time_s=0.0)
    assert not unlimited.done(9, 1e9) and unlimited.done(10, 0.0) and unlimited.progress(5, 1e9) == 0.5
    timed = Budget(max_steps=10, max_time_s=100.0)
    assert timed.done(1, 100.0) and timed.progress(5, 75.0) == 0.75
    with pytest.raises(ConfigError, match="max_time_s"):
        Budget(max_steps=10, max_time_s=-1.0)
    assert not CheckpointSchedule(0, 0.0).due(100, 1e9)
    assert CheckpointSchedule(25, 0.0).due(100, 0.0) and not CheckpointSchedule(25, 0.0).due(101, 0.0)
    with pytest.raises(ConfigError, match="checkpoint_every_s"):
        CheckpointSchedule(0, -1.0)


def test_the_time_schedule_counts_trained_seconds_from_the_start_or_the_resumed_time():
    from pipeline.training.common import CheckpointSchedule

    schedule = CheckpointSchedule(0, 30.0)
    assert not schedule.due(500, 29.9) and schedule.due(501, 30.0)
    schedule.saved(30.5)
    assert not schedule.due(900, 60.0) and schedule.due(901, 60.5)
    resumed = CheckpointSchedule(0, 30.0, elapsed=45.0)  # 45 s trained before the resume
    assert not resumed.due(1, 74.0) and resumed.due(2, 75.0)


def test_check_budget_rejects_negative_budgets_and_step_counts_below_one():
    from types import SimpleNamespace

    from pipeline.runner.config import ConfigError
    from pipeline.training.common import check_budget

    ok = dict(max_steps=1, max_time_s=0.0, checkpoint_every=0, checkpoint_every_s=0.0)
    check_budget(SimpleNamespace(**ok))
    for key, value in (("max_time_s", -5.0), ("checkpoint_every_s", -1.0), ("checkpoint_every", -1), ("max_steps", 0)):
        with pytest.raises(ConfigError, match=key):
            check_budget(SimpleNamespace(**{**ok, key: value}))


def test_resume_config_ignores_budget_keys_and_names_what_changed():
    from dataclasses import dataclass, field

    from pipeline.training.common import config_changes, resume_config

    @dataclass
    class Inner:
        width: int = 64

    @dataclass
    class Cfg:
        lr: float = 0.01
        max_time_s: float = 600.0
        model: Inner = field(default_factory=Inner)

    base = resume_config(Cfg(), ("max_time_s",), device="cpu")
    assert base == {"lr": 0.01, "model.width": 64, "device": "cpu"}
    assert resume_config(Cfg(max_time_s=5.0), ("max_time_s",), device="cpu") == base
    changed = resume_config(Cfg(model=Inner(width=32)), ("max_time_s",), device="cpu")
    assert config_changes(base, changed) == "model.width 64 -> 32"


def test_save_is_atomic_and_a_truncated_or_stale_checkpoint_is_set_aside(tmp_path, recon_log):
    import torch

    from pipeline.runner.log import get_logger
    from pipeline.training.common import load_resumable, save_checkpoint

    log = get_logger("test")
    path = tmp_path / "checkpoint.pt"
    (tmp_path / "checkpoint.pt.tmp").write_bytes(b"half a file left by a kill")
    save_checkpoint(path, {"step": 3, "config": {"lr": 0.01}, "w": torch.ones(3)})
    assert not (tmp_path / "checkpoint.pt.tmp").exists()  # overwritten, then renamed
    assert load_resumable(path, {"lr": 0.01}, log, "nerf")["step"] == 3

    assert load_resumable(path, {"lr": 0.02}, log, "nerf") is None
    assert not path.exists() and (tmp_path / "checkpoint.stale.pt").exists()
    assert "another config (lr 0.01 -> 0.02)" in recon_log.text

    save_checkpoint(path, {"step": 3, "config": {"lr": 0.01}, "w": torch.ones(1000)})
    path.write_bytes(path.read_bytes()[:200])
    assert load_resumable(path, {"lr": 0.01}, log, "nerf") is None
    assert (tmp_path / "checkpoint.corrupt.pt").exists() and "cannot be read" in recon_log.text
