"""Market rules: boards, price limits by board and date, IPO windows, ST, limit-price rounding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlm.backtest.rules import (
    board_from_code,
    board_limit,
    ipo_limit_free,
    limit_fractions,
    limit_price_arrays,
    limit_prices,
    market_rules,
    round_to_tick,
    st_mask,
)


@pytest.mark.parametrize("symbol,board", [
    ("600000.SH", "main"), ("601318.SH", "main"), ("603986.SH", "main"), ("605499.SH", "main"),
    ("000001.SZ", "main"), ("001979.SZ", "main"), ("002594.SZ", "main"), ("003816.SZ", "main"),
    ("300750.SZ", "chinext"), ("301001.SZ", "chinext"), ("SZ300750", "chinext"), ("688981.SH", "star"),
    ("689009.SH", "star"), ("830799.BJ", "bse"), ("430047.BJ", "bse"), ("920002.BJ", "bse"), ("AAPL", "other"),
])
def test_board_from_code(symbol, board):
    assert board_from_code(symbol) == board


@pytest.mark.parametrize("symbol,board", [
    ("000300.SH", "index"), ("000001.SH", "index"), ("000905.SH", "index"), ("399001.SZ", "index"),
    ("399006", "index"), ("SH000300", "index"), ("sh.000300", "index"), ("000300.XSHG", "index"),
    ("000001.SZ", "main"), ("000001.XSHE", "main"), ("SZ000001", "main"), ("000001", "main"),
    ("600000.SH", "main"), ("688001.SH", "star"), ("430047.BJ", "bse"),
])
def test_board_from_code_index_codes_by_exchange(symbol, board):
    """000xxx on Shanghai and 399xxx are indices; 000001.SZ is a stock: the exchange suffix decides."""
    assert board_from_code(symbol) == board


def test_index_symbol_gets_no_price_limit():
    sessions = pd.DatetimeIndex(["2024-01-02", "2024-01-03"])
    up, down = limit_fractions(["000300.SH", "000001.SZ"], sessions, np.ones((2, 2), dtype=bool))
    assert np.isnan(up[:, 0]).all() and np.isnan(down[:, 0]).all()
    assert (up[:, 1] == 0.10).all()


def test_board_limits_by_date_and_st():
    before, after = pd.Timestamp("2020-08-21"), pd.Timestamp("2020-08-24")
    assert board_limit("main", after) == 0.10
    assert board_limit("main", after, is_st=True) == 0.05
    assert board_limit("main", pd.Timestamp("2025-07-07"), is_st=True) == 0.10
    assert board_limit("chinext", before) == 0.10
    assert board_limit("chinext", after) == 0.20
    assert board_limit("chinext", after, is_st=True) == 0.20
    assert board_limit("star", before) == 0.20
    assert board_limit("bse", after) == 0.30
    assert np.isnan(board_limit("index", after))


def test_ipo_windows():
    assert ipo_limit_free("chinext", pd.Timestamp("2021-01-04"), 4)
    assert not ipo_limit_free("chinext", pd.Timestamp("2021-01-04"), 5)
    assert not ipo_limit_free("chinext", pd.Timestamp("2020-08-21"), 1)
    assert ipo_limit_free("star", pd.Timestamp("2019-07-22"), 0)
    assert ipo_limit_free("main", pd.Timestamp("2023-04-10"), 3)
    assert not ipo_limit_free("main", pd.Timestamp("2023-04-07"), 0)
    assert ipo_limit_free("bse", pd.Timestamp("2023-04-07"), 0) and not ipo_limit_free("bse", pd.Timestamp("2023-04-07"), 1)


def test_limit_price_rounding_half_up():
    up, down = limit_prices(10.05, 0.10, 0.10)
    assert float(up) == pytest.approx(11.06) and float(down) == pytest.approx(9.05)
    up, down = limit_prices(3.33, 0.05, 0.05)
    assert float(up) == pytest.approx(3.50) and float(down) == pytest.approx(3.16)


@settings(deadline=None)
@given(st.floats(0.5, 500.0), st.sampled_from([0.05, 0.10, 0.20, 0.30]))
def test_limit_prices_within_half_tick(prev_close, limit):
    up, down = limit_prices(prev_close, limit, limit)
    assert abs(float(up) - prev_close * (1 + limit)) <= 0.005 + 1e-9
    assert abs(float(down) - prev_close * (1 - limit)) <= 0.005 + 1e-9
    assert float(round_to_tick(up)) == pytest.approx(float(up))


def test_st_mask_and_chinext_switch():
    sessions = pd.bdate_range("2020-08-19", periods=6)
    flags = pd.DataFrame({"symbol": ["600001.SH"], "flag": ["st"], "start": [sessions[1]], "end": [sessions[2]]})
    mask = st_mask(flags, ["600001.SH", "300001.SZ"], sessions)
    assert mask[:, 0].tolist() == [False, True, True, False, False, False] and not mask[:, 1].any()
    up, down = limit_fractions(["600001.SH", "300001.SZ"], sessions, np.ones((6, 2), bool), flags=flags)
    assert up[:, 0].tolist() == [0.10, 0.05, 0.05, 0.10, 0.10, 0.10]
    assert up[:, 1].tolist() == [0.10, 0.10, 0.10, 0.20, 0.20, 0.20]  # 2020-08-24 is the 4th session
    assert (up == down).all()


def test_ipo_sessions_have_no_limit_and_old_main_board_day1_uses_issue_price():
    sessions = pd.bdate_range("2021-03-01", periods=8)
    has_bar = np.ones((8, 2), bool)
    has_bar[:2, :] = False  # listed on the third session
    inst = pd.DataFrame({"symbol": ["300999.SZ", "600999.SH"], "board": ["chinext", "main"],
                         "list_date": [sessions[2], sessions[2]], "issue_price": [np.nan, 10.0]})
    up, _ = limit_fractions(["300999.SZ", "600999.SH"], sessions, has_bar, instruments=inst)
    assert np.isnan(up[2:7, 0]).all() and up[7, 0] == 0.20
    assert np.isnan(up[2, 1]) and (up[3:, 1] == 0.10).all()
    prev = np.full((8, 2), 12.0)
    lu, ld = limit_price_arrays(["300999.SZ", "600999.SH"], sessions, has_bar, prev, instruments=inst)
    assert lu[2, 1] == pytest.approx(14.40) and ld[2, 1] == pytest.approx(6.40)
    assert lu[3, 1] == pytest.approx(13.20)


def test_presets():
    cn, us = market_rules("cn"), market_rules("us")
    assert cn.lot_size == 100 and cn.t_plus == 1 and cn.price_limits and not cn.allow_short
    assert us.lot_size == 1 and us.t_plus == 0 and us.allow_short and us.borrow_fee_rate > 0
    with pytest.raises(ValueError, match="unknown market"):
        market_rules("mars")
