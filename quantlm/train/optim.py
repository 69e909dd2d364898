"""The one optimizer set-up of every training stage: config section, AdamW grouping, schedule, best state.

- `OptimConfig`: the optimisation settings the core (`quantlm.train.core`) reads. Stages keep
  their own YAML keys (pretrain `train.max_steps`, SFT `steps`, ...) and build an OptimConfig
  from them, so existing config files keep parsing.
- `make_optimizer`: AdamW with weight decay on matrices (dim >= 2) only, as nanoGPT; biases, norms
  and 1-d scales get none. Fused kernel on CUDA.
- `lr_at`: linear warmup over `warmup_steps` to `lr`, then cosine decay to `min_lr` at `max_steps`.
- `BestState`: the weights of the best evaluation so far (kept once, here, for every stage).

Units: learning rates per optimizer step; steps are optimizer steps (one step = grad_accum
micro-batches on every process).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator


class OptimConfig(BaseModel):
    """Optimisation settings shared by every stage (see the module docstring for units)."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(1000, ge=1)
    lr: float = Field(3e-4, gt=0.0)
    min_lr: float = Field(3e-5, ge=0.0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.95, ge=0.0, lt=1.0)
    grad_clip: float = Field(1.0, ge=0.0)  # max global grad norm; 0 = no clipping
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimizer step on each process
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    cpu_autocast: bool = False  # mixed precision on CPU too (off: a CPU run is plain fp32 whatever mixed_precision says)
    compile: bool = False  # torch.compile the prepared (wrapped) model

    @model_validator(mode="after")
    def _lrs(self) -> OptimConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must be <= lr ({self.lr})")
        return self


def lr_at(step: int, cfg) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to min_lr at max_steps.

    cfg: an OptimConfig, or any stage config with lr, min_lr, warmup_steps and max_steps (or steps).
    """
    max_steps = cfg.max_steps if hasattr(cfg, "max_steps") else cfg.steps
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups over the trainable parameters: decay on dim >= 2, none on the rest."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over `decay_groups`; `fused` selects the fused CUDA kernel (pass True on CUDA only)."""
    return torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=lr_at(0, cfg),
                             betas=(cfg.beta1, cfg.beta2), fused=fused or None)


class BestState:
    """The weights (CPU copies) and metrics of the best evaluation by `select`.

    mode "max": an evaluation replaces the best when its value is finite and not <= the best (the
    first evaluation is always kept, so there is always a state to restore); "min" the mirror.
    """

    def __init__(self, select: str, mode: Literal["max", "min"] = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.select, self.mode = select, mode
        self.metrics: dict = {"step": -1}
        self.state: dict[str, torch.Tensor] | None = None

    def better(self, value: float) -> bool:
        if self.state is None:
            return True
        if not np.isfinite(value):
            return False
        best = self.metrics.get(self.select, float("nan"))
        return not (value <= best) if self.mode == "max" else not (value >= best)

    def update(self, step: int, metrics: dict[str, float], state_dict: dict[str, torch.Tensor]) -> bool:
        """Keep (step, metrics, a CPU copy of state_dict) if metrics[select] is better; True if kept."""
        value = float(metrics.get(self.select, float("nan")))
        if not self.better(value):
            return False
        self.metrics = {**metrics, "step": step}
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}
        return True
