"""Hedged books: the benchmark overlay (hand-computed cases and properties), rolls, long-short weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlm.backtest.engine import BacktestConfig, BacktestConfigError, run_backtest
from quantlm.backtest.hedge import HedgeConfig, HedgeConfigError, hedge_overlay, long_short_weights, roll_sessions
from quantlm.backtest.metrics import pick_hit_rate

FREE = HedgeConfig(commission=0.0, margin_rate=0.0, roll_cost=0.0, sweep_cost=0.0)


def _overlay(equity, x, b, config, resize=None, roll=None, cash=100.0, dt=None):
    n = len(equity)
    return hedge_overlay(np.asarray(equity, float), cash, np.asarray(x, float), np.asarray(b, float),
                         np.zeros(n) if dt is None else np.asarray(dt, float),
                         np.ones(n, bool) if resize is None else np.asarray(resize, bool),
                         np.zeros(n, bool) if roll is None else np.asarray(roll, bool), config)


def test_overlay_hand_computed_with_margin_and_commission():
    """Cash 100; the book is all cash at t0, fully invested from t1; margin 10%, commission 0.1%."""
    cfg = HedgeConfig(commission=0.001, margin_rate=0.1, roll_cost=0.0, sweep_cost=0.0)
    out = _overlay([100.0, 110.0, 99.0], [0.0, 1.0, 1.0], [0.0, 0.05, -0.10], cfg)
    # t1: H = 110, long = 110 / 1.1 = 100, short 100 opened: commission 0.1
    assert out["equity"][1] == pytest.approx(109.9, abs=1e-12)
    assert out["long_value"][1] == pytest.approx(100.0) and out["notional"][1] == pytest.approx(100.0)
    assert out["margin"][1] == pytest.approx(9.9)
    # t2: long 100 -> 90 (-10%), short earns +10, notional 90 re-sized to 109.9 / 1.1
    assert out["futures_pnl"][2] == pytest.approx(10.0)
    assert out["equity"][2] == pytest.approx(109.9 - 0.001 * (109.9 / 1.1 - 90.0), abs=1e-12)
    assert out["notional"][2] == pytest.approx(109.9 / 1.1)


def test_overlay_rolls_basis_and_cash_rate():
    cfg = HedgeConfig(commission=0.0, margin_rate=0.5, roll_cost=0.01, basis=0.365, cash_rate=0.365, sweep_cost=0.0)
    out = _overlay([100.0, 100.0, 100.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], cfg, roll=[False, True, False],
                   dt=[0.0, 1 / 365, 1 / 365])
    # t0: H 100, long 100 / 1.5, short = long, margin = 0.5 * short
    n0 = 100 / 1.5
    assert out["notional"][0] == pytest.approx(n0)
    # t1: basis 0.1% of notional paid, margin interest 0.1% of margin earned, roll 1% of notional
    h1 = 100 - 0.001 * n0 + 0.001 * (0.5 * n0) - 0.01 * n0
    assert out["equity"][1] == pytest.approx(h1, abs=1e-12)
    assert out["hedge_costs"][1] == pytest.approx(0.01 * n0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-0.2, 0.2), st.floats(-0.2, 0.2)), min_size=2, max_size=40))
def test_free_full_hedge_returns_long_minus_benchmark(pairs):
    r = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    b[0] = 0.0
    equity = 100.0 * np.cumprod(1 + r)
    out = _overlay(equity, np.ones(len(r)), b, FREE)
    hedged_r = out["equity"] / np.r_[100.0, out["equity"][:-1]] - 1
    np.testing.assert_allclose(hedged_r, r - b, rtol=0, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-0.1, 0.1), st.floats(-0.1, 0.1), st.floats(0, 1), st.booleans()),
                min_size=2, max_size=40),
       st.floats(0, 0.01), st.floats(0, 0.3), st.floats(0, 0.01), st.floats(0, 0.01))
def test_costs_only_reduce_equity(rows, commission, margin, roll_cost, sweep):
    r, b = np.array([x[0] for x in rows]), np.array([x[1] for x in rows])
    x, roll = np.array([x[2] for x in rows]), np.array([x[3] for x in rows])
    equity = 100.0 * np.cumprod(1 + r)
    costly = HedgeConfig(commission=commission, margin_rate=margin, roll_cost=roll_cost, sweep_cost=sweep)
    free = HedgeConfig(commission=0.0, margin_rate=margin, roll_cost=0.0, sweep_cost=0.0)
    a, f = _overlay(equity, x, b, costly, roll=roll), _overlay(equity, x, b, free, roll=roll)
    assert (a["equity"] <= f["equity"] * (1 + 1e-12) + 1e-9).all()
    assert (a["hedge_costs"] >= 0).all()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(-0.1, 0.1), st.floats(-0.1, 0.1)), min_size=3, max_size=30), st.data())
def test_no_look_ahead_future_benchmark_leaves_the_past_bit_identical(pairs, data):
    r, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    equity = 100.0 * np.cumprod(1 + r)
    k = data.draw(st.integers(0, len(r) - 2))
    b2 = b.copy()
    b2[k + 1:] = data.draw(st.lists(st.floats(-0.1, 0.1), min_size=len(r) - k - 1, max_size=len(r) - k - 1))
    cfg = HedgeConfig(commission=0.001, margin_rate=0.12, basis=0.05)
    x = np.full(len(r), 0.9)
    dt = np.full(len(r), 1 / 365)
    one, two = _overlay(equity, x, b, cfg, dt=dt), _overlay(equity, x, b2, cfg, dt=dt)
    for key in one:
        assert np.array_equal(one[key][: k + 1], two[key][: k + 1]), key


def test_overlay_rejects_bad_inputs():
    with pytest.raises(HedgeConfigError, match="non-finite values in bench_returns"):
        _overlay([100.0, 101.0], [1.0, 1.0], [0.0, np.nan], FREE)
    with pytest.raises(HedgeConfigError, match="unknown setting"):
        HedgeConfig.from_mapping({"margin": 0.1}, source="h.yaml")
    with pytest.raises(HedgeConfigError, match="h.yaml: margin_rate"):
        HedgeConfig.from_mapping({"margin_rate": 1.5}, source="h.yaml")


def test_roll_sessions_follow_the_exchange_calendar():
    dates = pd.bdate_range("2024-01-02", "2024-03-29")
    rolls = roll_sessions(dates, "cn", tuple(range(1, 13)))
    # Jan 19 2024 is a session; Feb 16 falls in the Spring Festival closure: the expiry moves to Feb 19
    assert list(rolls.strftime("%Y-%m-%d")) == ["2024-01-19", "2024-02-19", "2024-03-15"]
    assert list(roll_sessions(dates, "us", (3, 6, 9, 12)).strftime("%Y-%m-%d")) == ["2024-03-15"]
    assert len(roll_sessions(dates, "crypto", ())) == 0


def test_long_short_weights_dollar_neutral_with_dropout():
    ts = pd.Timestamp("2024-01-02")
    day1 = pd.DataFrame({"symbol": list("ABCDEF"), "ts": ts, "score": [6, 5, 4, 3, 2, 1.0]})
    day2 = day1.assign(ts=ts + pd.Timedelta(days=1), score=[1, 2, 3, 4, 5, 6.0])  # ranking reversed
    w = long_short_weights(pd.concat([day1, day2]), topk=2, n_drop=1, gross=1.0)
    first = w[w["ts"] == ts].set_index("symbol")["weight"]
    assert first.to_dict() == {"A": 0.25, "B": 0.25, "E": -0.25, "F": -0.25}
    second = w[w["ts"] > ts].set_index("symbol")["weight"]
    assert second.sum() == pytest.approx(0.0) and len(second) == 4
    # one name per side replaced: longs drop A (their worst) for D (best not held short), shorts drop F for A
    assert second.to_dict() == {"B": 0.25, "D": 0.25, "E": -0.25, "A": -0.25}


def test_pick_hit_rate_hand_case():
    ts = pd.to_datetime(["2024-01-02"] * 3 + ["2024-01-03"] * 3)
    scores = pd.DataFrame({"symbol": list("ABCABC"), "ts": ts, "score": [3, 2, 1, 1, 2, 3.0]})
    labels = pd.DataFrame({"symbol": list("ABCABC"), "ts": ts, "label": [0.02, -0.01, 0.05, 0.0, 0.01, 0.03]})
    bench = pd.Series([0.0, 0.02], index=pd.to_datetime(["2024-01-02", "2024-01-03"]))
    # picks (top 2): day 1 A (0.02 > 0) hit, B (-0.01) miss; day 2 C (0.03 > 0.02) hit, B (0.01) miss
    assert pick_hit_rate(scores, labels, bench, topk=2) == pytest.approx(0.5)
    assert pick_hit_rate(scores, labels, bench, topk=1) == pytest.approx(1.0)


def _bars(market_symbols: list[str], n: int = 30, seed: int = 0) -> pd.DataFrame:
    ts = pd.bdate_range("2024-01-02", periods=n)
    rng = np.random.default_rng(seed)
    frames = []
    for sym in market_symbols:
        c = 20 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
        frames.append(pd.DataFrame({"symbol": sym, "ts": ts, "open": c, "high": c * 1.01, "low": c * 0.99,
                                    "close": c, "volume": 1e9}))
    return pd.concat(frames, ignore_index=True)


def test_engine_benchmark_hedge_is_long_minus_stock_weighted_benchmark():
    """Free hedge: the hedged return is r_t - x_{t-1} * b_t with x the book's stock value / equity."""
    bars = _bars(["A", "B", "C", "D", "IDX"])
    scores = bars[bars["symbol"] != "IDX"][["symbol", "ts"]].assign(score=np.arange(len(bars) - 30) % 7)
    cfg = BacktestConfig(topk=2, n_drop=1, benchmark="IDX", costs=False, participation=0, hedge="benchmark",
                         hedge_settings=FREE, corporate_actions="off", market="cn")
    trade_bars = bars[bars["symbol"] != "IDX"]
    res = run_backtest(scores, trade_bars, cfg, benchmark_bars=bars[bars["symbol"] == "IDX"])
    assert res.hedged is not None and res.deployed() is res.hedged and res.hedged.book == "hedged"
    r, b = res.returns().to_numpy(), res.benchmark.pct_change().fillna(0).to_numpy()
    value = res.positions.groupby("ts")["value"].sum().reindex(res.equity.index, fill_value=0).to_numpy()
    x_prev = np.r_[0.0, (value / res.equity.to_numpy())[:-1]]
    np.testing.assert_allclose(res.hedged.returns().to_numpy(), r - x_prev * b, atol=1e-12)
    assert (res.hedged.benchmark == 1.0).all()  # a hedged book is measured against cash


