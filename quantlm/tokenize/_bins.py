"""Quantile bins for the K-line vocabulary: edge fitting, bin representatives, default factorisation."""

from __future__ import annotations

import numpy as np

# Axes of the factorised vocabulary, in the order of `shape` tuples:
# coarse = (ret_c, vol_c); fine = (ret_f, vol_f, gap, upper, lower).
SHAPE_NAMES = ("ret_c", "vol_c", "ret_f", "vol_f", "gap", "upper", "lower")


def default_shape(n_coarse: int, n_fine: int) -> tuple[int, ...]:
    """Factorise the two vocabulary sizes into per-axis bin counts (powers of two).

    Coarse: about a third of the bits (at most 2) to the volume level, the rest to the return.
    Fine: bits dealt round-robin to gap, upper shadow, lower shadow, return sub-bin, volume sub-bin.
    256/256 gives coarse 64 returns x 4 volume levels; fine 2 x 2 x 4 x 4 x 4.
    """
    for n, name in ((n_coarse, "n_coarse"), (n_fine, "n_fine")):
        if n < 2 or n & (n - 1):
            raise ValueError(f"{name}={n} is not a power of two >= 2; pass an explicit `shape`")
    bc, bf = n_coarse.bit_length() - 1, n_fine.bit_length() - 1
    vol_c = min(2, bc // 3)
    fine = [0, 0, 0, 0, 0]  # ret_f, vol_f, gap, upper, lower (bits)
    order = (2, 3, 4, 0, 1)
    for k in range(bf):
        fine[order[k % 5]] += 1
    return (1 << (bc - vol_c), 1 << vol_c, *(1 << b for b in fine))


def check_shape(shape: tuple[int, ...], n_coarse: int, n_fine: int) -> tuple[int, ...]:
    """Validate a 7-tuple of bin counts against the vocabulary sizes."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 7 or min(shape) < 1:
        raise ValueError(f"shape must be 7 positive ints {SHAPE_NAMES}, got {shape}")
    if shape[0] * shape[1] != n_coarse:
        raise ValueError(f"ret_c * vol_c = {shape[0] * shape[1]} != n_coarse = {n_coarse}")
    if int(np.prod(shape[2:])) != n_fine:
        raise ValueError(f"ret_f * vol_f * gap * upper * lower = {int(np.prod(shape[2:]))} != n_fine = {n_fine}")
    return shape


def fit_edges(x: np.ndarray, n_bins: int, tail_weight: float = 0.25, tail_q: float = 5e-4) -> np.ndarray:
    """Inner bin edges (sorted, unique, at most n_bins - 1) for the samples x.

    Edges are the inverse at levels k / n_bins of a blended CDF G = (1 - w) F + w U, where F is the
    empirical CDF and U is uniform on [q(tail_q), q(1 - tail_q)]: mostly equal-probability bins,
    with w = tail_weight of the bins spread evenly so the tails keep some resolution.
    Point masses (e.g. a shadow of exactly 0) collapse duplicate edges; with np.searchsorted
    side='left' a value equal to an edge falls in the lower bin, so a mass at the minimum gets
    bin 0 to itself.
    """
    x = np.sort(np.asarray(x, dtype=np.float64)[np.isfinite(x)])
    if n_bins <= 1 or len(x) == 0:
        return np.zeros(0)
    lo, hi = np.quantile(x, [tail_q, 1.0 - tail_q])
    if hi <= lo:
        return np.unique(np.quantile(x, np.arange(1, n_bins) / n_bins))
    grid = np.linspace(lo, hi, 20_001)
    cdf = (1.0 - tail_weight) * np.searchsorted(x, grid, side="right") / len(x) + tail_weight * (grid - lo) / (hi - lo)
    cdf = np.maximum.accumulate(cdf)
    levels = np.arange(1, n_bins) / n_bins
    # first grid point whose blended CDF reaches each level (left-continuous inverse)
    idx = np.minimum(np.searchsorted(cdf, levels, side="left"), len(grid) - 1)
    return np.unique(grid[idx])


def bin_means(x: np.ndarray, edges: np.ndarray, n_bins: int) -> np.ndarray:
    """Mean of the samples in each of n_bins bins (side='left' lookup); empty bins get an edge midpoint.

    The mean (not the median) keeps decoded returns unbiased within a bin, which is what averages
    of sampled paths need.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    b = np.searchsorted(edges, x, side="left")
    counts = np.bincount(b, minlength=n_bins)[:n_bins]
    sums = np.bincount(b, weights=x, minlength=n_bins)[:n_bins]
    means = np.full(n_bins, np.nan)
    np.divide(sums, counts, out=means, where=counts > 0)
    # empty bins: midpoint of their edges (extrapolate outward at the ends)
    ext = np.concatenate([[edges[0] - 1.0] if len(edges) else [0.0], edges, [edges[-1] + 1.0] if len(edges) else [0.0]])
    for i in np.flatnonzero(counts == 0):
        j = min(i, len(ext) - 2)
        means[i] = 0.5 * (ext[j] + ext[j + 1])
    return means
