"""Exchange sessions and decision cut-offs (exchange_calendars under the hood).

Conventions (see docs/ARCHITECTURE.md, "Timing conventions"):

- A **session** is a tz-naive midnight Timestamp (the trading date), as daily bars are dated.
- A session's **decision cut-off** is its close, as a tz-naive exchange-local Timestamp: cn (XSHG)
  15:00 Asia/Shanghai, us (XNYS) 16:00 America/New_York (13:00 on the exchange's early-close days,
  taken from the calendar), crypto the end of the UTC day (next midnight). Crypto trades every day.
- A text (or any event) published at `published_at` (tz-naive exchange-local; tz-aware values are
  converted to the exchange's zone) is **visible at** the first session whose cut-off is strictly
  after it: published before t's close -> t; at or after t's close -> the next session; on a
  weekend or holiday -> the next session.

Calendar objects are built once per market over the widest range the library supports
(`CALENDAR_BOUNDS`), then cached; asking for dates outside that range raises a clear ValueError.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd

from quantlm.data.schema import check_market

EXCHANGES = {"cn": "XSHG", "us": "XNYS"}
TIMEZONES = {"cn": "Asia/Shanghai", "us": "America/New_York", "crypto": "UTC"}
# Range each calendar is built over, clamped to exchange_calendars' own bounds (XSHG's holidays are
# hard-coded, so it ends with the last year the library knows).
CALENDAR_BOUNDS = {"cn": ("1990-12-03", "2030-12-31"), "us": ("1950-01-01", "2050-12-31"),
                   "crypto": ("2009-01-03", "2100-12-31")}
_DAY_NS = 86_400 * 10**9


class CalendarRangeError(ValueError):
    """A date outside the range a market's calendar covers."""

    user_facing = True


@cache
def exchange_calendar(market: str):
    """The cached `exchange_calendars.ExchangeCalendar` of `market` ('cn' or 'us')."""
    import exchange_calendars as xcals

    check_market(market)
    if market not in EXCHANGES:
        raise ValueError(f"market '{market}' has no exchange calendar (crypto trades every calendar day)")
    cls = type(xcals.get_calendar(EXCHANGES[market]))
    start, end = (pd.Timestamp(x) for x in CALENDAR_BOUNDS[market])
    if cls.bound_min() is not None:
        start = max(start, cls.bound_min())
    if cls.bound_max() is not None:
        end = min(end, cls.bound_max())
    return xcals.get_calendar(EXCHANGES[market], start=start, end=end)


