"""Helpers shared by quantlm's tests and its users: the leakage harness `assert_causal`.

`assert_causal(fn, data)` checks that a feature / label / score builder never looks past its time
stamp. For several cut-off sessions t it rewrites the future (every row with ts > t, or, for
forward-looking labels, every row more than `horizon_bars` sessions after t) in three ways:

1. ``perturb``: prices are replaced by random OHLC bars (open and close each multiplied by an
   independent factor in [0.5, 1.5], high/low rebuilt around them so OHLC stays consistent),
   volumes and amounts are scaled by random factors in [0.2, 5], other float columns are
   multiplied by random factors in [0.5, 1.5];
2. ``drop``: about half of the future rows are removed at random;
3. ``truncate+append``: the future is cut off and replaced by fresh random sessions after the
   last time stamp.

fn's output rows with ts <= t must then be bit-identical (same rows, same values, NaN where NaN)
to its output on the untouched data. Any difference raises AssertionError naming the cut-off, the
perturbation, the column and the first differing row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

PRICE_COLUMNS = ("open", "high", "low", "close")
SIZE_COLUMNS = ("volume", "amount")
PERTURBATIONS = ("perturb", "drop", "truncate+append")


def _normalise_output(out: object, time_col: str) -> pd.DataFrame:
    """fn's output as a flat frame with `time_col` as a column, rows in a canonical order."""
    if not isinstance(out, pd.DataFrame):
        raise TypeError(f"fn must return a DataFrame, got {type(out).__name__}")
    if time_col not in out.columns:
        names = [n for n in out.index.names if n is not None]
        if time_col not in names:
            raise ValueError(f"fn's output has no '{time_col}' column or index level (columns: {list(out.columns)})")
        out = out.reset_index()
    keys = [c for c in ("symbol", time_col) if c in out.columns]
    return out.sort_values(keys, kind="stable").reset_index(drop=True)


