"""Leak-free trading targets for supervised fine-tuning: multi-horizon returns, ranks, directions.

Timing (docs/ARCHITECTURE.md): a target at session t belongs to a decision taken after t's close and
filled at the open of t+1. Every return is a simple return as a fraction (0.01 = 1%):

- ``ret_h(t) = open(t+1+h) / open(t+1) - 1`` (`quantlm.features.labels.forward_returns` with lag=1);
  ``ret_1`` is the evaluation label of IC / RankIC;
- ``rank_h(t)``: the cross-sectional rank of ``ret_h`` among the symbols with a value at t, in (-1, 1);
- ``direction(t)``: int8, 2 = buy, 1 = hold, 0 = sell, -1 = unknown, either from ``ret_1`` against the
  round-trip cost (``fixed``) or from a volatility-scaled triple barrier (``triple_barrier``).

Sessions are counted on the dataset's calendar (union of all time stamps); a missing bar where a
price is needed gives NaN / -1, never a return over a longer span. Prices are adjusted with
`adj_factor` where given. A target at t reads bars up to t + 1 + max(horizon) only, which the tests
check with `quantlm.testing.assert_causal(..., horizon_bars=1 + max horizon)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from numba import njit
from pydantic import BaseModel, Field, field_validator

from quantlm.backtest.costs import cost_model
from quantlm.features.labels import _shift_up, check_bars


class TargetConfig(BaseModel, extra="forbid"):
    """How `make_targets` builds targets. Fractions, not percent; periods in sessions (bars).

    horizons: holding periods in sessions (each >= 1, must include 1; stored sorted and unique).
    direction: "fixed" labels ret_1 against the cost dead zone; "triple_barrier" uses
        `triple_barrier_labels` with barrier_upper / barrier_lower / barrier_horizon / vol_halflife.
    round_trip_cost: fraction of notional per buy + sell round trip (>= 0). None: the market's
        `round_trip_cost_for(market, date=t)` at each row's session t (cn stamp duty changes on 2023-08-28).
    band: extra dead zone (fraction, >= 0) added to the cost on each side.
    barrier_upper / barrier_lower: barrier widths in units of sigma_t * sqrt(barrier_horizon) (> 0).
    barrier_horizon: vertical barrier in sessions (>= 1).
    vol_halflife: half-life in bars of the EWMA of squared close-to-close log returns (>= 1).
    """

    horizons: list[int] = [1, 5, 10]
    direction: Literal["fixed", "triple_barrier"] = "fixed"
    round_trip_cost: float | None = Field(None, ge=0, allow_inf_nan=False)
    band: float = Field(0.0, ge=0, allow_inf_nan=False)
    barrier_upper: float = Field(2.0, gt=0, allow_inf_nan=False)
    barrier_lower: float = Field(2.0, gt=0, allow_inf_nan=False)
    barrier_horizon: int = Field(10, ge=1)
    vol_halflife: int = Field(20, ge=1)

    @field_validator("horizons")
    @classmethod
    def _check_horizons(cls, v: list[int]) -> list[int]:
        if any(h < 1 for h in v) or 1 not in v:
            raise ValueError(f"horizons must be sessions >= 1 and include 1 (ret_1 is the evaluation label), got {v}")
        return sorted(set(v))


def round_trip_cost_for(market: str, date=None) -> float:
    """Fraction of notional lost by a buy + sell round trip under `cost_model(market)`.

    For an order large enough that the minimum commission does not bind: 2 x commission rate +
    2 x transfer fee rate + 2 x slippage + sell-side stamp duty + sell-side SEC fee, the dated rates
    in force on `date` (the latest schedule entry if None). Market impact (size dependent) is left out.
    Example: cn = 2 x 0.0003 + 2 x 0.00001 + 2 x 0.0002 + 0.0005 = 0.00152 from 2023-08-28.
    """
    when = pd.Timestamp.max if date is None else pd.Timestamp(date)
    return float(_session_costs(market, pd.DatetimeIndex([when]))[0])


def _session_costs(market: str, sessions: pd.DatetimeIndex) -> np.ndarray:
    """`round_trip_cost_for(market, s)` for every session s (float64 array)."""
    m = cost_model(market)
    fixed = 2.0 * (m.commission_rate + m.slippage)
    return fixed + 2.0 * m.transfer_fee_rates(sessions) + m.stamp_duty_rates(sessions) + m.sec_fee_rates(sessions)


class _Panel:
    """Bars on a (calendar session x symbol) grid; rows of the long output sorted by (symbol, ts)."""

    def __init__(self, bars: pd.DataFrame, needed: tuple[str, ...]):
        check_bars(bars, needed)
        if bars["symbol"].isna().any():
            raise ValueError("bars hold a missing symbol")
        ts = pd.DatetimeIndex(pd.to_datetime(bars["ts"]))
        if ts.hasnans:
            raise ValueError("bars hold a missing ts")
        if ts.tz is not None:
            ts = ts.tz_localize(None)
        scode, symbols = pd.factorize(bars["symbol"], sort=True)
        tcode, calendar = pd.factorize(ts.asi8, sort=True)
        self.n_t, self.n_s = len(calendar), len(symbols)
        key = scode.astype(np.int64) * self.n_t + tcode
        slot = np.full(self.n_t * self.n_s, -1, dtype=np.int64)  # keys are unique (check_bars): bucket sort
        slot[key] = np.arange(len(key))
        self.order = slot[slot >= 0]
        self.pos, self.code = tcode[self.order], scode[self.order]
        self.sessions = pd.DatetimeIndex(calendar.astype(ts.asi8.dtype).view(f"M8[{ts.unit}]"))
        self.symbol = bars["symbol"].array.take(self.order)  # keeps the column's dtype, fast for arrow strings
        self.ts = bars["ts"].to_numpy()[self.order]
        factor = np.ones(len(bars))
        if "adj_factor" in bars.columns:
            f = pd.to_numeric(bars["adj_factor"], errors="coerce").to_numpy(dtype="float64")[self.order]
            factor = np.where(np.isfinite(f) & (f > 0), f, 1.0)
        self._bars, self._factor = bars, factor

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"symbol": self.symbol, "ts": self.ts})

    def wide(self, col: str) -> np.ndarray:
        """Adjusted `col` as a (sessions x symbols) float64 array, NaN where a symbol has no bar."""
        out = np.full((self.n_t, self.n_s), np.nan)
        out[self.pos, self.code] = self._bars[col].to_numpy(dtype="float64")[self.order] * self._factor
        return out


def _returns(panel: _Panel, opens: np.ndarray, horizon: int) -> np.ndarray:
    """ret_h at every output row: open(t+1+h) / open(t+1) - 1, as forward_returns computes it."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = _shift_up(opens, 1 + horizon) / _shift_up(opens, 1) - 1.0
    return ret[panel.pos, panel.code]


