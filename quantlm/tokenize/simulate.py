"""Realistic-looking random bars for tokenizer tests and benchmarks (not the planted-alpha market).

GARCH(1,1) returns with Student-t(4) shocks (volatility clustering, fat tails), an open gap that
carries part of the move, half-normal shadows that are exactly zero a fifth of the time, and log
volume that follows a slow AR(1) level plus a response to |return| / sigma. Same seed, same bars.
"""

from __future__ import annotations

import numba
import numpy as np
import pandas as pd

_CN_MINUTES = np.r_[np.arange(9 * 60 + 31, 11 * 60 + 31), np.arange(13 * 60 + 1, 15 * 60 + 1)]  # 240 slots


@numba.njit(cache=True)
def _garch_paths(shocks: np.ndarray, base_var: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """float64 [n_symbols, n_bars] returns: var_t = w + alpha r_{t-1}^2 + beta var_{t-1}, w = (1-a-b) base."""
    n_sym, n = shocks.shape
    out = np.empty_like(shocks)
    for s in range(n_sym):
        w = (1.0 - alpha - beta) * base_var[s]
        var = base_var[s]
        for t in range(n):
            r = shocks[s, t] * np.sqrt(var)
            out[s, t] = r
            var = w + alpha * r * r + beta * var
    return out


def simulate_bars(n_symbols: int = 10, n_bars: int = 500, freq: str = "1d", seed: int = 0,
                  start: str = "2015-01-05", with_amount: bool = True) -> pd.DataFrame:
    """Canonical bars (symbol, ts, open, high, low, close, volume, amount, adj_factor) sorted by symbol, ts.

    freq "1d": business days from `start`; "1min": China A-share minutes (240 a day, 9:31-11:30,
    13:01-15:00). Daily volatility about 1-3% (per-minute scaled by 1/sqrt(240)).
    """
    rng = np.random.default_rng(seed)
    per_day = 240 if freq == "1min" else 1
    daily_vol = rng.uniform(0.01, 0.03, n_symbols)
    base_var = (daily_vol / np.sqrt(per_day)) ** 2
    shocks = rng.standard_t(4, (n_symbols, n_bars)) / np.sqrt(2.0)  # unit variance
    ret = _garch_paths(shocks, base_var, 0.08, 0.9)  # [S, N]
    sig = np.sqrt(base_var)[:, None]
    gap_share = 0.3 if per_day == 1 else 0.05
    gap = gap_share * ret + rng.normal(0, 0.2, ret.shape) * sig * gap_share
    close = rng.uniform(5, 50, (n_symbols, 1)) * np.exp(np.cumsum(ret, axis=1))
    prev = np.concatenate([close[:, :1] / np.exp(ret[:, :1]), close[:, :-1]], axis=1)
    open_ = prev * np.exp(gap)
    up = np.abs(rng.normal(0, 0.6, ret.shape)) * sig * (rng.random(ret.shape) > 0.2)
    dn = np.abs(rng.normal(0, 0.6, ret.shape)) * sig * (rng.random(ret.shape) > 0.2)
    high = np.maximum(open_, close) * np.exp(up)
    low = np.minimum(open_, close) * np.exp(-dn)
    level = np.empty_like(ret)
    level[:, 0] = rng.normal(13, 1, n_symbols) - np.log(per_day)
    eps = rng.normal(0, 0.05, ret.shape)
    for t in range(1, n_bars):
        level[:, t] = level[:, t - 1] + 0.02 * (level[:, 0] - level[:, t - 1]) + eps[:, t]
    volume = np.round(np.exp(level + 0.4 * np.abs(ret) / sig + rng.normal(0, 0.3, ret.shape)))
    if per_day == 1:
        ts = pd.bdate_range(start, periods=n_bars).as_unit("ns").asi8
    else:
        days = pd.bdate_range(start, periods=-(-n_bars // per_day)).as_unit("ns").asi8
        ts = (days[:, None] + _CN_MINUTES[None, :].astype(np.int64) * 60 * 10**9).ravel()[:n_bars]
    names = np.array([f"{600000 + i:06d}.SH" for i in range(n_symbols)])
    df = pd.DataFrame({
        "symbol": np.repeat(names, n_bars),
        "ts": np.tile(ts, n_symbols).view("datetime64[ns]"),
        "open": open_.ravel(), "high": high.ravel(), "low": low.ravel(), "close": close.ravel(),
        "volume": volume.ravel(),
        "amount": (volume * (open_ + close) / 2).ravel() if with_amount else np.nan,
        "adj_factor": np.nan,
    })
    return df
