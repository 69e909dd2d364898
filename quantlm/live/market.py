"""Exchange state kept bar by bar for live trading: `BarFeed.step(ts, bars)` -> what the exchange needs.

The same numba state walk as the backtest (`quantlm.backtest.bar_state.advance_rows`), fed one bar
per symbol at a time instead of a stored chunk: price limits (board, ST, IPO dates, ex-rights
reference), sigma, the corporate-action step and the fill price, for the symbols that have a bar.
Nothing is precomputed over a sessions x symbols panel, so pushed bars work as well as stored ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantlm.backtest import bar_state as B
from quantlm.backtest import rules as R
from quantlm.backtest.prepare import _ns

FIELDS = ("open", "high", "low", "close", "volume", "amount", "adj_factor")


@dataclass
class BarFields:
    """One bar for every symbol (NaN where a symbol has no bar): arrays in the feed's symbol order."""

    ts: pd.Timestamp
    has_bar: np.ndarray
    open: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    amount: np.ndarray
    adj_factor: np.ndarray
    high: np.ndarray
    low: np.ndarray
    fill_price: np.ndarray
    limit_up: np.ndarray
    limit_down: np.ndarray
    sigma: np.ndarray
    ca_ratio: np.ndarray
    prev_ref: np.ndarray  # the previous date's close, ex-rights adjusted (price-limit and pause reference)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f: getattr(self, f) for f in FIELDS}


class BarFeed:
    """Per-symbol market state advanced one bar at a time (see the module docstring)."""

    def __init__(self, symbols: list[str], market_rules: R.MarketRules, fill: str, default_sigma: float,
                 instruments: pd.DataFrame | None = None, flags: pd.DataFrame | None = None,
                 first_bar: dict[str, pd.Timestamp] | None = None) -> None:
        self.symbols = list(symbols)
        self.index = pd.Index(self.symbols)
        n = len(self.symbols)
        self.board = B.board_codes(R.symbol_boards(self.symbols, instruments))
        first = np.array([pd.Timestamp((first_bar or {}).get(s, pd.Timestamp.max.normalize())).normalize().value
                          for s in self.symbols], dtype=np.int64)
        self.list_day, self.ipo_offset, self.issue = B.listing_info(instruments, self.symbols, first)
        self.st = B.st_spans(flags, self.symbols)
        self.rules, self.fill_mode, self.default_sigma = market_rules, B.FILL_MODES.index(fill), default_sigma
        self.state, self.ring = B.new_state(n)

    def step(self, ts: pd.Timestamp, bars: pd.DataFrame) -> BarFields:
        """Advance every symbol with a bar in `bars` (rows of this timestamp: symbol + FIELDS)."""
        n = len(self.symbols)
        j = self.index.get_indexer(bars["symbol"].astype(str))
        keep = j >= 0
        j = j[keep]
        order = np.argsort(j, kind="stable")
        j = j[order]
        cols = {f: (bars[f].to_numpy(dtype="float64", na_value=np.nan)[keep][order] if f in bars.columns
                    else np.full(len(j), np.nan)) for f in FIELDS}
        rcur = np.full(n, 0, dtype=np.int64)
        hi = np.zeros(n, dtype=np.int64)
        rcur[j] = np.arange(len(j))
        hi[j] = np.arange(len(j)) + 1
        rcur[hi == 0] = 0
        out = [np.full((1, n), np.nan) for _ in range(7)]
        out[2][:] = 0.0
        ts_ns = np.full(len(j), _ns([ts])[0], dtype=np.int64)
        B.advance_rows(rcur, hi, np.zeros(n, dtype=np.int64), ts_ns[:1], ts_ns, cols["open"], cols["high"], cols["low"],
                       cols["close"], cols["volume"], cols["amount"], cols["adj_factor"], self.fill_mode, self.board,
                       self.list_day, self.ipo_offset, self.issue, *self.st, self.rules.price_tick,
                       bool(self.rules.price_limits), self.default_sigma, self.state, self.ring, 0, 1, *out)
        dense = {f: np.full(n, np.nan) for f in FIELDS}
        for f in FIELDS:
            dense[f][j] = cols[f]
        has = np.zeros(n, dtype=bool)
        has[j] = True
        s = self.state
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = s[:, B.F_PREV_ADJ] / s[:, B.F_LAST_ADJ]
            prev_ref = np.where(np.isfinite(ratio), s[:, B.F_PREV_CLOSE] * ratio, s[:, B.F_PREV_CLOSE])
        fill, close, vol, up, down, sigma, ca = (a[0] for a in out)
        return BarFields(pd.Timestamp(ts), has, dense["open"], close, vol, dense["amount"], dense["adj_factor"],
                         dense["high"], dense["low"], fill, up, down, sigma, ca, prev_ref)