def multi_horizon_returns(bars: pd.DataFrame, horizons: Sequence[int] = (1, 5, 10)) -> pd.DataFrame:
    """Frame (symbol, ts, ret_{h} for each h in sorted horizons), one row per bar, sorted (symbol, ts).

    ret_h(t) = open(t+1+h) / open(t+1) - 1 (fraction), bit-identical to
    `forward_returns(bars, horizon=h, price="open", lag=1)` (computed once on a shared grid for speed);
    NaN where the bar at t+1 or t+1+h is missing. ret_1 is the evaluation label.
    """
    hs = sorted({int(h) for h in horizons})
    if not hs or hs[0] < 1:
        raise ValueError(f"horizons must be a non-empty list of sessions >= 1, got {list(horizons)}")
    panel = _Panel(bars, ("symbol", "ts", "open"))
    opens = panel.wide("open")
    out = panel.frame()
    for h in hs:
        out[f"ret_{h}"] = _returns(panel, opens, h)
    return out


@njit(cache=True)
def _rank_sorted(vals, starts, out):
    """Scaled average ranks within each group [starts[g], starts[g+1]) of `vals` (NaN skipped)."""
    for g in range(len(starts) - 1):
        a, b = starts[g], starts[g + 1]
        idx = np.empty(b - a, np.int64)
        m = 0
        for i in range(a, b):
            if not np.isnan(vals[i]):
                idx[m] = i
                m += 1
        idx = idx[:m]
        srt = idx[np.argsort(vals[idx], kind="mergesort")]
        i = 0
        while i < m:
            j = i
            while j + 1 < m and vals[srt[j + 1]] == vals[srt[i]]:
                j += 1
            rank = (i + j) / 2.0 + 1.0  # 1-based average rank of the tie block
            for k in range(i, j + 1):
                out[srt[k]] = (rank - 0.5) / m * 2.0 - 1.0
            i = j + 1


