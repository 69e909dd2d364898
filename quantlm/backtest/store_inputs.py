"""Backtest inputs read from a store: bar frequency, bars with history, instruments, flags, benchmark.

`load_from_store` and `backtest_from_store` are what `quantlm backtest` and the live parity checks use;
`quantlm.backtest.engine` re-exports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from quantlm.backtest.prepare import _ns

if TYPE_CHECKING:  # engine imports this module at its end (re-exports): import it lazily here
    from quantlm.backtest.engine import BacktestConfig, BacktestResult


def store_freq(store, symbols: list[str], scores: pd.DataFrame | None = None) -> str:
    """The bar frequency to backtest on: the only one stored for `symbols`; with several, an intraday
    one when the scores carry times of day, else 1d."""
    from quantlm.backtest.engine import BacktestConfigError

    listing = store.listing()
    freqs = sorted(set(listing.loc[listing["symbol"].isin(symbols), "freq"]))
    if not freqs:
        raise BacktestConfigError(f"the store at {store.root} has no bars for the signals' symbols")
    if len(freqs) == 1:
        return freqs[0]
    timed = scores is not None and len(scores) and (_ns(scores["ts"]) % 86_400_000_000_000 != 0).any()
    intraday = [f for f in freqs if f != "1d"]
    if timed and intraday:
        if len(intraday) > 1:
            raise BacktestConfigError(f"the store holds {', '.join(intraday)} bars for these symbols; pick one with --freq")
        return intraday[0]
    return "1d" if "1d" in freqs else freqs[0]


def load_from_store(scores: pd.DataFrame, store, config: BacktestConfig) -> dict:
    """Bars (with 60 days of history before `config.start`), instruments, flags and benchmark bars for
    `scores`, read from `store` at `config.freq` (default: `store_freq`); fills `config.benchmark` from
    the store meta when unset. A daily-only benchmark on intraday bars is used at its daily closes."""
    from quantlm.backtest.engine import BacktestConfigError

    symbols = sorted(pd.unique(scores["symbol"].astype(str)))
    freq = config.freq or store_freq(store, symbols, scores)
    config.freq = freq
    start = None if config.start is None else pd.Timestamp(config.start) - pd.Timedelta(days=60)
    end = config.end
    if end is not None and freq != "1d" and pd.Timestamp(end) == pd.Timestamp(end).normalize():
        end = pd.Timestamp(end) + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    bars = store.bars(symbols, start=start, end=end, freq=freq)
    if len(bars) == 0:
        raise BacktestConfigError(f"the store at {store.root} has no {freq} bars for the signals' symbols")
    if config.benchmark is None and store.meta().get("benchmark"):
        config.benchmark = store.meta()["benchmark"]
    bench = None
    if config.benchmark:
        bench = store.bars([config.benchmark], start=start, end=end, freq=freq)
        if len(bench) == 0 and freq != "1d":
            bench = store.bars([config.benchmark], start=start, end=end, freq="1d")
        if len(bench) == 0:
            raise BacktestConfigError(f"benchmark '{config.benchmark}' has no bars in the store at {store.root}")
    instruments, flags = store.instruments(), store.flags()
    return {"bars": bars, "instruments": instruments if len(instruments) else None,
            "flags": flags if len(flags) else None, "benchmark_bars": bench}


def backtest_from_store(scores: pd.DataFrame, store, config: BacktestConfig) -> BacktestResult:
    """`run_backtest` with bars, instruments, flags and the benchmark read from `store`."""
    from quantlm.backtest.engine import run_backtest

    return run_backtest(scores, config=config, **load_from_store(scores, store, config))