def _random_future(rows: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """`rows` with every price, size and other float column replaced by random, consistent values."""
    rows = rows.copy()
    n = len(rows)
    if n == 0:
        return rows
    if all(c in rows.columns for c in PRICE_COLUMNS):
        o = rows["open"].to_numpy(dtype="float64") * rng.uniform(0.5, 1.5, n)
        c = rows["close"].to_numpy(dtype="float64") * rng.uniform(0.5, 1.5, n)
        rows["open"], rows["close"] = o, c
        rows["high"] = np.maximum(o, c) * (1 + rng.uniform(0, 0.05, n))
        rows["low"] = np.minimum(o, c) * (1 - rng.uniform(0, 0.05, n))
    for col in rows.columns:
        if col in PRICE_COLUMNS and all(c in rows.columns for c in PRICE_COLUMNS):
            continue
        if not pd.api.types.is_float_dtype(rows[col]):
            continue
        low, high = (0.2, 5.0) if col in SIZE_COLUMNS else (0.5, 1.5)
        rows[col] = rows[col].to_numpy(dtype="float64") * rng.uniform(low, high, n)
    return rows


def _appended_sessions(data: pd.DataFrame, time_col: str, rng: np.random.Generator, n_sessions: int = 5) -> pd.DataFrame:
    """Fresh random rows for `n_sessions` new sessions after the last time stamp, one per symbol."""
    ts = pd.DatetimeIndex(data[time_col])
    last = ts.max()
    step = pd.Series(np.unique(ts.asi8)).diff().median()
    step = pd.Timedelta(int(step)) if np.isfinite(step) and step > 0 else pd.Timedelta(days=1)
    new_ts = [last + step * (k + 1) for k in range(n_sessions)]
    if "symbol" in data.columns:
        template = data.sort_values(time_col).groupby("symbol", sort=True).tail(1)
    else:
        template = data.sort_values(time_col).tail(1)
    frames = []
    for t in new_ts:
        part = template.copy()
        part[time_col] = t
        frames.append(_random_future(part, rng))
    return pd.concat(frames, ignore_index=True)


def _compare(base: pd.DataFrame, other: pd.DataFrame, time_col: str, cutoff: pd.Timestamp, what: str) -> None:
    """Raise AssertionError unless the rows with ts <= cutoff are bit-identical."""
    a = base[base[time_col] <= cutoff].reset_index(drop=True)
    b = other[other[time_col] <= cutoff].reset_index(drop=True)
    where = f"cut-off {cutoff} ({what})"
    if list(a.columns) != list(b.columns):
        raise AssertionError(f"{where}: output columns changed: {list(a.columns)} vs {list(b.columns)}")
    if len(a) != len(b):
        raise AssertionError(f"{where}: {len(a)} output rows at or before the cut-off became {len(b)}")
    keys = [c for c in ("symbol", time_col) if c in a.columns]
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if x.dtype.kind == "f" and y.dtype.kind == "f":
            same = (x == y) | (np.isnan(x) & np.isnan(y))
            same &= np.signbit(x) == np.signbit(y)
        else:
            same = np.asarray(pd.Series(x).eq(pd.Series(y)) | (pd.isna(pd.Series(x)) & pd.isna(pd.Series(y))))
        if not bool(np.all(same)):
            i = int(np.flatnonzero(~same)[0])
            row = ", ".join(f"{k}={a[k].iloc[i]}" for k in keys)
            raise AssertionError(
                f"{where}: look-ahead in column '{col}' at ({row}): {x[i]!r} on the original data, "
                f"{y[i]!r} after changing the future"
            )


def assert_causal(
    fn: Callable[[pd.DataFrame], pd.DataFrame],
    data: pd.DataFrame,
    cutoffs: int = 3,
    seed: int = 0,
    time_col: str = "ts",
    horizon_bars: int = 0,
) -> None:
    """Assert that fn's outputs at ts <= t do not depend on data after t (+ `horizon_bars` sessions).

    fn: maps a frame shaped like `data` to a DataFrame with a `time_col` column or index level
        (e.g. a (symbol, ts) MultiIndex). It is called on copies; it may not mutate its input.
    data: the input frame (e.g. canonical bars); must hold at least `horizon_bars + 4` sessions.
    cutoffs: how many cut-off sessions to test, spread over the middle of the sample.
    seed: seeds every random perturbation (the check is deterministic).
    horizon_bars: sessions of look-ahead fn is allowed by design. 0 for factors and scores; for
        a label built from bars up to t + lag + horizon (e.g. open(t+2)/open(t+1) - 1) it is
        lag + horizon: rows after the session t + horizon_bars are perturbed and outputs at
        ts <= t must not change.

    Raises AssertionError with the cut-off, the perturbation, the column and the first differing
    row when fn looks further ahead than allowed.
    """
    if time_col not in data.columns:
        raise ValueError(f"data has no '{time_col}' column")
    if cutoffs < 1:
        raise ValueError("cutoffs must be >= 1")
    data = data.copy()
    data[time_col] = pd.to_datetime(data[time_col])
    calendar = np.unique(data[time_col].to_numpy())
    n = len(calendar)
    if n < horizon_bars + 4:
        raise ValueError(f"data holds {n} sessions; assert_causal needs at least horizon_bars + 4 = {horizon_bars + 4}")
    rng = np.random.default_rng(seed)
    base = _normalise_output(fn(data.copy()), time_col)
    last_cut = n - 2 - horizon_bars
    positions = np.unique(np.linspace(max(1, n // 4), max(1, last_cut), num=cutoffs).round().astype(int))
    for pos in positions:
        cutoff = pd.Timestamp(calendar[pos])
        frontier = pd.Timestamp(calendar[pos + horizon_bars])
        future = data[time_col] > frontier
        past_rows, future_rows = data[~future], data[future]
        variants = {
            "perturb": pd.concat([past_rows, _random_future(future_rows, rng)]),
            "drop": pd.concat([past_rows, future_rows[rng.random(len(future_rows)) < 0.5]]),
            "truncate+append": pd.concat([past_rows, _appended_sessions(past_rows, time_col, rng)]),
        }
        for what, variant in variants.items():
            variant = variant.sort_values([c for c in ("symbol", time_col) if c in variant.columns], kind="stable")
            out = _normalise_output(fn(variant.reset_index(drop=True)), time_col)
            _compare(base, out, time_col, cutoff, what)





def synthetic_result(returns: pd.Series, benchmark_returns: pd.Series | None = None, cash: float = 1_000_000.0,
                     market: str = "cn", n_trades_per_session: int = 2, seed: int = 0):
    """A BacktestResult-shaped object for given daily simple returns (for tests and examples).

    equity_t = cash * prod_{s<=t}(1 + r_s); the benchmark close starts at 1000 and follows
    `benchmark_returns`; trades hold `n_trades_per_session` filled orders per session plus one
    rejection every 10 sessions; turnover is random in [0, 0.4]; costs are 1e-4 of traded value.
    Uses `quantlm.backtest.engine.BacktestResult` when the engine is importable.
    """
    from types import SimpleNamespace

    rng = np.random.default_rng(seed)
    r = pd.Series(returns, dtype="float64")
    idx = pd.DatetimeIndex(r.index, name="ts")
    equity = pd.Series(cash * np.cumprod(1.0 + r.to_numpy()), index=idx, name="equity")
    bench = None
    if benchmark_returns is not None:
        rb = pd.Series(benchmark_returns, dtype="float64").reindex(r.index).fillna(0.0)
        bench = pd.Series(1000.0 * np.cumprod(1.0 + rb.to_numpy()), index=idx, name="benchmark")
    turnover = pd.Series(rng.uniform(0, 0.4, len(idx)), index=idx, name="turnover")
    prev_equity = equity.shift(1).fillna(cash)
    costs = pd.Series(1e-4 * turnover.to_numpy() * prev_equity.to_numpy(), index=idx, name="costs")
    rows = []
    for i, t in enumerate(idx):
        for k in range(n_trades_per_session):
            rows.append((t, f"S{k}", "buy" if k % 2 == 0 else "sell", 100, 100, 10.0, 1000.0, 5.0, 0.0, 0.01, 0.0, 0.0,
                         0.0, 5.01, "filled", ""))
        if i % 10 == 9:
            rows.append((t, "S9", "buy", 100, 0, np.nan, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, "rejected", "limit_up"))
    trades = pd.DataFrame(rows, columns=["ts", "symbol", "side", "shares_requested", "shares_filled", "price", "value",
                                         "commission", "stamp_duty", "transfer_fee", "slippage", "impact", "borrow_fee",
                                         "total_cost", "status", "reason"])
    exposure = pd.Series(rng.uniform(0.8, 1.0, len(idx)), index=idx, name="exposure")
    cash_series = equity * (1 - exposure)
    positions = pd.DataFrame({"ts": idx, "symbol": "S0", "shares": 100.0, "value": equity * exposure,
                              "weight": exposure.to_numpy()})
    fields = dict(equity=equity, cash=cash_series, benchmark=bench, positions=positions, trades=trades,
                  turnover=turnover, costs=costs, exposure=exposure)
    try:
        from quantlm.backtest.engine import BacktestConfig, BacktestResult

        return BacktestResult(config=BacktestConfig(market=market, cash=cash), **fields)
    except (ImportError, TypeError):
        first = cash
        ns = SimpleNamespace(config=SimpleNamespace(market=market, cash=cash), **fields)
        ns.returns = lambda: ns.equity.pct_change().fillna(ns.equity.iloc[0] / first - 1.0)
        return ns
__all__ = ["assert_causal", "synthetic_result", "PERTURBATIONS"]
