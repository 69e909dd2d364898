"""Timing books for universes too small to rank: one index series, a handful of coins.

A cross-sectional top-k book on one symbol holds it every day, whatever the model says, so every model
would show the benchmark's Sharpe. On such stores `quantlm evaluate` / `quantlm run` trade each symbol
on its own: long its sleeve (leverage / number of symbols) when the model's score is above what the
model usually says for that symbol, flat otherwise.

"Usually" is point in time: the score at t is standardised by the mean and standard deviation of the
same symbol's scores strictly before t (the last `window` of them, at least `min_history`), so a model
whose scores are all positive (a rank head, a probability) is still judged by its timing, and nothing
after t moves the position at t. Scores without enough history are NaN: the threshold strategy keeps
the position it has (flat at the start).

`resolve_strategy` picks the book for `strategy: auto`: "timing" when the tradable universe has fewer
than `MIN_RANKED_SYMBOLS` symbols, else "topk".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MIN_RANKED_SYMBOLS = 10  # below this a cross-sectional top-k book is not a ranking


def causal_zscore(scores: pd.DataFrame, window: int = 250, min_history: int = 20) -> pd.DataFrame:
    """Scores table with `score` replaced by (score - mean) / std of the symbol's previous scores.

    scores: columns symbol, ts, score (others kept). window: at most this many earlier scores;
    min_history: at least this many, else NaN. std with ddof=1; a constant history gives NaN.
    """
    df = scores.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    raw = pd.to_numeric(df["score"], errors="coerce").astype("float64")
    past = raw.groupby(df["symbol"], sort=False).shift(1)
    roll = past.groupby(df["symbol"], sort=False).rolling(window, min_periods=min_history)
    mean = roll.mean().reset_index(level=0, drop=True).sort_index()
    std = roll.std(ddof=1).reset_index(level=0, drop=True).sort_index()
    z = (raw - mean) / std.where(std > 0)
    out = df.copy()
    out["score"] = z.where(np.isfinite(z)).to_numpy()
    return out


def resolve_strategy(strategy: str, n_symbols: int) -> str:
    """The book an evaluation runs: `auto` -> "timing" under MIN_RANKED_SYMBOLS symbols, else "topk"."""
    if strategy != "auto":
        return strategy
    return "timing" if n_symbols < MIN_RANKED_SYMBOLS else "topk"


__all__ = ["MIN_RANKED_SYMBOLS", "causal_zscore", "resolve_strategy"]
