"""Optimizers and per-step learning-rate schedules built from ``spec.optim``.

LARS follows SimCLR's ``lars_optimizer.py`` (You et al. 2017; Chen et al., ICML 2020, App. B.1):
for every parameter ``w`` with gradient ``g``::

    g <- g + wd * w                                  (weight decay folded into the gradient)
    trust = eta * ||w|| / ||g||   (1 where either norm is 0)
    v <- momentum * v + lr * trust * g
    w <- w - v

Biases and normalisation parameters (every tensor with ``ndim <= 1``) get neither weight
decay nor the trust ratio when ``exclude_bias_and_norm`` is set, as in the paper's code.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ssl_core.specs import OptimSpec


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling with momentum (SimCLR's variant).

    Param-group options: ``lr``, ``momentum``, ``weight_decay``, ``eta``, ``lars_adapt`` (apply the
    trust ratio to this group), ``nesterov``. All arithmetic stays on the device (no host syncs).
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, nesterov: bool = False, lars_adapt: bool = True):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, nesterov=nesterov,
                        lars_adapt=lars_adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd, lr, mom = group["weight_decay"], group["lr"], group["momentum"]
            if wd != 0:
                grads = torch._foreach_add(grads, params, alpha=wd)
            if group["lars_adapt"]:
                w_norm = torch.stack(torch._foreach_norm(params))  # (P,)
                g_norm = torch.stack(torch._foreach_norm(grads))
                # trust = eta*||w||/||g|| where both norms are positive, else 1 (tf.where in the reference)
                trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm.clamp_min(1e-30),
                                    torch.ones_like(w_norm))
                scaled = torch._foreach_mul(grads, list((trust * lr).to(grads[0].dtype).unbind(0)))
            else:
                scaled = torch._foreach_mul(grads, lr)
            bufs = []
            for p, s in zip(params, scaled):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, mom)
            torch._foreach_add_(bufs, scaled)
            if group["nesterov"]:
                update = torch._foreach_add(scaled, bufs, alpha=mom)
                torch._foreach_sub_(params, update)
            else:
                torch._foreach_sub_(params, bufs)
        return loss


def param_groups(model: nn.Module, spec: OptimSpec) -> list[dict]:
    """Trainable parameters, split into decayed weights and excluded biases/norm parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:  # e.g. MoCo's key encoder, updated by momentum only
            continue
        (no_decay if spec.exclude_bias_and_norm and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": spec.weight_decay, "lars_adapt": True}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_adapt": False})
    return groups


def build_optimizer(model: nn.Module, spec: OptimSpec) -> torch.optim.Optimizer:
    """The optimizer named by ``spec.name``; fused kernels on CUDA, foreach elsewhere."""
    groups = param_groups(model, spec)
    params = [p for g in groups for p in g["params"]]
    on_cuda = bool(params) and all(p.is_cuda for p in params)
    impl = {"fused": True} if on_cuda else {"foreach": True}
    if spec.name == "lars":
        return LARS(groups, lr=spec.lr, momentum=spec.momentum, eta=spec.lars_eta, nesterov=spec.nesterov)
    for g in groups:
        g.pop("lars_adapt", None)
    if spec.name == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, **impl)
    if spec.name == "adam":
        return torch.optim.Adam(groups, lr=spec.lr, betas=spec.betas, **impl)
    if spec.name == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, **impl)
    raise ValueError(f"optim.name: unknown optimizer {spec.name!r}")


class LRSchedule:
    """lr at an optimizer step: linear warmup over ``warmup_epochs`` then cosine to 0 / step / constant.

    ``step`` counts optimizer steps from 0; the value returned is the lr used *for* that step.
    Warmup may be fractional in epochs; step milestones are in epochs.
    """

    def __init__(self, spec: OptimSpec, steps_per_epoch: int, epochs: int):
        self.spec = spec
        self.base_lr = spec.lr
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(1, steps_per_epoch * epochs)
        self.warmup_steps = min(self.total_steps, int(round(spec.warmup_epochs * steps_per_epoch)))

    def factor(self, step: int) -> float:
        s = self.spec
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if s.schedule == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if s.schedule == "step":
            epoch = step / self.steps_per_epoch
            return s.gamma ** sum(1 for m in s.milestones if epoch >= m)
        return 1.0

    def lr(self, step: int) -> float:
        return self.base_lr * self.factor(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr(step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        return lr
