"""`quantlm data check`: a health report on a store's bars. Findings are warnings, never errors.

Kinds of warning (one row each in `HealthReport.warnings`: symbol, ts, kind, detail):

- `gap`: a calendar session, inside the market's first..last bar, on which NO symbol of that market
  in the store has a bar: the data is missing, not the trading (symbol is "").
- `suspension`: a session on which other symbols of the market trade but this symbol has no bar or
  a zero-volume bar, inside the symbol's own first..last bar (a halt or a hole in one file).
  `gap` and `suspension` are the two classes of a missing session.
- `non_session_bar`: a bar dated on a day that is not a session of its market's calendar.
- `price_jump`: |close / previous close - 1| > 50% between consecutive bars of a symbol (on adjusted
  closes, close * adj_factor, where both bars carry an adj_factor).
- `volume_jump`: volume / previous volume - 1 > 300% (previous volume > 0).
- `stale_price`: the close is unchanged for >= 5 consecutive bars that all have volume > 0 (one
  warning per run, dated at its first bar).
- `zero_volume_run`: >= 3 consecutive zero-volume bars (one warning per run, dated at its first bar).

Daily bars (`1d`) are checked against the exchange calendar of their market (the store's listing
gives each symbol's market). Intraday bars get the same per-bar checks on consecutive bars, and the
session checks on the days that hold bars (a session with no intraday bar at all is a `gap` or a
`suspension`); missing minutes inside a day are not checked. Sessions beyond the calendar's range
(`quantlm.data.calendars.calendar_range`) are not checked against it.
Everything is vectorised over one market's bars at a time.

Metadata (a separate section, `HealthReport.metadata`: kind, detail), for a store whose market is cn
(store meta `market`, or cn bars in the listing), also warnings, never errors:

- `missing_list_dates`: stock symbols (board main, chinext, star or bse) with bars but no `list_date`
  in instruments: the IPO no-limit window cannot apply to them.
- `missing_st_flags`: no ST / *ST span in the flags table: ST price limits cannot apply.
- `no_benchmark`: no store meta `benchmark` (or one without bars); the stored index symbols are named
  as candidates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from quantlm.data import calendars
from quantlm.data.schema import check_freq
from quantlm.data.store import Store

META_KINDS = ("missing_list_dates", "missing_st_flags", "no_benchmark")
KINDS = ("gap", "suspension", "non_session_bar", "price_jump", "volume_jump", "stale_price", "zero_volume_run")
WARNING_COLUMNS = ("symbol", "ts", "kind", "detail")
_DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class Thresholds:
    """Limits of the checks: ratios are fractions (0.5 = 50%), runs are counts of bars."""

    price_jump: float = 0.5
    volume_jump: float = 3.0
    stale_bars: int = 5
    zero_volume_bars: int = 3


@dataclass
class HealthReport:
    """Warnings found in a store (symbol, ts, kind, detail) and what was checked."""

    warnings: pd.DataFrame
    freq: str
    n_symbols: int
    n_bars: int
    markets: list[str] = field(default_factory=list)
    metadata: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["kind", "detail"]))

    @property
    def summary(self) -> pd.Series:
        """Number of warnings per kind (every kind listed, zeros included)."""
        counts = self.warnings["kind"].value_counts()
        return pd.Series([int(counts.get(k, 0)) for k in KINDS], index=list(KINDS), name="count")

    def examples(self, n: int) -> pd.DataFrame:
        """Up to `n` warnings, the first ones of every kind found (kinds share `n` evenly)."""
        if n <= 0 or len(self.warnings) == 0:
            return self.warnings.head(0)
        per_kind = -(-n // self.warnings["kind"].nunique())
        return self.warnings.groupby("kind", sort=False).head(per_kind).head(n)

    def to_dict(self) -> dict:
        w = self.warnings.copy()
        w["ts"] = w["ts"].astype(str)
        return {"freq": self.freq, "n_symbols": self.n_symbols, "n_bars": self.n_bars, "markets": self.markets,
                "summary": {k: int(v) for k, v in self.summary.items()}, "warnings": w.to_dict(orient="records"),
                "metadata": self.metadata.to_dict(orient="records")}

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))


def check_store(store: Store, freq: str = "1d", market: str | None = None,
                thresholds: Thresholds = Thresholds()) -> HealthReport:
    """Check every symbol of `store` at `freq` (optionally one market) and return the warnings."""
    check_freq(freq)
    if not store.exists():
        raise FileNotFoundError(f"no quantlm store at {store.root}")
    listing = store.listing()
    listing = listing[listing["freq"] == freq]
    if market is not None:
        listing = listing[listing["market"] == market]
    parts, n_bars = [], 0
    markets = sorted(listing["market"].dropna().unique().tolist())
    for m in markets:
        bars = store.bars(listing.loc[listing["market"] == m, "symbol"].tolist(), freq=freq,
                          fields=["close", "volume", "adj_factor"])
        n_bars += len(bars)
        parts.append(check_bars(bars, m, thresholds))
    warnings = pd.concat(parts, ignore_index=True) if parts else _empty_warnings()
    report = HealthReport(warnings=warnings, freq=freq, n_symbols=len(listing), n_bars=n_bars, markets=markets)
    all_markets = set(store.listing()["market"].dropna())
    if market in (None, "cn") and (store.meta().get("market") == "cn" or "cn" in all_markets):
        report.metadata = check_metadata(store)
    return report


def check_metadata(store: Store, market: str = "cn") -> pd.DataFrame:
    """Metadata warnings (kind, detail) of `market`'s symbols: list dates, ST spans, benchmark (see META_KINDS)."""
    from quantlm.backtest.rules import symbol_boards

    listing = store.listing()
    symbols = sorted(set(listing.loc[listing["market"] == market, "symbol"].astype(str)))
    instruments = store.instruments()
    boards = symbol_boards(symbols, instruments)
    benchmark = store.meta().get("benchmark")
    stocks = [s for s, b in zip(symbols, boards, strict=True) if b in ("main", "chinext", "star", "bse") and s != benchmark]
    rows: list[tuple[str, str]] = []
    listed = instruments.loc[instruments["list_date"].notna(), "symbol"].astype(str) if len(instruments) else []
    unlisted = sorted(set(stocks) - set(listed))
    if unlisted:
        eg = ", ".join(unlisted[:3]) + (", ..." if len(unlisted) > 3 else "")
        rows.append(("missing_list_dates", f"{len(unlisted)} of {len(stocks)} stock symbols have no list_date (e.g. {eg}): "
                     "the IPO no-limit window cannot apply; import them with 'quantlm data import-instruments'"))
    flags = store.flags()
    n_st = int(flags["flag"].astype(str).str.lower().isin(["st", "*st"]).sum()) if len(flags) else 0
    if stocks and n_st == 0:
        what = "no flags table" if not store.has_table("flags") else "no ST spans in the flags table"
        rows.append(("missing_st_flags", f"{what}: ST price limits cannot apply; import them with "
                     "'quantlm data import-flags'"))
    if not benchmark or benchmark not in set(listing["symbol"]):
        indices = [s for s, b in zip(symbols, boards, strict=True) if b == "index"]
        head = "no benchmark set" if not benchmark else f"benchmark {benchmark} (store meta) has no bars in the store"
        hint = (f"candidates (stored index symbols): {', '.join(indices)}; set one with 'quantlm data set-benchmark SYMBOL'"
                if indices else "no index symbol is stored: import the index bars with 'quantlm data import', then "
                "'quantlm data set-benchmark SYMBOL'")
        rows.append(("no_benchmark", f"{head}: {hint}"))
    return pd.DataFrame(rows, columns=["kind", "detail"])


