"""The optimizer and its learning-rate schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ssl_core.specs.base import MAX_EPOCHS, MAX_MILESTONES, Bool, Real, Strict


class OptimSpec(Strict):
    name: Literal["sgd", "adam", "adamw", "lars"] = "sgd"
    lr: Real = Field(0.03, gt=0.0, le=100.0, description="absolute learning rate (no batch scaling)")
    momentum: Real = Field(0.9, ge=0.0, lt=1.0)
    nesterov: Bool = False
    weight_decay: Real = Field(1e-4, ge=0.0, le=1.0)
    betas: tuple[Real, Real] = (0.9, 0.999)
    warmup_epochs: Real = Field(0.0, ge=0.0, le=MAX_EPOCHS)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[Real] = Field(default_factory=list, max_length=MAX_MILESTONES, description="step schedule: epochs at which lr *= gamma")
    gamma: Real = Field(0.1, gt=0.0, le=1.0)
    lars_eta: Real = Field(0.001, gt=0.0, le=1.0)
    exclude_bias_and_norm: Bool = Field(True, description="no weight decay / LARS adaptation on biases and norms")

    @model_validator(mode="after")
    def _check(self) -> "OptimSpec":
        if self.nesterov and self.name != "sgd":
            raise ValueError("optim.nesterov: only the sgd optimizer takes nesterov")
        if self.nesterov and self.momentum == 0:
            raise ValueError("optim.nesterov: nesterov needs momentum > 0")
        if self.schedule == "step" and not self.milestones:
            raise ValueError("optim.milestones: the step schedule needs milestones")
        return self
