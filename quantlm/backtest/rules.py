"""Market rules: lots, settlement, price limits, shorting, by market preset (cn, us, crypto).

Units: rates and limits are fractions (0.1 = 10%); quantities are shares (coins for crypto), never
lots; prices are in the instrument's currency. Dates are exchange-local sessions.

China A-share price limits (`limit_fractions`), judged against the previous close:

| board | limit | notes |
|---|---|---|
| main (600/601/603/605 SH, 000/001/002/003 SZ) | +/-10% | ST / *ST: +/-5% (+/-10% from 2025-07-07) |
| ChiNext (300/301) | +/-20% from 2020-08-24, +/-10% before | ST the same as the board |
| STAR (688/689) | +/-20% | |
| BSE (8xxxxx, 4xxxxx, 920xxx) | +/-30% | |

First trading days after an IPO: no limit for the first 5 sessions on ChiNext (since 2020-08-24),
STAR, and the main board (since 2023-04-10); BSE has no limit on day 1. Before those dates the IPO
day-1 bounds were +44% / -36% of the issue price; as the issue price is rarely in the data, day 1 is
unbounded unless the instruments table has an `issue_price` column.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

# Sources of the dated rules:
# - CHINEXT_REFORM: SZSE, ChiNext Market Trading Special Provisions (registration-system reform), first
#   trades under the new rules on 2020-08-24: +/-20% limits and no limit in a new listing's first 5 days.
# - STAR_START: SSE, Special Provisions on STAR Market Trading (2019); first STAR listings 2019-07-22.
# - MAIN_BOARD_REGISTRATION: SSE / SZSE main-board registration-system rules; first main-board
#   registration-system listings traded 2023-04-10 with no limit in their first 5 days.
# - MAIN_ST_10PCT_FROM: SSE / SZSE notices of 2025 raising main-board ST / *ST limits from 5% to 10%,
#   effective 2025-07-07.
CHINEXT_REFORM = pd.Timestamp("2020-08-24")  # ChiNext +/-20%, no limit in the first 5 days
STAR_START = pd.Timestamp("2019-07-22")  # STAR market opened with +/-20% and the 5-day rule
MAIN_BOARD_REGISTRATION = pd.Timestamp("2023-04-10")  # main-board IPOs: no limit in the first 5 days
MAIN_ST_10PCT_FROM = pd.Timestamp("2025-07-07")  # SSE/SZSE main-board ST limit raised from 5% to 10%
IPO_FREE_DAYS = 5
IPO_DAY1_UP, IPO_DAY1_DOWN = 0.44, 0.36  # pre-reform day-1 bounds, relative to the issue price


@dataclass(frozen=True)
class MarketRules:
    """Trading rules of one market.

    lot_size: buy quantities are multiples of this (shares; 100 in cn, 1 in us). 0 = continuous.
    sell_step: partial sells are multiples of this; 0 = continuous.
    odd_lot_sell: a sell may close the whole position even when it is not a multiple of sell_step.
    t_plus: 1 = shares bought on a date are sellable from the next date (cn); 0 = at once.
    price_limits: apply the China board limits (`limit_fractions`).
    price_tick: limit prices are rounded to this (currency), 0.01 in cn.
    allow_short: short selling allowed by default (BacktestConfig.allow_short overrides).
    borrow_fee_rate: annual fee on the market value of short positions (fraction per 365 days).
    board_lots: ((board, minimum shares, step shares), ...): boards whose orders differ from
        `lot_size` / `sell_step`. cn: STAR buys at least 200 shares then 1-share steps (SSE, Special
        Provisions on STAR Market Trading, 2019, art. 15); BSE buys at least 100 shares then 1-share
        steps (Beijing Stock Exchange Trading Rules (trial), 2021, 3.3.5). A sale of part of a position
        follows the same minimum and step; a remainder below the minimum is sold in one order.
    """

    name: str
    lot_size: float = 1.0
    sell_step: float = 1.0
    odd_lot_sell: bool = True
    t_plus: int = 0
    price_limits: bool = False
    price_tick: float = 0.01
    allow_short: bool = False
    borrow_fee_rate: float = 0.0
    currency: str = "USD"
    board_lots: tuple[tuple[str, float, float], ...] = ()

    def with_(self, **changes) -> MarketRules:
        """A copy with some fields changed."""
        return replace(self, **changes)


PRESETS: dict[str, MarketRules] = {
    "cn": MarketRules("cn", lot_size=100, sell_step=100, odd_lot_sell=True, t_plus=1, price_limits=True,
                      price_tick=0.01, allow_short=False, borrow_fee_rate=0.08, currency="CNY",
                      board_lots=(("star", 200.0, 1.0), ("bse", 100.0, 1.0))),
    "us": MarketRules("us", lot_size=1, sell_step=1, t_plus=0, price_limits=False, price_tick=0.01,
                      allow_short=True, borrow_fee_rate=0.005, currency="USD"),
    "crypto": MarketRules("crypto", lot_size=1e-6, sell_step=1e-6, t_plus=0, price_limits=False, price_tick=0.0,
                          allow_short=True, borrow_fee_rate=0.05, currency="USDT"),
}


def market_rules(market: str) -> MarketRules:
    """The preset rules of `market` ('cn', 'us' or 'crypto')."""
    try:
        return PRESETS[market]
    except KeyError:
        raise ValueError(f"unknown market '{market}' (expected one of {', '.join(PRESETS)})") from None


def lot_arrays(rules: MarketRules, boards: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(buy_min, buy_step, sell_min, sell_step) in shares per symbol, from the rules and each symbol's board.

    Default boards: buys are multiples of `lot_size` (so at least one lot); partial sells are multiples
    of `sell_step` with no other minimum. Boards in `rules.board_lots` use their own minimum and step.
    """
    special = {b: (float(m), float(step)) for b, m, step in rules.board_lots}
    n = len(boards)
    buy_min, buy_step = np.full(n, float(rules.lot_size)), np.full(n, float(rules.lot_size))
    sell_min, sell_step = np.zeros(n), np.full(n, float(rules.sell_step))
    for j, board in enumerate(boards):
        if board in special:
            buy_min[j], buy_step[j] = special[board]
            sell_min[j], sell_step[j] = special[board]
    return buy_min, buy_step, sell_min, sell_step


