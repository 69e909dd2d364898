"""Board-specific order sizes (STAR, BSE) and the dated China transfer fee."""

from __future__ import annotations

import pandas as pd
import pytest

from quantlm.backtest.costs import cost_model
from quantlm.backtest.engine import BacktestConfig, run_backtest
from quantlm.backtest.exchange import Exchange, LotRule
from quantlm.backtest.portfolio import Portfolio
from quantlm.backtest.rules import lot_arrays, market_rules

ENGINES = ("numba", "python")


def one_bar_buy(symbol: str, value: float, price: float, engine: str):
    ts = pd.bdate_range("2024-03-01", periods=3)
    bars = pd.DataFrame({"symbol": symbol, "ts": ts, "open": price, "high": price, "low": price, "close": price,
                         "volume": 1e7, "amount": float("nan")})
    sig = pd.DataFrame({"symbol": [symbol], "ts": [ts[0]], "weight": [value / 1e6]})
    cfg = BacktestConfig(strategy="weights", costs=False, participation=0.0)
    return run_backtest(sig, bars, cfg, engine=engine).trades


def test_lot_arrays_by_board():
    bmin, bstep, smin, sstep = lot_arrays(market_rules("cn"), ["main", "star", "bse", "chinext"])
    assert bmin.tolist() == [100, 200, 100, 100] and bstep.tolist() == [100, 1, 1, 100]
    assert smin.tolist() == [0, 200, 100, 0] and sstep.tolist() == [100, 1, 1, 100]


@pytest.mark.parametrize("engine", ENGINES)
def test_star_buys_200_then_single_shares(engine):
    t = one_bar_buy("688001.SH", 10_000 * 2.0 + 1_510.0, 10.0, engine)  # 2,151 shares affordable
    assert t["shares_filled"].iloc[0] == 2151.0
    t = one_bar_buy("688001.SH", 1_990.0, 10.0, engine)  # 199 shares: below the STAR minimum of 200
    assert t["shares_filled"].iloc[0] == 0 and t["status"].iloc[0] == "rejected"
    t = one_bar_buy("600000.SH", 21_510.0, 10.0, engine)  # main board: whole lots of 100
    assert t["shares_filled"].iloc[0] == 2100.0


@pytest.mark.parametrize("engine", ENGINES)
def test_bse_buys_100_then_single_shares(engine):
    assert one_bar_buy("430047.BJ", 1_234.0, 10.0, engine)["shares_filled"].iloc[0] == 123.0
    assert one_bar_buy("430047.BJ", 990.0, 10.0, engine)["shares_filled"].iloc[0] == 0.0


def test_star_partial_sell_keeps_the_minimum():
    ex = Exchange(market_rules("cn"), cost_model("cn").with_(min_commission=0.0), participation=0.0,
                  lots={"688001.SH": LotRule(200, 1, 200, 1)})
    pf = Portfolio(cash=0.0, t_plus=1, shares={"688001.SH": 350.0}, last_price={"688001.SH": 10.0})
    pf.settle()
    bar = pd.DataFrame({"price": [10.0], "volume": [1e6], "limit_up": [12.0], "limit_down": [8.0], "sigma": [0.02]},
                       index=["688001.SH"])
    order = pd.DataFrame({"symbol": ["688001.SH"], "side": ["sell"], "shares": [150.0], "value": [0.0]})
    fills, rej = ex.execute(order, bar, pf, pd.Timestamp("2024-03-01"))
    assert len(fills) == 0 and rej["reason"].iloc[0] == "lot"  # 150 < 200 and not the whole position
    order["shares"] = 350.0
    fills, _ = ex.execute(order, bar, pf, pd.Timestamp("2024-03-01"))
    assert fills["shares_filled"].iloc[0] == 350.0


def test_transfer_fee_halves_on_2022_04_29():
    m = cost_model("cn")
    assert m.transfer_fee_rate_on("2022-04-28") == pytest.approx(0.00002)
    assert m.transfer_fee_rate_on("2022-04-29") == pytest.approx(0.00001)


@pytest.mark.parametrize("engine", ENGINES)
def test_backtest_charges_the_dated_transfer_fee(engine):
    for day, rate in (("2022-04-25", 0.00002), ("2022-05-05", 0.00001)):
        ts = pd.bdate_range(day, periods=3)
        bars = pd.DataFrame({"symbol": "600000.SH", "ts": ts, "open": 10.0, "high": 10.0, "low": 10.0, "close": 10.0,
                             "volume": 1e8, "amount": float("nan")})
        sig = pd.DataFrame({"symbol": ["600000.SH"], "ts": [ts[0]], "weight": [0.5]})
        t = run_backtest(sig, bars, BacktestConfig(strategy="weights", participation=0.0), engine=engine).trades
        assert t["transfer_fee"].iloc[0] / t["value"].iloc[0] == pytest.approx(rate), (day, t["ts"].iloc[0])
