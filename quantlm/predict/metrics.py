"""Forecast evaluation maths: point, probabilistic and interval scores, and the naive baselines.

Everything is pure NumPy and NaN-aware (a NaN forecast or realisation drops that point). Returns
are log returns (dimensionless); scores are in the same units as what they compare.

The baselines are the ones a market forecaster must beat (Kronos lost to both in users' tests):
- persistence: the last price persists, i.e. a zero log return, a point mass at 0;
- historical volatility: N(0, s^2) with s the std of the trailing `window` returns known at the
  forecast origin (per step; sqrt(h) s for a cumulative h-step return).
Both use only returns up to the forecast origin.
"""

from __future__ import annotations

from math import erf, sqrt

import numpy as np

_SQRT_PI = np.sqrt(np.pi)


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(erf, otypes=[float])(np.asarray(z) / sqrt(2.0)))


def _norm_ppf(p: float) -> float:
    """Inverse standard normal CDF (bisection on erf; exact to ~1e-12, for a handful of levels)."""
    lo, hi = -12.0, 12.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if 0.5 * (1.0 + erf(mid / sqrt(2.0))) < p else (lo, mid)
    return 0.5 * (lo + hi)


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


# ---------------------------------------------------------------------- point forecasts
def direction_accuracy(pred_returns, realised) -> float:
    """Share of points whose predicted sign matches the realised sign.

    Realised returns of exactly 0 have no direction and are skipped; a prediction of exactly 0 (the
    persistence forecast) scores 0.5, a coin flip. NaN in either drops the point.
    """
    p, y = np.broadcast_arrays(np.asarray(pred_returns, dtype=np.float64), np.asarray(realised, dtype=np.float64))
    ok = np.isfinite(p) & np.isfinite(y) & (y != 0)
    if not ok.any():
        return float("nan")
    p, y = p[ok], y[ok]
    score = np.where(p == 0, 0.5, (np.sign(p) == np.sign(y)).astype(np.float64))
    return float(score.mean())


def mae(pred, realised) -> float:
    """Mean absolute error |pred - realised| over finite pairs."""
    p, y = np.broadcast_arrays(np.asarray(pred, dtype=np.float64), np.asarray(realised, dtype=np.float64))
    return _nanmean(np.abs(p - y))


# ---------------------------------------------------------------------- probabilistic forecasts
def crps_samples(samples, realised) -> np.ndarray:
    """Per-point CRPS [...] of the empirical distribution of samples [..., K] at realised [...].

    Energy form E|X - y| - 0.5 E|X - X'| with both expectations over the K samples (the exact CRPS
    of the empirical CDF, so >= 0). E|X - X'| uses sorted samples: (2 / K^2) sum_i (2i - K - 1) x_(i),
    O(K log K) per point. Samples containing NaN give NaN.
    """
    x = np.asarray(samples, dtype=np.float64)
    y = np.asarray(realised, dtype=np.float64)
    k = x.shape[-1]
    term1 = np.abs(x - y[..., None]).mean(axis=-1)
    w = (2.0 * np.arange(1, k + 1) - k - 1.0) * (2.0 / (k * k))  # [K]
    spread = np.sort(x, axis=-1) @ w  # [...] = E|X - X'|
    return np.maximum(term1 - 0.5 * spread, 0.0)  # clip float round-off below 0


def crps_from_samples(samples, realised) -> float:
    """Mean CRPS of sample forecasts samples [..., K] against realised [...] (NaN points dropped)."""
    return _nanmean(crps_samples(samples, realised))


def crps_gaussian_array(mu, sigma, y) -> np.ndarray:
    """Closed-form CRPS of N(mu, sigma^2) at y: sigma (z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)); sigma 0 -> |y - mu|."""
    mu, sigma, y = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (mu, sigma, y)))
    safe = np.where(sigma > 0, sigma, 1.0)
    z = (y - mu) / safe
    phi = np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)
    crps = safe * (z * (2.0 * _norm_cdf(z) - 1.0) + 2.0 * phi - 1.0 / _SQRT_PI)
    return np.where(sigma > 0, crps, np.abs(y - mu))


def crps_gaussian(mu, sigma, y) -> float:
    """Mean closed-form Gaussian CRPS over finite points (see crps_gaussian_array)."""
    return _nanmean(crps_gaussian_array(mu, sigma, y))


def quantiles_from_samples(samples, qs) -> np.ndarray:
    """samples [..., K] -> quantiles [..., len(qs)] (linear interpolation, NaN-aware)."""
    q = np.nanquantile(np.asarray(samples, dtype=np.float64), np.asarray(qs, dtype=np.float64), axis=-1)
    return np.moveaxis(q, 0, -1)