def stock_code(symbol: str) -> str:
    """The 6-digit code inside a China symbol: '600000.SH', 'SH600000', 'sz000001', '600000' -> digits."""
    digits = "".join(ch for ch in str(symbol) if ch.isdigit())
    return digits


# Exchange of a China symbol from its suffix or prefix: 600000.SH, SH600000, sh.600000, 600000.XSHG, ...
_EXCHANGE_ALIASES = {"SH": "SH", "SS": "SH", "XSHG": "SH", "SZ": "SZ", "XSHE": "SZ", "BJ": "BJ"}


def _exchange(symbol: str) -> str | None:
    """'SH', 'SZ' or 'BJ' from a symbol's exchange suffix or prefix; None for a bare code."""
    s = str(symbol).strip().upper()
    head, tail = s[:2], s.rsplit(".", 1)[-1] if "." in s else ""
    if tail in _EXCHANGE_ALIASES:
        return _EXCHANGE_ALIASES[tail]
    if head in ("SH", "SZ", "BJ") and s[2:].lstrip(".").isdigit():
        return head
    return None


def board_from_code(symbol: str) -> str:
    """China board of a symbol from its code: main, chinext, star, bse, index or other.

    600/601/603/605 (SH) and 000/001/002/003 (SZ) -> main; 300/301 -> chinext; 688/689 -> star;
    920xxx, 8xxxxx, 4xxxxx -> bse. Indices (source: /work/shared/reference/market-rules.md, "index
    codes"): 000xxx on the Shanghai exchange (000300.SH CSI 300, 000001.SH SSE Composite, 000905.SH)
    and 399xxx (Shenzhen) -> index. The exchange suffix decides: 000001.SZ is a stock (Ping An
    Bank), 000001.SH an index; a bare 000xxx code is taken as a Shenzhen stock (main). Exchange
    spellings: .SH/.SZ/.BJ, .SS (Yahoo), .XSHG/.XSHE (JoinQuant, RiceQuant), SH/SZ/BJ prefixes
    (Qlib, Baostock's sh.600000). Anything that is not a 6-digit code -> 'other'.
    """
    code = stock_code(symbol)
    if len(code) != 6:
        return "other"
    if code.startswith("399") or (code.startswith("000") and _exchange(symbol) == "SH"):
        return "index"
    if code[:3] in ("600", "601", "603", "605", "000", "001", "002", "003"):
        return "main"
    if code[:3] in ("300", "301"):
        return "chinext"
    if code[:3] in ("688", "689"):
        return "star"
    if code.startswith("920") or code[0] in ("8", "4"):
        return "bse"
    return "other"


