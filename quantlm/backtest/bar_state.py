"""Per-symbol market state carried bar by bar: limit reference, price limits, volatility, corporate actions.

`advance_rows` walks each symbol's bars in time order (a numba loop) and, for every bar, derives what
the exchange needs at that bar from what came BEFORE it, keeping a small state per symbol:

- the price-limit reference: the close of the symbol's last bar on an EARLIER date, ex-rights adjusted
  by the adj_factor step (close(prev date) x adj(prev date) / adj(now));
- the limit fraction of its board, ST state (flags spans, by date) and date regime, and the IPO window
  counted in the symbol's trading DATES since its list date (the same rules as `rules.board_limit`,
  `rules.ipo_limit_free` and `rules.day1_bounds`, which tests hold equal);
- sigma: sample std of the symbol's last 20 log returns of adjusted closes (at least 5; else the
  cost model's default), known at the previous bar;
- `ca_ratio`: adj_factor(bar) / adj_factor(previous bar of the symbol), the corporate-action step.

The same state can be advanced one bar at a time (live trading) or over a chunk of stored bars (the
backtest), so both see identical limits. Hand-written because no library keeps A-share limit state.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from numba import njit

from quantlm.backtest import rules as R

BOARD_CODES = ("main", "chinext", "star", "bse", "index", "other")
MAIN, CHINEXT, STAR, BSE = 0, 1, 2, 3
NS_PER_DAY = 86_400 * 10**9
SIGMA_WINDOW, SIGMA_MIN = 20, 5
FILL_MODES = ("open", "close", "vwap")
# date regimes (ns since epoch), from quantlm.backtest.rules
CHINEXT_REFORM_NS = R.CHINEXT_REFORM.value
MAIN_REG_NS = R.MAIN_BOARD_REGISTRATION.value
MAIN_ST10_NS = R.MAIN_ST_10PCT_FROM.value
# per-symbol float state columns
(F_LAST_CLOSE, F_LAST_DAY, F_PREV_CLOSE, F_PREV_ADJ, F_LAST_ADJ, F_LAST_ADJ_CLOSE, F_DATES, F_RING_N,
 F_RING_POS) = range(9)
N_STATE = 9


def board_codes(boards: list[str]) -> np.ndarray:
    """Board names -> small integer codes for the numba loop."""
    return np.asarray([BOARD_CODES.index(b) if b in BOARD_CODES else BOARD_CODES.index("other") for b in boards],
                      dtype=np.int64)


def new_state(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(float state [n, N_STATE], ring of recent log returns [n, SIGMA_WINDOW]) before any bar."""
    st = np.full((n, N_STATE), np.nan)
    st[:, F_DATES] = 0.0
    st[:, F_RING_N] = 0.0
    st[:, F_RING_POS] = 0.0
    st[:, F_LAST_DAY] = -1.0
    return st, np.zeros((n, SIGMA_WINDOW))


@njit(cache=True)
def _round_tick(x, tick):
    if tick <= 0.0:
        return x
    y = x / tick
    return math.floor(y + 0.5 + 1e-9 * abs(y)) * tick


@njit(cache=True)
def limit_fraction(board, is_st, ts_ns, rank):
    """Price-limit fraction (NaN = none) of a bar: board code, ST state, date, IPO date rank (-1 = unknown)."""
    if 0 <= rank < 5:
        if (board == CHINEXT and ts_ns >= CHINEXT_REFORM_NS) or board == STAR or (board == MAIN and ts_ns >= MAIN_REG_NS):
            return np.nan
    if rank == 0 and (board == BSE or board == MAIN or board == CHINEXT):
        return np.nan  # BSE day 1 is free; pre-reform main/ChiNext day 1 is bounded on the issue price
    if board == MAIN:
        if is_st:
            return 0.10 if ts_ns >= MAIN_ST10_NS else 0.05
        return 0.10
    if board == CHINEXT:
        if ts_ns >= CHINEXT_REFORM_NS:
            return 0.20
        return 0.05 if is_st else 0.10
    if board == STAR:
        return 0.20
    if board == BSE:
        return 0.30
    return np.nan