def calendar_range(market: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First and last session the `market` calendar covers (inclusive)."""
    check_market(market)
    if market == "crypto":
        return tuple(pd.Timestamp(x) for x in CALENDAR_BOUNDS["crypto"])  # type: ignore[return-value]
    cal = exchange_calendar(market)
    return cal.first_session, cal.last_session


@cache
def _session_table(market: str) -> tuple[np.ndarray, np.ndarray]:
    """All sessions of a cn/us calendar and their local-naive close, as int64 nanoseconds."""
    cal = exchange_calendar(market)
    closes = cal.closes.dt.tz_convert(TIMEZONES[market]).dt.tz_localize(None)
    return cal.sessions.as_unit("ns").asi8.copy(), closes.to_numpy(dtype="datetime64[ns]").astype("int64")


def _check_range(market: str, ts: pd.Timestamp, what: str) -> None:
    first, last = calendar_range(market)
    if not first <= ts.normalize() <= last:
        name = EXCHANGES.get(market, "every day")
        raise CalendarRangeError(
            f"{what} {ts} is outside the {market} calendar ({name}), which covers "
            f"{first.date()} .. {last.date()}"
        )


def _naive(ts, market: str) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    if t.tz is not None:
        t = t.tz_convert(TIMEZONES[market]).tz_localize(None)
    return t


def sessions(market: str, start, end) -> pd.DatetimeIndex:
    """Sessions of `market` with start <= session <= end (dates; times are ignored), tz-naive midnight.

    Raises CalendarRangeError when start or end lies outside the calendar's range.
    """
    check_market(market)
    start_ts, end_ts = _naive(start, market).normalize(), _naive(end, market).normalize()
    _check_range(market, start_ts, "start")
    _check_range(market, end_ts, "end")
    if market == "crypto":
        return pd.date_range(start_ts, end_ts, freq="D", unit="ns")
    all_sessions, _ = _session_table(market)
    lo, hi = np.searchsorted(all_sessions, [start_ts.value, end_ts.value + 1])
    return pd.DatetimeIndex(all_sessions[lo:hi].astype("datetime64[ns]"))


def is_session(market: str, dates: pd.DatetimeIndex | pd.Series) -> np.ndarray:
    """Boolean mask: which (midnight) dates are sessions of `market` (dates outside the calendar: False)."""
    check_market(market)
    d = pd.DatetimeIndex(dates).as_unit("ns").normalize().asi8
    if market == "crypto":
        return np.ones(len(d), dtype=bool)
    all_sessions, _ = _session_table(market)
    i = np.clip(np.searchsorted(all_sessions, d), 0, len(all_sessions) - 1)
    return all_sessions[i] == d


def decision_cutoff(session, market: str) -> pd.Timestamp:
    """The decision cut-off (close) of `session`, tz-naive exchange-local; crypto: next midnight UTC."""
    check_market(market)
    s = _naive(session, market)
    if s != s.normalize():
        raise ValueError(f"a session is a date at midnight, got {s}")
    _check_range(market, s, "session")
    if market == "crypto":
        return s + pd.Timedelta(days=1)
    all_sessions, closes = _session_table(market)
    i = int(np.searchsorted(all_sessions, s.value))
    if i >= len(all_sessions) or all_sessions[i] != s.value:
        raise ValueError(f"{s.date()} is not a {market} session ({EXCHANGES[market]})")
    return pd.Timestamp(int(closes[i]))


def _visible_ns(published_ns: np.ndarray, market: str) -> np.ndarray:
    """Visible session (int64 ns, midnight) of each published time (int64 ns, local naive)."""
    if market == "crypto":
        return published_ns - published_ns % _DAY_NS
    all_sessions, closes = _session_table(market)
    i = np.searchsorted(closes, published_ns, side="right")  # first close strictly after
    if (i >= len(closes)).any():
        bad = pd.Timestamp(int(published_ns[np.argmax(i >= len(closes))]))
        raise CalendarRangeError(
            f"published_at {bad} is after the last close the {market} calendar ({EXCHANGES[market]}) "
            f"knows ({pd.Timestamp(int(closes[-1]))})"
        )
    return all_sessions[i]


def visible_session(published_at, market: str) -> pd.Timestamp:
    """The first session of `market` whose decision cut-off is strictly after `published_at`."""
    check_market(market)
    t = _naive(published_at, market)
    if pd.isna(t):
        raise ValueError("published_at is missing (NaT)")
    _check_range(market, t, "published_at")
    return pd.Timestamp(int(_visible_ns(np.array([t.value], dtype="int64"), market)[0]))


def visible_sessions(published_at: pd.Series, market: str) -> pd.Series:
    """Vectorised `visible_session`: a datetime64[ns] Series on the same index (NaT stays NaT)."""
    check_market(market)
    p = pd.Series(published_at)
    if not pd.api.types.is_datetime64_any_dtype(p):
        p = pd.to_datetime(p, format="mixed")
    if getattr(p.dt, "tz", None) is not None:
        p = p.dt.tz_convert(TIMEZONES[market]).dt.tz_localize(None)
    values = p.to_numpy(dtype="datetime64[ns]").astype("int64")
    ok = ~p.isna().to_numpy()
    out = np.full(len(p), np.iinfo("int64").min, dtype="int64")  # NaT
    if ok.any():
        lo, hi = values[ok].min(), values[ok].max()
        for value, what in ((lo, "earliest"), (hi, "latest")):
            _check_range(market, pd.Timestamp(int(value)), f"{what} published_at")
        out[ok] = _visible_ns(values[ok], market)
    return pd.Series(out.astype("datetime64[ns]"), index=p.index, name="session")


def session_ordinals(market: str, dates: pd.DatetimeIndex | pd.Series) -> np.ndarray:
    """Position of each session in the market's full calendar (int64), for counting sessions apart.

    Dates that are not sessions get the ordinal of the next session.
    """
    check_market(market)
    d = pd.DatetimeIndex(dates).as_unit("ns").normalize().asi8
    if market == "crypto":
        return d // _DAY_NS
    all_sessions, _ = _session_table(market)
    return np.searchsorted(all_sessions, d).astype("int64")


__all__ = [
    "CalendarRangeError",
    "EXCHANGES",
    "calendar_range",
    "decision_cutoff",
    "exchange_calendar",
    "is_session",
    "session_ordinals",
    "sessions",
    "visible_session",
    "visible_sessions",
]
