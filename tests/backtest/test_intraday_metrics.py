"""Metrics of intraday results are measured by session (day), not by bar; daily results are unchanged."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from quantlm.backtest import metrics as M
from quantlm.backtest.walkforward import WalkForwardConfig, make_folds
from quantlm.testing import synthetic_result

CN_30MIN = ["09:30", "10:00", "10:30", "11:00", "13:00", "13:30", "14:00", "14:30"]  # bar starts, lunch gap
CASH = 1_000_000.0


def bar_index(n_days: int = 20, times=CN_30MIN, start: str = "2024-03-01") -> pd.DatetimeIndex:
    """Bar-start time stamps of `n_days` business days (tz-naive, exchange-local)."""
    days = pd.bdate_range(start, periods=n_days)
    return pd.DatetimeIndex([pd.Timestamp(f"{d:%Y-%m-%d} {t}") for d in days for t in times], name="ts")


def result_of(equity: pd.Series, turnover: pd.Series | None = None, benchmark: pd.Series | None = None):
    """A BacktestResult-like object for a given equity curve (starting cash CASH)."""
    idx = equity.index

    def returns() -> pd.Series:
        prev = equity.shift(1)
        prev.iloc[:1] = CASH
        return (equity / prev - 1.0).rename("returns")

    zeros = pd.Series(0.0, index=idx)
    return SimpleNamespace(config=SimpleNamespace(cash=CASH, market="cn"), equity=equity, benchmark=benchmark,
                           trades=pd.DataFrame(), turnover=turnover if turnover is not None else zeros, costs=zeros,
                           exposure=pd.Series(1.0, index=idx), cash=zeros, returns=returns)


def random_equity(idx: pd.DatetimeIndex, seed: int = 0) -> pd.Series:
    r = np.random.default_rng(seed).normal(0.0003, 0.004, len(idx))
    return pd.Series(CASH * np.cumprod(1 + r), index=idx, name="equity")


def daily_sample(equity: pd.Series) -> pd.Series:
    """The same equity sampled at each day's last bar, dated at midnight (a daily result's index)."""
    last = equity.groupby(equity.index.normalize()).last()
    last.index.name = "ts"
    return last


def test_annualisation_uses_days():
    idx = bar_index()
    eq = random_equity(idx)
    intraday = M.compute_metrics(result_of(eq), market="cn")
    daily = M.compute_metrics(result_of(daily_sample(eq)), market="cn")
    for key in ("total_return", "annual_return", "annual_volatility", "sharpe", "daily_win_rate",
                "max_consecutive_losing_days"):
        assert intraday[key] == pytest.approx(daily[key], rel=1e-12), key
    assert intraday["n_sessions"] == daily["n_sessions"] == 20
    assert intraday["n_bars"] == 160 and daily["n_bars"] == 20
    assert intraday["freq_minutes"] == 30.0 and daily["freq_minutes"] == 1440.0
    # per-bar annualisation (242 "sessions" a year on bar returns) would give another Sharpe
    bar_r = result_of(eq).returns()
    assert M.sharpe_ratio(bar_r, 242) != pytest.approx(intraday["sharpe"], rel=1e-3)


def test_losing_streak_counts_days():
    idx = bar_index(n_days=6)
    r = pd.Series(0.001, index=idx)
    day = idx.normalize()
    r[day == day.unique()[2]] = -0.001  # eight losing bars in one losing day
    eq = CASH * (1 + r).cumprod()
    m = M.compute_metrics(result_of(eq), market="cn")
    assert m["max_consecutive_losing_days"] == 1.0
    assert m["daily_win_rate"] == pytest.approx(5 / 6)
    assert M.max_consecutive_losses(result_of(eq).returns()) == 8  # what counting bars would say
    # a day that dips but closes up is a winning day; two losing days in a row count 2
    r2 = pd.Series(0.001, index=idx)
    r2[idx == idx[8]] = -0.002  # first bar of day 2 loses, the day ends up
    r2[(day == day.unique()[3]) | (day == day.unique()[4])] = -0.0005
    m2 = M.compute_metrics(result_of(CASH * (1 + r2).cumprod()), market="cn")
    assert m2["max_consecutive_losing_days"] == 2.0


def test_first_day_against_cash_and_drawdown_on_bars():
    idx = bar_index(n_days=3)
    eq = pd.Series(CASH, index=idx, dtype="float64")
    eq.iloc[0:8] = CASH * 1.01  # day 1: +1% against the starting cash
    eq.iloc[8:16] = CASH * 1.01
    eq.iloc[11] = CASH * 0.95  # an intraday trough inside day 2, recovered by its close
    eq.iloc[16:] = CASH * 1.02
    sr = M.session_returns(result_of(eq))
    assert list(sr.index) == list(pd.bdate_range("2024-03-01", periods=3))
    assert sr.iloc[0] == pytest.approx(0.01) and sr.iloc[1] == pytest.approx(0.0)
    m = M.compute_metrics(result_of(eq), market="cn")
    assert m["max_drawdown"] == pytest.approx(0.95 / 1.01 - 1)  # the bar equity's trough counts
    assert m["total_return"] == pytest.approx(0.02)


def test_benchmark_and_turnover_by_day():
    idx = bar_index(n_days=5)
    eq = random_equity(idx, seed=3)
    bench = pd.Series(3000.0 * np.cumprod(1 + np.random.default_rng(4).normal(0, 0.003, len(idx))), index=idx)
    turnover = pd.Series(0.0, index=idx)
    turnover[idx[9]] = 0.10  # day 2: two trades
    turnover[idx[13]] = 0.05
    res = result_of(eq, turnover=turnover, benchmark=bench)
    last = bench.groupby(idx.normalize()).last()
    expected = last / last.shift(1) - 1.0
    expected.iloc[0] = last.iloc[0] / bench.iloc[0] - 1.0  # held from the first bar's close
    rb = M.session_benchmark_returns(res)
    np.testing.assert_allclose(rb.to_numpy(), expected.to_numpy(), rtol=1e-9, atol=1e-15)
    m = M.compute_metrics(res, market="cn")
    r = M.session_returns(res)
    assert m["information_ratio"] == pytest.approx(M.sharpe_ratio(r - expected, 242), rel=1e-10)
    assert m["benchmark_return"] == pytest.approx(M.annual_return(expected, 242), rel=1e-10)
    prev_bar = eq.shift(1)
    traded = 0.10 * prev_bar[idx[9]] + 0.05 * prev_bar[idx[13]]
    day_turnover = traded / eq.iloc[7]  # over day 1's last equity
    assert m["turnover"] == pytest.approx(day_turnover / 5, rel=1e-12)


def test_daily_results_unchanged():
    rng = np.random.default_rng(7)
    r = pd.Series(rng.normal(0.0005, 0.01, 120), index=pd.bdate_range("2024-01-01", periods=120))
    res = synthetic_result(r, benchmark_returns=pd.Series(rng.normal(0, 0.01, 120), index=r.index))
    assert not M.is_intraday(res.equity.index)
    pd.testing.assert_series_equal(M.session_returns(res), res.returns())
    assert M.session_turnover(res) is res.turnover
    m = M.compute_metrics(res, market="cn")
    assert m["sharpe"] == M.sharpe_ratio(res.returns(), 242)
    assert m["turnover"] == float(res.turnover.mean())
    assert m["n_sessions"] == m["n_bars"] == 120 and m["freq_minutes"] == 1440.0


def test_infer_freq():
    assert M.infer_freq(bar_index(times=CN_30MIN)) == "30min"
    assert M.infer_freq(bar_index(times=["09:30", "10:30", "13:00", "14:00"])) == "1h"
    assert M.infer_freq(pd.bdate_range("2024-01-01", periods=5)) == "1d"


def test_folds_split_on_dates():
    idx = bar_index(n_days=130, start="2024-01-02")
    folds = make_folds(idx, WalkForwardConfig(train_years=2 / 12, test_months=1))
    assert len(folds) >= 3
    days = idx.normalize()
    for f in folds:
        for bound in (f.train_start, f.test_start):  # first bar of a date
            assert bound in idx and bound.strftime("%H:%M") == "09:30"
        for bound in (f.train_end, f.test_end):  # last bar of a date
            assert bound in idx and bound.strftime("%H:%M") == "14:30"
        # the embargo covers >= 2 bars (label lag + horizon) and is one whole day
        between = idx[(idx > f.train_end) & (idx < f.test_start)]
        assert len(between) == 8 and days[idx.get_loc(f.train_end)] < days[idx.get_loc(f.test_start)]
    assert make_folds(idx, WalkForwardConfig(train_years=2 / 12, test_months=1, embargo_bars=9))[0].train_end == (
        idx[idx.get_loc(folds[0].test_start) - 17])  # 9 bars need two whole days


def test_report_renders_intraday(tmp_path):
    pytest.importorskip("plotly")
    from quantlm.backtest.report import render_report

    idx = bar_index(n_days=4)
    res = result_of(random_equity(idx))
    page = render_report(res, M.compute_metrics(res, market="cn"))
    assert "4 sessions (32 30min bars)" in page