def _rank_panel(panel: _Panel, values: np.ndarray) -> np.ndarray:
    """`_rank_by_group(panel.pos, values)` via the (session x symbol) grid, whose rows are the groups."""
    grid = np.full((panel.n_t, panel.n_s), np.nan)
    grid[panel.pos, panel.code] = values
    ranked = np.full(grid.size, np.nan)
    _rank_sorted(grid.ravel(), np.arange(0, grid.size + 1, max(panel.n_s, 1), dtype=np.int64), ranked)
    return ranked.reshape(grid.shape)[panel.pos, panel.code]


def group_ranks(group: np.ndarray, values: np.ndarray) -> np.ndarray:
    """float64 [N, F]: every column of `values` [N, F] ranked within groups of equal integer `group` [N]
    codes, scaled as `cross_sectional_rank` ((rank - 0.5) / n * 2 - 1, ties averaged, NaN skipped and
    kept NaN). One sort of the groups serves every column (Alpha158's 158 factors in one call)."""
    values = np.asarray(values, dtype="float64")
    order = np.argsort(np.asarray(group), kind="stable")
    g = np.asarray(group)[order]
    starts = (np.flatnonzero(np.r_[True, g[1:] != g[:-1], True]) if len(g) else np.zeros(1, np.int64)).astype(np.int64)
    out = np.full(values.shape, np.nan)
    ranked = np.empty(len(order))
    for j in range(values.shape[1]):
        ranked.fill(np.nan)
        _rank_sorted(np.ascontiguousarray(values[order, j]), starts, ranked)
        out[order, j] = ranked
    return out


