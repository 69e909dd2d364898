"""Hand-built scenarios, one per market rule, run through the engine (both paths) and the Exchange."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlm.backtest.costs import cost_model
from quantlm.backtest.engine import BacktestConfig, run_backtest
from quantlm.backtest.exchange import Exchange
from quantlm.backtest.portfolio import Portfolio
from quantlm.backtest.rules import market_rules

ENGINES = ["numba", "python"]


def make(spec: dict[str, list], start: str = "2023-08-21", freq: str = "B") -> pd.DataFrame:
    """Bars from {symbol: [(open, close[, volume]) or None (no bar), ...]}; high/low = max/min(open, close)."""
    dates = pd.date_range(start, periods=max(len(v) for v in spec.values()), freq=freq)
    rows = []
    for sym, days in spec.items():
        for ts, day in zip(dates, days):
            if day is None:
                continue
            o, c, v = (*day, 1e7) if len(day) == 2 else day
            rows.append((sym, ts, o, max(o, c), min(o, c), c, v, np.nan))
    return pd.DataFrame(rows, columns=["symbol", "ts", "open", "high", "low", "close", "volume", "amount"])


def signals(bars: pd.DataFrame, spec: dict[str, list], col: str = "score") -> pd.DataFrame:
    dates = sorted(bars["ts"].unique())
    rows = [(sym, dates[i], s) for sym, vals in spec.items() for i, s in enumerate(vals) if s is not None]
    return pd.DataFrame(rows, columns=["symbol", "ts", col])


def run(bars, sig, engine="numba", **cfg):
    cfg = {"strategy": "threshold", "participation": 0.0, **cfg}
    return run_backtest(sig, bars, BacktestConfig(**cfg), engine=engine)


def trades_of(result, symbol=None):
    t = result.trades
    return t if symbol is None else t[t["symbol"] == symbol].reset_index(drop=True)


@pytest.mark.parametrize("engine", ENGINES)
def test_limit_up_open_refuses_buy_then_fills_next_day(engine):
    bars = make({"600000.SH": [(10, 10), (11.0, 11.0), (11.0, 11.5)]})
    r = run(bars, signals(bars, {"600000.SH": [1, 1, 1]}), engine)
    t = trades_of(r)
    assert t.loc[0, ["side", "status", "reason"]].tolist() == ["buy", "rejected", "limit_up"]
    assert t.loc[1, ["status", "price"]].tolist() == ["filled", 11.0]
    assert r.equity.iloc[1] == r.config.cash  # nothing bought on the limit-up day


@pytest.mark.parametrize("engine", ENGINES)
def test_limit_up_close_with_normal_open_still_fills_at_open(engine):
    bars = make({"600000.SH": [(10, 10), (10.5, 11.0), (11.0, 11.0)]})
    t = trades_of(run(bars, signals(bars, {"600000.SH": [1, None, None]}), engine))
    assert t.loc[0, ["status", "price"]].tolist() == ["filled", 10.5]  # judged at the open, not the close


@pytest.mark.parametrize("engine", ENGINES)
def test_limit_down_sell_refused(engine):
    bars = make({"600000.SH": [(10, 10), (10, 10), (10, 10), (9.0, 9.0), (9.5, 9.5)]})
    r = run(bars, signals(bars, {"600000.SH": [1, 1, -1, -1, -1]}), engine)
    t = trades_of(r)
    assert t["reason"].tolist() == ["", "limit_down", ""]
    assert t.loc[1, "ts"] == bars["ts"].iloc[3] and t.loc[2, "price"] == 9.5
    assert t.loc[2, "side"] == "sell" and t.loc[2, "shares_filled"] == t.loc[0, "shares_filled"]


@pytest.mark.parametrize("engine", ENGINES)
def test_t_plus_one_on_intraday_bars(engine):
    dates = pd.DatetimeIndex(["2023-08-21 10:30", "2023-08-21 11:30", "2023-08-21 14:00", "2023-08-22 10:30",
                              "2023-08-22 11:30"])
    bars = pd.DataFrame({"symbol": "600000.SH", "ts": dates, "open": 10.0, "high": 10.0, "low": 10.0,
                         "close": 10.0, "volume": 1e7, "amount": np.nan})
    sig = pd.DataFrame({"symbol": "600000.SH", "ts": dates, "score": [1, -1, -1, -1, -1]})
    t = trades_of(run(bars, sig, engine))
    assert t[["side", "status", "reason"]].values.tolist() == [
        ["buy", "filled", ""], ["sell", "rejected", "t+1"], ["sell", "filled", ""]]
    assert t.loc[2, "ts"] == dates[3]  # sellable on the next date
    us = trades_of(run(bars.assign(symbol="AAPL"), sig.assign(symbol="AAPL"), engine, market="us"))
    assert us["status"].tolist() == ["filled", "filled"]  # T+0


@pytest.mark.parametrize("engine", ENGINES)
def test_lot_rounding_and_minimum_commission(engine):
    bars = make({"600000.SH": [(10.37, 10.37)] * 3})
    t = trades_of(run(bars, signals(bars, {"600000.SH": [1, None, None]}), engine, cash=10_000.0))
    q = t.loc[0, "shares_filled"]
    assert q % 100 == 0 and q == 900  # 10,000 CNY buys 9 lots at 10.37
    assert t.loc[0, "commission"] == 5.0  # 9,333 x 0.03% = 2.8 < 5 minimum


def test_odd_lot_sell_allowed_but_partial_sells_use_lots():
    ex = Exchange(market_rules("cn"), cost_model("cn"), participation=0.0)
    pf = Portfolio(cash=0.0, t_plus=1, shares={"600000.SH": 250.0}, last_price={"600000.SH": 10.0})
    pf.settle()
    bar = pd.DataFrame({"price": [10.0], "volume": [1e6], "limit_up": [11.0], "limit_down": [9.0], "sigma": [0.02]},
                       index=["600000.SH"])
    fills, rej = ex.execute(pd.DataFrame({"symbol": ["600000.SH"], "side": ["sell"], "shares": [130.0], "value": [0.0]}),
                            bar, pf, pd.Timestamp("2023-08-28"))
    assert fills.loc[0, ["shares_filled", "status", "reason"]].tolist() == [100.0, "partial", "lot"] and len(rej) == 0
    fills, _ = ex.execute(pd.DataFrame({"symbol": ["600000.SH"], "side": ["sell"], "shares": [150.0], "value": [0.0]}),
                          bar, pf, pd.Timestamp("2023-08-28"))
    assert fills.loc[0, ["shares_filled", "status"]].tolist() == [150.0, "filled"]  # the odd-lot remainder
    assert pf.shares == {} and pf.cash > 2400


@pytest.mark.parametrize("engine", ENGINES)
def test_stamp_duty_switches_on_2023_08_28(engine):
    # sells fill on Fri 2023-08-25 (0.1%) and Mon 2023-08-28 (0.05%)
    bars = make({"600000.SH": [(10, 10)] * 7, "000001.SZ": [(10, 10)] * 7}, start="2023-08-21")
    sig = signals(bars, {"600000.SH": [1, 1, 1, -1, -1, -1, -1], "000001.SZ": [1, 1, 1, 1, -1, -1, -1]})
    t = run(bars, sig, engine).trades
    sells = t[t["side"] == "sell"].set_index("symbol")
    assert sells.loc["600000.SH", "ts"] == pd.Timestamp("2023-08-25")
    assert sells.loc["600000.SH", "stamp_duty"] / sells.loc["600000.SH", "value"] == pytest.approx(0.001)
    assert sells.loc["000001.SZ", "ts"] == pd.Timestamp("2023-08-28")
    assert sells.loc["000001.SZ", "stamp_duty"] / sells.loc["000001.SZ", "value"] == pytest.approx(0.0005)
    assert (t.loc[t["side"] == "buy", "stamp_duty"] == 0).all()


@pytest.mark.parametrize("engine", ENGINES)
def test_suspension_keeps_last_mark_and_rejects_orders(engine):
    bars = make({"600000.SH": [(10, 10), (10, 12), None, None, (11, 11)], "000001.SZ": [(5, 5)] * 5})
    sig = signals(bars, {"600000.SH": [1, 1, -1, -1, -1], "000001.SZ": [-1] * 5})
    r = run(bars, sig, engine, costs=False)
    shares = trades_of(r, "600000.SH").loc[0, "shares_filled"]
    cash_left = r.config.cash - shares * 10
    assert r.equity.iloc[2] == pytest.approx(cash_left + shares * 12)  # suspended: marked at the last close
    assert r.equity.iloc[3] == pytest.approx(cash_left + shares * 12)
    t = trades_of(r, "600000.SH")
    dates = r.equity.index
    assert t.loc[1, ["ts", "side", "status", "reason"]].tolist() == [dates[3], "sell", "rejected", "suspended"]
    assert t.loc[2, ["ts", "status", "price"]].tolist() == [dates[4], "filled", 11.0]
    held = r.positions[r.positions["symbol"] == "600000.SH"]
    assert held["value"].iloc[2] == pytest.approx(shares * 12)


@pytest.mark.parametrize("engine", ENGINES)
def test_st_stocks_have_a_5pct_limit(engine):
    bars = make({"600001.SH": [(10, 10), (10.5, 10.5)], "600002.SH": [(10, 10), (10.5, 10.5)]})
    flags = pd.DataFrame({"symbol": ["600001.SH"], "flag": ["st"], "start": [pd.Timestamp("2023-01-01")],
                          "end": [pd.NaT]})
    sig = signals(bars, {"600001.SH": [1, None], "600002.SH": [1, None]})
    r = run_backtest(sig, bars, BacktestConfig(strategy="threshold", participation=0.0), flags=flags, engine=engine)
    t = r.trades.set_index("symbol")
    assert t.loc["600001.SH", "reason"] == "limit_up" and t.loc["600002.SH", "status"] == "filled"


@pytest.mark.parametrize("engine", ENGINES)
def test_chinext_limit_is_20pct_from_2020_08_24(engine):
    before = make({"300001.SZ": [(10, 10), (11.0, 11.0)]}, start="2020-08-20")
    after = make({"300001.SZ": [(10, 10), (11.5, 11.5)]}, start="2020-08-21")
    tb = trades_of(run(before, signals(before, {"300001.SZ": [1, None]}), engine))
    ta = trades_of(run(after, signals(after, {"300001.SZ": [1, None]}), engine))
    assert tb.loc[0, "reason"] == "limit_up"  # 2020-08-21: +10% was the limit
    assert ta.loc[0, ["ts", "status"]].tolist() == [pd.Timestamp("2020-08-24"), "filled"]


@pytest.mark.parametrize("engine", ENGINES)
def test_no_limit_in_first_five_days_after_ipo(engine):
    bars = make({"300999.SZ": [(30, 30), (39, 39), (39, 39)], "300998.SZ": [(30, 30), (39, 39), (39, 39)]},
                start="2021-03-01")
    inst = pd.DataFrame({"symbol": ["300999.SZ"], "board": ["chinext"], "list_date": [pd.Timestamp("2021-03-01")]})
    sig = signals(bars, {"300999.SZ": [1, None, None], "300998.SZ": [1, None, None]})
    r = run_backtest(sig, bars, BacktestConfig(strategy="threshold", participation=0.0), instruments=inst, engine=engine)
    t = r.trades.set_index("symbol")
    assert t.loc["300999.SZ", "status"] == "filled"  # day 2 of its listing: +30% allowed
    assert t.loc["300998.SZ", "reason"] == "limit_up"  # long listed: +20% limit


@pytest.mark.parametrize("engine", ENGINES)
def test_participation_cap_gives_partial_fill(engine):
    bars = make({"600000.SH": [(10, 10, 1e5), (10, 10, 10_000), (10, 10, 1e5)]})
    t = trades_of(run(bars, signals(bars, {"600000.SH": [1, None, None]}), engine, participation=0.1))
    assert t.loc[0, ["shares_filled", "status", "reason"]].tolist() == [1000.0, "partial", "volume"]


@pytest.mark.parametrize("engine", ENGINES)
def test_short_refused_in_cn_allowed_in_us_with_borrow_fee(engine):
    spec = [(10, 10)] * 6
    cn = make({"600000.SH": spec})
    r = run(cn, signals(cn, {"600000.SH": [-0.5] * 6}, "weight"), engine, strategy="weights")
    assert (r.trades["reason"] == "short_not_allowed").all() and (r.equity == r.config.cash).all()
    us = make({"AAPL": spec})
    r = run(us, signals(us, {"AAPL": [-0.5] + [None] * 5}, "weight"), engine, strategy="weights", market="us")
    t = r.trades
    assert t.loc[0, ["side", "status"]].tolist() == ["short", "filled"] and t.loc[0, "shares_filled"] == 50_000
    assert (r.positions["shares"] == -50_000).all()
    days = np.diff(r.equity.index.asi8[1:]) / 86_400e9
    expected = 50_000 * 10 * market_rules("us").borrow_fee_rate * days / 365
    np.testing.assert_allclose(r.borrow_fees.iloc[2:].to_numpy(), expected, rtol=1e-12)
    assert r.costs.iloc[2:].sum() == pytest.approx(expected.sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_cash_never_negative_without_leverage(seed):
    from tests.conftest import make_bars

    bars = make_bars([f"{600000 + i}.SH" for i in range(15)], periods=80, seed=seed)
    rng = np.random.default_rng(seed)
    sig = bars[["symbol", "ts"]].assign(score=rng.normal(size=len(bars)), weight=rng.uniform(0, 0.3, len(bars)))
    for cfg in (BacktestConfig(topk=5, n_drop=2, risk_degree=1.0), BacktestConfig(strategy="weights")):
        r = run_backtest(sig, bars, cfg)
        assert r.cash.min() >= -1e-6
        assert (r.trades["status"] != "rejected").any()


@pytest.mark.parametrize("engine", ENGINES)
def test_fill_prices_open_close_vwap(engine):
    bars = make({"AAPL": [(10, 10), (10, 12), (11, 11)]})
    bars["amount"] = [np.nan, 1e7 * 11.5, np.nan]
    sig = signals(bars, {"AAPL": [1, None, None]})
    prices = {fill: trades_of(run(bars, sig, engine, market="us", fill=fill)).loc[0, "price"]
              for fill in ("open", "close", "vwap")}
    assert prices == {"open": 10.0, "close": 12.0, "vwap": 11.5}
    bars["amount"] = np.nan  # no amount: (open + high + low + close) / 4
    assert trades_of(run(bars, sig, engine, market="us", fill="vwap")).loc[0, "price"] == pytest.approx(11.0)
