"""LARS against a hand computation, and learning-rate schedule values at known steps."""

import math

import pytest
import torch
from torch import nn

from ssl_core.optim import LARS, LRSchedule, build_optimizer
from ssl_core.specs import OptimSpec


def test_lars_trust_ratio_hand_example():
    # w = (3, 4): ||w|| = 5. g = (0, 1), wd = 0.5 -> g' = (1.5, 3): ||g'|| = sqrt(11.25).
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))
    w.grad = torch.tensor([[0.0, 1.0]])
    opt = LARS([w], lr=0.1, momentum=0.9, weight_decay=0.5, eta=0.001)
    opt.step()
    trust = 0.001 * 5.0 / math.sqrt(11.25)
    expected = torch.tensor([[3.0, 4.0]]) - 0.1 * trust * torch.tensor([[1.5, 3.0]])
    torch.testing.assert_close(w.detach(), expected)
    # second step: v <- 0.9 v + lr*trust*g
    v1 = 0.1 * trust * torch.tensor([[1.5, 3.0]])
    w0 = w.detach().clone()
    w.grad = torch.tensor([[0.0, 1.0]])
    opt.step()
    g2 = torch.tensor([[0.0, 1.0]]) + 0.5 * w0
    trust2 = 0.001 * w0.norm() / g2.norm()
    torch.testing.assert_close(w.detach(), w0 - (0.9 * v1 + 0.1 * trust2 * g2))


def test_lars_zero_norm_uses_trust_one_and_excluded_group_plain_momentum():
    w = nn.Parameter(torch.zeros(3))
    w.grad = torch.ones(3)
    opt = LARS([{"params": [w], "lars_adapt": True}], lr=0.5, weight_decay=0.0)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((3,), -0.5))
    b = nn.Parameter(torch.ones(2))
    b.grad = torch.ones(2)
    opt = LARS([{"params": [b], "lars_adapt": False, "weight_decay": 0.0}], lr=0.1)
    opt.step()
    torch.testing.assert_close(b.detach(), torch.full((2,), 0.9))


def test_build_optimizer_excludes_bias_and_norm():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    opt = build_optimizer(model, OptimSpec(name="lars", lr=1.0, weight_decay=1e-6))
    assert isinstance(opt, LARS)
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 4])]
    assert decay["weight_decay"] == 1e-6 and decay["lars_adapt"]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0 and not no_decay["lars_adapt"]
    sgd = build_optimizer(model, OptimSpec(name="sgd", nesterov=True))
    assert sgd.param_groups[0]["nesterov"]
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        assert isinstance(build_optimizer(model, OptimSpec(name=name)), cls)


def test_cosine_with_fractional_warmup():
    s = LRSchedule(OptimSpec(lr=1.0, warmup_epochs=0.5, schedule="cosine"), steps_per_epoch=10, epochs=3)
    assert s.warmup_steps == 5
    assert s.lr(0) == pytest.approx(0.2)
    assert s.lr(4) == pytest.approx(1.0)
    assert s.lr(5) == pytest.approx(1.0)  # cosine starts at the peak
    assert s.lr(5 + 12) == pytest.approx(0.5 * (1 + math.cos(math.pi * 12 / 25)))
    assert s.lr(29) == pytest.approx(0.5 * (1 + math.cos(math.pi * 24 / 25)))
    assert s.lr(30) == pytest.approx(0.0, abs=1e-12)


def test_step_and_constant_schedules():
    s = LRSchedule(OptimSpec(lr=0.1, schedule="step", milestones=[2, 3], gamma=0.1), steps_per_epoch=4, epochs=4)
    assert s.lr(7) == pytest.approx(0.1)
    assert s.lr(8) == pytest.approx(0.01)
    assert s.lr(12) == pytest.approx(0.001)
    c = LRSchedule(OptimSpec(lr=0.3, schedule="constant"), steps_per_epoch=4, epochs=4)
    assert c.lr(0) == c.lr(15) == pytest.approx(0.3)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=99.0)
    assert c.apply(opt, 3) == pytest.approx(0.3) and opt.param_groups[0]["lr"] == pytest.approx(0.3)
