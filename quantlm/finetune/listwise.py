"""Listwise cross-sectional loss for the rank head (SFT `batches: cross_section`, `loss.listwise`).

Per cross-section group g (one session's bars of a cross-section batch, `batch["group"]`):

    loss_g = 1 - Pearson(score_g, target_g),   target = clamp(ret_1 / sigma, -5, 5)

with score the rank head's first horizon, ret_1 the realised forward return over the first horizon
(fraction) and sigma the tokenizer's causal volatility of the bar (exp of feature 6), so every stock's
noise has the same scale. Groups with fewer than `min_count` known targets are skipped; the loss is the
mean over the remaining groups (0 when none). Pearson is invariant to the score's scale and offset, so
it trains only the ordering within a session, which is what a top-k book trades.
"""

from __future__ import annotations

import torch


def listwise_pearson_loss(score: torch.Tensor, ret: torch.Tensor, log_sigma: torch.Tensor, group: torch.Tensor,
                          min_count: int = 5) -> torch.Tensor:
    """Mean over groups of 1 - Pearson(score, vol-scaled return).

    score [B, n] (rank head, h = first horizon), ret [B, n] (fractions, NaN = unknown), log_sigma [B, n]
    (tokenizer feature 6), group [B, n] int64 (cross-section id, -1 = not in any group). Scalar tensor.
    """
    s = score.float().reshape(-1)
    y = (ret.float() / torch.exp(log_sigma.float())).reshape(-1)
    g = group.reshape(-1)
    ok = torch.isfinite(y) & (g >= 0)
    if not bool(ok.any()):
        return s.sum() * 0.0
    s, y, g = s[ok], y[ok].clamp(-5.0, 5.0), g[ok]
    _, inv = torch.unique(g, return_inverse=True)
    n_groups = int(inv.max()) + 1

    def seg_sum(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, inv, x)

    count = seg_sum(torch.ones_like(s))
    s_c = s - (seg_sum(s) / count)[inv]
    y_c = y - (seg_sum(y) / count)[inv]
    cov = seg_sum(s_c * y_c)
    var_s, var_y = seg_sum(s_c * s_c), seg_sum(y_c * y_c)
    corr = cov / torch.sqrt(var_s * var_y + 1e-12)
    keep = count >= min_count
    if not bool(keep.any()):
        return s.sum() * 0.0
    return (1.0 - corr[keep]).mean()
