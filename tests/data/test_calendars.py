"""Exchange sessions, decision cut-offs and text visibility."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlm.data import calendars
from quantlm.data.calendars import (
    CalendarRangeError,
    decision_cutoff,
    is_session,
    session_ordinals,
    sessions,
    visible_session,
    visible_sessions,
)

T = pd.Timestamp


def test_cn_sessions_skip_weekends_and_spring_festival():
    s = sessions("cn", "2024-02-05", "2024-02-20")
    assert list(s.strftime("%m-%d")) == ["02-05", "02-06", "02-07", "02-08", "02-19", "02-20"]
    assert s.tz is None and (s == s.normalize()).all()


def test_us_sessions_skip_holidays():
    s = sessions("us", "2024-07-01", "2024-07-08")
    assert T("2024-07-04") not in s and T("2024-07-05") in s and T("2024-07-06") not in s


def test_crypto_trades_every_day():
    s = sessions("crypto", "2024-01-01 13:00", "2024-01-07")
    assert len(s) == 7 and s[0] == T("2024-01-01")


def test_out_of_range_is_a_clear_error():
    with pytest.raises(CalendarRangeError, match=r"outside the cn calendar \(XSHG\)"):
        sessions("cn", "1980-01-01", "2020-01-01")
    with pytest.raises(CalendarRangeError, match="covers"):
        sessions("cn", "2020-01-01", "2099-01-01")
    with pytest.raises(ValueError, match="unknown market"):
        sessions("mars", "2020-01-01", "2020-02-01")


def test_calendar_objects_are_cached():
    assert calendars.exchange_calendar("cn") is calendars.exchange_calendar("cn")


def test_decision_cutoffs():
    assert decision_cutoff("2024-01-02", "cn") == T("2024-01-02 15:00")
    assert decision_cutoff("2024-01-02", "us") == T("2024-01-02 16:00")
    assert decision_cutoff("2024-11-29", "us") == T("2024-11-29 13:00")  # day after Thanksgiving: early close
    assert decision_cutoff("2024-01-06", "crypto") == T("2024-01-07 00:00")
    with pytest.raises(ValueError, match="not a cn session"):
        decision_cutoff("2024-01-06", "cn")


@pytest.mark.parametrize(
    ("published", "market", "session"),
    [
        ("2024-01-02 14:59:59", "cn", "2024-01-02"),  # before the close: same session
        ("2024-01-02 15:00", "cn", "2024-01-03"),  # at the close: next session
        ("2024-01-02 21:30", "cn", "2024-01-03"),
        ("2024-01-05 20:00", "cn", "2024-01-08"),  # Friday evening -> Monday
        ("2024-01-06 10:00", "cn", "2024-01-08"),  # Saturday -> Monday
        ("2024-02-08 16:00", "cn", "2024-02-19"),  # into the Spring Festival holiday
        ("2024-01-02 15:59", "us", "2024-01-02"),
        ("2024-01-02 16:00", "us", "2024-01-03"),
        ("2024-11-29 13:30", "us", "2024-12-02"),  # after an early close
        ("2024-01-06 23:59", "crypto", "2024-01-06"),
        ("2024-01-07 00:00", "crypto", "2024-01-07"),
    ],
)
def test_visible_session(published, market, session):
    assert visible_session(published, market) == T(session)


def test_tz_aware_published_at_is_converted_to_exchange_time():
    # 07:30 UTC = 15:30 in Shanghai, after the close
    assert visible_session(pd.Timestamp("2024-01-02 07:30", tz="UTC"), "cn") == T("2024-01-03")
    assert visible_session(pd.Timestamp("2024-01-02 06:59", tz="UTC"), "cn") == T("2024-01-02")


def test_visible_sessions_matches_scalar_version_and_keeps_nat():
    rng = np.random.default_rng(0)
    minutes = rng.integers(0, 60 * 24 * 400, 500)
    published = pd.Series(T("2023-01-01") + pd.to_timedelta(minutes, unit="min"))
    published.iloc[3] = pd.NaT
    for market in ("cn", "us", "crypto"):
        got = visible_sessions(published, market)
        assert got.dtype == "datetime64[ns]" and pd.isna(got.iloc[3])
        for i in (0, 1, 2, 4, 100, 499):
            assert got.iloc[i] == visible_session(published.iloc[i], market)
            assert decision_cutoff(got.iloc[i], market) > published.iloc[i]
        # and it is the FIRST such session: the previous session's cut-off is not after published_at
        s = pd.DatetimeIndex(got.drop(3))
        prev = sessions(market, "2022-12-01", "2024-03-01")
        pos = np.searchsorted(prev, s) - 1
        prev_cut = [decision_cutoff(prev[p], market) for p in pos[:50]]
        assert all(c <= p for c, p in zip(prev_cut, published.drop(3).iloc[:50], strict=True))


def test_visible_after_last_known_close_is_an_error():
    with pytest.raises(CalendarRangeError, match="after the last close"):
        visible_sessions(pd.Series([T("2026-12-31 15:00")]), "cn")


def test_is_session_and_ordinals():
    d = pd.DatetimeIndex(["2024-01-05", "2024-01-06", "2024-01-08"])
    assert is_session("cn", d).tolist() == [True, False, True]
    o = session_ordinals("cn", d)
    assert o[2] - o[0] == 1 and o[1] == o[2]
    assert np.diff(session_ordinals("crypto", d)).tolist() == [1, 2]