def central_interval(samples, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed `level` interval (lower, upper) [...] from samples [..., K]."""
    q = quantiles_from_samples(samples, [(1 - level) / 2, (1 + level) / 2])
    return q[..., 0], q[..., 1]


def interval_coverage(lower, upper, realised) -> float:
    """Share of finite points with lower <= realised <= upper (in [0, 1]; NaN if none)."""
    lo, hi, y = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (lower, upper, realised)))
    ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(y)
    if not ok.any():
        return float("nan")
    return float(((lo[ok] <= y[ok]) & (y[ok] <= hi[ok])).mean())


def pit_values(samples, realised) -> np.ndarray:
    """Probability integral transform [...]: share of samples <= realised (uniform if calibrated)."""
    x = np.asarray(samples, dtype=np.float64)
    y = np.asarray(realised, dtype=np.float64)
    return (x <= y[..., None]).mean(axis=-1)


# ---------------------------------------------------------------------- naive baselines
def persistence_forecast(past_returns, horizon: int) -> np.ndarray:
    """"The last price persists": zero log returns [n, horizon] for past_returns [n, L] (L is unused)."""
    n = np.asarray(past_returns).shape[0]
    return np.zeros((n, int(horizon)))


def trailing_vol(past_returns, window: int = 20) -> np.ndarray:
    """Std (ddof=1) [n] of the last `window` finite returns of each row of past_returns [n, L]."""
    x = np.asarray(past_returns, dtype=np.float64)
    out = np.full(x.shape[0], np.nan)
    for i, row in enumerate(x):
        row = row[np.isfinite(row)][-window:]
        if len(row) >= 2:
            out[i] = row.std(ddof=1)
    return out


def historical_vol_intervals(past_returns, window: int = 20, levels=(0.8, 0.9), horizon: int = 1,
                             cumulative: bool = False) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """Gaussian N(0, s^2) intervals from the trailing `window`-bar volatility s at the origin.

    past_returns [n, L] (left-padded with NaN where history is short) -> {level: (lower, upper)},
    each [n, horizon]; per-step returns by default, sqrt(h) s for cumulative h-step returns.
    """
    s = trailing_vol(past_returns, window)[:, None] * _horizon_scale(horizon, cumulative)  # [n, H]
    return {lv: (-_norm_ppf((1 + lv) / 2) * s, _norm_ppf((1 + lv) / 2) * s) for lv in levels}


def _horizon_scale(horizon: int, cumulative: bool) -> np.ndarray:
    return np.sqrt(np.arange(1, horizon + 1)) if cumulative else np.ones(horizon)


# ---------------------------------------------------------------------- the report
def evaluate_forecasts(samples, realised, past_returns, levels=(0.8, 0.9), window: int = 20,
                       cumulative: bool = False, point: str = "mean") -> dict[int, dict[str, dict[str, float]]]:
    """Score sampled forecasts per horizon beside the two naive baselines.

    samples [n, H, K]: K sampled log returns for each of n forecast origins and H steps ahead;
    realised [n, H]: what happened (NaN where unknown); past_returns [n, L]: returns up to each
    origin, for the baselines. cumulative=True scores the h-step cumulative return instead of the
    h-th step's. point: "mean" or "median" of the samples as the point forecast.
    Returns {h: {"model" | "persistence" | "hist_vol": {direction_accuracy, mae, crps, coverage_80,
    coverage_90, n}}} for h = 1..H.
    """
    x = np.asarray(samples, dtype=np.float64)
    y = np.asarray(realised, dtype=np.float64)
    if x.ndim != 3 or y.shape != x.shape[:2]:
        raise ValueError(f"samples must be [n, H, K] and realised [n, H]; got {x.shape} and {y.shape}")
    if cumulative:
        x, y = np.cumsum(x, axis=1), np.cumsum(y, axis=1)
    n, horizon, _ = x.shape
    pred = np.median(x, axis=-1) if point == "median" else x.mean(axis=-1)  # [n, H]
    zero = persistence_forecast(past_returns, horizon)
    sig = trailing_vol(past_returns, window)[:, None] * _horizon_scale(horizon, cumulative)  # [n, H]
    model_iv = {lv: central_interval(x, lv) for lv in levels}
    hv_iv = historical_vol_intervals(past_returns, window, levels, horizon, cumulative)
    crps_model = crps_samples(x, y)  # [n, H]
    crps_hv = crps_gaussian_array(0.0, sig, y)
    out: dict[int, dict[str, dict[str, float]]] = {}
    for h in range(horizon):
        yh = y[:, h]
        n_h = int(np.isfinite(yh).sum())
        rows = {
            "model": (pred[:, h], crps_model[:, h], {lv: (a[:, h], b[:, h]) for lv, (a, b) in model_iv.items()}),
            "persistence": (zero[:, h], np.abs(yh), {lv: (zero[:, h], zero[:, h]) for lv in levels}),
            "hist_vol": (zero[:, h], crps_hv[:, h], {lv: (a[:, h], b[:, h]) for lv, (a, b) in hv_iv.items()}),
        }
        out[h + 1] = {}
        for name, (p, crps, iv) in rows.items():
            scores = {"direction_accuracy": direction_accuracy(p, yh), "mae": mae(p, yh),
                      "crps": _nanmean(np.where(np.isfinite(yh), crps, np.nan))}
            for lv, (a, b) in iv.items():
                scores[f"coverage_{round(lv * 100)}"] = interval_coverage(a, b, yh)
            scores["n"] = n_h
            out[h + 1][name] = scores
    return out


__all__ = [
    "direction_accuracy", "mae", "crps_samples", "crps_from_samples", "crps_gaussian", "crps_gaussian_array",
    "quantiles_from_samples", "central_interval", "interval_coverage", "pit_values", "persistence_forecast",
    "trailing_vol", "historical_vol_intervals", "evaluate_forecasts",
]