@njit(cache=True)
def advance_rows(rcur, hi, tcur, all_ts, ts, o, h, low, c, vol, amount, adj, fill_mode, board, list_day, ipo_offset,
                 issue_price, st_lo, st_hi, st_start, st_end, tick, price_limits, default_sigma, state, ring, a, b,
                 out_fill, out_close, out_vol, out_up, out_down, out_sigma, out_ca):
    """Advance every symbol j over its next rows (from row cursor rcur[j] up to hi[j]) whose bar index in
    `all_ts` is below b, writing those with t >= a into the [b - a, n] outputs. `rcur`, `tcur` (bar
    index cursors), `state` and `ring` are updated in place; rows are sorted by time within a symbol."""
    n = rcur.shape[0]
    n_all = all_ts.shape[0]
    for j in range(n):
        i = rcur[j]
        while i < hi[j]:
            while tcur[j] < n_all and all_ts[tcur[j]] < ts[i]:
                tcur[j] += 1
            t = tcur[j]
            if t >= b:
                break
            day = ts[i] - ts[i] % NS_PER_DAY
            s = state[j]
            first = s[F_LAST_DAY] < 0
            if not first and day != s[F_LAST_DAY]:
                s[F_PREV_CLOSE] = s[F_LAST_CLOSE]
                s[F_PREV_ADJ] = s[F_LAST_ADJ]
            new_day = first or day != s[F_LAST_DAY]
            cur_adj = adj[i] if adj[i] == adj[i] else s[F_LAST_ADJ]
            ca = np.nan if first else cur_adj / s[F_LAST_ADJ]
            ref = s[F_PREV_CLOSE]
            ratio = s[F_PREV_ADJ] / cur_adj
            if ratio == ratio:
                ref = ref * ratio
            # sigma of the returns before this bar
            k = int(s[F_RING_N])
            sig = default_sigma
            if k >= SIGMA_MIN:
                m = 0.0
                for q in range(k):
                    m += ring[j, q]
                m /= k
                v = 0.0
                for q in range(k):
                    v += (ring[j, q] - m) ** 2
                sig = math.sqrt(v / (k - 1))
            adj_close = c[i] * cur_adj if cur_adj == cur_adj else c[i]
            if not first:
                lr = math.log(adj_close / s[F_LAST_ADJ_CLOSE])
                if lr == lr:
                    pos = int(s[F_RING_POS])
                    ring[j, pos] = lr
                    s[F_RING_POS] = (pos + 1) % SIGMA_WINDOW
                    if k < SIGMA_WINDOW:
                        s[F_RING_N] = k + 1
            # IPO date rank and limits
            rank = -1
            if list_day[j] >= 0 and day >= list_day[j]:
                if new_day:
                    s[F_DATES] += 1.0
                rank = int(s[F_DATES]) - 1 + ipo_offset[j]
            up = np.nan
            down = np.nan
            if price_limits:
                is_st = False
                for q in range(st_lo[j], st_hi[j]):
                    if st_start[q] <= day <= st_end[q]:
                        is_st = True
                frac = limit_fraction(board[j], is_st, ts[i], rank)
                if frac == frac and ref == ref:
                    up = _round_tick(ref * (1.0 + frac), tick)
                    down = _round_tick(ref * (1.0 - frac), tick)
                elif rank == 0 and (board[j] == MAIN or board[j] == CHINEXT) and issue_price[j] > 0:
                    free = (board[j] == CHINEXT and ts[i] >= CHINEXT_REFORM_NS) or (board[j] == MAIN and ts[i] >= MAIN_REG_NS)
                    if not free:
                        up = _round_tick(issue_price[j] * (1.0 + R_IPO_UP), tick)
                        down = _round_tick(issue_price[j] * (1.0 - R_IPO_DOWN), tick)
            if a <= t < b:
                r = t - a
                if fill_mode == 0:
                    f = o[i]
                elif fill_mode == 1:
                    f = c[i]
                else:
                    vw = amount[i] / vol[i] if vol[i] > 0 else np.nan
                    f = vw if vw == vw and vw > 0 else (o[i] + h[i] + low[i] + c[i]) / 4.0
                out_fill[r, j] = f
                out_close[r, j] = c[i]
                out_vol[r, j] = vol[i] if vol[i] == vol[i] else 0.0
                out_up[r, j] = up
                out_down[r, j] = down
                out_sigma[r, j] = sig
                out_ca[r, j] = ca
            s[F_LAST_CLOSE] = c[i]
            s[F_LAST_DAY] = day
            s[F_LAST_ADJ] = cur_adj
            s[F_LAST_ADJ_CLOSE] = adj_close
            i += 1
        rcur[j] = i


R_IPO_UP, R_IPO_DOWN = R.IPO_DAY1_UP, R.IPO_DAY1_DOWN


def st_spans(flags: pd.DataFrame | None, symbols: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ST spans per symbol as (lo, hi) offsets into (start_day_ns, end_day_ns) arrays (inclusive days)."""
    n = len(symbols)
    col = {s: k for k, s in enumerate(symbols)}
    per: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    if flags is not None and len(flags):
        st = flags[flags["flag"].astype(str).str.lower().isin(["st", "*st"])]
        for sym, start, end in zip(st["symbol"], st["start"], st["end"]):
            k = col.get(str(sym))
            if k is None:
                continue
            a = np.iinfo(np.int64).min if pd.isna(start) else pd.Timestamp(start).normalize().value
            b = np.iinfo(np.int64).max if pd.isna(end) else pd.Timestamp(end).normalize().value
            per[k].append((a, b))
    lo, hi = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    starts, ends = [], []
    for k in range(n):
        lo[k] = len(starts)
        for a, b in per[k]:
            starts.append(a)
            ends.append(b)
        hi[k] = len(starts)
    return lo, hi, np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


def listing_info(instruments: pd.DataFrame | None, symbols: list[str],
                 first_day_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(list day ns or -1, IPO date-rank offset, issue price or 0) per symbol.

    When the listing predates the symbol's first bar, business days from the listing to that bar are
    added to the date rank (the data misses them)."""
    n = len(symbols)
    list_day = np.full(n, -1, dtype=np.int64)
    offset = np.zeros(n, dtype=np.int64)
    issue = np.zeros(n)
    dates = R._list_dates(instruments)
    prices = R._issue_prices(instruments)
    for k, sym in enumerate(symbols):
        if sym in prices:
            issue[k] = prices[sym]
        ld = dates.get(sym)
        if ld is None:
            continue
        list_day[k] = ld.value
        if first_day_ns[k] > ld.value:
            first = pd.Timestamp(first_day_ns[k])
            offset[k] = int(np.busday_count(ld.date(), first.date()))
    return list_day, offset, issue
