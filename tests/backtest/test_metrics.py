"""Metrics: definitions by hand, agreement with empyrical, and property tests."""

from __future__ import annotations

import empyrical
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from quantlm.backtest import metrics as M
from quantlm.testing import synthetic_result

returns_lists = st.lists(st.floats(-0.09, 0.09, allow_nan=False), min_size=3, max_size=300)


def _series(values, start="2024-01-01") -> pd.Series:
    return pd.Series(values, index=pd.bdate_range(start, periods=len(values)), dtype="float64")


@pytest.mark.parametrize("market,days", [("cn", 242), ("us", 252), ("crypto", 365)])
def test_against_empyrical(market, days):
    rng = np.random.default_rng(1)
    r = _series(rng.normal(0.0008, 0.012, 500))
    rb = _series(rng.normal(0.0003, 0.010, 500))
    assert M.annual_return(r, days) == pytest.approx(empyrical.annual_return(r, annualization=days), rel=1e-10)
    assert M.annual_volatility(r, days) == pytest.approx(empyrical.annual_volatility(r, annualization=days), rel=1e-10)
    assert M.sharpe_ratio(r, days) == pytest.approx(empyrical.sharpe_ratio(r, annualization=days), rel=1e-10)
    assert M.max_drawdown(r) == pytest.approx(empyrical.max_drawdown(r), rel=1e-10)
    assert M.information_ratio(r, rb, days) == pytest.approx(
        empyrical.excess_sharpe(r, rb) * np.sqrt(days), rel=1e-10)
    res = synthetic_result(r, benchmark_returns=rb, market=market)
    m = M.compute_metrics(res, market=market)
    assert m["annual_return"] == pytest.approx(empyrical.annual_return(r, annualization=days), rel=1e-9)
    # the benchmark's first session has no previous close: its return that day counts as 0
    bench_r = pd.concat([pd.Series([0.0], index=rb.index[:1]), rb.iloc[1:]])
    assert m["benchmark_return"] == pytest.approx(empyrical.annual_return(bench_r, annualization=days), rel=1e-9)
    assert m["information_ratio"] == pytest.approx(empyrical.excess_sharpe(r, bench_r) * np.sqrt(days), rel=1e-9)
    assert m["annual_excess_return"] == pytest.approx(m["annual_return"] - m["benchmark_return"])
    assert m["max_drawdown"] == pytest.approx(empyrical.max_drawdown(r), rel=1e-9)
    assert m["calmar"] == pytest.approx(empyrical.calmar_ratio(r, annualization=days), rel=1e-9)


def test_hand_examples():
    r = _series([0.01, -0.02, -0.01, 0.0, -0.03, 0.05])
    assert M.max_consecutive_losses(r) == 2
    assert M.win_rate(r) == pytest.approx(2 / 5)
    # peak 1.01, trough 1.01*0.98*0.99*0.97
    assert M.max_drawdown(r) == pytest.approx(0.98 * 0.99 * 0.97 - 1)
    assert M.max_drawdown(_series([0.01, 0.02])) == 0.0
    assert M.max_drawdown(_series([-0.1, 0.05])) == pytest.approx(-0.1)  # starting cash is the first peak
    assert M.annual_return(_series([0.001] * 242), 242) == pytest.approx(1.001**242 - 1)
    assert M.annualisation_days("us") == 252
    with pytest.raises(ValueError, match="unknown market"):
        M.annualisation_days("mars")


@settings(max_examples=60, deadline=None)
@given(returns_lists)
def test_properties(values):
    r = _series(values)
    mdd = M.max_drawdown(r)
    assert -1 <= mdd <= 0
    assert 0 <= M.max_consecutive_losses(r) <= len(values)
    assert M.max_consecutive_losses(r) >= (1 if (r < 0).any() else 0)
    wr = M.win_rate(r)
    assert np.isnan(wr) or 0 <= wr <= 1
    assert M.annual_return(r, 242) > -1
    assert M.max_drawdown(r) == pytest.approx(empyrical.max_drawdown(r), abs=1e-12)
    # scaling all returns by a positive constant leaves the Sharpe ratio unchanged
    s1, s2 = M.sharpe_ratio(r, 252), M.sharpe_ratio(r * 0.5, 252)
    assert (np.isnan(s1) and np.isnan(s2)) or s1 == pytest.approx(s2, rel=1e-6, abs=1e-9)


