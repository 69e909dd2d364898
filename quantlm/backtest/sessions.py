"""Sessions of a backtest result: daily returns, benchmark and turnover from daily or intraday bars.

A result is intraday when its equity index holds several time stamps on one date (bars are
labelled by their start, tz-naive exchange-local). For such results `quantlm.backtest.metrics`
measures every return metric on the daily series built here (definitions in its docstring):
daily return = last equity of the date / last equity of the previous date - 1 (the first date
against the starting cash). For daily results each function returns the per-session series the
result already holds, unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

ResultLike = Any  # quantlm.backtest.metrics.ResultLike (equity, benchmark, turnover, config.cash, returns())


def benchmark_returns(result: ResultLike) -> pd.Series | None:
    """Simple returns of the benchmark close aligned to the equity's time stamps (sessions, or bars for
    intraday results; the first one 0). `session_benchmark_returns` gives them per day."""
    bench = getattr(result, "benchmark", None)
    if bench is None or len(bench) == 0 or bench.isna().all():
        return None
    bench = bench.reindex(result.equity.index).ffill()
    return bench.pct_change().fillna(0.0)


def is_intraday(index: pd.Index) -> bool:
    """True when `index` (time stamps) holds more than one time stamp on some date."""
    ts = pd.DatetimeIndex(index)
    return bool(len(ts) > 1 and ts.normalize().has_duplicates)


_FREQ_NAMES = {1: "1min", 5: "5min", 15: "15min", 30: "30min", 60: "1h"}


def bar_minutes(index: pd.Index) -> float:
    """Bar length in minutes: the smallest gap between two bars of the same date (1440 for daily data)."""
    ts = pd.DatetimeIndex(index).sort_values().as_unit("ns")  # asi8 is in the index's unit (s, ms, us or ns)
    if not is_intraday(ts):
        return 1440.0
    same_day = ts.normalize()[1:] == ts.normalize()[:-1]
    step = np.diff(ts.asi8)
    return float(step[same_day & (step > 0)].min() / 60e9)


def infer_freq(index: pd.Index) -> str:
    """The store frequency name of these time stamps: 1d, 1h, 30min, 15min, 5min, 1min (else "<m>min")."""
    minutes = bar_minutes(index)
    if minutes == 1440.0:
        return "1d"
    return _FREQ_NAMES.get(int(minutes), f"{minutes:g}min") if minutes == int(minutes) else f"{minutes:g}min"


def _starting_cash(result: ResultLike) -> float:
    cash = getattr(getattr(result, "config", None), "cash", None)
    if cash is not None:
        return float(cash)
    first = result.returns().iloc[0]
    return float(result.equity.iloc[0] / (1.0 + first))


def session_returns(result: ResultLike) -> pd.Series:
    """Daily simple returns (index: dates at midnight; see the module docstring).

    Daily results: `result.returns()` itself. Intraday results: last equity of each date over the
    previous date's last equity - 1, the first date against the starting cash.
    """
    if not is_intraday(result.equity.index):
        return result.returns()
    equity = result.equity.astype("float64")
    last = equity.groupby(pd.DatetimeIndex(equity.index).normalize()).last()
    prev = last.shift(1)
    prev.iloc[:1] = _starting_cash(result)
    out = last / prev - 1.0
    out.index.name = "ts"
    return out.rename("returns")


def session_benchmark_returns(result: ResultLike) -> pd.Series | None:
    """Daily benchmark returns: `benchmark_returns` compounded within each date (None without a benchmark).

    For intraday data that is each date's last close over the previous date's last close, and on
    the first date its last close over its first bar's close (the benchmark is held from there).
    """
    rb = benchmark_returns(result)
    if rb is None or not is_intraday(result.equity.index):
        return rb
    out = (1.0 + rb).groupby(pd.DatetimeIndex(rb.index).normalize()).prod() - 1.0
    out.index.name = "ts"
    return out


def session_turnover(result: ResultLike) -> pd.Series | None:
    """Daily turnover: traded value of the day / the previous day's last equity (first day: the cash).

    Daily results: `result.turnover` itself. Intraday: the traded value of each bar is recovered as
    turnover_bar * the previous bar's equity and summed per date.
    """
    turnover = getattr(result, "turnover", None)
    if turnover is None or len(turnover) == 0 or not is_intraday(result.equity.index):
        return turnover
    cash = _starting_cash(result)
    equity = result.equity.astype("float64")
    prev_bar = equity.shift(1)
    prev_bar.iloc[:1] = cash
    traded = (turnover.reindex(equity.index).astype("float64") * prev_bar).fillna(0.0)
    dates = pd.DatetimeIndex(equity.index).normalize()
    per_day = traded.groupby(dates).sum()
    prev_day = equity.groupby(dates).last().shift(1)
    prev_day.iloc[:1] = cash
    return (per_day / prev_day).rename("turnover")


__all__ = ["benchmark_returns", "is_intraday", "bar_minutes", "infer_freq", "session_returns",
           "session_benchmark_returns", "session_turnover"]
