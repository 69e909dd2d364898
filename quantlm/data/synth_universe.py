"""Who trades when in the synthetic A-share market: symbols, boards, names, listings, ST, suspensions.

Everything here is drawn once, before prices, from its own random generator. Arrays indexed by
session are (T,) and per-stock arrays are (N,); masks over both are (T, N) booleans.

Board rules (docs/SYNTH.md, ../shared/reference/market-rules.md): main board +/-10%, ChiNext +/-10%
before 2020-08-24 and +/-20% from then, STAR +/-20% (opened 2019-07-22), BSE +/-30% (opened
2021-11-15), ST (main board only here) +/-5%. After an IPO: no limit for the first 5 sessions on
STAR, on ChiNext from 2020-08-24 and on the main board from 2023-04-10; BSE has no limit on day 1
only; earlier main-board / ChiNext IPOs were capped at +44% / -36% on day 1 and had normal limits after.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

BOARD_OPEN = {"main": "1990-12-19", "chinext": "2009-10-30", "star": "2019-07-22", "bse": "2021-11-15"}
BOARD_SHARES = {"main": 0.62, "chinext": 0.22, "star": 0.12, "bse": 0.04}
CHINEXT_REFORM = pd.Timestamp("2020-08-24")
MAIN_IPO_REFORM = pd.Timestamp("2023-04-10")

INDUSTRIES = (
    "banking", "real estate", "consumer", "pharmaceuticals", "electronics",
    "semiconductors", "chemicals", "machinery", "utilities", "new energy",
)
# Company-name suffixes per industry (English, as the offline text model reads English best).
INDUSTRY_SUFFIXES = (
    ("Bank", "Securities", "Insurance", "Trust"),
    ("Properties", "Real Estate", "Land Development", "Urban Construction"),
    ("Foods", "Liquor", "Dairy", "Home Appliances", "Retail"),
    ("Pharmaceutical", "Biotech", "Medical Devices", "Health"),
    ("Electronics", "Optoelectronics", "Communications", "Software"),
    ("Microelectronics", "Semiconductor", "Integrated Circuits", "Chip Technology"),
    ("Chemical", "Materials", "Steel", "Nonferrous Metals"),
    ("Machinery", "Heavy Industry", "Equipment", "Precision Engineering"),
    ("Power", "Water", "Gas", "Environmental"),
    ("Auto", "Lithium", "Solar", "New Energy"),
)
# Industry weights per board: STAR / ChiNext lean to technology and health.
_BOARD_INDUSTRY_WEIGHTS = {
    "main": (12, 8, 12, 8, 8, 4, 12, 12, 10, 8),
    "chinext": (2, 1, 6, 14, 16, 10, 8, 14, 4, 10),
    "star": (0, 0, 1, 18, 16, 26, 8, 14, 2, 10),
    "bse": (1, 0, 6, 10, 12, 6, 16, 26, 8, 10),
}
_SYLLABLES = (
    "Hua", "Zhong", "Tian", "Xin", "Jin", "Guo", "Hai", "Dong", "Nan", "Bei", "Long", "Feng", "Heng",
    "Sheng", "Da", "Kang", "Rui", "Tai", "Yuan", "Chang", "Hong", "Ming", "Bao", "Fu", "An", "Xing",
    "Jia", "Wei", "Yang", "Shan", "Lian", "Cheng", "Hui", "Tong", "Yu", "Zhi", "Ke", "Run", "Ding", "Sen",
)


@dataclass
class Universe:
    """Static description of the stocks and their daily status; see module docstring for shapes."""

    sessions: pd.DatetimeIndex  # (T,) session dates
    symbols: np.ndarray  # (N,) codes like 600519.SH
    boards: np.ndarray  # (N,) main / chinext / star / bse
    names: np.ndarray  # (N,) company names
    industry: np.ndarray  # (N,) int index into INDUSTRIES
    list_date: np.ndarray  # (N,) datetime64[ns]
    delist_date: np.ndarray  # (N,) datetime64[ns], NaT if alive (last trading session otherwise)
    ipo_session: np.ndarray  # (N,) int session index of the IPO, -1 if listed before the start
    listed: np.ndarray  # (T, N) listed on that session (list_date <= t <= delist_date)
    suspended: np.ndarray  # (T, N) listed but not trading
    st: np.ndarray  # (T, N) under ST
    st_spans: list[tuple[int, int, int]]  # (stock, first session, last session), inclusive

    @property
    def has_bar(self) -> np.ndarray:
        return self.listed & ~self.suspended


def _sessions_between(start, end) -> pd.DatetimeIndex:
    from quantlm.data.calendars import sessions

    return sessions("cn", start, end)


def _codes(boards: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unique exchange codes with the board's real prefixes (e.g. 600xxx.SH, 300xxx.SZ, 688xxx.SH)."""
    prefixes = {
        "main": ("600", "601", "603", "000", "001", "002"),
        "chinext": ("300", "301"),
        "star": ("688",),
        "bse": ("830", "831", "833", "835", "836", "837", "838", "839", "870", "871", "872", "873"),
    }
    used: set[str] = set()
    out = []
    for board in boards:
        while True:
            prefix = prefixes[board][int(rng.integers(len(prefixes[board])))]
            code = f"{prefix}{int(rng.integers(1, 1000)):03d}"
            exchange = "SH" if prefix[0] == "6" else ("BJ" if board == "bse" else "SZ")
            symbol = f"{code}.{exchange}"
            if symbol not in used:
                used.add(symbol)
                out.append(symbol)
                break
    return np.array(out, dtype=object)


