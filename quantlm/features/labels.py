"""Leak-free forward-return labels.

The evaluation label of a score at session t (docs/ARCHITECTURE.md, timing conventions) is the
simple return of the trade that score triggers: bought at the open of t+1, marked at the open of
t+2, i.e. ``open(t+2) / open(t+1) - 1`` (`forward_returns(bars)` with its defaults).

Sessions are counted on the dataset's calendar (the union of all time stamps in `bars`), not on a
symbol's own rows: if a symbol has no bar at t+lag or t+lag+horizon (suspended, delisted, not yet
listed, or past the end of the data) its label is NaN rather than a return over a longer span.

Prices are adjusted with `adj_factor` where it is given (price * adj_factor; rows with a NaN
adj_factor use raw prices), so splits and dividends do not show up as returns.

The label follows the backtest's fill (`evaluation_labels(bars, fill)`): the return of a trade
filled at t+1's fill price and exited at t+2's, i.e. open(t+2)/open(t+1) - 1 for fill="open",
close(t+2)/close(t+1) - 1 for "close" and vwap(t+2)/vwap(t+1) - 1 for "vwap", with the engine's
VWAP proxy: amount / volume where both are known and positive, else (open + high + low + close) / 4.

Causality: a label at t depends only on bars up to session t + lag + horizon; the tests check that
with `quantlm.testing.assert_causal(..., horizon_bars=lag + horizon)`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_PRICE_FIELDS = ("open", "high", "low", "close", "vwap")
FILLS = ("open", "close", "vwap")  # the backtest's fill prices (quantlm.backtest.engine.FILLS)


def check_bars(bars: pd.DataFrame, needed: tuple[str, ...] = ("symbol", "ts")) -> None:
    """Raise ValueError naming the missing columns (or duplicated rows) of a bars frame."""
    if not isinstance(bars, pd.DataFrame):
        raise TypeError(f"bars must be a DataFrame, got {type(bars).__name__}")
    missing = [c for c in needed if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack column(s) {', '.join(missing)}; found {', '.join(map(str, bars.columns))}")
    if bars.duplicated(["symbol", "ts"]).any():
        row = bars[bars.duplicated(["symbol", "ts"])].iloc[0]
        raise ValueError(f"duplicate (symbol, ts) in bars: ({row['symbol']}, {row['ts']})")


def adjusted_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Bars sorted by (symbol, ts) with prices multiplied and volume divided by `adj_factor`.

    Rows whose adj_factor is missing or NaN keep raw values. `amount` (currency) is unchanged.
    """
    out = bars.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    if "adj_factor" in out.columns:
        factor = pd.to_numeric(out["adj_factor"], errors="coerce").to_numpy(dtype="float64")
        factor = np.where(np.isfinite(factor) & (factor > 0), factor, 1.0)
        if not np.all(factor == 1.0):
            out = out.copy()
            for col in ("open", "high", "low", "close", "vwap"):
                if col in out.columns:
                    out[col] = out[col].to_numpy(dtype="float64") * factor
            if "volume" in out.columns:
                out["volume"] = out["volume"].to_numpy(dtype="float64") / factor
    return out


def with_vwap(bars: pd.DataFrame) -> pd.DataFrame:
    """A copy of `bars` with a `vwap` column = amount / volume (currency per share; NaN if unknown)."""
    out = bars.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        vwap = out["amount"].to_numpy(dtype="float64") / out["volume"].to_numpy(dtype="float64")
    out["vwap"] = np.where(np.isfinite(vwap) & (vwap > 0), vwap, np.nan)
    return out