def board_limit(board: str, date: pd.Timestamp, is_st: bool = False) -> float:
    """Daily price-limit fraction of a listed (not newly listed) stock; NaN = no limit."""
    if board == "main":
        if is_st:
            return 0.10 if date >= MAIN_ST_10PCT_FROM else 0.05
        return 0.10
    if board == "chinext":
        return 0.20 if date >= CHINEXT_REFORM else (0.05 if is_st else 0.10)
    if board == "star":
        return 0.20
    if board == "bse":
        return 0.30
    return float("nan")


def ipo_limit_free(board: str, date: pd.Timestamp, day_index: int) -> bool:
    """True if `day_index` (0 = listing day) falls in the no-limit window after an IPO on `board`."""
    if day_index < 0:
        return False
    if board == "chinext" and date >= CHINEXT_REFORM or board == "star" or board == "main" and date >= MAIN_BOARD_REGISTRATION:
        return day_index < IPO_FREE_DAYS
    if board == "bse":
        return day_index == 0
    return False


def round_to_tick(price, tick: float = 0.01):
    """Round half up to the price tick (limit prices: round(prev_close * (1 +/- limit), 2)).

    A relative 1e-9 nudge keeps 11.055 (stored as 11.054999...) rounding up as the exchange does.
    """
    if tick <= 0:
        return price
    x = np.asarray(price, dtype="float64") / tick
    return np.floor(x + 0.5 + 1e-9 * np.abs(x)) * tick


def limit_prices(prev_close, up_fraction, down_fraction, tick: float = 0.01):
    """(limit_up, limit_down) prices rounded to the tick; NaN fractions give NaN (no limit)."""
    prev_close = np.asarray(prev_close, dtype="float64")
    return (round_to_tick(prev_close * (1 + np.asarray(up_fraction)), tick),
            round_to_tick(prev_close * (1 - np.asarray(down_fraction)), tick))


def st_mask(flags: pd.DataFrame | None, symbols: list[str], sessions: pd.DatetimeIndex) -> np.ndarray:
    """Boolean [n_sessions, n_symbols]: the symbol is ST / *ST on that session (flags spans, inclusive)."""
    mask = np.zeros((len(sessions), len(symbols)), dtype=bool)
    if flags is None or len(flags) == 0:
        return mask
    col = {s: j for j, s in enumerate(symbols)}
    st = flags[flags["flag"].astype(str).str.lower().isin(["st", "*st"])]
    for sym, start, end in zip(st["symbol"], st["start"], st["end"]):
        j = col.get(sym)
        if j is None:
            continue
        a = 0 if pd.isna(start) else sessions.searchsorted(pd.Timestamp(start), "left")
        b = len(sessions) if pd.isna(end) else sessions.searchsorted(pd.Timestamp(end), "right")
        mask[a:b, j] = True
    return mask


def symbol_boards(symbols: list[str], instruments: pd.DataFrame | None) -> list[str]:
    """Board per symbol: the instruments table's `board` where given, else `board_from_code`."""
    given: dict[str, str] = {}
    if instruments is not None and len(instruments) and "board" in instruments.columns:
        for sym, board in zip(instruments["symbol"], instruments["board"]):
            if isinstance(board, str) and board:
                given[str(sym)] = board
    return [given.get(s) or board_from_code(s) for s in symbols]


