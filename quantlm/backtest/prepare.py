"""Backtest inputs: bars and scores -> dense chunks of whole dates for the bar loop.

The bars stay in their long form (one row per symbol and bar, sorted by symbol then time); nothing
builds a dense bars x all-symbols grid. `iter_chunks` walks the rows of a run of whole dates with
`bar_state.advance_rows`, which keeps a small state per symbol (limit reference, IPO date count,
recent returns for sigma, last adj_factor) and writes [chunk bars x symbols] arrays for the kernel:
fill price (open / close / VWAP proxy), close, volume, price limits, sigma and the corporate-action
step `ca_ratio`. A daily backtest is one chunk; 1-minute bars are cut into chunks of at most
`max_cells` bars x symbols, so memory is bounded by the chunk, not by the length of the run.
Scores stamped at midnight on intraday bars are daily decisions: they act at that date's last bar.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from quantlm.backtest import bar_state as B
from quantlm.backtest import rules as R

if TYPE_CHECKING:
    from quantlm.backtest.engine import BacktestConfig

MAX_CHUNK_CELLS = 2_000_000  # bars x symbols per chunk: ~16 MB per float64 array
NS_PER_DAY = 86_400 * 10**9


class PrepareError(ValueError):
    """A bad backtest input (shown to CLI users without a traceback)."""

    user_facing = True


def _ns(ts) -> np.ndarray:
    """Timestamps as int64 nanoseconds (whatever the input's datetime resolution)."""
    return pd.DatetimeIndex(ts).as_unit("ns").asi8


@dataclass
class Chunk:
    """Dense [bars x symbols] inputs of a run of whole dates (window-relative bar indices a..b)."""

    start: int
    sessions: pd.DatetimeIndex
    fill_price: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    limit_up: np.ndarray
    limit_down: np.ndarray
    sigma: np.ndarray
    ca_ratio: np.ndarray
    score: np.ndarray
    has_score: np.ndarray
    new_date: np.ndarray
    day_end: np.ndarray
    stamp_rate: np.ndarray
    sec_rate: np.ndarray
    transfer_rate: np.ndarray
    borrow_years: np.ndarray
    last: bool


@dataclass
class Prepared:
    """Long-format backtest inputs: bar rows grouped by symbol, score rows sorted by window bar."""

    symbols: list[str]
    sessions: pd.DatetimeIndex  # the window's bar timestamps
    lo_i: int  # index of the window's first bar in all_ts
    all_ts: np.ndarray  # every bar timestamp of the universe (ns), warm-up before the window included
    columns: dict[str, np.ndarray]  # ts (ns), open, high, low, close, volume, amount, adj_factor per row
    sym_lo: np.ndarray  # first row of each symbol
    sym_hi: np.ndarray  # one past its last row
    fill_mode: int
    board: np.ndarray
    list_day: np.ndarray
    ipo_offset: np.ndarray
    issue_price: np.ndarray
    st: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    tick: float
    price_limits: bool
    default_sigma: float
    score_t: np.ndarray
    score_j: np.ndarray
    score: np.ndarray
    new_date: np.ndarray
    day_end: np.ndarray
    stamp_rate: np.ndarray
    sec_rate: np.ndarray
    transfer_rate: np.ndarray
    borrow_years: np.ndarray
    buy_min: np.ndarray
    buy_step: np.ndarray
    sell_min: np.ndarray
    sell_step: np.ndarray
    last_bar: np.ndarray  # per symbol: window index of its last bar (-1 = none in the window)
    intraday: bool
    warnings: list[str] = field(default_factory=list)

    def chunk_bounds(self, max_cells: int = MAX_CHUNK_CELLS) -> list[tuple[int, int]]:
        """[a, b) window bar ranges of whole dates, each at most `max_cells` bars x symbols (one date at least)."""
        n_t, n = len(self.sessions), max(len(self.symbols), 1)
        starts = np.flatnonzero(self.new_date)
        per = max(max_cells // n, 1)
        bounds, a = [], 0
        while a < n_t:
            ends = np.append(starts[starts > a], n_t)
            fit = ends[ends - a <= per]
            b = int(fit[-1]) if len(fit) else int(ends[0])
            bounds.append((a, b))
            a = b
        return bounds


def iter_chunks(p: Prepared, max_cells: int = MAX_CHUNK_CELLS) -> Iterator[Chunk]:
    """Dense chunks of whole dates, in time order (each call starts from a fresh per-symbol state)."""
    n = len(p.symbols)
    bounds = p.chunk_bounds(max_cells)
    state, ring = B.new_state(n)
    rcur, tcur = p.sym_lo.copy(), np.zeros(n, dtype=np.int64)
    c = p.columns
    for k, (a, b) in enumerate(bounds):
        m = b - a
        arrays = [np.full((m, n), np.nan) for _ in range(7)]
        fill, close, vol, up, down, sigma, ca = arrays
        vol[:] = 0.0
        B.advance_rows(rcur, p.sym_hi, tcur, p.all_ts, c["ts"], c["open"], c["high"], c["low"], c["close"],
                       c["volume"], c["amount"], c["adj_factor"], p.fill_mode, p.board, p.list_day, p.ipo_offset,
                       p.issue_price, *p.st, p.tick, p.price_limits, p.default_sigma, state, ring,
                       a + p.lo_i, b + p.lo_i, fill, close, vol, up, down, sigma, ca)
        s0, s1 = np.searchsorted(p.score_t, [a, b])
        score = np.full((m, n), np.nan)
        score[p.score_t[s0:s1] - a, p.score_j[s0:s1]] = p.score[s0:s1]
        yield Chunk(a, p.sessions[a:b], fill, close, vol, up, down, sigma, ca, score, np.isfinite(score).any(axis=1),
                    p.new_date[a:b], p.day_end[a:b], p.stamp_rate[a:b], p.sec_rate[a:b], p.transfer_rate[a:b],
                    p.borrow_years[a:b], k == len(bounds) - 1)


def _score_rows(scores: pd.DataFrame, value_col: str, sym_index: pd.Index, all_ts: np.ndarray,
                intraday: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bar index in all_ts, symbol index, value) of each usable score: the last bar at or before its stamp.

    On intraday bars a score stamped at midnight is a daily decision: it acts at that date's last bar.
    """
    s_codes, s_uniques = pd.factorize(scores["symbol"])
    s_syms = pd.Index(np.asarray(s_uniques, dtype=str))
    sj = np.where(s_codes >= 0, sym_index.get_indexer(s_syms)[s_codes], -1)
    sts_ns = _ns(scores["ts"])
    if intraday and len(sts_ns) and (sts_ns % NS_PER_DAY == 0).all():
        sts_ns = sts_ns + (NS_PER_DAY - 1)
    st = np.searchsorted(all_ts, sts_ns, side="right") - 1
    values = pd.to_numeric(scores[value_col], errors="coerce").to_numpy(dtype="float64")
    keep = (st >= 0) & (sj >= 0)
    return st[keep], sj[keep], values[keep]


def _sorted_rows(bars: pd.DataFrame, sym_index: pd.Index) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(row order or None if the bars are already grouped by symbol in time order, symbol index of each
    (ordered) row, ns timestamps of each row); rows of symbols outside `sym_index` are dropped."""
    raw = bars["symbol"]
    if isinstance(raw.dtype, pd.CategoricalDtype):
        cats = pd.Index(np.asarray(raw.cat.categories, dtype=str))
        codes = raw.cat.codes.to_numpy()
        j = np.where(codes >= 0, sym_index.get_indexer(cats)[codes], -1)
    else:
        values = raw.to_numpy()
        change = np.ones(len(values), dtype=bool)
        change[1:] = values[1:] != values[:-1]
        starts = np.flatnonzero(change)
        run_syms = pd.Index(np.asarray(values[starts], dtype=str))
        run_j = sym_index.get_indexer(run_syms)
        j = np.repeat(run_j, np.diff(np.r_[starts, len(values)]))
    ts = _ns(bars["ts"])
    keep = j >= 0
    ok = bool(keep.all()) and (len(j) < 2 or bool(np.all((j[1:] > j[:-1]) | ((j[1:] == j[:-1]) & (ts[1:] > ts[:-1])))))
    if ok:
        return None, j, ts
    rows = np.flatnonzero(keep)
    order = rows[np.lexsort((ts[rows], j[rows]))]
    j, ts = j[order], ts[order]
    dup = np.zeros(len(order), dtype=bool)
    dup[:-1] = (j[1:] == j[:-1]) & (ts[1:] == ts[:-1])  # a repeated (symbol, ts): the last row wins
    return order[~dup], j[~dup], ts[~dup]


def prepare(scores: pd.DataFrame, bars: pd.DataFrame, config: BacktestConfig,
            instruments: pd.DataFrame | None = None, flags: pd.DataFrame | None = None) -> Prepared:
    """Long-format inputs of the backtest window (see the module docstring)."""
    value_col = "weight" if config.strategy == "weights" else "score"
    for col in ("symbol", "ts", value_col):
        if col not in scores.columns:
            raise PrepareError(f"signals: missing column '{col}' (strategy '{config.strategy}')")
    for col in ("symbol", "ts", "open", "high", "low", "close", "volume"):
        if col not in bars.columns:
            raise PrepareError(f"bars: missing column '{col}'")
    warnings: list[str] = []
    score_syms = pd.Index(pd.unique(scores["symbol"].astype(str)))
    bar_syms = pd.Index(pd.unique(bars["symbol"].astype(str)) if not isinstance(bars["symbol"].dtype, pd.CategoricalDtype)
                        else np.asarray(bars["symbol"].cat.categories, dtype=str))
    symbols = sorted(score_syms.intersection(bar_syms))
    if not symbols:
        raise PrepareError("no symbol of the signals has bars")
    missing = score_syms.difference(bar_syms)
    if len(missing):
        warnings.append(f"{len(missing)} signal symbol(s) have no bars and are ignored, e.g. {missing[0]}")
    sym_index = pd.Index(symbols)
    order, j, ts = _sorted_rows(bars, sym_index)

    def col(name: str) -> np.ndarray:
        if name not in bars.columns:
            return np.full(len(j), np.nan)
        raw = bars[name]
        v = raw.to_numpy() if raw.dtype == np.float64 else raw.to_numpy(dtype="float64", na_value=np.nan)
        return v if order is None else v[order]

    columns = {"ts": ts, **{k: col(k) for k in ("open", "high", "low", "close", "volume", "amount", "adj_factor")}}
    n = len(symbols)
    sym_lo = np.searchsorted(j, np.arange(n))
    sym_hi = np.searchsorted(j, np.arange(n), side="right")
    intraday = bool((ts % NS_PER_DAY != 0).any())
    all_ts = np.sort(pd.unique(ts))
    lo_i = 0 if config.start is None else int(np.searchsorted(all_ts, pd.Timestamp(config.start).value))
    hi_i = len(all_ts) if config.end is None else int(np.searchsorted(all_ts, _end_ns(config.end, intraday), "right"))
    if hi_i - lo_i < 1:
        raise PrepareError(f"no sessions between start={config.start} and end={config.end}")
    all_ts = all_ts[:hi_i]
    st, sj, sv = _score_rows(scores, value_col, sym_index, all_ts, intraday)
    in_w = (st >= lo_i) & (st < hi_i)
    s_order = np.argsort(st[in_w], kind="stable")
    sessions = pd.DatetimeIndex(all_ts[lo_i:hi_i])
    days = sessions.normalize().asi8
    new_date = np.ones(len(sessions), dtype=bool)
    new_date[1:] = days[1:] != days[:-1]
    day_end = np.ones(len(sessions), dtype=bool)
    day_end[:-1] = days[1:] != days[:-1]
    gaps = np.zeros(len(sessions))
    gaps[1:] = np.diff(sessions.asi8) / (NS_PER_DAY * 365.0)
    has_rows = sym_hi > sym_lo
    last_ts = np.where(has_rows, ts[np.maximum(sym_hi - 1, 0)], np.iinfo(np.int64).min)
    last_bar = np.searchsorted(all_ts, last_ts, side="right") - 1 - lo_i
    first_ts = np.where(has_rows, ts[np.minimum(sym_lo, max(len(ts) - 1, 0))], 0)
    rules, costs = config.market_rules(), config.cost_model_used()
    boards = R.symbol_boards(symbols, instruments)
    buy_min, buy_step, sell_min, sell_step = R.lot_arrays(rules, boards)
    list_day, ipo_offset, issue = B.listing_info(instruments, symbols, first_ts - first_ts % NS_PER_DAY)
    return Prepared(symbols, sessions, lo_i, all_ts, columns, sym_lo, sym_hi, B.FILL_MODES.index(config.fill),
                    B.board_codes(boards), list_day, ipo_offset, issue, B.st_spans(flags, symbols), rules.price_tick,
                    bool(rules.price_limits), costs.default_sigma, st[in_w][s_order] - lo_i, sj[in_w][s_order],
                    sv[in_w][s_order], new_date, day_end, costs.stamp_duty_rates(sessions), costs.sec_fee_rates(sessions),
                    costs.transfer_fee_rates(sessions), gaps, buy_min, buy_step, sell_min, sell_step, last_bar, intraday,
                    warnings)


def _end_ns(end, intraday: bool) -> int:
    """An end given as a date covers that whole date on intraday bars."""
    t = pd.Timestamp(end)
    if intraday and t == t.normalize():
        return t.value + NS_PER_DAY - 1
    return t.value