def check_bars(bars: pd.DataFrame, market: str, thresholds: Thresholds = Thresholds()) -> pd.DataFrame:
    """All checks on one market's bars (symbol, ts, close, volume[, adj_factor]), in any order."""
    if len(bars) == 0:
        return _empty_warnings()
    b = _columns(bars)
    parts = [p for p in (_session_checks(b, market), _jump_checks(b, thresholds), _run_checks(b, thresholds)) if len(p)]
    if not parts:
        return _empty_warnings()
    out = pd.concat(parts, ignore_index=True)
    order = pd.Categorical(out["kind"], categories=list(KINDS))
    out = out.assign(_k=order).sort_values(["_k", "symbol", "ts"], kind="stable").drop(columns="_k")
    return out.reset_index(drop=True)[list(WARNING_COLUMNS)]


class _Bars(NamedTuple):
    """One market's bars as arrays sorted by (symbol, ts); symbols as integer codes into `names`."""

    code: np.ndarray  # int64
    names: np.ndarray  # object (str), sorted
    ts: np.ndarray  # int64 nanoseconds, tz-naive local
    close: np.ndarray
    volume: np.ndarray
    adj: np.ndarray  # NaN where unknown

    def symbol(self, i: np.ndarray) -> np.ndarray:
        return self.names[self.code[i]]

    def new_symbol(self) -> np.ndarray:
        """True where a row starts a symbol's series."""
        return np.r_[True, self.code[1:] != self.code[:-1]]


