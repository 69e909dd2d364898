"""Rule-based baselines: buy-and-hold of the benchmark, momentum, reversal, and the synthetic oracle.

Scores follow the Scores contract (symbol, ts, score): a score at t uses bars up to t's close only.
Returns are simple returns as fractions, on prices adjusted with adj_factor where given.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantlm.features.labels import adjusted_bars, check_bars


def _past_return(bars: pd.DataFrame, window: int) -> pd.DataFrame:
    if window < 1:
        raise ValueError(f"window must be >= 1 bar, got {window}")
    check_bars(bars, ("symbol", "ts", "close"))
    adj = adjusted_bars(bars)
    close = adj["close"].to_numpy(dtype="float64")
    past = adj.groupby("symbol", sort=False)["close"].shift(window).to_numpy(dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = close / past - 1.0
    out = pd.DataFrame({"symbol": adj["symbol"].to_numpy(), "ts": adj["ts"].to_numpy(), "score": ret})
    return out[np.isfinite(out["score"])].reset_index(drop=True)


def momentum(bars: pd.DataFrame, window: int = 20) -> pd.DataFrame:
    """score(t) = close(t) / close(t - window bars) - 1: recent winners rank high."""
    return _past_return(bars, window)


def reversal(bars: pd.DataFrame, window: int = 5) -> pd.DataFrame:
    """score(t) = -(close(t) / close(t - window bars) - 1): recent losers rank high."""
    out = _past_return(bars, window)
    out["score"] = -out["score"]
    return out


def oracle(store) -> pd.DataFrame:
    """Scores from a synthetic store's `oracle` table: score = the generator's expected return.

    The expected return is on the evaluation label's horizon, so this is the best any model can do
    on that market; a backtest of it bounds what the strategy and costs allow.
    """
    table = store.read_table("oracle")
    if len(table) == 0:
        raise FileNotFoundError(f"store {store.root} has no 'oracle' table (only synthetic markets have one)")
    missing = [c for c in ("symbol", "ts", "expected_return") if c not in table.columns]
    if missing:
        raise ValueError(f"oracle table lacks column(s) {', '.join(missing)}")
    out = pd.DataFrame({"symbol": table["symbol"].astype(str).to_numpy(), "ts": pd.to_datetime(table["ts"]).to_numpy(),
                        "score": table["expected_return"].to_numpy(dtype="float64")})
    return out.sort_values(["symbol", "ts"]).reset_index(drop=True)


def benchmark(benchmark_bars: pd.DataFrame, cash: float = 1_000_000.0, market: str = "cn", start=None, end=None):
    """Buy and hold of the benchmark as a BacktestResult, built straight from its close prices.

    equity_t = cash * close_t / close_{t0} for the sessions t0..tn in [start, end]: the index is
    bought at t0's close without costs (an index is not itself tradable; an ETF's fees are ignored).
    """
    from quantlm.backtest.engine import BacktestConfig, BacktestResult

    check_bars(benchmark_bars, ("symbol", "ts", "close"))
    symbols = benchmark_bars["symbol"].unique()
    if len(symbols) != 1:
        raise ValueError(f"benchmark bars must hold one symbol, got {len(symbols)}")
    bars = adjusted_bars(benchmark_bars)
    if start is not None:
        bars = bars[bars["ts"] >= pd.Timestamp(start)]
    if end is not None:
        bars = bars[bars["ts"] <= pd.Timestamp(end)]
    if len(bars) == 0:
        raise ValueError("no benchmark bars in the requested period")
    idx = pd.DatetimeIndex(bars["ts"], name="ts")
    close = pd.Series(bars["close"].to_numpy(dtype="float64"), index=idx)
    equity = cash * (close / close.iloc[0])
    zeros = pd.Series(0.0, index=idx)
    positions = pd.DataFrame({"ts": idx, "symbol": symbols[0], "shares": cash / close.iloc[0],
                              "value": equity.to_numpy(), "weight": 1.0})
    trades = pd.DataFrame(columns=["ts", "symbol", "side", "shares_requested", "shares_filled", "price", "value",
                                   "commission", "stamp_duty", "transfer_fee", "slippage", "impact", "borrow_fee",
                                   "total_cost", "status", "reason"])
    config = BacktestConfig(market=market, strategy="weights", cash=cash, benchmark=str(symbols[0]), costs=False,
                            start=idx[0], end=idx[-1])
    return BacktestResult(config=config, equity=equity.rename("equity"), cash=zeros.rename("cash"),
                          benchmark=close.rename("benchmark"), positions=positions, trades=trades,
                          turnover=zeros.rename("turnover"), costs=zeros.rename("costs"),
                          exposure=pd.Series(1.0, index=idx, name="exposure"))


def momentum_model(train_bars: pd.DataFrame, seed: int = 0, window: int = 20):
    """Walk-forward model_fn: momentum needs no training; returns a scorer bars -> Scores."""
    return _RuleScorer("momentum", window)


def reversal_model(train_bars: pd.DataFrame, seed: int = 0, window: int = 5):
    """Walk-forward model_fn for the reversal rule."""
    return _RuleScorer("reversal", window)


class _RuleScorer:
    """A picklable scorer for a rule baseline."""

    def __init__(self, rule: str, window: int) -> None:
        self.rule, self.window = rule, window

    def __call__(self, bars: pd.DataFrame) -> pd.DataFrame:
        return (momentum if self.rule == "momentum" else reversal)(bars, self.window)
