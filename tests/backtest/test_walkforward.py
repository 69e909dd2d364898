"""Walk-forward: fold layout and embargo, no training on the test period, seeds, parallel == inline."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from quantlm.backtest.engine import BacktestConfig
from quantlm.backtest.walkforward import Fold, WalkForwardConfig, WalkForwardError, make_folds, walk_forward
from quantlm.baselines import lightgbm_model, momentum_model
from tests.conftest import make_bars

CAL = pd.bdate_range("2020-01-01", "2023-12-31")
SYMBOLS = [f"{600000 + i}.SH" for i in range(8)]


@pytest.mark.parametrize("mode", ["expanding", "rolling"])
def test_make_folds_layout(mode):
    folds = make_folds(CAL, WalkForwardConfig(mode=mode, train_years=1.5, test_months=6))
    assert len(folds) == 5
    for prev, fold in zip(folds, folds[1:], strict=False):
        assert CAL.get_loc(fold.test_start) == CAL.get_loc(prev.test_end) + 1  # test periods tile the sample
    for fold in folds:
        # exactly 2 embargo sessions between the last training session and the first test session
        assert CAL.get_loc(fold.test_start) - CAL.get_loc(fold.train_end) == 3
        assert fold.train_start == CAL[0] if mode == "expanding" else fold.train_start >= CAL[0]
    if mode == "rolling":
        spans = [(f.test_start - f.train_start).days for f in folds]
        assert max(spans) - min(spans) <= 5  # same 18-month window
    assert folds[-1].test_end == CAL[-1]


def test_make_folds_errors():
    with pytest.raises(WalkForwardError, match="no walk-forward fold"):
        make_folds(CAL[:100], WalkForwardConfig(train_years=1.0))
    with pytest.raises(WalkForwardError, match="mode"):
        make_folds(CAL, WalkForwardConfig(mode="sliding"))
    assert getattr(WalkForwardError("x"), "user_facing", False)


SEEN: list[tuple[pd.Timestamp, pd.Timestamp]] = []


def spy_model(train_bars, seed):
    SEEN.append((train_bars["ts"].min(), train_bars["ts"].max()))
    return momentum_model(train_bars, seed, window=5)


@pytest.fixture(scope="module")
def bars():
    return make_bars(symbols=SYMBOLS, periods=260, seed=21, start="2022-01-03")


def _config():
    return BacktestConfig(topk=3, n_drop=1)


def test_model_never_sees_the_test_period(bars):
    SEEN.clear()
    cfg = WalkForwardConfig(mode="rolling", train_years=0.5, test_months=2)
    res = walk_forward(bars, spy_model, cfg, seeds=[0], config=_config())
    assert len(SEEN) == len(res.folds) >= 3
    for (lo, hi), fold in zip(SEEN, res.folds, strict=True):
        assert lo == fold.train_start and hi == fold.train_end < fold.test_start
    for run in res.runs:
        assert run.scores["ts"].min() >= run.fold.test_start and run.scores["ts"].max() <= run.fold.test_end
        assert run.result.equity.index[0] >= run.fold.test_start and run.result.equity.index[-1] <= run.fold.test_end


def test_lightgbm_seeds_summary_and_parallel(bars):
    folds = make_folds(pd.DatetimeIndex(sorted(bars["ts"].unique())), WalkForwardConfig(train_years=0.6, test_months=3))
    model = functools.partial(lightgbm_model, num_boost_round=8, num_threads=1)
    inline = walk_forward(bars, model, folds[:2], seeds=[0, 1], n_jobs=1, config=_config())
    assert len(inline.runs) == 4
    table, summary = inline.table, inline.summary
    assert set(table["seed"]) == {0, 1} and set(table["fold"]) == {0, 1}
    assert summary.loc["sharpe", "mean"] == pytest.approx(table["sharpe"].mean())
    assert summary.loc["sharpe", "std"] == pytest.approx(table["sharpe"].std(ddof=1))
    oos = inline.scores(0)
    assert oos["ts"].min() == folds[0].test_start and oos["ts"].max() == folds[1].test_end
    parallel = walk_forward(bars, model, folds[:2], seeds=[0, 1], n_jobs=2, config=_config())
    pd.testing.assert_frame_equal(inline.table, parallel.table)
    d = parallel.to_dict()
    assert len(d["runs"]) == 4 and "rank_ic" in d["summary"]


def test_walk_forward_errors(bars):
    fold = Fold(0, bars["ts"].min(), bars["ts"].iloc[100], bars["ts"].iloc[103], bars["ts"].iloc[150])
    with pytest.raises(WalkForwardError, match="n_jobs"):
        walk_forward(bars, spy_model, [fold], n_jobs=0)
    with pytest.raises(WalkForwardError, match="seeds"):
        walk_forward(bars, spy_model, [fold], seeds=[])
    with pytest.raises(ValueError, match="picklable"):
        walk_forward(bars, lambda b, s: momentum_model(b, s), [fold, fold], n_jobs=2, config=_config())
    assert np.isfinite(walk_forward(bars, spy_model, [fold], config=_config()).runs[0].metrics["sharpe"])
