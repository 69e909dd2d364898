"""The live risk manager: each rule at its boundary, trading states, pauses, counters, persistence."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from pydantic import ValidationError

from quantlm.live.risk import RiskConfig, RiskManager, is_reducing
from quantlm.live.types import AccountView, MarketView, Order, TradingState

T0 = pd.Timestamp("2024-03-04 09:30:00")
EQUITY = 100_000_000.0  # large, so that position / turnover rules stay out of the way unless tested


def only(**kw) -> RiskConfig:
    """Every rule off except the given ones."""
    return RiskConfig.off().model_copy(update={"check_validity": True, **kw})


def acct(pos: dict | None = None, equity: float = EQUITY, traded: float = 0.0) -> AccountView:
    return AccountView(cash=equity, equity=equity, positions=pos or {}, traded_today=traded)


def mkt(last: float = 10.0, prev: float = 10.0) -> MarketView:
    return MarketView(last_price=last, prev_close=prev)


_n = iter(range(10**9))


def order(side: str = "buy", shares: float = 0.0, value: float = 0.0, symbol: str = "600000.SH",
          limit: float = math.nan, cid: str | None = None) -> Order:
    return Order(cid or f"o{next(_n)}", symbol, side, shares=shares, value=value, limit_price=limit)


def decide(rm: RiskManager, o: Order, m: MarketView | None = None, a: AccountView | None = None,
           now: pd.Timestamp = T0, bench: MarketView | None = None):
    return rm.check(o, m or mkt(), a or acct(), now, bench)


# -- review ------------------------------------------------------------------------------------
def test_review_holds_at_threshold_accepts_just_below():
    rm = RiskManager(RiskConfig())  # defaults: review at 1,000,000, hard cap 5,000,000
    a, m = acct(), mkt(100.0, 100.0)  # at 10 CNY the 50,000-share cap (500,000) would come first
    ok = decide(rm, order(value=999_999.99), m=m, a=a)
    assert ok.action == "accept", ok
    held = decide(rm, order(value=1_000_000.0), m=m, a=a)
    assert (held.action, held.rule) == ("hold", "review")
    assert "1,000,000 >= review threshold 1,000,000" in held.reason
    # shares-sized: 100,000 shares x 10 = 1,000,000 -> held (with share limit off)
    rm2 = RiskManager(only(review_threshold=1_000_000.0))
    assert decide(rm2, order(side="sell", shares=100_000), a=acct({"600000.SH": 200_000})).action == "hold"
    assert decide(rm2, order(side="sell", shares=99_900), a=acct({"600000.SH": 200_000})).action == "accept"


def test_hard_value_cap_rejects_above_and_must_exceed_review():
    rm = RiskManager(only(max_order_value=5_000_000.0))
    assert decide(rm, order(value=5_000_000.0)).accepted
    d = decide(rm, order(value=5_000_000.01))
    assert (d.action, d.rule) == ("reject", "order_value")
    with pytest.raises(ValidationError, match="above review_threshold"):
        RiskConfig(max_order_value=1_000_000.0)
    with pytest.raises(ValidationError, match="extra"):
        RiskConfig(review_treshold=5)  # a typo in YAML is an error
    assert RiskConfig(max_order_value=1_000_000.0, review_threshold=None).max_order_value == 1_000_000.0


# -- trading states ----------------------------------------------------------------------------
def test_reducing_lets_a_sell_through_and_blocks_a_buy():
    rm = RiskManager(only())
    rm.set_state(TradingState.REDUCING)
    a = acct({"600000.SH": 1000, "000001.SZ": -500})
    assert decide(rm, order(side="sell", shares=1000), a=a).accepted
    assert decide(rm, order(side="cover", shares=500, symbol="000001.SZ"), a=a).accepted
    for o in (order(value=1000), order(side="sell", shares=1001), order(side="short", value=100),
              order(side="sell", shares=100, symbol="000001.SZ")):
        d = decide(rm, o, a=a)
        assert (d.action, d.rule) == ("reject", "reducing"), o
    # an active sell of 600 leaves room for 400 more
    rm.on_submitted(order(side="sell", shares=600), T0)
    assert decide(rm, order(side="sell", shares=400), a=a).accepted
    assert decide(rm, order(side="sell", shares=500), a=a).rule == "reducing"


def test_is_reducing_helper():
    assert is_reducing(order(side="sell", shares=100), 100)
    assert not is_reducing(order(side="sell", shares=101), 100)
    assert is_reducing(order(side="cover", shares=50), -100)
    assert not is_reducing(order(side="cover", shares=50), 100)
    assert not is_reducing(order(side="buy", shares=50), -100)
    assert not is_reducing(order(side="sell", value=1000), 1000)  # value-sized, no price
    assert is_reducing(order(side="sell", value=1000), 1000, price=10.0)


def test_halted_blocks_everything_and_kill_returns_open_ids():
    rm = RiskManager(only())
    a1, a2 = order(value=10_000), order(side="sell", shares=100)
    rm.on_submitted(a1, T0)
    rm.on_submitted(a2, T0)
    rm.on_order_done(a1)
    assert rm.kill(T0) == [a2.client_id]
    assert rm.state == TradingState.HALTED
    for o in (order(value=10), order(side="sell", shares=100)):
        d = decide(rm, o, a=acct({"600000.SH": 1000}))
        assert (d.action, d.rule) == ("reject", "halted")
    assert any(e["kind"] == "state" for e in rm.drain_events())


def test_state_round_trips_through_json():
    rm = RiskManager(RiskConfig())
    rm.new_session("2024-03-04", start_equity=1e7)
    o = order(value=50_000, cid="keep")
    assert decide(rm, o, a=acct(equity=1e7)).accepted
    rm.on_submitted(o, T0, price=10.0)
    rm.on_fill(o, 1000, 10.0, T0)
    rm.on_cancel(order(cid="c1"), T0)
    decide(rm, order(value=10, symbol="X"), m=mkt(10.6, 10.0))  # pauses X
    rm.kill(T0)
    d = json.loads(json.dumps(rm.state_dict()))
    rm2 = RiskManager(RiskConfig())
    rm2.load_state_dict(d)
    assert rm2.state == TradingState.HALTED and rm2.state_dict() == rm.state_dict()
    assert rm2.paused("X") and list(rm2.active) == ["keep"] and rm2.daily_trades == 1
    assert rm2.active["keep"].filled_value == 10_000.0


# -- pauses ------------------------------------------------------------------------------------
def test_pause_on_a_5pct_move_and_automatic_resume_below_half():
    rm = RiskManager(only(pause_move=0.05))
    a = acct({"600000.SH": 1000})
    assert decide(rm, order(value=1000), m=mkt(10.49, 10.0), a=a).accepted  # 4.9%
    d = decide(rm, order(value=1000), m=mkt(9.5, 10.0), a=a)  # -5.0%
    assert (d.action, d.rule) == ("reject", "pause_move") and "5.00%" in d.reason
    assert decide(rm, order(side="sell", shares=500), m=mkt(9.5, 10.0), a=a).accepted  # exits go through
    # hysteresis: still paused at 3%, resumes below 2.5%
    assert decide(rm, order(value=1000), m=mkt(10.3, 10.0), a=a).rule == "pause_move"
    assert decide(rm, order(value=1000), m=mkt(10.24, 10.0), a=a).accepted
    kinds = [e["kind"] for e in rm.drain_events()]
    assert kinds == ["pause", "resume"]
    rm2 = RiskManager(only(pause_move=0.05, pause_allows_reducing=False))
    assert decide(rm2, order(side="sell", shares=500), m=mkt(9.5, 10.0), a=a).rule == "pause_move"


def test_manual_resume_and_new_session_clear_pauses():
    rm = RiskManager(only(pause_move=0.05, resume_move=0.0))  # no automatic resume
    assert decide(rm, order(value=1), m=mkt(10.6, 10.0)).rule == "pause_move"
    assert decide(rm, order(value=1), m=mkt(10.0, 10.0)).rule == "pause_move"  # stays paused
    rm.resume("600000.SH")
    assert decide(rm, order(value=1), m=mkt(10.6, 10.0)).accepted  # overridden for the session
    rm.new_session("2024-03-05")
    assert decide(rm, order(value=1), m=mkt(10.6, 10.0)).rule == "pause_move"
    rm.new_session("2024-03-06")
    assert decide(rm, order(value=1), m=mkt(10.1, 10.0)).accepted


def test_market_pause_via_the_benchmark():
    rm = RiskManager(only(market_pause_move=0.05))
    a = acct({"600000.SH": 1000})
    assert decide(rm, order(value=1000), bench=mkt(3810.0, 4000.0), a=a).accepted  # -4.75%
    d = decide(rm, order(value=1000, symbol="000001.SZ"), bench=mkt(3800.0, 4000.0), a=a)  # -5%
    assert (d.action, d.rule) == ("reject", "market_pause")
    assert decide(rm, order(side="sell", shares=1000), bench=mkt(3800.0, 4000.0), a=a).accepted
    assert decide(rm, order(value=1000), a=a).rule == "market_pause"  # latch holds without a benchmark
    rm.resume()
    assert decide(rm, order(value=1000), bench=mkt(3800.0, 4000.0), a=a).accepted


# -- vn.py-style limits ------------------------------------------------------------------------
def test_price_collar():
    rm = RiskManager(only(price_collar=0.05))
    assert decide(rm, order(value=1000, limit=10.5)).accepted
    assert decide(rm, order(value=1000, limit=9.5)).accepted
    d = decide(rm, order(value=1000, limit=10.51))
    assert (d.action, d.rule) == ("reject", "price_collar")
    assert decide(rm, order(value=1000)).accepted  # market order: no limit price


def test_order_shares_limit():
    rm = RiskManager(only(max_order_shares=50_000))
    a = acct({"600000.SH": 100_000})
    assert decide(rm, order(side="sell", shares=50_000), a=a).accepted
    assert decide(rm, order(side="sell", shares=50_100), a=a).rule == "order_shares"
    assert decide(rm, order(value=500_000.0)).accepted  # 50,000 shares at 10
    assert decide(rm, order(value=500_010.0)).rule == "order_shares"


def test_position_fraction_counts_active_orders():
    rm = RiskManager(only(max_position_fraction=0.2))
    a = acct({"600000.SH": 10_000}, equity=1_000_000.0)  # 100,000 held = 10%
    assert decide(rm, order(value=100_000.0), a=a).accepted  # -> exactly 20%
    d = decide(rm, order(value=100_010.0), a=a)
    assert (d.action, d.rule) == ("reject", "position") and "20.00%" in d.reason
    rm.on_submitted(order(value=60_000.0), T0, price=10.0)
    assert decide(rm, order(value=40_000.0), a=a).accepted
    assert decide(rm, order(value=40_010.0), a=a).rule == "position"
    assert decide(rm, order(side="sell", shares=10_000), a=a).accepted  # reducing: exempt


def test_daily_turnover_against_start_equity():
    rm = RiskManager(only(max_daily_turnover=2.0))
    rm.new_session("2024-03-04", start_equity=1_000_000.0)
    a = acct(traded=1_500_000.0, equity=900_000.0)
    assert decide(rm, order(value=500_000.0), a=a).accepted
    d = decide(rm, order(value=500_000.01), a=a)
    assert (d.action, d.rule) == ("reject", "turnover")
    live = order(value=400_000.0)
    rm.on_submitted(live, T0)  # active orders count as traded
    assert decide(rm, order(value=100_000.0), a=a).accepted
    assert decide(rm, order(value=100_000.01), a=a).rule == "turnover"
    rm.on_order_done(live)
    rm.new_session("2024-03-05")  # base = equity at the first check
    assert decide(rm, order(value=1_800_000.0), a=acct(equity=900_000.0)).accepted
    assert decide(rm, order(value=1_800_001.0), a=acct(equity=900_000.0)).rule == "turnover"


def test_rate_limit_on_the_engine_clock():
    rm = RiskManager(only(max_orders_per_second=3))
    s = pd.Timedelta(seconds=1)
    for k in range(3):
        assert decide(rm, order(value=10), now=T0 + k * pd.Timedelta(milliseconds=300)).accepted
    d = decide(rm, order(value=10), now=T0 + pd.Timedelta(milliseconds=999))
    assert (d.action, d.rule) == ("reject", "rate")
    assert decide(rm, order(value=10), now=T0 + s).accepted  # the first one left the window
    # the same client id checked twice counts once
    rm2 = RiskManager(only(max_orders_per_second=1))
    o = order(value=10)
    assert decide(rm2, o).accepted and decide(rm2, o).accepted
    assert decide(rm2, order(value=10)).rule == "rate"


def test_rate_limit_uses_the_clock_when_now_is_missing():
    t = [T0]
    rm = RiskManager(only(max_orders_per_second=1), clock=lambda: t[0])
    assert rm.check(order(value=10), mkt(), acct()).accepted
    assert rm.check(order(value=10), mkt(), acct()).rule == "rate"
    t[0] = T0 + pd.Timedelta(seconds=1)
    assert rm.check(order(value=10), mkt(), acct()).accepted


def test_active_order_limit():
    rm = RiskManager(only(max_active_orders=2))
    o1, o2 = order(value=10), order(value=20)
    rm.on_submitted(o1, T0)
    assert decide(rm, o2).accepted
    rm.on_submitted(o2, T0)
    assert decide(rm, order(value=30)).rule == "active_orders"
    rm.on_order_done(o1)
    assert decide(rm, order(value=30)).accepted


def test_duplicate_rule():
    rm = RiskManager(only(duplicate_window_s=1.0))
    o = order(value=1000, limit=10.0)
    rm.on_submitted(o, T0)
    d = decide(rm, order(value=1000, limit=10.0), now=T0 + pd.Timedelta(milliseconds=500))
    assert (d.action, d.rule) == ("reject", "duplicate") and o.client_id in d.reason
    assert decide(rm, order(value=1000, limit=10.01), now=T0).accepted
    assert decide(rm, order(value=1000, limit=10.0), now=T0 + pd.Timedelta(seconds=1)).accepted
    rm.on_order_done(o)
    assert decide(rm, order(value=1000, limit=10.0), now=T0).accepted


def test_daily_counters_and_reset_on_new_session():
    rm = RiskManager(only(max_daily_orders=2, max_daily_trades=2, max_cancels_per_symbol_day=1))
    rm.new_session("2024-03-04")
    c = order(value=10)
    rm.on_cancel(c, T0)
    rm.on_cancel(c, T0)  # once per client id
    assert decide(rm, order(value=10)).rule == "cancels"
    assert decide(rm, order(value=10, symbol="000001.SZ")).accepted
    for _ in range(2):
        o = order(value=10, symbol="000001.SZ")
        rm.on_submitted(o, T0)
        rm.on_order_done(o)
    assert decide(rm, order(value=10, symbol="000001.SZ")).rule == "daily_orders"
    rm.new_session("2024-03-05")
    assert rm.daily_orders == 0 and rm.cancels == {}
    for _ in range(2):
        rm.on_fill(o, 100, 10.0, T0)
    assert decide(rm, order(value=10)).rule == "daily_trades"
    rm.new_session("2024-03-06")
    assert decide(rm, order(value=10)).accepted and rm.traded_today == 0.0


def test_off_accepts_what_defaults_reject():
    big = order(value=50_000_000.0, limit=20.0)
    a = acct(equity=1_000_000.0)
    assert decide(RiskManager(RiskConfig()), big, m=mkt(12.0, 10.0), a=a).action == "reject"
    assert decide(RiskManager(RiskConfig.off()), big, m=mkt(12.0, 10.0), a=a).accepted


def test_invalid_orders():
    rm = RiskManager(RiskConfig())
    assert decide(rm, order(side="long", value=10)).rule == "invalid"
    assert decide(rm, order(value=0.0)).rule == "invalid"


def test_active_market_order_valued_at_the_last_price_seen():
    rm = RiskManager(only(max_daily_turnover=1.0))
    rm.new_session("2024-03-04", start_equity=1_000_000.0)
    a = acct({"000001.SZ": 50_000}, equity=1_000_000.0)
    sell = order(side="sell", shares=50_000, symbol="000001.SZ")  # market order, 500,000 at 10
    assert decide(rm, sell, a=a).accepted
    rm.on_submitted(sell, T0)  # no price given: the last price check() saw
    assert decide(rm, order(value=500_000.0), a=a).accepted
    assert decide(rm, order(value=500_000.01), a=a).rule == "turnover"