def _scores_labels(seed=0, n_sessions=20, n_symbols=30, signal=0.5):
    rng = np.random.default_rng(seed)
    ts = pd.bdate_range("2024-01-01", periods=n_sessions)
    rows = []
    for t in ts:
        score = rng.normal(size=n_symbols)
        label = signal * score * 0.01 + rng.normal(0, 0.01, n_symbols)
        rows += [(f"S{i}", t, score[i], label[i]) for i in range(n_symbols)]
    df = pd.DataFrame(rows, columns=["symbol", "ts", "score", "label"])
    return df[["symbol", "ts", "score"]], df[["symbol", "ts", "label"]]


def test_ic_matches_scipy():
    scores, labels = _scores_labels()
    ics = M.ic_series(scores, labels)
    assert len(ics) == 20 and (ics["n"] == 30).all()
    for t in ics.index[:5]:
        s = scores[scores["ts"] == t]["score"].to_numpy()
        lab = labels[labels["ts"] == t]["label"].to_numpy()
        assert ics.loc[t, "ic"] == pytest.approx(stats.pearsonr(s, lab)[0], rel=1e-9)
        assert ics.loc[t, "rank_ic"] == pytest.approx(stats.spearmanr(s, lab)[0], rel=1e-9)
    assert ics["ic"].mean() > 0.2


def test_ic_skips_degenerate_sessions():
    scores, labels = _scores_labels(n_sessions=3, n_symbols=5)
    t0 = scores["ts"].iloc[0]
    scores.loc[scores["ts"] == t0, "score"] = 1.0  # constant score: no IC that day
    labels = labels[~((labels["ts"] == scores["ts"].unique()[1]) & (labels["symbol"] != "S0"))]
    assert list(M.ic_series(scores, labels).index) == [scores["ts"].unique()[2]]


def test_directional_accuracy():
    scores, labels = _scores_labels(signal=0.0)
    assert M.directional_accuracy(scores, labels) == pytest.approx(0.5, abs=0.06)
    perfect = labels.rename(columns={"label": "score"})
    assert M.directional_accuracy(perfect, labels) == 1.0
    assert M.directional_accuracy(perfect, labels, direction="absolute") == 1.0
    # probabilities of an up move: 0.5 is the threshold
    prob = perfect.assign(score=0.5 + np.sign(perfect["score"]) * 0.2)
    assert M.directional_accuracy(prob, labels, direction="absolute", threshold=0.5) == 1.0
    assert M.directional_accuracy(prob, labels, direction="relative") == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="direction"):
        M.directional_accuracy(scores, labels, direction="up")


def test_compute_metrics_keys_and_counts():
    scores, labels = _scores_labels()
    idx = pd.DatetimeIndex(sorted(scores["ts"].unique()))
    r = pd.Series(np.linspace(-0.01, 0.01, len(idx)), index=idx)
    res = synthetic_result(r, benchmark_returns=r * 0.5)
    m = M.compute_metrics(res, scores, labels)
    for key in ["ic", "rank_ic", "icir", "rank_icir", "annual_return", "benchmark_return", "annual_excess_return",
                "sharpe", "information_ratio", "max_drawdown", "max_consecutive_losing_days", "daily_win_rate",
                "directional_accuracy", "turnover", "total_costs", "n_trades", "n_rejected"]:
        assert key in m and isinstance(m[key], float)
    assert m["n_trades"] == 2 * len(idx) and m["n_rejected"] == 2
    assert m["total_costs"] == pytest.approx(res.costs.sum())
    assert m["ic"] > 0.2
    no_bench = M.compute_metrics(synthetic_result(r))
    assert np.isnan(no_bench["annual_excess_return"]) and np.isnan(no_bench["ic"])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), power=st.sampled_from([1, 3]), shift=st.floats(-5, 5))
def test_rank_ic_invariant_to_monotone_transforms(seed, power, shift):
    scores, labels = _scores_labels(seed=seed, n_sessions=4, n_symbols=12)
    transformed = scores.assign(score=scores["score"] ** power + shift)
    a, b = M.ic_series(scores, labels), M.ic_series(transformed, labels)
    np.testing.assert_allclose(a["rank_ic"], b["rank_ic"], atol=1e-12)
    assert M.directional_accuracy(scores, labels) == M.directional_accuracy(transformed, labels)
    assert ((a["ic"].abs() <= 1 + 1e-12) & (a["rank_ic"].abs() <= 1 + 1e-12)).all()
