"""Tail averaging of the weights (``pipeline.training.averaging``)."""
import pytest
import torch

from pipeline.runner.config import ConfigError
from pipeline.training.averaging import TailAverage, check_tail


def test_the_mean_covers_only_the_tail_of_the_budget():
    layer = torch.nn.Linear(3, 2)
    tail = TailAverage(layer, 0.5)
    for step in range(4):  # progress 0, 0.25, 0.5, 0.75: the last two are averaged
        with torch.no_grad():
            layer.weight.fill_(float(step))
        tail.update(layer, step / 4)
    assert tail.count == 2
    assert tail.apply_to(layer)
    assert torch.allclose(layer.weight, torch.full_like(layer.weight, 2.5))


def test_a_larger_budget_starts_the_mean_again():
    layer = torch.nn.Linear(3, 2)
    tail = TailAverage(layer, 0.2)
    tail.update(layer, 0.9)
    assert tail.count == 1
    tail.update(layer, 0.6)  # resumed with a larger budget: before the new tail
    assert tail.count == 0
    with torch.no_grad():
        layer.weight.fill_(4.0)
    tail.update(layer, 0.85)
    assert tail.count == 1 and tail.apply_to(layer)
    assert torch.allclose(layer.weight, torch.full_like(layer.weight, 4.0))


def test_no_tail_keeps_the_last_weights():
    layer = torch.nn.Linear(3, 2)
    before = layer.weight.detach().clone()
    tail = TailAverage(layer, 0.0)
    tail.update(layer, 1.0)
    assert tail.count == 0 and not tail.apply_to(layer)
    assert torch.equal(layer.weight, before)


def test_a_saved_mean_loads_into_a_fresh_average():
    layer = torch.nn.Linear(3, 2)
    tail = TailAverage(layer, 0.2)
    for value in (1.0, 3.0):
        with torch.no_grad():
            layer.weight.fill_(value)
        tail.update(layer, 0.9)
    fresh = TailAverage(torch.nn.Linear(3, 2), 0.2)
    fresh.load_state_dict(tail.state_dict())
    target = torch.nn.Linear(3, 2)
    assert fresh.count == 2 and fresh.apply_to(target)
    assert torch.allclose(target.weight, torch.full_like(target.weight, 2.0))


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_a_tail_outside_0_1_is_refused(value):
    with pytest.raises(ConfigError, match="average_tail must be in"):
        check_tail(value)
