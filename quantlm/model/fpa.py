"""FPA: a regulariser that penalises concentrated attention.

    loss = task_loss + lambda_t * sum_{layers l, heads h} mean_{batch b} ||A[b, l, h]||_F^2
    ||A||_F^2 = sum_{query i, key j} A[i, j]^2
    lambda_t = lambda0 * gamma ** step        (step = optimizer step)

A is a head's attention-probability matrix (softmax rows). Normalisation: the sum over layers,
heads, queries and keys is the penalty as stated; only the batch is averaged, so that lambda0 means
the same thing whatever the batch size or its split into accumulation micro-batches and processes
(the task loss is a batch mean too). It does grow with the sequence length: a one-hot head gives
||A||_F^2 = T (T query rows of 1), uniform causal attention gives sum_i 1/i ~ ln T; pick lambda0 for
the window length you train on. Off by default (lambda0 = 0): then nothing here touches the model,
which keeps the fused SDPA kernels and never materialises attention probabilities (the loss is
bit-identical to a model without FPA).

How the probabilities are obtained: when lambda0 > 0 the Llama decoder is switched to transformers'
"eager" attention, which computes A = softmax(QK^T / sqrt(d) + mask) explicitly and returns it next
to the attention output; a forward hook on each attention module reads it. The penalty's gradient
then flows through the very A that produced the output. transformers returns the probabilities
AFTER attention dropout, so while FPA is on, attention dropout is forced to 0 (the penalty is then
on the softmax itself); `FPA.remove()` restores the model's dropout and attention implementation.
The alternative (hooks on q/k recomputing QK^T beside SDPA) would pay the [B, H, T, T] product
twice; eager pays it once, at the price of losing the fused kernel (overhead measured in
benchmarks/bench_train.py).

`FPAConfig` is the one config section (pretraining `fpa:` and SFT `fpa:` both use it).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch


class FPAConfig(BaseModel):
    """Attention-concentration penalty lambda0 * gamma**step * sum ||A||_F^2 (lambda0 = 0: off)."""

    model_config = ConfigDict(extra="forbid")

    lambda0: float = Field(0.0, ge=0.0)
    gamma: float = Field(0.999, gt=0.0, le=1.0)


class FPA:
    """Attach to a MarketGPT; `penalty(step)` returns lambda_t * sum of attention Frobenius terms."""

    def __init__(self, model, lambda0: float = 0.0, gamma: float = 0.999) -> None:
        if lambda0 < 0 or not (0 < gamma <= 1):
            raise ValueError(f"FPA needs lambda0 >= 0 and 0 < gamma <= 1, got lambda0={lambda0}, gamma={gamma}")
        self.lambda0, self.gamma = float(lambda0), float(gamma)
        self.active = self.lambda0 > 0
        self._terms: list[torch.Tensor] = []
        self._handles = []
        self._model, self._restore = model, None
        if self.active:
            layers = model.lm.model.layers
            self._restore = (model.lm.config._attn_implementation, [layer.self_attn.attention_dropout for layer in layers])
            model.lm.set_attn_implementation("eager")
            for layer in layers:  # probabilities are read after dropout: keep them the softmax itself
                layer.self_attn.attention_dropout = 0.0
            self._handles = [layer.self_attn.register_forward_hook(self._hook) for layer in layers]

    def _hook(self, module, args, output) -> None:
        import torch

        if not torch.is_grad_enabled():
            return
        probs = output[1]  # [B, H, Tq, Tk]
        if probs is None:
            raise RuntimeError("FPA needs attention probabilities: the model is not using eager attention")
        # ||A||_F^2 per (batch, head), mean over the batch, sum over heads
        self._terms.append(probs.float().pow(2).sum(dim=(-2, -1)).mean(0).sum())

    def weight(self, step: int) -> float:
        """lambda_t = lambda0 * gamma ** step."""
        return self.lambda0 * self.gamma ** step

    def penalty(self, step: int) -> torch.Tensor | None:
        """lambda_t * (sum over layers and heads) of the terms collected since the last call; None if off."""
        if not self.active:
            return None
        if not self._terms:
            raise RuntimeError("FPA.penalty called before a forward pass with gradients enabled")
        import torch

        total = torch.stack(self._terms).sum()
        self._terms.clear()
        return self.weight(step) * total

    def remove(self) -> None:
        """Detach the hooks; restore the attention implementation and dropout the model had."""
        for h in self._handles:
            h.remove()
        self._handles, self._terms = [], []
        if self._restore is not None:
            impl, drops = self._restore
            self._model.lm.set_attn_implementation(impl)
            for layer, p in zip(self._model.lm.model.layers, drops, strict=True):
                layer.self_attn.attention_dropout = p
            self._restore = None


@contextmanager
def eager_attention(model):
    """Temporarily switch a MarketGPT to eager attention (restored on exit)."""
    old = model.lm.config._attn_implementation
    model.lm.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.lm.set_attn_implementation(old)


def attention_concentration(model, input_ids: torch.Tensor, calendar_ids: torch.Tensor | None = None
                            ) -> dict[str, float]:
    """Mean over layers, heads, batch and queries of max_j P[i,j] and of sum_j P[i,j]^2 (dimensionless)."""
    import torch

    maxes, frob = [], []

    def hook(module, args, output):
        p = output[1].float()  # [B, H, Tq, Tk]
        maxes.append(p.amax(-1).mean())
        frob.append(p.pow(2).sum(-1).mean())

    with torch.no_grad(), eager_attention(model):
        handles = [layer.self_attn.register_forward_hook(hook) for layer in model.lm.model.layers]
        try:
            model(input_ids, calendar_ids)
        finally:
            for h in handles:
                h.remove()
    return {"mean_max_prob": float(torch.stack(maxes).mean()), "mean_frobenius_sq": float(torch.stack(frob).mean())}