def _columns(bars: pd.DataFrame) -> _Bars:
    code, names = pd.factorize(bars["symbol"], sort=True)
    ts = bars["ts"].to_numpy(dtype="datetime64[ns]").astype("int64")
    cols = [code.astype("int64"), ts] + [bars[c].to_numpy(dtype="float64") if c in bars else np.full(len(bars), np.nan)
                                         for c in ("close", "volume", "adj_factor")]
    ordered = np.all((code[1:] > code[:-1]) | ((code[1:] == code[:-1]) & (ts[1:] >= ts[:-1])))
    if not ordered:  # Store.bars is already sorted; other callers may not be
        order = np.lexsort((ts, code))
        cols = [c[order] for c in cols]
    return _Bars(cols[0], np.asarray(names, dtype=object), *cols[1:])


def _empty_warnings() -> pd.DataFrame:
    return pd.DataFrame({"symbol": pd.Series(dtype="str"), "ts": pd.Series(dtype="datetime64[ns]"),
                         "kind": pd.Series(dtype="str"), "detail": pd.Series(dtype="str")})


def _frame(symbol, ts, kind: str, detail) -> pd.DataFrame:
    n = len(ts)
    return pd.DataFrame({"symbol": np.asarray(symbol, dtype=object) if n else np.array([], dtype=object),
                         "ts": pd.to_datetime(np.asarray(ts).astype("datetime64[ns]")),
                         "kind": [kind] * n, "detail": list(detail)})


def _session_checks(b: _Bars, market: str) -> pd.DataFrame:
    """gap / suspension / non_session_bar, on dates (intraday bars are reduced to their days)."""
    day = b.ts - b.ts % _DAY_NS
    first_cal, last_cal = calendars.calendar_range(market)
    inside = (day >= first_cal.value) & (day <= last_cal.value)
    on_session = calendars.is_session(market, day.astype("datetime64[ns]"))
    out = []
    off = inside & ~on_session
    if off.any():
        # one warning per (symbol, day), even for many intraday bars on that day
        pairs = np.unique(np.stack([b.code[off], day[off]], axis=1), axis=0)
        days = pd.DatetimeIndex(pairs[:, 1].astype("datetime64[ns]"))
        out.append(_frame(b.names[pairs[:, 0]], days, "non_session_bar",
                          [f"bar on {d.date()} ({d.day_name()}), not a {market} session" for d in days]))
    keep = inside & on_session
    if not keep.any():
        return pd.concat(out, ignore_index=True) if out else _empty_warnings()
    day_k, code_k, traded_k = day[keep], b.code[keep], b.volume[keep] > 0
    cal = calendars.sessions(market, pd.Timestamp(day_k.min()), pd.Timestamp(day_k.max()))
    s_idx = np.searchsorted(cal.as_unit("ns").asi8, day_k)
    n_sym = len(b.names)
    has_bar = np.zeros((len(cal), n_sym), dtype=bool)
    traded = np.zeros_like(has_bar)
    has_bar[s_idx, code_k] = True
    traded[s_idx[traded_k], code_k[traded_k]] = True
    any_bar = has_bar.any(axis=1)
    gaps = np.flatnonzero(~any_bar)
    if len(gaps):
        out.append(_frame([""] * len(gaps), cal[gaps], "gap",
                          [f"no {market} symbol has a bar on this session" for _ in gaps]))
    first = np.full(n_sym, len(cal))
    last = np.full(n_sym, -1)
    np.minimum.at(first, code_k, s_idx)
    np.maximum.at(last, code_k, s_idx)
    rows = np.arange(len(cal))[:, None]
    missing = ~traded & any_bar[:, None] & (rows >= first[None, :]) & (rows <= last[None, :])
    si, yi = np.nonzero(missing)
    if len(si):
        detail = np.where(has_bar[si, yi], "zero-volume bar", "no bar")
        out.append(_frame(b.names[yi], cal[si], "suspension",
                          [f"{d}; other {market} symbols traded" for d in detail]))
    return pd.concat(out, ignore_index=True) if out else _empty_warnings()


