"""`run_evaluation` on an intraday (30-min cn) store: baselines in bars, folds on dates, metrics by day."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from quantlm.baselines.compare import EvaluateOptions, evaluation_freq, evaluation_setup, run_evaluation
from quantlm.data.store import Store

CN_30MIN = ["09:30", "10:00", "10:30", "11:00", "13:00", "13:30", "14:00", "14:30"]  # bar starts, lunch gap
SYMBOLS = ["600000.SH", "600001.SH", "600002.SH"]
BENCHMARK = "000300.SH"


def intraday_bars(days: pd.DatetimeIndex, symbols: list[str], seed: int = 0) -> pd.DataFrame:
    """Random-walk 30-min bars (prices in CNY, volume in shares, amount in CNY) for each symbol."""
    rng = np.random.default_rng(seed)
    rows = []
    for j, sym in enumerate(symbols):
        price = 10.0 + 5 * j
        for d in days:
            for t in CN_30MIN:
                o = price
                c = o * (1 + rng.normal(0.0, 0.004))
                v = float(rng.integers(50_000, 200_000))
                rows.append((sym, pd.Timestamp(f"{d:%Y-%m-%d} {t}"), o, max(o, c) * 1.001, min(o, c) * 0.999, c, v,
                             v * (o + c) / 2))
                price = c
    return pd.DataFrame(rows, columns=["symbol", "ts", "open", "high", "low", "close", "volume", "amount"])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    days = pd.bdate_range("2024-01-02", periods=44)
    s = Store(tmp_path_factory.mktemp("store30"))
    s.write_bars(intraday_bars(days, [*SYMBOLS, BENCHMARK]), market="cn", freq="30min")
    with s.transaction() as tx:
        tx.set_meta("market", "cn")
        tx.set_meta("benchmark", BENCHMARK)
    return s


def options(**kw) -> EvaluateOptions:
    base = dict(train_years=1 / 12, test_months=1, topk=1, n_drop=1, num_boost_round=5, cash=1_000_000.0)
    return EvaluateOptions(**{**base, **kw})


def test_freq_default_and_setup(store):
    assert evaluation_freq(store, options()) == "30min"  # the store's only frequency
    assert evaluation_freq(store, options(freq="1h")) == "1h"
    with pytest.raises(FileNotFoundError, match="no 1d bars"):
        evaluation_setup(store, options(freq="1d"))
    setup = evaluation_setup(store, options())
    assert setup.freq == "30min" and BENCHMARK not in set(setup.bars["symbol"])
    assert setup.start.strftime("%H:%M") == "09:30" and setup.end.strftime("%H:%M") == "14:30"
    dates = pd.DatetimeIndex(setup.bars["ts"]).normalize().unique().sort_values()
    for fold in setup.folds:  # folds split on dates, with a one-day embargo (>= 2 bars: label lag + horizon)
        assert fold.train_end.strftime("%H:%M") == "14:30" and fold.test_start.strftime("%H:%M") == "09:30"
        assert dates.get_loc(fold.test_start.normalize()) - dates.get_loc(fold.train_end.normalize()) == 2
    # labels are per bar: the next bar's open to the one after
    lab = setup.labels.set_index(["symbol", "ts"])["label"]
    b = setup.bars[setup.bars["symbol"] == SYMBOLS[0]].reset_index(drop=True)
    assert lab[(SYMBOLS[0], b["ts"][3])] == pytest.approx(b["open"][5] / b["open"][4] - 1)


def test_run_evaluation_intraday(store, tmp_path):
    out = tmp_path / "eval"
    summary = run_evaluation(store, out, options())
    for name in ("metrics.json", "equity.csv", "trades.csv", "report.html"):
        assert (out / name).exists(), name
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["freq"] == "30min"
    runs = summary["runs"]
    assert {"lightgbm", "momentum-20", "reversal-5", "benchmark"} <= set(runs)
    setup = evaluation_setup(store, options())
    dates = pd.DatetimeIndex(setup.bars["ts"]).normalize().unique()
    n_days = int(((dates >= setup.start.normalize()) & (dates <= setup.end)).sum())
    assert n_days >= 5
    for name, run in runs.items():
        m = run["metrics"]
        assert m["n_sessions"] == n_days, name  # days, not bars
        assert m["n_bars"] == 8 * n_days and m["freq_minutes"] == 30.0, name
    assert np.isfinite(runs["lightgbm"]["metrics"]["rank_ic"])
    equity = pd.read_csv(out / "equity.csv")
    assert len(equity) == 8 * n_days and equity["ts"].iloc[0].endswith("09:30:00")
    assert "walk_forward" in payload and len(payload["walk_forward"]["folds"]) >= 1