def _names(industry: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unique English company names: two syllables plus an industry word, e.g. 'Huaxin Pharmaceutical'."""
    used: set[str] = set()
    out = []
    for k in industry:
        while True:
            a, b = rng.choice(len(_SYLLABLES), size=2, replace=False)
            suffixes = INDUSTRY_SUFFIXES[int(k)]
            name = f"{_SYLLABLES[a]}{_SYLLABLES[b].lower()} {suffixes[int(rng.integers(len(suffixes)))]}"
            if name not in used:
                used.add(name)
                out.append(name)
                break
    return np.array(out, dtype=object)


def _draw_boards(n: int, start: pd.Timestamp, end: pd.Timestamp, rng: np.random.Generator) -> np.ndarray:
    """Boards by BOARD_SHARES; boards that open after `end` (minus two months) fall back to main."""
    names = list(BOARD_SHARES)
    p = np.array([BOARD_SHARES[b] for b in names])
    boards = np.array([names[i] for i in rng.choice(len(names), size=n, p=p)], dtype=object)
    for board in ("chinext", "star", "bse"):
        if pd.Timestamp(BOARD_OPEN[board]) > end - pd.Timedelta(days=60):
            boards[boards == board] = "main"
    return boards


def _draw_listing(boards, sessions, rng, ipo_share: float) -> tuple[np.ndarray, np.ndarray]:
    """list_date per stock and the session index of its IPO (-1 when listed before the first session)."""
    t = len(sessions)
    start = sessions[0]
    list_date = np.empty(len(boards), dtype="datetime64[ns]")
    ipo = np.full(len(boards), -1, dtype=np.int64)
    last_ipo = max(1, t - 40)  # an IPO leaves at least ~2 months of history
    for i, board in enumerate(boards):
        opened = pd.Timestamp(BOARD_OPEN[board])
        first_ipo = int(np.searchsorted(sessions, opened))
        can_pre = opened < start
        if can_pre and (rng.random() >= ipo_share or first_ipo >= last_ipo):
            lo = max(opened, start - pd.Timedelta(days=365 * 15))
            past = _sessions_between(lo, start - pd.Timedelta(days=1))
            list_date[i] = past[int(rng.integers(len(past)))].to_datetime64() if len(past) else opened
            continue
        first_ipo = max(first_ipo, 1)
        k = int(rng.integers(first_ipo, max(first_ipo + 1, last_ipo)))
        ipo[i] = k
        list_date[i] = sessions[k].to_datetime64()
    return list_date, ipo


def _draw_st_and_delistings(boards, ipo, t, rng, st_share: float, delist_share: float):
    """ST spans (stock, first, last session index) and delisting session per stock (-1 = alive)."""
    n = len(boards)
    spans: list[tuple[int, int, int]] = []
    delist = np.full(n, -1, dtype=np.int64)
    eligible = np.flatnonzero((boards == "main") & (ipo < 0))
    if t < 200 or len(eligible) == 0:
        return spans, delist
    n_delist = int(round(delist_share * n))
    n_st = max(1, int(round(st_share * n))) if st_share > 0 else 0
    chosen = rng.permutation(eligible)
    for j, i in enumerate(chosen[: n_delist + n_st]):
        length = int(rng.integers(60, 300))
        if j < n_delist:  # *ST first, then delisted on the last ST session
            last = int(rng.integers(t // 3 + length, t - 5)) if t // 3 + length < t - 5 else t - 5
            first = max(0, last - length)
            delist[i] = last
        else:
            first = int(rng.integers(0, max(1, t - length)))
            last = min(t - 1, first + length)
        spans.append((int(i), first, last))
    return spans, delist


def _draw_suspensions(has_bar_until: np.ndarray, listed: np.ndarray, ipo: np.ndarray, st: np.ndarray,
                      rng: np.random.Generator, rate_per_year: float) -> np.ndarray:
    """(T, N) suspension mask: runs of 1..60 sessions (geometric, mean ~4), more often while ST."""
    t, n = listed.shape
    out = np.zeros((t, n), dtype=bool)
    for i in range(n):
        live = np.flatnonzero(listed[:, i])
        if len(live) < 30:
            continue
        rate = rate_per_year / 244 * (3.0 if st[:, i].any() else 1.0)
        n_runs = int(rng.poisson(rate * len(live)))
        lo = live[0] + (6 if ipo[i] >= 0 else 1)  # never on the first IPO sessions or the first session
        hi = has_bar_until[i] - 1  # a delisted stock trades on its last session
        for _ in range(n_runs):
            if hi - lo < 2:
                break
            a = int(rng.integers(lo, hi))
            length = min(60, int(rng.geometric(0.25)))
            out[a: min(a + length, hi), i] = True
    return out


def draw_universe(n_symbols: int, start, end, rng: np.random.Generator, ipo_share: float = 0.15,
                  st_share: float = 0.05, delist_share: float = 0.015,
                  suspensions_per_year: float = 0.5) -> Universe:
    """Draw the stocks of a synthetic cn market over the XSHG sessions from `start` to `end` (inclusive)."""
    sessions = _sessions_between(start, end)
    t = len(sessions)
    if t < 60:
        raise ValueError(f"the synthetic market needs at least 60 sessions, {start}..{end} has {t}")
    boards = _draw_boards(n_symbols, sessions[0], sessions[-1], rng)
    industry = np.array([rng.choice(len(INDUSTRIES), p=np.array(w) / sum(w))
                         for w in (_BOARD_INDUSTRY_WEIGHTS[b] for b in boards)], dtype=np.int64)
    symbols = _codes(boards, rng)
    names = _names(industry, rng)
    list_date, ipo = _draw_listing(boards, sessions, rng, ipo_share)
    spans, delist = _draw_st_and_delistings(boards, ipo, t, rng, st_share, delist_share)

    idx = np.arange(t)[:, None]
    first = np.where(ipo >= 0, ipo, 0)[None, :]
    last = np.where(delist >= 0, delist, t - 1)[None, :]
    listed = (idx >= first) & (idx <= last)
    st = np.zeros((t, n_symbols), dtype=bool)
    for i, a, b in spans:
        st[a: b + 1, i] = True
    suspended = _draw_suspensions(last[0], listed, ipo, st, rng, suspensions_per_year)
    delist_date = np.full(n_symbols, np.datetime64("NaT"), dtype="datetime64[ns]")
    delist_date[delist >= 0] = sessions[delist[delist >= 0]].to_numpy()
    order = np.argsort(symbols, kind="stable")  # symbol order, so frames come out sorted
    remap = np.empty_like(order)
    remap[order] = np.arange(len(order))
    return Universe(
        sessions=sessions, symbols=symbols[order], boards=boards[order], names=names[order],
        industry=industry[order], list_date=list_date[order], delist_date=delist_date[order],
        ipo_session=ipo[order], listed=listed[:, order], suspended=suspended[:, order], st=st[:, order],
        st_spans=sorted((int(remap[i]), a, b) for i, a, b in spans),
    )


def limit_bands(u: Universe) -> tuple[np.ndarray, np.ndarray]:
    """(T, N) up and down price-limit fractions; np.inf where there is no limit (early IPO sessions).

    Day-1 caps of the old IPO regime are +0.44 / -0.36 of the offer price.
    """
    t, n = u.listed.shape
    sessions = u.sessions.to_numpy()[:, None]
    base = np.full((t, n), 0.10)
    chinext = (u.boards == "chinext")[None, :]
    base = np.where(chinext & (sessions >= CHINEXT_REFORM.to_datetime64()), 0.20, base)
    base = np.where((u.boards == "star")[None, :], 0.20, base)
    base = np.where((u.boards == "bse")[None, :], 0.30, base)
    base = np.where(u.st, 0.05, base)
    up, down = base.copy(), base.copy()
    for i in np.flatnonzero(u.ipo_session >= 0):
        k = int(u.ipo_session[i])
        board, day = u.boards[i], u.sessions[k]
        if board == "star" or (board == "chinext" and day >= CHINEXT_REFORM) or (
                board == "main" and day >= MAIN_IPO_REFORM):
            days = 5
        elif board == "bse":
            days = 1
        else:
            up[k, i], down[k, i] = 0.44, 0.36
            continue
        # the first `days` trading sessions of the stock (suspensions are never drawn this early)
        up[k: k + days, i] = np.inf
        down[k: k + days, i] = np.inf
    return up, down
