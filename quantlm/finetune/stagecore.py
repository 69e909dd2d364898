"""The reward, RL and distillation stages on the training core (`quantlm.train.core`).

Each of those stages keeps only its loss, its batches (a stateless `batch_at(i)`: micro-batch i is a
pure function of (seed, i), so a resumed run sees the same batches) and its evaluation; the core does
the optimizer (AdamW, decay on matrices only), the lr schedule (`optim.lr_at`: warmup then cosine to
min_lr), gradient accumulation, clipping, mixed precision, checkpoints, exact resume, logging
(metrics.jsonl every `log_every` steps and at every evaluation) and the best state.

- `CoreFields`: the YAML keys every such stage adds for the core (mixed_precision, grad_accum,
  log_every, checkpoint_every, keep_checkpoints) and `optim()` from the stage's own steps / lr /
  min_lr / warmup_steps / weight_decay / grad_clip keys (AdamW betas 0.9, 0.95 as before).
- `run_on_core`: one TrainStage through a Trainer; frozen helper models (a reference policy, a
  reward model, a teacher) are moved to the core's device by `to_device` before training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from quantlm.finetune.config import _Strict


class CoreFields(_Strict):
    """Training-core keys shared by the reward, RL and distillation configs (units: optimizer steps)."""

    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # on CUDA (a CPU run is fp32)
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimizer step
    log_every: int = Field(1, ge=1)  # steps between metrics.jsonl rows (each costs a host sync)
    checkpoint_every: int = Field(0, ge=0)  # steps between checkpoints for resume; 0 = none
    keep_checkpoints: int = Field(1, ge=1)

    def optim(self):
        """The core's OptimConfig from this stage's steps, lr, min_lr, warmup_steps, weight_decay, grad_clip."""
        from quantlm.train.optim import OptimConfig

        return OptimConfig(max_steps=self.steps, lr=self.lr, min_lr=min(self.min_lr, self.lr),
                           warmup_steps=self.warmup_steps, weight_decay=self.weight_decay, grad_clip=self.grad_clip,
                           grad_accum=self.grad_accum, mixed_precision=self.mixed_precision)


def run_on_core(name: str, model: torch.nn.Module, cfg: CoreFields, out: Path,
                loss_fn: Callable[[Any, dict[str, torch.Tensor], int], tuple[torch.Tensor, dict[str, Any]]],
                batch_at: Callable[[int], dict[str, Any]], evaluate: Callable[[], dict[str, float]] | None,
                select: str | None, eval_every: int, progress: bool = False, resume: bool = False,
                stop_after: int | None = None, to_device: Callable[[torch.device], None] | None = None):
    """Train `model` on the core; returns the TrainResult (best weights restored when `select` and finished).

    evaluate() takes no argument (it closes over the raw model) and returns un-prefixed metrics; they are
    logged as valid_<name>; `select` is the un-prefixed metric whose best value's weights are kept
    (None: the last weights). The model is left in eval mode on the CPU.
    """
    from quantlm.train.core import Trainer, TrainStage

    stage = TrainStage(
        name=name, model=model, loss_fn=loss_fn, batch_at=batch_at, optim=cfg.optim(),
        evaluate=None if evaluate is None else (lambda m: {f"valid_{k}": v for k, v in evaluate().items()}),
        select=None if select is None else f"valid_{select}", eval_every=eval_every, log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every, checkpoint_at_end=False, keep_checkpoints=cfg.keep_checkpoints)
    trainer = Trainer(stage, out, progress=progress)
    try:
        if to_device is not None:
            to_device(trainer.accelerator.device)
        result = trainer.fit(resume=resume, stop_after=stop_after)
    finally:
        trainer.close()
    model.eval()
    model.to("cpu")
    return result


def unprefix(metrics: dict[str, Any]) -> dict[str, Any]:
    """{"valid_x": v, ...} -> {"x": v} (other keys dropped)."""
    return {k[len("valid_"):]: v for k, v in metrics.items() if k.startswith("valid_")}
