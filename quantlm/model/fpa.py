"""FPA: a regulariser that penalises concentrated attention.

    loss = task_loss + lambda_t * sum_{layers l, heads h} mean_{batch b, query i} sum_j P[b,h,i,j]^2
    lambda_t = lambda0 * gamma ** step

sum_j P[i,j]^2 is the squared Frobenius norm of the attention-probability matrix per query row: 1
when a query puts all its mass on one key, 1/n for uniform attention over n keys. Off by default
(lambda0 = 0): then nothing here touches the model, which keeps the fused SDPA kernels and never
materialises attention probabilities (the loss is bit-identical to a model without FPA).

How the probabilities are obtained: when lambda0 > 0 the Llama decoder is switched to transformers'
"eager" attention, which computes P = softmax(QK^T / sqrt(d) + mask) explicitly and returns it
next to the attention output; a forward hook on each attention module reads it. The penalty's
gradient then flows through the very P that produced the output. The alternative (hooks on q/k
recomputing QK^T beside SDPA) would pay the [B, H, T, T] product twice; eager pays it once, at the
price of losing the fused kernel (overhead measured in benchmarks/bench_train.py).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class FPA:
    """Attach to a MarketGPT; `penalty(step)` returns lambda_t * sum of attention Frobenius terms."""

    def __init__(self, model, lambda0: float = 0.0, gamma: float = 1.0) -> None:
        if lambda0 < 0 or not (0 < gamma <= 1):
            raise ValueError(f"FPA needs lambda0 >= 0 and 0 < gamma <= 1, got lambda0={lambda0}, gamma={gamma}")
        self.lambda0, self.gamma = float(lambda0), float(gamma)
        self.active = self.lambda0 > 0
        self._terms: list[torch.Tensor] = []
        self._handles = []
        if self.active:
            model.lm.set_attn_implementation("eager")
            self._handles = [layer.self_attn.register_forward_hook(self._hook) for layer in model.lm.model.layers]

    def _hook(self, module, args, output) -> None:
        if not torch.is_grad_enabled():
            return
        probs = output[1]  # [B, H, Tq, Tk]
        if probs is None:
            raise RuntimeError("FPA needs attention probabilities: the model is not using eager attention")
        self._terms.append(probs.float().pow(2).sum(-1).mean(dim=(0, 2)).sum())  # sum over heads

    def weight(self, step: int) -> float:
        """lambda_t = lambda0 * gamma ** step."""
        return self.lambda0 * self.gamma ** step

    def penalty(self, step: int) -> torch.Tensor | None:
        """lambda_t * (sum over layers and heads) of the terms collected since the last call; None if off."""
        if not self.active:
            return None
        if not self._terms:
            raise RuntimeError("FPA.penalty called before a forward pass with gradients enabled")
        total = torch.stack(self._terms).sum()
        self._terms.clear()
        return self.weight(step) * total

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._terms = [], []


@contextmanager
def eager_attention(model):
    """Temporarily switch a MarketGPT to eager attention (restored on exit)."""
    old = model.lm.config._attn_implementation
    model.lm.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.lm.set_attn_implementation(old)


@torch.no_grad()
def attention_concentration(model, input_ids: torch.Tensor, calendar_ids: torch.Tensor | None = None
                            ) -> dict[str, float]:
    """Mean over layers, heads, batch and queries of max_j P[i,j] and of sum_j P[i,j]^2 (dimensionless)."""
    maxes, frob = [], []

    def hook(module, args, output):
        p = output[1].float()  # [B, H, Tq, Tk]
        maxes.append(p.amax(-1).mean())
        frob.append(p.pow(2).sum(-1).mean())

    with eager_attention(model):
        handles = [layer.self_attn.register_forward_hook(hook) for layer in model.lm.model.layers]
        try:
            model(input_ids, calendar_ids)
        finally:
            for h in handles:
                h.remove()
    return {"mean_max_prob": float(torch.stack(maxes).mean()), "mean_frobenius_sq": float(torch.stack(frob).mean())}