def _jump_checks(b: _Bars, th: Thresholds) -> pd.DataFrame:
    same = ~b.new_symbol()
    prev_close, prev_vol, prev_adj = (np.r_[np.nan, a[:-1]] for a in (b.close, b.volume, b.adj))
    both_adj = ~np.isnan(b.adj) & ~np.isnan(prev_adj)
    cur = np.where(both_adj, b.close * b.adj, b.close)
    prv = np.where(both_adj, prev_close * prev_adj, prev_close)
    out = []
    with np.errstate(divide="ignore", invalid="ignore"):
        change = cur / prv - 1.0
        vchange = b.volume / prev_vol - 1.0
    jump = same & (np.abs(change) > th.price_jump)
    if jump.any():
        i = np.flatnonzero(jump)
        out.append(_frame(b.symbol(i), b.ts[i], "price_jump",
                          [f"close {'adjusted ' if a else ''}{p:.6g} -> {c:.6g} ({x:+.1%})"
                           for a, p, c, x in zip(both_adj[i], prv[i], cur[i], change[i], strict=True)]))
    vjump = same & (prev_vol > 0) & (vchange > th.volume_jump)
    if vjump.any():
        i = np.flatnonzero(vjump)
        out.append(_frame(b.symbol(i), b.ts[i], "volume_jump",
                          [f"volume {p:,.0f} -> {c:,.0f} (x{c / p:.1f})"
                           for p, c in zip(prev_vol[i], b.volume[i], strict=True)]))
    return pd.concat(out, ignore_index=True) if out else _empty_warnings()


def _runs(eligible: np.ndarray, breaks: np.ndarray, min_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Start index and length of runs of `eligible` rows (a run also ends where `breaks`) with >= min_len rows."""
    run_id = np.cumsum(breaks | np.r_[True, eligible[1:] != eligible[:-1]])
    starts = np.flatnonzero(np.r_[True, run_id[1:] != run_id[:-1]])
    lengths = np.diff(np.r_[starts, len(run_id)])
    good = eligible[starts] & (lengths >= min_len)
    return starts[good], lengths[good]


def _run_checks(b: _Bars, th: Thresholds) -> pd.DataFrame:
    new_symbol = b.new_symbol()
    out = []
    changed = np.r_[True, b.close[1:] != b.close[:-1]]
    s, n = _runs(b.volume > 0, new_symbol | changed, th.stale_bars)
    if len(s):
        end = b.ts[s + n - 1]
        out.append(_frame(b.symbol(s), b.ts[s], "stale_price",
                          [f"close {c:.6g} unchanged for {k} bars with volume, to {pd.Timestamp(e)}"
                           for c, k, e in zip(b.close[s], n, end, strict=True)]))
    s, n = _runs(b.volume == 0, new_symbol, th.zero_volume_bars)
    if len(s):
        end = b.ts[s + n - 1]
        out.append(_frame(b.symbol(s), b.ts[s], "zero_volume_run",
                          [f"{k} consecutive zero-volume bars, to {pd.Timestamp(e)}"
                           for k, e in zip(n, end, strict=True)]))
    return pd.concat(out, ignore_index=True) if out else _empty_warnings()


__all__ = ["HealthReport", "KINDS", "META_KINDS", "check_metadata", "Thresholds", "check_bars", "check_store"]
