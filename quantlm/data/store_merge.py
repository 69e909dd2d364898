"""Merging new bars into stored ones (overlaps, adj_factor re-basing) and timestamp normalisation.

adj_factor is cumulative (adjusted price = price * adj_factor) and only defined up to a constant: a
source such as Yahoo re-bases every factor after each dividend, so a later download of the same
history carries factors that differ from the stored ones by one constant ratio. Merging must then
rescale the stored history, or the adjusted series jumps at the seam between stored and new rows.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from quantlm.data.calendars import TIMEZONES
from quantlm.data.schema import BAR_COLUMNS, PRICE_COLUMNS, DataValidationError

OVERLAP_RTOL = 1e-9  # prices and volume of overlapping bars must agree this closely (relative)
FACTOR_RTOL = 1e-6  # adj_factor ratios new/stored within this (relative) count as one constant
_OFFSET = re.compile(r"(Z|[+-]\d{2}(:?\d{2})?)$")


def to_exchange_local(bars: pd.DataFrame, market: str, file: str | None = None) -> pd.DataFrame:
    """`bars` with tz-aware `ts` converted to the market's exchange-local time, then made tz-naive.

    A bar stamped 2024-01-02 07:00Z for market cn (Asia/Shanghai, UTC+8) becomes 2024-01-02 15:00.
    Handles a tz-aware datetime column and text / objects that carry a UTC offset ("...Z", "+08:00",
    mixed offsets such as US daylight saving). Naive timestamps are exchange-local already and are left
    alone (as is anything unparseable: `validate_bars` reports it). A column that mixes aware and naive
    values raises DataValidationError: the naive ones cannot be placed.
    """
    if "ts" not in bars.columns or len(bars) == 0:
        return bars
    ts = bars["ts"]
    zone = TIMEZONES[market]
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        local = ts.dt.tz_convert(zone).dt.tz_localize(None)
    elif pd.api.types.is_datetime64_dtype(ts.dtype) or pd.api.types.is_numeric_dtype(ts.dtype):
        return bars
    else:
        try:
            parsed = pd.to_datetime(ts, errors="coerce", format="mixed")
            if not isinstance(parsed.dtype, pd.DatetimeTZDtype):
                return bars
        except (ValueError, TypeError):  # mixed offsets, or aware mixed with naive
            pass
        aware = ts.map(_has_offset).to_numpy(dtype=bool)
        present = ts.notna().to_numpy()
        mixed = present & (aware != aware[present][0]) if present.any() else present
        if mixed.any():
            i = int(np.flatnonzero(mixed)[0])
            rows = bars["_row"].to_numpy() if "_row" in bars.columns else np.arange(1, len(bars) + 1)
            raise DataValidationError(
                f"timestamp {ts.iloc[i]!r} {'has' if aware[i] else 'has no'} time zone, unlike the first one "
                f"{ts[present].iloc[0]!r}: give all timestamps with a UTC offset or none", file=file, row=int(rows[i]),
                column="ts")
        local = pd.to_datetime(ts, errors="coerce", format="mixed", utc=True).dt.tz_convert(zone).dt.tz_localize(None)
        local = local.where(local.notna(), ts)  # keep unparseable cells as they were, for validate_bars' message
    out = bars.copy()
    out["ts"] = local
    return out


def _has_offset(value: object) -> bool:
    if isinstance(value, str):
        return bool(_OFFSET.search(value.strip()))
    return getattr(value, "tzinfo", None) is not None


def merge_bars(old: pd.DataFrame, new: pd.DataFrame, replace: bool, file: str | None) -> tuple[pd.DataFrame, list[str]]:
    """(union of stored and new bars of one symbol, notes for the user).

    Overlapping bars must agree in prices and volume (relative OVERLAP_RTOL) unless `replace`, in
    which case the new rows win. adj_factor over the overlap (where both are finite):
    - same ratio new/stored everywhere (relative FACTOR_RTOL), not 1: the whole stored history is
      rescaled by that ratio (the new factors win) and a note says so;
    - ratios that differ: DataValidationError naming the first bar that breaks the first ratio, unless
      `replace`: then the new rows win and each kept stored row is rescaled by the ratio at the
      nearest overlapping bar before it (the first one for rows before the overlap), so the adjusted
      series is continuous at every seam, with a note;
    - stored factors all missing, new ones finite: the new factors are kept (also filling overlapping
      stored rows) and stored rows outside the new data stay without a factor, with a note.
    """
    symbol = new["symbol"].iat[0]
    overlap = pd.Index(old["ts"]).intersection(pd.Index(new["ts"]))
    o = old.set_index("ts").loc[overlap]
    n = new.set_index("ts").loc[overlap]
    if len(overlap) and not replace:
        for col in (*PRICE_COLUMNS, "volume"):
            a, b = o[col].to_numpy(), n[col].to_numpy()
            bad = ~np.isclose(a, b, rtol=OVERLAP_RTOL, atol=0.0)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataValidationError(
                    f"overlaps stored data for {symbol} at {overlap[i]}: stored {col}={float(a[i])!r}, "
                    f"new {col}={float(b[i])!r} (use --replace to overwrite)",
                    file=file,
                    column=col,
                )
    old = old.copy()
    notes: list[str] = []
    fa, fb = o["adj_factor"].to_numpy(), n["adj_factor"].to_numpy()
    both = np.isfinite(fa) & np.isfinite(fb)
    span = f"{len(overlap)} overlapping bars ({_day(overlap[0])}..{_day(overlap[-1])})" if len(overlap) else ""
    source = f"new file {file}" if file else "new bars"
    rescaled = False
    if both.any():
        ratio = fb[both] / fa[both]
        r0 = float(ratio[0])
        off = ~np.isclose(ratio, r0, rtol=FACTOR_RTOL, atol=0.0)
        if not off.any():
            if not np.isclose(r0, 1.0, rtol=FACTOR_RTOL, atol=0.0):
                old["adj_factor"] = old["adj_factor"].to_numpy() * r0
                rescaled = True
                notes.append(f"{symbol}: stored adj_factor rescaled by {r0:.6g} to match the {source} over {span}")
        elif not replace:
            i = int(np.flatnonzero(off)[0])
            ts = overlap[np.flatnonzero(both)[i]]
            raise DataValidationError(
                f"adj_factor of {symbol} disagrees with the stored one at {ts}: stored {float(fa[both][i])!r}, new "
                f"{float(fb[both][i])!r}, a ratio of {float(ratio[i]):.6g} where earlier bars had {r0:.6g} (not one "
                "constant re-basing; use --replace to overwrite)",
                file=file,
                column="adj_factor",
            )
        else:  # replace with non-constant ratios: stitch each kept stored stretch at its seam
            at = pd.DatetimeIndex(overlap[both])
            kept = ~old["ts"].isin(new["ts"]).to_numpy()
            j = np.clip(np.searchsorted(at.asi8, pd.DatetimeIndex(old["ts"]).asi8, side="right") - 1, 0, None)
            scale = np.where(kept, ratio[j], 1.0)
            old["adj_factor"] = old["adj_factor"].to_numpy() * scale
            notes.append(f"{symbol}: new adj_factor replaces the stored one over {span}; stored bars outside it "
                         f"rescaled by {float(ratio.min()):.6g}..{float(ratio.max()):.6g} so adjusted prices join "
                         "continuously at each seam")
    elif old["adj_factor"].isna().all() and np.isfinite(new["adj_factor"].to_numpy()).any():
        n_old = int((~old["ts"].isin(new["ts"])).sum())
        if n_old:
            notes.append(f"{symbol}: stored bars had no adj_factor; the factors of the {source} are kept and "
                         f"{n_old} stored bars outside it stay without one (adjusted prices are undefined there)")
    if replace:
        keep_old, add_new = old[~old["ts"].isin(new["ts"])], new
    else:
        # Overlapping stored rows keep their prices; they take the new factor where they had none,
        # and everywhere once the stored history was rescaled to it (new factors win).
        take = np.isfinite(fb) & (np.isnan(fa) | rescaled)
        if take.any():
            factor = pd.Series(fb[take], index=overlap[take])
            rows = old["ts"].isin(factor.index).to_numpy()
            old.loc[rows, "adj_factor"] = factor.reindex(old.loc[rows, "ts"]).to_numpy()
        keep_old, add_new = old, new[~new["ts"].isin(old["ts"])]
    merged = pd.concat([keep_old, add_new], ignore_index=True)
    return merged.sort_values("ts", kind="stable").reset_index(drop=True)[list(BAR_COLUMNS)], notes


def _day(ts: pd.Timestamp) -> str:
    ts = pd.Timestamp(ts)
    return str(ts.date()) if ts == ts.normalize() else str(ts)
