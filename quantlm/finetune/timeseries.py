"""Trader targets and factor inputs for stores too small to rank (one index series, a handful of coins).

On a store with fewer than `backtest.timing.MIN_RANKED_SYMBOLS` symbols the book is a timing book
(`backtest.timing`) and the IC is a time-series IC. The cross-sectional versions of two trader arrays
are then empty of information: a per-session rank of one symbol is always 0, so the rank head (the
score the book trades) would learn a constant, and session-ranked factors would all be 0. Such
stores get time-series versions instead (`build_trader_data` switches on `is_timing_store`):

- rank target: erf(z / sqrt(2)) = 2 Phi(z) - 1 with z = ret_h / (sigma_t sqrt(h)), sigma_t the
  tokenizer's causal daily volatility at t. It is what a cross-sectional rank in (-1, 1) would be if
  the vol-scaled returns were standard normal; it uses the bar's own label and sigma_t only, so no
  statistic of other times (past or future) enters a target.
- factor inputs: the percentile of each Alpha158 factor at t among the same symbol's values over the
  last `FACTOR_WINDOW` bars up to and including t (at least `FACTOR_MIN_HISTORY`), mapped to
  [-1, 1] as (rank - 0.5) / count * 2 - 1, 0 where missing; plus the share of missing factors.
  Point in time: only bars <= t of the same symbol enter the value at t.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import erf

FACTOR_WINDOW = 250  # about a year of daily bars
FACTOR_MIN_HISTORY = 20


def is_timing_store(n_symbols: int) -> bool:
    """Whether trader data over `n_symbols` symbols gets time-series targets and factors (the same rule
    as the timing book of `strategy: auto`)."""
    from quantlm.backtest.timing import MIN_RANKED_SYMBOLS

    return n_symbols < MIN_RANKED_SYMBOLS


def timing_rank_target(ret: np.ndarray, log_sigma: np.ndarray, horizons: list[int]) -> np.ndarray:
    """float32 [N, n_h]: erf(ret_h / (sigma sqrt(h)) / sqrt(2)) in (-1, 1); NaN where ret is NaN.

    ret: [N, n_h] forward returns (fractions); log_sigma: [N] log of the causal daily volatility."""
    scaled = np.asarray(ret, np.float64) / (np.exp(np.asarray(log_sigma, np.float64))[:, None]
                                            * np.sqrt(np.asarray(horizons, np.float64)))
    return erf(scaled / np.sqrt(2.0)).astype(np.float32)


def factor_time_ranks(raw: pd.DataFrame, symbol: np.ndarray, window: int = FACTOR_WINDOW,
                      min_history: int = FACTOR_MIN_HISTORY) -> np.ndarray:
    """float16 [N, F + 1]: each factor's trailing percentile within its symbol, and the missing share.

    raw: [N, F] factor values, rows sorted by (symbol, ts); symbol: [N] the symbol of each row."""
    values = raw.to_numpy(np.float64)
    frame = pd.DataFrame(values)
    rolling = frame.groupby(np.asarray(symbol), sort=False).rolling(window, min_periods=min_history)
    rank = rolling.rank(method="average").reset_index(level=0, drop=True).sort_index().to_numpy()
    count = rolling.count().reset_index(level=0, drop=True).sort_index().to_numpy()
    missing = ~np.isfinite(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (rank - 0.5) / count * 2 - 1
    out[missing | ~np.isfinite(out)] = 0.0
    share = missing.mean(axis=1)[:, None]
    return np.concatenate([out, share], axis=1).astype(np.float16)


__all__ = ["FACTOR_MIN_HISTORY", "FACTOR_WINDOW", "factor_time_ranks", "is_timing_store", "timing_rank_target"]