def _rank_by_group(group: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`cross_sectional_rank` of `values` within groups given by integer codes (negative code: NaN)."""
    values = np.asarray(values, dtype="float64")
    out = np.full(len(values), np.nan)
    keep = np.flatnonzero(group >= 0)
    out[keep] = group_ranks(group[keep], values[keep, None])[:, 0]
    return out


def cross_sectional_rank(frame: pd.DataFrame, column: str) -> pd.Series:
    """Per-ts rank of `column`, scaled to (-1, 1): (rank - 0.5) / n * 2 - 1.

    rank is the 1-based average rank (ties share the mean rank) among the n non-NaN values of that
    ts; NaN stays NaN; a ts with a single value gets 0. Returns a float64 Series named
    ``rank_<column>``, indexed like `frame`. Only values at the same ts enter a rank.
    """
    missing = [c for c in ("ts", column) if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}")
    group, _ = pd.factorize(frame["ts"])
    ranks = _rank_by_group(group, pd.to_numeric(frame[column]).to_numpy(dtype="float64"))
    return pd.Series(ranks, index=frame.index, name=f"rank_{column}")


def direction_labels(returns: np.ndarray, round_trip_cost: float, band: float = 0.0) -> np.ndarray:
    """int8 trade direction of simple returns (fractions) against a cost dead zone.

    2 = buy where r > cost + band, 0 = sell where r < -(cost + band), 1 = hold otherwise, -1 where r
    is NaN. round_trip_cost (fraction of notional, >= 0) may also be an array broadcastable to returns
    (e.g. a per-session cost); band (fraction, >= 0) widens the dead zone on each side.
    """
    r = np.asarray(returns, dtype="float64")
    cost, band_ = np.asarray(round_trip_cost, dtype="float64"), np.asarray(band, dtype="float64")
    if not (np.all(np.isfinite(cost)) and np.all(cost >= 0)):
        raise ValueError(f"round_trip_cost must be a finite fraction >= 0, got {round_trip_cost}")
    if not (np.all(np.isfinite(band_)) and np.all(band_ >= 0)):
        raise ValueError(f"band must be a finite fraction >= 0, got {band}")
    threshold = np.broadcast_to(cost + band_, r.shape)
    out = np.ones(r.shape, dtype=np.int8)
    out[r > threshold] = 2
    out[r < -threshold] = 0
    out[np.isnan(r)] = -1
    return out


@njit(cache=True)
def _ewm_vol(close, halflife):
    """sqrt of the EWMA (pandas adjust=True weights) of squared log returns between a symbol's
    consecutive bars, using closes up to t only; NaN until the symbol has one return."""
    n_t, n_s = close.shape
    out = np.full((n_t, n_s), np.nan)
    decay = math.exp(-math.log(2.0) / halflife)
    for s in range(n_s):
        last, num, den = np.nan, 0.0, 0.0
        for t in range(n_t):
            x = close[t, s]
            if not x > 0.0:
                continue
            if last > 0.0:
                r = math.log(x / last)
                num = decay * num + r * r
                den = decay * den + 1.0
            last = x
            if den > 0.0:
                out[t, s] = math.sqrt(num / den)
    return out


@njit(cache=True)
def _barrier_kernel(o, h, lo, c, sigma, horizon, upper, lower):
    """(barrier_return, touch) grids; the rules are in `triple_barrier_labels`."""
    n_t, n_s = o.shape
    ret = np.full((n_t, n_s), np.nan)
    touch = np.full((n_t, n_s), -1, np.int16)
    root = math.sqrt(horizon)
    for s in range(n_s):
        for t in range(n_t - 1 - horizon):
            entry, last, sig = o[t + 1, s], o[t + 1 + horizon, s], sigma[t, s]
            if not (entry > 0.0 and sig > 0.0 and last > 0.0):
                continue
            up_r, dn_r = upper * sig * root, lower * sig * root
            up, dn = entry * (1.0 + up_r), entry * (1.0 - dn_r)
            r, k = last / entry - 1.0, horizon
            for j in range(horizon):
                row = t + 1 + j
                hit_up, hit_dn = h[row, s] >= up, lo[row, s] <= dn
                if not (hit_up or hit_dn):
                    continue
                op = o[row, s]
                if j > 0 and (op >= up or op <= dn):
                    r = op / entry - 1.0  # gapped through a barrier: filled at the open
                elif hit_up and hit_dn:
                    cl = c[row, s]
                    r = up_r if cl > entry else (-dn_r if cl < entry else 0.0)
                else:
                    r = up_r if hit_up else -dn_r
                k = j
                break
            ret[t, s], touch[t, s] = r, k
    return ret, touch


def _barrier(panel: _Panel, horizon: int, upper: float, lower: float, vol_halflife: int):
    if horizon < 1 or vol_halflife < 1:
        raise ValueError(f"horizon and vol_halflife are sessions >= 1, got {horizon}, {vol_halflife}")
    if not (upper > 0 and lower > 0 and math.isfinite(upper) and math.isfinite(lower)):
        raise ValueError(f"barrier widths upper, lower must be > 0, got {upper}, {lower}")
    close = panel.wide("close")
    sigma = _ewm_vol(close, float(vol_halflife))
    ret, touch = _barrier_kernel(panel.wide("open"), panel.wide("high"), panel.wide("low"), close, sigma,
                                 int(horizon), float(upper), float(lower))
    return ret[panel.pos, panel.code], touch[panel.pos, panel.code]


_BARRIER_COLUMNS = ("symbol", "ts", "open", "high", "low", "close")


def triple_barrier_labels(bars: pd.DataFrame, horizon: int = 10, upper: float = 2.0, lower: float = 2.0,
                          round_trip_cost: float = 0.0, vol_halflife: int = 20) -> pd.DataFrame:
    """Triple-barrier labels: frame (symbol, ts, direction int8, barrier_return float64, touch int16).

    Entry at open(t+1) (the next-open fill). sigma_t: sqrt of an EWMA (half-life `vol_halflife` bars,
    pandas adjust=True weights) of squared log returns between the symbol's consecutive closes up to t.
    Barriers: profit-take at entry * (1 + upper * sigma_t * sqrt(horizon)), stop-loss at
    entry * (1 - lower * sigma_t * sqrt(horizon)). The path is the bars of sessions t+1..t+horizon
    (missing bars inside it are skipped); the first bar whose high >= the upper barrier ends it with
    barrier_return = +upper * sigma_t * sqrt(horizon), whose low <= the lower one with
    -lower * sigma_t * sqrt(horizon). Ties and gaps: if a later bar opens beyond a barrier, the
    trade exits at that open (barrier_return = open / entry - 1); if one bar crosses both barriers
    otherwise, its close decides: close > entry -> upper, close < entry -> lower, equal -> 0.
    Neither barrier: the vertical barrier, barrier_return = open(t+1+horizon) / entry - 1.
    touch = sessions after the entry session at which the trade ended (0 = the entry bar's own
    high / low, horizon = the vertical barrier). direction = direction_labels(barrier_return,
    round_trip_cost): a barrier hit is buy / sell only where it beats the cost (always, unless
    sigma is tiny). Missing bar at t+1 or t+1+horizon, no sigma yet (first bar of a symbol) or
    sigma = 0: direction -1, barrier_return NaN, touch -1. Reads bars up to t+1+horizon.
    """
    panel = _Panel(bars, _BARRIER_COLUMNS)
    ret, touch = _barrier(panel, horizon, upper, lower, vol_halflife)
    out = panel.frame()
    out["direction"] = direction_labels(ret, round_trip_cost)
    out["barrier_return"] = ret
    out["touch"] = touch.astype(np.int16)
    return out


def make_targets(bars: pd.DataFrame, config: TargetConfig | None = None, market: str = "cn") -> pd.DataFrame:
    """Training targets: one row per input bar, sorted (symbol, ts), index 0..n-1.

    Columns: symbol, ts, ret_{h} for each horizon (float64, fraction, see `multi_horizon_returns`),
    rank_{h} (float64 in (-1, 1), `cross_sectional_rank` of ret_h), direction (int8 in {-1, 0, 1, 2}):
    "fixed" = direction_labels(ret_1, cost, band); "triple_barrier" = triple_barrier_labels with the
    config's barriers, labelled against cost + band. cost = config.round_trip_cost, or if None the
    market's round trip at each row's session (`round_trip_cost_for(market, ts)`). Nothing is dropped
    (index-board symbols included). Reads bars up to t + 1 + max(horizons, barrier_horizon if used).
    """
    config = TargetConfig() if config is None else config
    if not isinstance(config, TargetConfig):
        raise TypeError(f"config must be a TargetConfig, got {type(config).__name__}")
    barrier = config.direction == "triple_barrier"
    panel = _Panel(bars, _BARRIER_COLUMNS if barrier else ("symbol", "ts", "open"))
    if config.round_trip_cost is None:
        cost = _session_costs(market, panel.sessions)[panel.pos]
    else:
        cost_model(market)  # validates the market name
        cost = config.round_trip_cost
    opens = panel.wide("open")
    out = panel.frame()
    rets = {h: _returns(panel, opens, h) for h in config.horizons}
    for h, ret in rets.items():
        out[f"ret_{h}"] = ret
    for h, ret in rets.items():
        out[f"rank_{h}"] = _rank_panel(panel, ret)
    if barrier:
        ret, _ = _barrier(panel, config.barrier_horizon, config.barrier_upper, config.barrier_lower,
                          config.vol_halflife)
    else:
        ret = rets[1]
    out["direction"] = direction_labels(ret, cost, config.band)
    return out


__all__ = ["TargetConfig", "round_trip_cost_for", "multi_horizon_returns", "cross_sectional_rank", "group_ranks",
           "direction_labels", "triple_barrier_labels", "make_targets"]