def test_benchmark_hedge_refuses_a_benchmark_that_starts_late():
    bars = _bars(["A", "B", "IDX"])
    late = bars[(bars["symbol"] == "IDX") & (bars["ts"] >= bars["ts"].iloc[5])]
    scores = bars[bars["symbol"] != "IDX"][["symbol", "ts"]].assign(score=1.0)
    cfg = BacktestConfig(topk=1, n_drop=0, benchmark="IDX", hedge="benchmark", market="cn")
    with pytest.raises(HedgeConfigError, match="benchmark 'IDX' has no close at or before 2024-01-02"):
        run_backtest(scores, bars[bars["symbol"] != "IDX"], cfg, benchmark_bars=late)
    with pytest.raises(HedgeConfigError, match="needs a benchmark"):
        run_backtest(scores, bars[bars["symbol"] != "IDX"], BacktestConfig(topk=1, hedge="benchmark"))


def test_long_short_runs_on_us_and_is_refused_on_cn():
    bars = _bars(list("ABCDEF"), n=25, seed=3)
    scores = bars[["symbol", "ts"]].assign(score=np.random.default_rng(1).normal(size=len(bars)))
    with pytest.raises(BacktestConfigError, match="'cn' does not"):
        run_backtest(scores, bars, BacktestConfig(market="cn", topk=2, hedge="long_short"))
    res = run_backtest(scores, bars, BacktestConfig(market="us", topk=2, n_drop=1, hedge="long_short",
                                                    participation=0))
    ls = res.hedged
    assert ls.book == "long_short" and res.book == "long_only"
    net = ls.positions.groupby("ts")["value"].sum() / ls.equity.reindex(ls.positions["ts"].unique())
    assert net.iloc[2:].abs().max() < 0.05  # dollar neutral up to whole shares and price moves
    assert ls.borrow_fees.sum() > 0 and (ls.positions["shares"] < 0).any()
