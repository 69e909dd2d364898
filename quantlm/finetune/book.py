"""What a book earns: the portfolio-level reward of RL (`rl.reward: portfolio`) and the validation book return.

Training reward (per cross-section group g = one session of one sampled block of symbols, K sampled
books per group; actions a ~ pi(. | s) per stock, direction classes 0 sell, 1 hold, 2 buy):

    book_k(g)   = equal weight over the stocks whose sampled action is buy; a sample without buys holds
                  the group's equal-weight cross-section (the benchmark: excess 0 before costs)
    r_k(g)      = sum_i w_ki ret_i - mean_i ret_i                       (excess over the cross-section)
                  - sum_i |w_ki(t) - w_ki(t-1)| c_i / 2                 (turnover vs the same sample's book
                                                                         of the previous session; c_i the dated
                                                                         round-trip cost, half per side)
    A_k(g)      = (r_k - mean_{j != k} r_j) / (std_k r + eps)           (leave-one-out baseline, GRPO scale)

ret_i is the next-period return (the evaluation label, fraction) known by the last training session
(NaN = unknown: the stock is outside that session's book). The first scored session of a window has
no previous book and pays no turnover (the same for every sample, so it does not change A). A buy is
paid for only when it changes the book, so a persistent signal weaker than a full round trip per day
still earns (holding everything does not win by default); a sample that churns pays.

Validation (`book_return`): per session the top `fraction` of the stocks by the trading score, equal
weight, its return minus the cross-section's mean minus the turnover cost vs the previous session's
book (the first session pays its entry); the mean per session (fraction) is `book_return`.
"""

from __future__ import annotations

import numpy as np
import torch


def sample_actions(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draws: probs [..., 3], u [..., K] uniforms in [0, 1) -> classes [..., K] (int64)."""
    cdf = probs.cumsum(-1)[..., :-1]  # [..., 2]
    return (u.unsqueeze(-1) >= cdf.unsqueeze(-2)).sum(-1).long()


def book_rewards(buy: torch.Tensor, ret: torch.Tensor, cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group and sample: (excess return of the book net of turnover costs [B, P, K], group valid [B, P]).

    buy [B, N, P, K] bool (stock n of block b at session position p bought by sample k), ret [B, N, P]
    next-period returns (NaN: unknown or no stock in that slot), cost [B, N, P] round-trip cost fractions.
    A group is valid with >= 2 known stocks.
    """
    known = torch.isfinite(ret)
    r0 = torch.where(known, ret, 0.0).double()
    n_known = known.sum(1)  # [B, P]
    k = known.unsqueeze(-1)
    held = buy & k
    n_buy = held.sum(1, keepdim=True)  # [B, 1, P, K]
    bench = (k.double() / n_known.clamp(min=1).unsqueeze(1).unsqueeze(-1)).expand_as(held)
    w = torch.where(n_buy > 0, held.double() / n_buy.clamp(min=1), bench)  # [B, N, P, K]
    mean = r0.sum(1) / n_known.clamp(min=1)  # [B, P]
    excess = (w * r0.unsqueeze(-1)).sum(1) - mean.unsqueeze(-1)  # [B, P, K]
    c0 = torch.where(torch.isfinite(cost), cost, 0.0).double()
    turn = torch.zeros_like(excess)
    if w.shape[2] > 1:
        turn[:, 1:] = ((w[:, :, 1:] - w[:, :, :-1]).abs() * c0[:, :, 1:].unsqueeze(-1)).sum(1) / 2
    return excess - turn, n_known >= 2


def loo_advantages(r: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """r [..., K] -> (r_k - mean of the other K-1) / (std over K, ddof 0, + eps); K >= 2."""
    K = r.shape[-1]
    loo = (r.sum(-1, keepdim=True) - r) / (K - 1)
    return (r - loo) / (r.std(-1, unbiased=False, keepdim=True) + eps)


def dense_slots(block: np.ndarray) -> tuple[np.ndarray, int, int]:
    """block [M] sorted ids of the cross-section of each window -> (slot within its block [M], n blocks, max size)."""
    block = np.asarray(block, np.int64)
    if len(block) == 0:
        return np.zeros(0, np.int64), 0, 0
    first = np.searchsorted(block, block, side="left")
    slot = np.arange(len(block)) - first
    return slot, int(block.max()) + 1, int(slot.max()) + 1


def book_return(score: np.ndarray, ret: np.ndarray, cost: np.ndarray, session: np.ndarray, symbol: np.ndarray,
                fraction: float = 0.2) -> dict[str, float]:
    """Validation book: per session the top `fraction` (at least 1) of the stocks with a finite score and a
    known ret, equal weight; {"book_return": mean per session of its excess return over the cross-section's
    mean net of turnover costs (fraction), "book_turnover": mean one-way turnover per session}."""
    ok = np.isfinite(score) & np.isfinite(ret)
    if not ok.any():
        return {"book_return": float("nan"), "book_turnover": float("nan")}
    sess_ids, s_idx = np.unique(session[ok], return_inverse=True)
    sym_ids, y_idx = np.unique(symbol[ok], return_inverse=True)
    S, N = len(sess_ids), len(sym_ids)
    sc, rt, co = (np.full((S, N), np.nan) for _ in range(3))
    sc[s_idx, y_idx], rt[s_idx, y_idx], co[s_idx, y_idx] = score[ok], ret[ok], cost[ok]
    prev = np.zeros(N)
    daily, turns = [], []
    for t in range(S):
        have = np.flatnonzero(np.isfinite(sc[t]))
        m = max(1, int(round(fraction * len(have))))
        top = have[np.argsort(-sc[t, have], kind="stable")[:m]]
        w = np.zeros(N)
        w[top] = 1.0 / m
        turn = np.abs(w - prev)
        daily.append(float((w[have] * rt[t, have]).sum() - rt[t, have].mean()
                           - (turn * np.nan_to_num(co[t], nan=np.nanmean(co[t]))).sum() / 2))
        turns.append(float(turn.sum() / 2))
        prev = w
    return {"book_return": float(np.mean(daily)), "book_turnover": float(np.mean(turns))}
