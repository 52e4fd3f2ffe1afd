"""The optimizer and its learning-rate schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ssl_core.specs.base import MAX_EPOCHS, Strict


class OptimSpec(Strict):
    name: Literal["sgd", "adam", "adamw", "lars"] = "sgd"
    lr: float = Field(0.03, gt=0.0, le=100.0, description="absolute learning rate (no batch scaling)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = Field(0.0, ge=0.0, le=MAX_EPOCHS)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[float] = Field(default_factory=list, description="step schedule: epochs at which lr *= gamma")
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    lars_eta: float = Field(0.001, gt=0.0, le=1.0)
    exclude_bias_and_norm: bool = Field(True, description="no weight decay / LARS adaptation on biases and norms")

    @model_validator(mode="after")
    def _check(self) -> "OptimSpec":
        if self.nesterov and self.name != "sgd":
            raise ValueError("optim.nesterov: only the sgd optimizer takes nesterov")
        if self.nesterov and self.momentum == 0:
            raise ValueError("optim.nesterov: nesterov needs momentum > 0")
        if self.schedule == "step" and not self.milestones:
            raise ValueError("optim.milestones: the step schedule needs milestones")
        return self