def forward_returns(bars: pd.DataFrame, horizon: int = 1, price: str = "open", lag: int = 1) -> pd.DataFrame:
    """Forward simple returns: label(t) = p(t + lag + horizon) / p(t + lag) - 1 (a fraction).

    bars: canonical bars (symbol, ts, price column[, adj_factor]).
    horizon: holding period in sessions (>= 1).
    price: which price to trade at: open, high, low, close or vwap (amount / volume).
    lag: sessions between the decision (after t's close) and the entry (>= 0). The default
        lag=1, price="open" is the next-open fill of the backtest; lag=0, price="close" gives
        close(t+h)/close(t) - 1.

    Returns a frame (symbol, ts, label) with one row per input bar, sorted by (symbol, ts);
    label is float64 and NaN where a needed future bar is missing.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 session, got {horizon}")
    if lag < 0:
        raise ValueError(f"lag must be >= 0 sessions, got {lag}")
    if price not in _PRICE_FIELDS:
        raise ValueError(f"price must be one of {', '.join(_PRICE_FIELDS)}, got '{price}'")
    needed = ("symbol", "ts", "amount", "volume") if price == "vwap" else ("symbol", "ts", price)
    check_bars(bars, needed)
    adj = adjusted_bars(with_vwap(bars) if price == "vwap" else bars)
    return _forward(adj, price, horizon, lag)


def _forward(adj: pd.DataFrame, price: str, horizon: int, lag: int) -> pd.DataFrame:
    """p(t + lag + horizon) / p(t + lag) - 1 on the dataset's calendar, for adjusted bars `adj`."""
    p = adj[price].to_numpy(dtype="float64")
    ts = pd.DatetimeIndex(adj["ts"])
    calendar, pos = np.unique(ts.asi8, return_inverse=True)
    symbols, sym_code = np.unique(adj["symbol"].astype(str).to_numpy(), return_inverse=True)
    wide = np.full((len(calendar), len(symbols)), np.nan)
    wide[pos, sym_code] = p
    entry = _shift_up(wide, lag)
    exit_ = _shift_up(wide, lag + horizon)
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = exit_ / entry - 1.0
    label = ret[pos, sym_code]
    return pd.DataFrame({"symbol": adj["symbol"].to_numpy(), "ts": adj["ts"].to_numpy(), "label": label})


def fill_vwap(bars: pd.DataFrame) -> np.ndarray:
    """The engine's VWAP fill price per bar (currency per share, raw prices): amount / volume where
    that is finite and > 0, else (open + high + low + close) / 4. A missing amount column counts as unknown."""
    o, h, lo, c = (bars[k].to_numpy(dtype="float64") for k in ("open", "high", "low", "close"))
    vol = np.nan_to_num(pd.to_numeric(bars["volume"], errors="coerce").to_numpy(dtype="float64"), nan=0.0)
    amount = (pd.to_numeric(bars["amount"], errors="coerce").to_numpy(dtype="float64") if "amount" in bars.columns
              else np.full(len(bars), np.nan))
    with np.errstate(divide="ignore", invalid="ignore"):
        vwap = amount / vol
    return np.where(np.isfinite(vwap) & (vwap > 0), vwap, (o + h + lo + c) / 4.0)


def evaluation_labels(bars: pd.DataFrame, fill: str = "open") -> pd.DataFrame:
    """The evaluation label of a score at t under the backtest's `fill` (open, close or vwap): the simple
    return of a trade filled at t+1's fill price and exited at t+2's, a fraction (see the module
    docstring). Prices adjusted by adj_factor; frame (symbol, ts, label) as `forward_returns`."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {', '.join(FILLS)}, got '{fill}'")
    if fill != "vwap":
        return forward_returns(bars, horizon=1, price=fill, lag=1)
    check_bars(bars, ("symbol", "ts", "open", "high", "low", "close", "volume"))
    return _forward(adjusted_bars(bars.assign(vwap=fill_vwap(bars))), "vwap", horizon=1, lag=1)


def _shift_up(wide: np.ndarray, k: int) -> np.ndarray:
    """Row i of the result is row i + k of `wide` (NaN past the end)."""
    if k == 0:
        return wide
    out = np.full_like(wide, np.nan)
    if k < len(wide):
        out[:-k] = wide[k:]
    return out


__all__ = ["forward_returns", "evaluation_labels", "fill_vwap", "adjusted_bars", "check_bars", "with_vwap", "FILLS"]