def limit_fractions(symbols: list[str], sessions: pd.DatetimeIndex, has_bar: np.ndarray,
                    instruments: pd.DataFrame | None = None, flags: pd.DataFrame | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """China price-limit fractions (up, down), each [n_sessions, n_symbols]; NaN = no limit that day.

    `has_bar[t, j]` marks sessions on which symbol j traded (the IPO day count uses them). The IPO
    window needs `list_date` in `instruments`; without it a symbol is treated as long listed.
    """
    boards = symbol_boards(symbols, instruments)
    st = st_mask(flags, symbols, sessions)
    n_t, n = len(sessions), len(symbols)
    up = np.full((n_t, n), np.nan)
    # Board limits depend only on (board, st, date regime): evaluate per distinct date regime.
    breaks = [CHINEXT_REFORM, MAIN_ST_10PCT_FROM]
    cuts = [0, *[int(sessions.searchsorted(b)) for b in breaks], n_t]
    for a, b in zip(cuts[:-1], cuts[1:]):
        if a >= b:
            continue
        date = sessions[a]
        for j, board in enumerate(boards):
            normal, st_limit = board_limit(board, date, False), board_limit(board, date, True)
            up[a:b, j] = np.where(st[a:b, j], st_limit, normal)
    down = up.copy()
    list_dates = _list_dates(instruments)
    days = sessions.normalize()
    for j, sym in enumerate(symbols):
        ld = list_dates.get(sym)
        if ld is None or ld > sessions[-1]:
            continue
        day_index = _trading_day_index(days, has_bar[:, j], ld)
        near = np.flatnonzero((day_index >= 0) & (day_index < IPO_FREE_DAYS))
        for t in near:
            if ipo_limit_free(boards[j], sessions[t], int(day_index[t])):
                up[t, j] = down[t, j] = np.nan
            elif day_index[t] == 0 and boards[j] in ("main", "chinext"):
                up[t, j] = down[t, j] = np.nan  # day-1 bounds are set on the issue price: see limit_price_arrays
    return up, down


def limit_price_arrays(symbols: list[str], sessions: pd.DatetimeIndex, has_bar: np.ndarray, prev_close: np.ndarray,
                       instruments: pd.DataFrame | None = None, flags: pd.DataFrame | None = None,
                       tick: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Limit-up and limit-down prices [n_sessions, n_symbols] (currency); NaN = no limit that session.

    `prev_close` is the reference price (previous close, ex-rights adjusted by the caller). On a
    pre-reform IPO day 1 the bounds are +44% / -36% of `issue_price` when the instruments table has it.
    """
    up_f, down_f = limit_fractions(symbols, sessions, has_bar, instruments, flags)
    with np.errstate(invalid="ignore"):
        up, down = limit_prices(prev_close, up_f, down_f, tick)
    issue = _issue_prices(instruments)
    list_dates = _list_dates(instruments)
    boards = symbol_boards(symbols, instruments)
    days = sessions.normalize()
    for j, sym in enumerate(symbols):
        if sym not in issue or sym not in list_dates or boards[j] not in ("main", "chinext"):
            continue
        day_index = _trading_day_index(days, has_bar[:, j], list_dates[sym])
        for t in np.flatnonzero(day_index == 0):
            if not ipo_limit_free(boards[j], sessions[t], 0):
                up[t, j], down[t, j] = day1_bounds(issue[sym], tick)
    return up, down


def _list_dates(instruments: pd.DataFrame | None) -> dict[str, pd.Timestamp]:
    if instruments is None or len(instruments) == 0 or "list_date" not in instruments.columns:
        return {}
    out = {}
    for sym, d in zip(instruments["symbol"], instruments["list_date"]):
        if pd.notna(d):
            out[str(sym)] = pd.Timestamp(d).normalize()
    return out


def _issue_prices(instruments: pd.DataFrame | None) -> dict[str, float]:
    if instruments is None or "issue_price" not in getattr(instruments, "columns", []):
        return {}
    return {str(s): float(p) for s, p in zip(instruments["symbol"], instruments["issue_price"]) if pd.notna(p) and p > 0}


def _trading_day_index(days: pd.DatetimeIndex, has_bar: np.ndarray, list_date: pd.Timestamp) -> np.ndarray:
    """0-based count of the symbol's trading sessions since `list_date` (-1 before listing); `days` are
    the sessions' dates. When the listing predates the data, business days from the listing are added.
    """
    first_of_date = np.ones(len(days), dtype=bool)
    first_of_date[1:] = days[1:] != days[:-1]
    # a date counts once, however many bars it holds (intraday data): the window is in sessions
    traded = pd.Series(has_bar & (days >= list_date)).groupby(np.cumsum(first_of_date)).transform("max").to_numpy()
    counted = traded & first_of_date
    idx = np.cumsum(counted) - 1
    idx = np.where(days >= list_date, idx, -1)
    if len(days) and list_date < days[0]:
        offset = int(np.busday_count(list_date.date(), days[0].date()))
        idx = np.where(idx >= 0, idx + offset, idx)
    return idx


def day1_bounds(issue_price: float, tick: float = 0.01) -> tuple[float, float]:
    """Pre-reform IPO day-1 price bounds: +44% / -36% of the issue price, on the tick."""
    return (float(round_to_tick(issue_price * (1 + IPO_DAY1_UP), tick)),
            float(round_to_tick(issue_price * (1 - IPO_DAY1_DOWN), tick)))
