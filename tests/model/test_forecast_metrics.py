"""Forecast evaluation maths: CRPS estimators, coverage, baselines and the per-horizon report."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from quantlm.predict.metrics import (
    central_interval,
    crps_from_samples,
    crps_gaussian,
    crps_gaussian_array,
    crps_samples,
    direction_accuracy,
    evaluate_forecasts,
    historical_vol_intervals,
    interval_coverage,
    mae,
    persistence_forecast,
    pit_values,
    quantiles_from_samples,
    trailing_vol,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


def _crps_bruteforce(x: np.ndarray, y: float) -> float:
    return float(np.abs(x - y).mean() - 0.5 * np.abs(x[:, None] - x[None, :]).mean())


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.integers(1, 40), elements=finite), finite)
def test_crps_nonnegative_and_equals_bruteforce(x, y):
    c = float(crps_samples(x, np.float64(y)))
    assert c >= 0
    assert c == pytest.approx(_crps_bruteforce(x, y), rel=1e-9, abs=1e-9)


@settings(max_examples=50, deadline=None)
@given(finite, finite, st.integers(1, 20))
def test_crps_point_mass_is_absolute_error(x, y, k):
    assert crps_from_samples(np.full(k, x), y) == pytest.approx(abs(x - y), rel=1e-12, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, 30, elements=finite), arrays(np.float64, 30, elements=st.floats(0, 100)),
       arrays(np.float64, 30, elements=finite))
def test_coverage_in_unit_interval(lo, width, y):
    c = interval_coverage(lo, lo + width, y)
    assert 0.0 <= c <= 1.0
    assert interval_coverage(lo, lo + width, lo) == 1.0


def test_crps_samples_matches_gaussian_closed_form():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(0, 1, 8), rng.uniform(0.5, 2.0, 8)
    y = mu + sigma * rng.normal(0, 1.5, 8)
    samples = mu[:, None] + sigma[:, None] * rng.standard_normal((8, 40_000))
    np.testing.assert_allclose(crps_samples(samples, y), crps_gaussian_array(mu, sigma, y), rtol=0.02, atol=1e-3)
    # known value: CRPS(N(0, 1), 0) = (sqrt(2) - 1) / sqrt(pi)
    assert crps_gaussian(0.0, 1.0, 0.0) == pytest.approx((np.sqrt(2) - 1) / np.sqrt(np.pi), rel=1e-12)
    assert crps_gaussian(1.0, 0.0, 3.0) == 2.0


def test_vectorised_shapes_and_nan_handling():
    x = np.random.default_rng(1).normal(size=(5, 3, 50))
    y = np.zeros((5, 3))
    y[0, 0] = np.nan
    assert crps_samples(x, y).shape == (5, 3)
    assert np.isfinite(crps_from_samples(x, y))
    assert quantiles_from_samples(x, [0.1, 0.5, 0.9]).shape == (5, 3, 3)
    lo, hi = central_interval(x, 0.8)
    assert (lo <= hi).all()
    assert pit_values(x, y).shape == (5, 3)


def test_point_scores():
    assert direction_accuracy([1.0, -1.0, 2.0, 0.0], [0.5, 0.5, 1.0, -3.0]) == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    assert direction_accuracy([1.0], [0.0]) != direction_accuracy([1.0], [0.0])  # no direction -> NaN
    assert mae([1.0, np.nan, 3.0], [0.0, 1.0, 1.0]) == 1.5


def test_baselines_use_history_only():
    rng = np.random.default_rng(2)
    past = rng.normal(0, 0.02, (4, 60))
    past[0, :50] = np.nan  # short history is fine
    assert (persistence_forecast(past, 5) == 0).all()
    s = trailing_vol(past, 20)
    np.testing.assert_allclose(s[1], past[1, -20:].std(ddof=1))
    iv = historical_vol_intervals(past, levels=(0.8, 0.9), horizon=3, cumulative=True)
    lo, hi = iv[0.9]
    assert lo.shape == hi.shape == (4, 3)
    np.testing.assert_allclose(hi[:, 0], 1.6448536269514722 * s, rtol=1e-9)
    np.testing.assert_allclose(hi[:, 2], hi[:, 0] * np.sqrt(3), rtol=1e-12)


def test_hist_vol_intervals_are_calibrated_on_iid_gaussian():
    rng = np.random.default_rng(3)
    past = rng.normal(0, 0.01, (20_000, 20))
    y = rng.normal(0, 0.01, (20_000, 1))
    lo, hi = historical_vol_intervals(past, levels=(0.8,))[0.8]
    assert interval_coverage(lo, hi, y) == pytest.approx(0.8, abs=0.02)  # s from 20 draws: close to nominal


def test_evaluate_forecasts_report():
    rng = np.random.default_rng(4)
    n, horizon, k = 400, 3, 200
    past = rng.normal(0, 0.01, (n, 30))
    y = rng.normal(0.001, 0.01, (n, horizon))
    perfect = y[..., None] + rng.normal(0, 1e-4, (n, horizon, k))  # an oracle: near point mass at y
    rep = evaluate_forecasts(perfect, y, past)
    assert sorted(rep) == [1, 2, 3]
    for h in rep:
        m, p, hv = rep[h]["model"], rep[h]["persistence"], rep[h]["hist_vol"]
        assert m["direction_accuracy"] > 0.95 and m["crps"] < hv["crps"] < p["crps"]
        assert p["direction_accuracy"] == 0.5 and p["mae"] == pytest.approx(p["crps"])
        assert p["coverage_80"] == 0.0 and 0.7 < hv["coverage_80"] < 0.9 and 0.8 < hv["coverage_90"] < 0.97
        assert m["n"] == n
    calibrated = rng.normal(0.001, 0.01, (n, horizon, k))
    rep = evaluate_forecasts(calibrated, y, past, cumulative=True)
    assert 0.75 < rep[3]["model"]["coverage_80"] < 0.85
    with pytest.raises(ValueError):
        evaluate_forecasts(calibrated[:, :, 0], y, past)
