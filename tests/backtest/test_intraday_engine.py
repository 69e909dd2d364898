"""The engine on intraday bars: dates (not bars) for T+1, hold_thresh and the IPO window; chunked
runs equal one-chunk runs; daily scores act at their date's last bar."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlm.backtest.engine import BacktestConfig, run_backtest
from quantlm.backtest.prepare import iter_chunks, prepare

HOURS = ("09:30", "10:30", "13:00", "14:00")  # cn 1h bars, labelled by bar start


def hourly(symbols=("600000.SH", "000001.SZ", "300001.SZ", "688001.SH"), days=12, seed=0):
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2024-03-04", periods=days)
    ts = pd.DatetimeIndex([d + pd.Timedelta(h + ":00") for d in dates for h in HOURS])
    frames = []
    for s in symbols:
        c = 10 * np.exp(np.cumsum(rng.normal(0, 0.01, len(ts))))
        o = c * np.exp(rng.normal(0, 0.002, len(ts)))
        frames.append(pd.DataFrame({"symbol": s, "ts": ts, "open": o, "high": np.maximum(o, c) * 1.001,
                                    "low": np.minimum(o, c) * 0.999, "close": c, "volume": 1e6, "amount": np.nan}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("cfg", [dict(topk=2, n_drop=1), dict(strategy="weights"), dict(topk=3, n_drop=1, hold_thresh=2)])
def test_chunked_equals_one_chunk_and_python(cfg):
    bars = hourly()
    rng = np.random.default_rng(1)
    sig = bars[["symbol", "ts"]].assign(score=rng.normal(size=len(bars)), weight=rng.uniform(0, 0.3, len(bars)))
    config = BacktestConfig(**cfg)
    whole = run_backtest(sig, bars, config)
    chunked = run_backtest(sig, bars, config, max_chunk_cells=4 * 4 * 3)  # 3 dates per chunk
    python = run_backtest(sig, bars, config, engine="python", max_chunk_cells=4 * 4 * 2)
    for other in (chunked, python):
        np.testing.assert_allclose(other.equity.to_numpy(), whole.equity.to_numpy(), rtol=1e-12)
        assert other.trades["status"].tolist() == whole.trades["status"].tolist()
        np.testing.assert_allclose(other.trades["shares_filled"], whole.trades["shares_filled"])
    assert len(whole.trades) > 10


@pytest.mark.parametrize("engine", ["numba", "python"])
def test_t_plus_1_counts_dates_not_bars(engine):
    bars = hourly(("600000.SH",), days=3)
    ts = bars["ts"]
    w = np.zeros(len(bars))
    w[0] = 1.0  # buy at 10:30 on day 1, then exit from the next bar on
    sig = bars[["symbol", "ts"]].assign(weight=w)
    t = run_backtest(sig, bars, BacktestConfig(strategy="weights", participation=0.0), engine=engine).trades
    sells = t[t["side"] == "sell"]
    same_day = sells[sells["ts"].dt.normalize() == ts.iloc[0].normalize()]
    assert len(same_day) and (same_day["reason"] == "t+1").all() and (same_day["shares_filled"] == 0).all()
    filled = sells[sells["shares_filled"] > 0]
    assert filled["ts"].iloc[0] == ts.iloc[4]  # the first bar of the next date


def test_hold_thresh_counts_dates():
    bars = hourly(("600000.SH", "000001.SZ"), days=5)
    # 600000 ranks first on the first bar only; afterwards it is the worst: TopkDropout wants to drop it
    score = np.where(bars["symbol"] == "600000.SH", -1.0, 0.0)
    score[0] = 1.0
    sig = bars[["symbol", "ts"]].assign(score=score)
    r = run_backtest(sig, bars, BacktestConfig(topk=1, n_drop=1, hold_thresh=2, participation=0.0))
    sells = r.trades[(r.trades["side"] == "sell") & (r.trades["symbol"] == "600000.SH")]
    # bought at day 1 10:30: held 1 date at day 1's close, 2 at day 2's close -> first sale on day 3
    assert sells["ts"].iloc[0] == pd.Timestamp("2024-03-06 09:30")


def test_ipo_window_counts_dates_on_intraday_bars():
    bars = hourly(("301999.SZ",), days=8)
    inst = pd.DataFrame({"symbol": ["301999.SZ"], "board": ["chinext"], "list_date": [pd.Timestamp("2024-03-04")]})
    p = prepare(bars[["symbol", "ts"]].assign(score=1.0), bars, BacktestConfig(), instruments=inst)
    up = np.concatenate([ch.limit_up[:, 0] for ch in iter_chunks(p, max_cells=8)])  # 2 dates per chunk
    free = ~np.isfinite(up)
    days = p.sessions.normalize()
    assert free[days < pd.Timestamp("2024-03-11")].all()  # the first 5 trading dates: 20 bars
    assert not free[days >= pd.Timestamp("2024-03-11")].any()


def test_daily_scores_on_intraday_bars_act_at_the_dates_last_bar():
    bars = hourly(("600000.SH", "000001.SZ"), days=3)
    dates = pd.bdate_range("2024-03-04", periods=3)
    sig = pd.DataFrame({"symbol": ["600000.SH"], "ts": [dates[0]], "weight": [0.5]})
    r = run_backtest(sig, bars, BacktestConfig(strategy="weights", participation=0.0))
    assert r.trades["ts"].iloc[0] == pd.Timestamp("2024-03-05 09:30")  # decided at day 1's close
    assert (r.equity.index == pd.DatetimeIndex(sorted(bars["ts"].unique()))).all()


def test_bar_state_limits_equal_the_rules_module():
    """The incremental limit state gives the same prices as rules.limit_price_arrays on a daily grid."""
    from quantlm.backtest.rules import limit_price_arrays

    symbols = ["600001.SH", "300002.SZ", "688003.SH", "430004.BJ", "000005.SZ", "300006.SZ"]
    dates = pd.bdate_range("2020-08-10", periods=30)
    rng = np.random.default_rng(4)
    rows = []
    for s in symbols:
        c = 10 * np.exp(np.cumsum(rng.normal(0, 0.03, len(dates))))
        rows.append(pd.DataFrame({"symbol": s, "ts": dates, "open": c, "high": c, "low": c, "close": c,
                                  "volume": 1e6, "amount": np.nan}))
    bars = pd.concat(rows, ignore_index=True)
    flags = pd.DataFrame({"symbol": ["600001.SH", "300006.SZ"], "flag": ["st", "*st"],
                          "start": [dates[3], dates[0]], "end": [dates[12], pd.NaT]})
    inst = pd.DataFrame({"symbol": ["300002.SZ", "000005.SZ", "688003.SH"], "board": ["chinext", "main", "star"],
                         "list_date": [dates[0], dates[0], dates[10]], "issue_price": [np.nan, 9.0, np.nan]})
    p = prepare(bars[["symbol", "ts"]].assign(score=1.0), bars, BacktestConfig(), instruments=inst, flags=flags)
    ch = next(iter_chunks(p))
    close = bars.pivot(index="ts", columns="symbol", values="close")[p.symbols].to_numpy()
    prev = np.vstack([np.full((1, len(symbols)), np.nan), close[:-1]])
    up, down = limit_price_arrays(p.symbols, dates, np.ones_like(close, dtype=bool), prev, inst, flags)
    np.testing.assert_array_equal(np.isfinite(ch.limit_up), np.isfinite(up))
    np.testing.assert_allclose(ch.limit_up[np.isfinite(up)], up[np.isfinite(up)])
    np.testing.assert_allclose(ch.limit_down[np.isfinite(down)], down[np.isfinite(down)])
    assert np.isfinite(up).sum() > 100 and (~np.isfinite(up)).sum() > len(symbols)
