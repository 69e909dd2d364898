"""Corporate actions in P&L: adj_factor steps move holdings (bonus shares, cash dividends, rights-like steps).

Bars carry raw prices and a forward-cumulative adj_factor (adjusted = raw x adj_factor). A holder of a
dividend-paying stock must earn its adjusted-close return, not book every ex-date as a loss.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlm.backtest.engine import BacktestConfig, run_backtest
from quantlm.backtest.kernel import CA_CASH, CA_REINVEST, apply_corporate_action, corporate_action_split

ENGINES = ("numba", "python")


def series(closes, factors, symbol="600519.SH", start="2023-03-01", opens=None):
    ts = pd.bdate_range(start, periods=len(closes))
    closes = np.asarray(closes, dtype=float)
    opens = closes if opens is None else np.asarray(opens, dtype=float)
    return pd.DataFrame({"symbol": symbol, "ts": ts, "open": opens, "high": np.maximum(opens, closes),
                         "low": np.minimum(opens, closes), "close": closes, "volume": 1e8, "amount": np.nan,
                         "adj_factor": np.asarray(factors, dtype=float)})


def hold(bars, engine="numba", **cfg):
    """Buy everything on day 1 at the open and hold (weights strategy, weight 1 every day)."""
    sig = bars[["symbol", "ts"]].assign(weight=1.0)
    config = BacktestConfig(strategy="weights", costs=False, participation=0.0, **cfg)
    return run_backtest(sig, bars, config, engine=engine)


def test_split_rule():
    assert corporate_action_split(2.0, CA_CASH) == (2.0, 0.0)  # 10-for-10 bonus issue
    share, cash = corporate_action_split(100 / 98, CA_CASH)  # 2 CNY dividend on a 100 CNY close
    assert share == 1.0 and cash == pytest.approx(0.02)
    share, cash = corporate_action_split(20 / ((20 - 0.2) / 1.3), CA_CASH)  # 10 bonus 3 + 0.2 CNY cash
    assert share == pytest.approx(1.3) and cash * 20 == pytest.approx(0.2, rel=1e-9)  # 0.2 CNY per old share
    assert corporate_action_split(1.25, CA_REINVEST) == (1.25, 0.0)
    q, cash, last = apply_corporate_action(100.0, 20.0, 20 / ((20 - 0.2) / 1.3), CA_CASH, True)
    assert q == 130.0 and last == pytest.approx((20 - 0.2) / 1.3)
    assert q * last + cash == pytest.approx(100 * 20.0)  # value preserved at the ex-rights reference
    q, cash, _ = apply_corporate_action(-100.0, 100.0, 100 / 98, CA_CASH, True)
    assert q == -100.0 and cash == pytest.approx(-200.0)  # a short pays the dividend


@pytest.mark.parametrize("engine", ENGINES)
def test_bonus_issue_10_for_10_doubles_shares_and_keeps_value(engine):
    closes = [20.0, 20.0, 20.0, 10.0, 10.0, 10.5]  # ex-date on day 4: raw price halves
    bars = series(closes, [1, 1, 1, 2, 2, 2])
    r = hold(bars, engine)
    pos = r.positions.pivot(index="ts", columns="symbol", values="shares")["600519.SH"]
    assert pos[bars["ts"][2]] * 2 == pos[bars["ts"][3]]
    eq = r.equity.to_numpy()
    assert eq[3] == pytest.approx(eq[2], rel=1e-12)  # no fake -50%
    assert eq[5] / eq[2] == pytest.approx(1.05, rel=1e-9)
    off = hold(bars, engine, corporate_actions="off")
    assert off.equity.iloc[3] < 0.6 * off.equity.iloc[2]  # what ignoring the action books


@pytest.mark.parametrize("engine", ENGINES)
def test_cash_dividend_credited(engine):
    closes = [100.0, 100.0, 98.0, 98.0]  # 2 CNY dividend, ex on day 3
    bars = series(closes, [1, 1, 100 / 98, 100 / 98])
    r = hold(bars, engine)
    shares = r.positions.groupby("ts")["shares"].sum()
    assert shares[bars["ts"][1]] == shares[bars["ts"][2]]
    assert r.corporate_action_cash.iloc[2] == pytest.approx(2.0 * shares[bars["ts"][1]])
    assert r.equity.iloc[2] == pytest.approx(r.equity.iloc[1], rel=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_rights_like_factor_step_preserves_value(engine):
    # a rights issue: ex-rights reference 9.2 after a 10.0 close (not a round bonus ratio)
    closes = [10.0, 10.0, 9.2, 9.2]
    bars = series(closes, [1, 1, 10 / 9.2, 10 / 9.2])
    r = hold(bars, engine)
    assert r.equity.iloc[2] == pytest.approx(r.equity.iloc[1], rel=1e-12)
    assert r.equity.iloc[3] == pytest.approx(r.equity.iloc[1], rel=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_pending_sell_follows_the_bonus_issue(engine):
    bars = series([20.0, 20.0, 10.0, 10.0], [1, 1, 2, 2])
    sig = bars[["symbol", "ts"]].assign(weight=[1.0, 0.0, 0.0, 0.0])  # exit decided the day before the ex-date
    r = run_backtest(sig, bars, BacktestConfig(strategy="weights", costs=False, participation=0.0), engine=engine)
    sells = r.trades[r.trades["side"] == "sell"]
    buy = r.trades[r.trades["side"] == "buy"]
    assert sells["shares_filled"].iloc[0] == 2 * buy["shares_filled"].iloc[0]
    assert r.positions[r.positions["ts"] == bars["ts"].iloc[-1]].empty


def real_style_series(seed=0, years=7):
    """A multi-year daily series with yearly cash dividends and two bonus issues (raw prices + factor)."""
    rng = np.random.default_rng(seed)
    ts = pd.bdate_range("2014-01-02", periods=242 * years)
    adj_close = 50 * np.exp(np.cumsum(rng.normal(0.0006, 0.015, len(ts))))
    factor = np.ones(len(ts))
    for k in range(1, years):
        i = 242 * k - 100
        step = 1.015 if k not in (2, 5) else 1.5 * 1.01  # dividends; 10-bonus-5 plus cash in years 2 and 5
        factor[i:] *= step
    raw = np.round(adj_close / factor, 2)
    return pd.DataFrame({"symbol": "600519.SH", "ts": ts, "open": raw, "high": raw, "low": raw, "close": raw,
                         "volume": 1e9, "amount": np.nan, "adj_factor": factor})


@pytest.mark.parametrize("mode,rebalance,tol", [("reinvest", False, 2e-3), ("cash", True, 5e-3)])
def test_buy_and_hold_matches_adjusted_close_over_years(mode, rebalance, tol):
    """Reinvest: buy once and hold. Cash: dividends land in cash and a daily rebalance to weight 1
    puts them back to work, as a user's daily-rebalanced portfolio does."""
    bars = real_style_series()
    adj = bars["close"] * bars["adj_factor"]
    sig = bars[["symbol", "ts"]].assign(weight=1.0)
    if not rebalance:
        sig = sig.iloc[:1]  # buy once, then hold (no further signal)
    cfg = BacktestConfig(strategy="weights", costs=False, participation=0.0, corporate_actions=mode)
    r = run_backtest(sig, bars, cfg)
    got = r.equity.iloc[-1] / r.equity.iloc[1]
    want = adj.iloc[-1] / adj.iloc[1]
    assert got == pytest.approx(want, rel=tol)
    off = run_backtest(sig, bars, BacktestConfig(strategy="weights", costs=False, participation=0.0,
                                                 corporate_actions="off"))
    assert off.equity.iloc[-1] / off.equity.iloc[1] < 0.6 * want  # raw shares book the bonus issues as losses


def test_cash_dividends_stay_in_cash_without_rebalancing():
    bars = real_style_series()
    sig = bars[["symbol", "ts"]].iloc[:1].assign(weight=1.0)
    r = run_backtest(sig, bars, BacktestConfig(strategy="weights", costs=False, participation=0.0))
    assert r.corporate_action_cash.sum() > 0
    assert r.cash.iloc[-1] == pytest.approx(r.cash.iloc[1] + r.corporate_action_cash.sum(), rel=1e-12)


def test_numba_equals_python_with_corporate_actions():
    bars = pd.concat([real_style_series(1, 3).assign(symbol=s) for s in ("600519.SH", "000651.SZ", "600000.SH")],
                     ignore_index=True)
    rng = np.random.default_rng(3)
    sig = bars[["symbol", "ts"]].assign(score=rng.normal(size=len(bars)))
    cfg = BacktestConfig(topk=2, n_drop=1)
    a, b = run_backtest(sig, bars, cfg), run_backtest(sig, bars, cfg, engine="python")
    np.testing.assert_allclose(a.equity.to_numpy(), b.equity.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(a.corporate_action_cash.to_numpy(), b.corporate_action_cash.to_numpy(), atol=1e-9)
    assert a.corporate_action_cash.abs().sum() > 0
