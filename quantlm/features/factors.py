"""Alpha158-style point-in-time factors, vectorised with NumPy.

`alpha158(bars)` follows Qlib's Alpha158 (qlib/contrib/data/loader.py, `Alpha158DL`) feature by
feature: 9 K-bar shape features, 4 price ratios and 29 rolling operators over windows 5, 10, 20,
30 and 60 bars (29 x 5 = 145), 158 columns in all, named as in Qlib (KMID, ..., ROC5, MA5, ...).
All values are unit-free ratios, fractions or correlations (float32).

Definitions (c/o/h/l/v = close/open/high/low/volume, adjusted with adj_factor; vwap = amount/volume;
Ref(x, d) = x d bars ago; windows of d bars end at (and include) the current bar; eps = 1e-12):

- KMID (c-o)/o, KLEN (h-l)/o, KMID2 (c-o)/(h-l+eps), KUP (h-max(o,c))/o, KUP2 (h-max(o,c))/(h-l+eps),
  KLOW (min(o,c)-l)/o, KLOW2 (min(o,c)-l)/(h-l+eps), KSFT (2c-h-l)/o, KSFT2 (2c-h-l)/(h-l+eps)
- OPEN0 o/c, HIGH0 h/c, LOW0 l/c, VWAP0 vwap/c
- ROCd Ref(c,d)/c; MAd mean(c)/c; STDd std(c)/c (ddof=1); BETAd slope of c on time/c;
  RSQRd R^2 of that regression; RESId residual of the last bar/c; MAXd max(h)/c; MINd min(l)/c;
  QTLUd 80% quantile(c)/c; QTLDd 20% quantile(c)/c (linear interpolation); RANKd percentile rank
  of c in its window (ties averaged, in (0, 1]); RSVd (c-min(l))/(max(h)-min(l)+eps);
  IMAXd (1-based position of max(h) in the window, oldest = 1)/d; IMINd same for min(l);
  IMXDd IMAXd-IMINd; CORRd corr(c, log(v+1)); CORDd corr(c/Ref(c,1), log(v/Ref(v,1)+1));
  CNTPd share of up bars (c > Ref(c,1)); CNTNd share of down bars; CNTDd CNTPd-CNTNd;
  SUMPd sum(max(dc,0))/(sum|dc|+eps) with dc = c-Ref(c,1); SUMNd sum(max(-dc,0))/(sum|dc|+eps);
  SUMDd SUMPd-SUMNd; VMAd mean(v)/(v+eps); VSTDd std(v)/(v+eps);
  WVMAd std(|c/Ref(c,1)-1|*v)/(mean(|c/Ref(c,1)-1|*v)+eps); VSUMPd, VSUMNd, VSUMDd as SUMP/N/D on v.

Differences from Qlib, on purpose:
- Windows count a symbol's own bars (Qlib aligns to the calendar and windows may contain NaN).
- A value is NaN until its window is full (Qlib uses min_periods=1 and computes on partial windows),
  and any NaN inside a window (e.g. the first bar's Ref) makes that window's value NaN; so the
  d-bar difference features (CNT*, SUM*, VSUM*, CORD, WVMA) need d + 1 bars.
- Infinite values (e.g. division by a zero volume) become NaN.
- Qlib's Alpha158 labels are not built here (see quantlm.features.labels).

Any bar frequency: windows count bars, never dates, so on intraday data (e.g. 30-min bars) ROC5 is
the return over 5 bars and windows run across the lunch break and overnight; nothing assumes daily
dates.

Point in time: a row's features use only the same symbol's bars at or before its time stamp; each
window is reduced independently (no running sums), so values are bit-stable whatever the future
holds. Checked by quantlm.testing.assert_causal in tests/test_features.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from quantlm.features.labels import adjusted_bars, check_bars, with_vwap

WINDOWS = (5, 10, 20, 30, 60)
EPS = 1e-12
_CHUNK_ROWS = 1 << 16
ROLLING_OPERATORS = (
    "ROC", "MA", "STD", "BETA", "RSQR", "RESI", "MAX", "MIN", "QTLU", "QTLD", "RANK", "RSV", "IMAX", "IMIN",
    "IMXD", "CORR", "CORD", "CNTP", "CNTN", "CNTD", "SUMP", "SUMN", "SUMD", "VMA", "VSTD", "WVMA", "VSUMP",
    "VSUMN", "VSUMD",
)
KBAR_FEATURES = ("KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2")
PRICE_FEATURES = ("OPEN0", "HIGH0", "LOW0", "VWAP0")

Reducer = Callable[..., np.ndarray]


class _Panel:
    """Flat per-symbol arrays (sorted by symbol, ts) with helpers that never cross symbols."""

    def __init__(self, bars: pd.DataFrame) -> None:
        sym = bars["symbol"].astype(str).to_numpy()
        n = len(sym)
        starts = np.flatnonzero(np.r_[True, sym[1:] != sym[:-1]]) if n else np.array([], dtype=int)
        group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
        self.n = n
        self.pos = np.arange(n) - group_start  # bars since the symbol's first bar

    def ref(self, x: np.ndarray, d: int) -> np.ndarray:
        """x d bars ago within the symbol (NaN for the first d bars)."""
        out = np.full(self.n, np.nan)
        if d < self.n:
            out[d:] = x[: self.n - d]
        out[self.pos < d] = np.nan
        return out

    def rolling(self, reducer: Reducer, d: int, *series: np.ndarray) -> np.ndarray:
        """reducer(*windows) over full d-bar windows (shape (rows, d) each) ending at each bar.

        NaN where the window is not full yet or holds a NaN in any input series.
        """
        out = np.full(self.n, np.nan)
        if self.n < d:
            return out
        nan_count = np.zeros(self.n + 1, dtype=np.int64)
        bad = np.zeros(self.n, dtype=np.int64)
        for x in series:
            bad |= np.isnan(x).astype(np.int64)
        nan_count[1:] = np.cumsum(bad)
        views = [sliding_window_view(x, d) for x in series]
        m = self.n - d + 1
        for a in range(0, m, _CHUNK_ROWS):
            b = min(m, a + _CHUNK_ROWS)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[a + d - 1 : b + d - 1] = reducer(*[v[a:b] for v in views])
        window_nans = nan_count[d:] - nan_count[:-d]
        out[d - 1 :][window_nans > 0] = np.nan
        out[self.pos < d - 1] = np.nan
        return out


# ---------------------------------------------------------------- window reducers (rows x d -> rows)
def _mean(w: np.ndarray) -> np.ndarray:
    return w.mean(axis=1)


def _std(w: np.ndarray) -> np.ndarray:
    return w.std(axis=1, ddof=1)


def _sum(w: np.ndarray) -> np.ndarray:
    return w.sum(axis=1)


def _max(w: np.ndarray) -> np.ndarray:
    return w.max(axis=1)


def _min(w: np.ndarray) -> np.ndarray:
    return w.min(axis=1)


def _quantile(q: float) -> Reducer:
    def reduce(w: np.ndarray) -> np.ndarray:
        return np.quantile(w, q, axis=1)

    return reduce


def _rank_last(w: np.ndarray) -> np.ndarray:
    """Percentile rank of the last value in its window, ties averaged: (less + (equal + 1) / 2) / d."""
    last = w[:, -1:]
    less = (w < last).sum(axis=1)
    equal = (w == last).sum(axis=1)
    return (less + (equal + 1) / 2.0) / w.shape[1]


def _argmax_1based(w: np.ndarray) -> np.ndarray:
    return (w.argmax(axis=1) + 1) / w.shape[1]


def _argmin_1based(w: np.ndarray) -> np.ndarray:
    return (w.argmin(axis=1) + 1) / w.shape[1]


def _regression(kind: str) -> Reducer:
    """Least squares of the window on time (0..d-1): slope, R^2 or the last bar's residual."""

    def reduce(w: np.ndarray) -> np.ndarray:
        d = w.shape[1]
        x = np.arange(d) - (d - 1) / 2.0
        sxx = float(x @ x)
        yc = w - w.mean(axis=1, keepdims=True)
        sxy = yc @ x
        slope = sxy / sxx
        if kind == "slope":
            return slope
        if kind == "rsq":
            syy = (yc * yc).sum(axis=1)
            return np.where(syy > 0, sxy * sxy / (sxx * np.where(syy > 0, syy, 1.0)), np.nan)
        return yc[:, -1] - slope * x[-1]

    return reduce


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((ac * ac).sum(axis=1) * (bc * bc).sum(axis=1))
    return np.where(den > 0, (ac * bc).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def _nan_if(mask_source: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values with NaN wherever mask_source is NaN (comparisons would turn NaN into False)."""
    return np.where(np.isnan(mask_source), np.nan, values)


def _kbar_and_price(o, h, lo, c, vwap) -> dict[str, np.ndarray]:
    hl = h - lo + EPS
    top, bottom = np.maximum(o, c), np.minimum(o, c)
    return {
        "KMID": (c - o) / o, "KLEN": (h - lo) / o, "KMID2": (c - o) / hl,
        "KUP": (h - top) / o, "KUP2": (h - top) / hl, "KLOW": (bottom - lo) / o, "KLOW2": (bottom - lo) / hl,
        "KSFT": (2 * c - h - lo) / o, "KSFT2": (2 * c - h - lo) / hl,
        "OPEN0": o / c, "HIGH0": h / c, "LOW0": lo / c, "VWAP0": vwap / c,
    }


def _rolling_features(p: _Panel, h, lo, c, v, d: int) -> dict[str, np.ndarray]:
    dc = c - p.ref(c, 1)
    dv = v - p.ref(v, 1)  # np.maximum keeps NaN, so sums over windows with a missing Ref are NaN
    up, down = _nan_if(dc, (dc > 0).astype(float)), _nan_if(dc, (dc < 0).astype(float))
    logv = np.log(v + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ret1 = c / p.ref(c, 1)
        dlogv = np.log(v / p.ref(v, 1) + 1)
    wv = np.abs(ret1 - 1) * v
    hi, lw = p.rolling(_max, d, h), p.rolling(_min, d, lo)
    sum_abs_dc = p.rolling(_sum, d, np.abs(dc)) + EPS
    sump = p.rolling(_sum, d, np.maximum(dc, 0)) / sum_abs_dc
    sumn = p.rolling(_sum, d, np.maximum(-dc, 0)) / sum_abs_dc
    sum_abs_dv = p.rolling(_sum, d, np.abs(dv)) + EPS
    vsump = p.rolling(_sum, d, np.maximum(dv, 0)) / sum_abs_dv
    vsumn = p.rolling(_sum, d, np.maximum(-dv, 0)) / sum_abs_dv
    cntp, cntn = p.rolling(_mean, d, up), p.rolling(_mean, d, down)
    imax, imin = p.rolling(_argmax_1based, d, h), p.rolling(_argmin_1based, d, lo)
    return {
        "ROC": p.ref(c, d) / c,
        "MA": p.rolling(_mean, d, c) / c,
        "STD": p.rolling(_std, d, c) / c,
        "BETA": p.rolling(_regression("slope"), d, c) / c,
        "RSQR": p.rolling(_regression("rsq"), d, c),
        "RESI": p.rolling(_regression("resi"), d, c) / c,
        "MAX": hi / c,
        "MIN": lw / c,
        "QTLU": p.rolling(_quantile(0.8), d, c) / c,
        "QTLD": p.rolling(_quantile(0.2), d, c) / c,
        "RANK": p.rolling(_rank_last, d, c),
        "RSV": (c - lw) / (hi - lw + EPS),
        "IMAX": imax,
        "IMIN": imin,
        "IMXD": imax - imin,
        "CORR": p.rolling(_corr, d, c, logv),
        "CORD": p.rolling(_corr, d, ret1, dlogv),
        "CNTP": cntp,
        "CNTN": cntn,
        "CNTD": cntp - cntn,
        "SUMP": sump,
        "SUMN": sumn,
        "SUMD": sump - sumn,
        "VMA": p.rolling(_mean, d, v) / (v + EPS),
        "VSTD": p.rolling(_std, d, v) / (v + EPS),
        "WVMA": p.rolling(_std, d, wv) / (p.rolling(_mean, d, wv) + EPS),
        "VSUMP": vsump,
        "VSUMN": vsumn,
        "VSUMD": vsump - vsumn,
    }


def alpha158_columns(windows: Iterable[int] = WINDOWS) -> list[str]:
    """Column names of `alpha158(bars, windows)`, in Qlib's order."""
    ws = list(windows)
    return [*KBAR_FEATURES, *PRICE_FEATURES, *[f"{op}{d}" for op in ROLLING_OPERATORS for d in ws]]


def alpha158(bars: pd.DataFrame, windows: Iterable[int] = WINDOWS) -> pd.DataFrame:
    """Alpha158-style factors for every bar: a float32 frame indexed by (symbol, ts).

    bars: canonical bars (symbol, ts, open, high, low, close, volume[, amount, adj_factor]); prices
        are adjusted with adj_factor where given. Without `amount`, VWAP0 is NaN.
    windows: rolling window lengths in bars (default 5, 10, 20, 30, 60: 158 columns).
    Definitions and the differences from Qlib are in the module docstring.
    """
    check_bars(bars, ("symbol", "ts", "open", "high", "low", "close", "volume"))
    ws = [int(d) for d in windows]
    if not ws or min(ws) < 2:
        raise ValueError(f"windows must be integers >= 2, got {list(windows)}")
    has_amount = "amount" in bars.columns
    adj = adjusted_bars(with_vwap(bars) if has_amount else bars)
    panel = _Panel(adj)
    o, h, lo, c, v = (adj[k].to_numpy(dtype="float64") for k in ("open", "high", "low", "close", "volume"))
    vwap = adj["vwap"].to_numpy(dtype="float64") if has_amount else np.full(len(adj), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        columns = _kbar_and_price(o, h, lo, c, vwap)
        per_window = {d: _rolling_features(panel, h, lo, c, v, d) for d in ws}
    for op in ROLLING_OPERATORS:
        for d in ws:
            columns[f"{op}{d}"] = per_window[d][op]
    names = alpha158_columns(ws)
    matrix = np.empty((len(adj), len(names)), dtype=np.float32, order="F")  # column-major: one copy per column
    for j, name in enumerate(names):
        matrix[:, j] = columns[name]
    matrix[~np.isfinite(matrix)] = np.nan
    index = pd.MultiIndex.from_arrays([adj["symbol"].to_numpy(), pd.DatetimeIndex(adj["ts"])], names=["symbol", "ts"])
    return pd.DataFrame(matrix, index=index, columns=names, copy=False)


__all__ = ["alpha158", "alpha158_columns", "WINDOWS", "ROLLING_OPERATORS", "KBAR_FEATURES", "PRICE_FEATURES"]
