"""Cross-check: single-symbol long/flat signals give the same equity curve as vectorbt and backtesting.py.

What had to be aligned (our engine is configured as a plain market: no lots or whole shares, no
limits, no shorting, commission only, no participation cap):

- timing: our score at t fills on t+1; vectorbt's `entries[t]` fills at `price[t]`, so its signals
  are ours shifted by one bar, with `price=open` (our fill="open") or `price=close` (fill="close").
  backtesting.py's orders from `next()` at bar t fill at t+1's open; with `trade_on_close=True` they fill
  at t's close, so that strategy acts on the previous bar's signal.
- sizing: an all-in buy takes cash / (price * (1 + fee)) units (vectorbt `size=inf`; backtesting.py
  `size` just below 1, whose int() rounding equals our whole-share lot rounding); exits sell everything.
- costs: a proportional commission on both sides (our CostModel(commission_rate=fee); vectorbt `fees`;
  backtesting.py `commission`). Slippage is left out (vectorbt moves the price, we book a cost).
- backtesting.py with trade_on_close books a fill after recording that bar's equity, so with fees the
  fill bars themselves differ by the fee; every other bar must match.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from quantlm.backtest.costs import CostModel
from quantlm.backtest.engine import BacktestConfig, run_backtest
from quantlm.backtest.rules import MarketRules
from tests.conftest import make_bars

CASH = 10_000.0


@pytest.fixture(scope="module")
def market():
    bars = make_bars(["SPY"], periods=300, seed=3)
    close = bars.set_index("ts")["close"]
    long = close > close.rolling(10).mean()
    sig = pd.DataFrame({"symbol": "SPY", "ts": close.index, "score": np.where(long, 1.0, -1.0)})
    return bars, sig, long


def ours(bars, sig, step, fee, fill):
    rules = MarketRules("plain", lot_size=step, sell_step=step, price_limits=False, allow_short=False)
    cfg = BacktestConfig(market="us", strategy="threshold", rules=rules, cost_model=CostModel(commission_rate=fee),
                         participation=0.0, fill=fill, cash=CASH)
    return run_backtest(sig, bars, cfg)


@pytest.mark.parametrize("step", [0.0, 1.0], ids=["fractional", "whole"])
@pytest.mark.parametrize("fee", [0.0, 0.001], ids=["no-costs", "costs"])
@pytest.mark.parametrize("fill", ["open", "close"])
def test_equity_matches_vectorbt(market, step, fee, fill):
    vbt = pytest.importorskip("vectorbt")
    bars, sig, long = market
    px = bars.set_index("ts")
    r = ours(bars, sig, step, fee, fill)
    entries = long.shift(1, fill_value=False)
    exits = ~long.shift(1, fill_value=True)
    pf = vbt.Portfolio.from_signals(px["close"], entries=entries, exits=exits, price=px[fill], fees=fee, init_cash=CASH,
                                    size=np.inf, size_granularity=step or None, freq="1D")
    np.testing.assert_allclose(r.equity.to_numpy(), pf.value().to_numpy(), rtol=1e-9)
    assert (r.trades["status"] == "filled").sum() == pf.orders.count()


@pytest.mark.parametrize("fee", [0.0, 0.001], ids=["no-costs", "costs"])
@pytest.mark.parametrize("trade_on_close", [False, True])
def test_equity_matches_backtesting_py(market, fee, trade_on_close):
    bt_mod = pytest.importorskip("backtesting")
    bars, sig, long = market
    data = bars.set_index("ts").rename(columns=str.capitalize)[["Open", "High", "Low", "Close", "Volume"]]
    signal = long.to_numpy()
    lag = 1 if trade_on_close else 0

    class LongFlat(bt_mod.Strategy):
        def init(self):
            pass

        def next(self):
            j = len(self.data) - 1 - lag
            if j < 0:
                return
            if signal[j] and not self.position:
                self.buy(size=1 - 1e-12)
            elif not signal[j] and self.position:
                self.position.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = bt_mod.Backtest(data, LongFlat, cash=CASH, commission=fee, trade_on_close=trade_on_close,
                                finalize_trades=False).run()
    theirs = stats._equity_curve["Equity"].to_numpy()
    r = ours(bars, sig, 1.0, fee, "close" if trade_on_close else "open")
    mine = r.equity.to_numpy()
    check = np.ones(len(mine), dtype=bool)
    if trade_on_close and fee:
        check &= ~r.equity.index.isin(r.trades["ts"])
    np.testing.assert_allclose(mine[check], theirs[check], rtol=1e-9)
    # an order placed on the last bar is never filled by backtesting.py
    assert 0 <= (r.trades["side"] == "buy").sum() - int(stats["# Trades"]) <= 1


def test_signal_grid_equals_single_runs(market):
    from quantlm.backtest.engine import run_signal_grid

    bars, sig, _ = market
    close = bars.set_index("ts")["close"]
    wide = pd.DataFrame({w: close / close.rolling(w).mean() - 1 for w in (3, 10, 30)})
    rules = MarketRules("plain", lot_size=1, sell_step=1, price_limits=False, allow_short=False)
    cfg = BacktestConfig(market="us", strategy="threshold", rules=rules, cash=CASH, participation=0.0)
    grid = run_signal_grid(wide, bars, cfg)
    for w in wide.columns:
        one = run_backtest(pd.DataFrame({"symbol": "SPY", "ts": wide.index, "score": wide[w].to_numpy()}), bars, cfg)
        np.testing.assert_array_equal(grid[w].to_numpy(), one.equity.to_numpy())
