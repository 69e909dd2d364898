"""Backtest inputs: bars and scores -> per-bar rows (long format) -> dense chunks of whole dates.

Everything the bar loop needs per (bar, symbol) is computed ONCE on the long bar rows, per symbol in
time order, without a dense bars x all-symbols grid:

- fill price (open / close / VWAP proxy), close, volume;
- the price-limit reference: the symbol's last close of an EARLIER date, ex-rights adjusted by the
  adj_factor step (close(prev date) x adj(prev) / adj(now)), and the limits of its board, ST state
  (flags spans) and IPO window, where the IPO window counts the symbol's trading DATES;
- sigma: sample std of the symbol's last 20 log returns of adjusted closes (at least 5), known at the
  previous bar (the impact model's volatility);
- `ca_ratio`: adj_factor(bar) / adj_factor(previous bar of the symbol), the corporate-action step
  (NaN when unknown, 1 = none).

`iter_chunks` then scatters the rows of a run of whole dates into [bars x symbols] arrays for the
kernel (a daily backtest is one chunk; 1-minute bars are cut into chunks of at most `max_cells`).
Scores stamped at midnight on intraday bars are daily decisions: they act at that date's last bar.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numba import njit

from quantlm.backtest import rules as R

if TYPE_CHECKING:
    from quantlm.backtest.engine import BacktestConfig

SIGMA_WINDOW, SIGMA_MIN = 20, 5
MAX_CHUNK_CELLS = 2_000_000  # bars x symbols per chunk: ~16 MB per float64 array
NS_PER_DAY = 86_400 * 10**9


class PrepareError(ValueError):
    """A bad backtest input (shown to CLI users without a traceback)."""

    user_facing = True


@njit(cache=True)
def _rolling_std_rows(x, first, window, min_periods):
    """Sample std of the last `window` values of x (NaN skipped) up to each row, per group (rows sorted by
    group; `first` marks a group's first row)."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    start = 0
    for i in range(n):
        if first[i]:
            start = i
        lo = max(start, i - window + 1)
        s = 0.0
        ss = 0.0
        k = 0
        for m in range(lo, i + 1):
            v = x[m]
            if v == v:
                s += v
                ss += v * v
                k += 1
        if k >= min_periods and k > 1:
            mean = s / k
            out[i] = np.sqrt(max((ss - k * mean * mean) / (k - 1), 0.0))
    return out


def _ns(ts) -> np.ndarray:
    """Timestamps as int64 nanoseconds (whatever the input's datetime resolution)."""
    return pd.DatetimeIndex(ts).as_unit("ns").asi8


def _group_ffill(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Forward-fill NaNs within groups of consecutive rows (a group starts where `first` is True)."""
    idx = np.arange(len(values))
    group_start = np.maximum.accumulate(np.where(first, idx, 0))
    pos = np.maximum.accumulate(np.where(np.isfinite(values), idx, -1))
    ok = pos >= group_start
    return np.where(ok, values[np.maximum(pos, 0)], np.nan)


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
    """Long-format backtest inputs of the window: bar rows and score rows sorted by bar index."""

    symbols: list[str]
    sessions: pd.DatetimeIndex  # the window's bar timestamps
    row_t: np.ndarray  # window bar index of each bar row
    row_j: np.ndarray  # symbol index
    fill_price: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    limit_up: np.ndarray
    limit_down: np.ndarray
    sigma: np.ndarray
    ca_ratio: np.ndarray
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
    """Dense chunks of whole dates, in time order."""
    n = len(p.symbols)
    bounds = p.chunk_bounds(max_cells)
    for k, (a, b) in enumerate(bounds):
        r0, r1 = np.searchsorted(p.row_t, [a, b])
        t, j = p.row_t[r0:r1] - a, p.row_j[r0:r1]
        m = b - a

        def dense(values: np.ndarray, fill: float = np.nan, t=t, j=j, r0=r0, r1=r1, m=m) -> np.ndarray:
            out = np.full((m, n), fill)
            out[t, j] = values[r0:r1]
            return out

        s0, s1 = np.searchsorted(p.score_t, [a, b])
        score = np.full((m, n), np.nan)
        score[p.score_t[s0:s1] - a, p.score_j[s0:s1]] = p.score[s0:s1]
        yield Chunk(a, p.sessions[a:b], dense(p.fill_price), dense(p.close), dense(p.volume, 0.0), dense(p.limit_up),
                    dense(p.limit_down), dense(p.sigma), dense(p.ca_ratio), score, np.isfinite(score).any(axis=1),
                    p.new_date[a:b], p.day_end[a:b], p.stamp_rate[a:b], p.sec_rate[a:b], p.transfer_rate[a:b],
                    p.borrow_years[a:b], k == len(bounds) - 1)


def _board_limits_rows(boards: np.ndarray, is_st: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Board limit fraction per row (NaN = none) from board, ST state and date regime (`R.board_limit`)."""
    out = np.full(len(ts), np.nan)
    breaks = [R.CHINEXT_REFORM.value, R.MAIN_ST_10PCT_FROM.value]
    regime = np.searchsorted(np.asarray(breaks, dtype=np.int64), ts, side="right")
    probe = [pd.Timestamp("2000-01-03"), R.CHINEXT_REFORM, R.MAIN_ST_10PCT_FROM]
    for board in np.unique(boards):
        on_board = boards == board
        for k, date in enumerate(probe):
            sel = on_board & (regime == k)
            if sel.any():
                out[sel] = np.where(is_st[sel], R.board_limit(str(board), date, True), R.board_limit(str(board), date, False))
    return out


def _limits_rows(symbols: list[str], j: np.ndarray, ts: np.ndarray, first_of_date: np.ndarray, first_of_sym: np.ndarray,
                 prev_ref: np.ndarray, instruments: pd.DataFrame | None, flags: pd.DataFrame | None,
                 tick: float) -> tuple[np.ndarray, np.ndarray]:
    """Limit-up / limit-down prices per bar row (NaN = no limit): board, ST spans, IPO window in dates."""
    boards_sym = np.asarray(R.symbol_boards(symbols, instruments), dtype=object)
    boards = boards_sym[j]
    is_st = np.zeros(len(ts), dtype=bool)
    sym_start = np.searchsorted(j, np.arange(len(symbols)))
    sym_end = np.searchsorted(j, np.arange(len(symbols)), side="right")
    col = {s: k for k, s in enumerate(symbols)}
    if flags is not None and len(flags):
        st = flags[flags["flag"].astype(str).str.lower().isin(["st", "*st"])]
        for sym, start, end in zip(st["symbol"], st["start"], st["end"]):
            k = col.get(str(sym))
            if k is None:
                continue
            lo, hi = sym_start[k], sym_end[k]
            seg = ts[lo:hi]
            day = seg - seg % NS_PER_DAY
            a = 0 if pd.isna(start) else np.searchsorted(day, pd.Timestamp(start).normalize().value, "left")
            b = len(seg) if pd.isna(end) else np.searchsorted(day, pd.Timestamp(end).normalize().value, "right")
            is_st[lo + a: lo + b] = True
    frac = _board_limits_rows(boards, is_st, ts)
    list_dates = R._list_dates(instruments)
    issue = R._issue_prices(instruments)
    day1_up = np.full(len(ts), np.nan)
    day1_down = np.full(len(ts), np.nan)
    for sym, ld in list_dates.items():
        k = col.get(sym)
        if k is None:
            continue
        lo, hi = sym_start[k], sym_end[k]
        if lo == hi:
            continue
        seg = ts[lo:hi]
        listed = seg >= ld.value
        counted = first_of_date[lo:hi] & listed
        rank = np.cumsum(counted) - 1  # the symbol's trading dates since listing, 0 = listing day
        first_day = pd.Timestamp(seg[0]).normalize()
        if ld < first_day:
            rank = rank + int(np.busday_count(ld.date(), first_day.date()))
        rank = np.where(listed, rank, -1)
        near = np.flatnonzero((rank >= 0) & (rank < R.IPO_FREE_DAYS))
        board = str(boards_sym[k])
        for i in near:
            date = pd.Timestamp(seg[i])
            if R.ipo_limit_free(board, date, int(rank[i])):
                frac[lo + i] = np.nan
            elif rank[i] == 0 and board in ("main", "chinext"):
                frac[lo + i] = np.nan  # pre-reform day 1: bounds on the issue price, when known
                if sym in issue:
                    day1_up[lo + i], day1_down[lo + i] = R.day1_bounds(issue[sym], tick)
    with np.errstate(invalid="ignore"):
        up, down = R.limit_prices(prev_ref, frac, frac, tick)
    has_day1 = np.isfinite(day1_up)
    up = np.where(has_day1, day1_up, up)
    down = np.where(has_day1, day1_down, down)
    return up, down


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
    b_codes, b_uniques = pd.factorize(bars["symbol"])
    bar_syms = pd.Index(np.asarray(b_uniques, dtype=str))
    symbols = sorted(score_syms.intersection(bar_syms))
    if not symbols:
        raise PrepareError("no symbol of the signals has bars")
    missing = score_syms.difference(bar_syms)
    if len(missing):
        warnings.append(f"{len(missing)} signal symbol(s) have no bars and are ignored, e.g. {missing[0]}")
    sym_index = pd.Index(symbols)
    bj = np.where(b_codes >= 0, sym_index.get_indexer(bar_syms)[b_codes], -1)
    rows = np.flatnonzero(bj >= 0)
    j = bj[rows]
    ts = _ns(bars["ts"])[rows]
    key_sorted = len(j) < 2 or bool(np.all((j[1:] > j[:-1]) | ((j[1:] == j[:-1]) & (ts[1:] >= ts[:-1]))))
    order = np.arange(len(j)) if key_sorted else np.lexsort((ts, j))
    rows, j, ts = rows[order], j[order], ts[order]
    dup = np.zeros(len(j), dtype=bool)
    dup[:-1] = (j[1:] == j[:-1]) & (ts[1:] == ts[:-1])  # a repeated (symbol, ts): the last row wins
    if dup.any():
        rows, j, ts = rows[~dup], j[~dup], ts[~dup]

    def col(name: str) -> np.ndarray:
        if name not in bars.columns:
            return np.full(len(rows), np.nan)
        return pd.to_numeric(bars[name], errors="coerce").to_numpy(dtype="float64")[rows]

    o, h, lo, c, vol = col("open"), col("high"), col("low"), col("close"), np.nan_to_num(col("volume"), nan=0.0)
    if config.fill == "open":
        fill = o
    elif config.fill == "close":
        fill = c
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            vwap = col("amount") / vol
        fill = np.where(np.isfinite(vwap) & (vwap > 0), vwap, (o + h + lo + c) / 4.0)
    n_rows = len(rows)
    idx = np.arange(n_rows)
    first_of_sym = np.ones(n_rows, dtype=bool)
    first_of_sym[1:] = j[1:] != j[:-1]
    day = ts - ts % NS_PER_DAY
    first_of_date = first_of_sym.copy()
    first_of_date[1:] |= day[1:] != day[:-1]
    intraday = bool((ts % NS_PER_DAY != 0).any())
    # limit reference: the symbol's last close of an earlier date, ex-rights adjusted
    date_start = np.maximum.accumulate(np.where(first_of_date, idx, 0))
    prev_i = date_start - 1
    has_prev = ~first_of_sym[date_start]
    prev_close = np.where(has_prev, c[np.maximum(prev_i, 0)], np.nan)
    adj = _group_ffill(col("adj_factor"), first_of_sym)
    adj_prev_date = np.where(has_prev, adj[np.maximum(prev_i, 0)], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio_ref = adj_prev_date / adj
        prev_ref = np.where(np.isfinite(ratio_ref), prev_close * ratio_ref, prev_close)
        prev_bar_adj = np.where(first_of_sym, np.nan, np.r_[np.nan, adj[:-1]])
        ca_ratio = adj / prev_bar_adj
        adj_close = np.where(np.isfinite(adj), c * adj, c)
        logret = np.log(adj_close / np.r_[np.nan, adj_close[:-1]])
    logret[first_of_sym] = np.nan
    rules, costs = config.market_rules(), config.cost_model_used()
    sigma = _rolling_std_rows(logret, first_of_sym, SIGMA_WINDOW, SIGMA_MIN)
    sigma = np.r_[np.nan, sigma[:-1]]  # known at the previous bar
    sigma[first_of_sym] = np.nan
    sigma = np.where(np.isfinite(sigma), sigma, costs.default_sigma)
    if rules.price_limits:
        up, down = _limits_rows(symbols, j, ts, first_of_date, first_of_sym, prev_ref, instruments, flags,
                                rules.price_tick)
    else:
        up = down = np.full(n_rows, np.nan)

    all_ts = np.unique(ts)
    lo_i = 0 if config.start is None else int(np.searchsorted(all_ts, pd.Timestamp(config.start).value))
    hi_i = len(all_ts) if config.end is None else int(np.searchsorted(all_ts, _end_ns(config.end, intraday), "right"))
    if hi_i - lo_i < 1:
        raise PrepareError(f"no sessions between start={config.start} and end={config.end}")
    st, sj, sv = _score_rows(scores, value_col, sym_index, all_ts, intraday)
    in_w = (st >= lo_i) & (st < hi_i)
    s_order = np.argsort(st[in_w], kind="stable")
    t_all = np.searchsorted(all_ts, ts)
    win = (t_all >= lo_i) & (t_all < hi_i)
    t_order = np.argsort(t_all[win], kind="stable")

    def pick(a: np.ndarray) -> np.ndarray:
        return a[win][t_order]

    sessions = pd.DatetimeIndex(all_ts[lo_i:hi_i])
    days = sessions.normalize().asi8
    new_date = np.ones(len(sessions), dtype=bool)
    new_date[1:] = days[1:] != days[:-1]
    day_end = np.ones(len(sessions), dtype=bool)
    day_end[:-1] = days[1:] != days[:-1]
    gaps = np.zeros(len(sessions))
    gaps[1:] = np.diff(sessions.asi8) / (NS_PER_DAY * 365.0)
    last_bar = np.full(len(symbols), -1, dtype=np.int64)
    rt, rj = pick(t_all) - lo_i, pick(j)
    np.maximum.at(last_bar, rj, rt)
    boards = R.symbol_boards(symbols, instruments)
    buy_min, buy_step, sell_min, sell_step = R.lot_arrays(rules, boards)
    return Prepared(symbols, sessions, rt, rj, pick(fill), pick(c), pick(vol), pick(up), pick(down), pick(sigma),
                    pick(ca_ratio), st[in_w][s_order] - lo_i, sj[in_w][s_order], sv[in_w][s_order], new_date, day_end,
                    costs.stamp_duty_rates(sessions), costs.sec_fee_rates(sessions), costs.transfer_fee_rates(sessions),
                    gaps, buy_min, buy_step, sell_min, sell_step, last_bar, intraday, warnings)


def _end_ns(end, intraday: bool) -> int:
    """An end given as a date covers that whole date on intraday bars."""
    t = pd.Timestamp(end)
    if intraday and t == t.normalize():
        return t.value + NS_PER_DAY - 1
    return t.value
