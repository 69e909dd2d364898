"""Reader for Qlib's binary data folder (the output of Qlib's `dump_bin.py`).

Layout::

    calendars/day.txt                 one timestamp per line (day, or 1min/5min/15min/30min/60min)
    instruments/<universe>.txt        SYMBOL<TAB>start<TAB>end per line (spans inclusive)
    features/<symbol lower>/<field>.<freq>.bin

A `.bin` file is little-endian float32: the first value is the index of the first bar in the
calendar, then one value per calendar entry from there on (NaN where the symbol did not trade).

Qlib stores ADJUSTED prices and volumes together with a `factor`:
adjusted price = raw price * factor and adjusted volume = raw volume / factor. We store raw values
and keep the factor as `adj_factor` (quantlm's convention is the same: adjusted = raw * adj_factor):
raw price = price / factor, raw volume = volume * factor. Without `factor.<freq>.bin` the values are
taken as raw (adj_factor NaN). `amount` (currency, not adjusted) is read when present. Values keep
float32 precision (about 7 significant digits).

Calendar entries where a symbol has NaN for all of open, high, low and close (before listing,
suspended) are dropped; a partly-NaN entry is an error. Errors name the file and, as `row`, the
1-based line of the calendar file (i.e. the bar's date). Qlib codes become quantlm symbols:
SH600000 -> 600000.SH, SZ000001 -> 000001.SZ, BJ830000 -> 830000.BJ.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.data.schema import DataValidationError

QLIB_FREQS = {"day": "1d", "60min": "1h", "30min": "30min", "15min": "15min", "5min": "5min", "1min": "1min"}
PRICE_FIELDS = ("open", "high", "low", "close")
REQUIRED_FIELDS = (*PRICE_FIELDS, "volume")
OPTIONAL_FIELDS = ("factor", "amount")
_QLIB_CODE = re.compile(r"^(SH|SZ|BJ)(\d{6})$", re.IGNORECASE)


def is_qlib_dir(path: Path) -> bool:
    """True for a folder with Qlib's calendars/ and features/ sub-folders."""
    return path.is_dir() and (path / "calendars").is_dir() and (path / "features").is_dir()


def qlib_symbol(code: str) -> str:
    """Qlib instrument code -> quantlm symbol: SH600000 -> 600000.SH (other codes unchanged)."""
    m = _QLIB_CODE.match(code.strip())
    return f"{m.group(2)}.{m.group(1).upper()}" if m else code.strip()


def calendar_file(root: Path, freq: str | None) -> tuple[Path, str]:
    """The calendar to read and its quantlm frequency; `freq` None works when there is only one."""
    available = {p.stem: p for p in sorted((root / "calendars").glob("*.txt")) if p.stem in QLIB_FREQS}
    if freq is not None:
        qfreq = next((q for q, f in QLIB_FREQS.items() if f == freq), None)
        if qfreq is None or qfreq not in available:
            raise DataValidationError(
                f"no {freq} calendar ({qfreq or freq}.txt); found {', '.join(available) or 'none'}",
                file=str(root / "calendars"))
        return available[qfreq], freq
    if len(available) != 1:
        raise DataValidationError(
            f"{'no' if not available else 'several'} calendars ({', '.join(available) or 'none'}); pass --freq",
            file=str(root / "calendars"))
    qfreq, path = next(iter(available.items()))
    return path, QLIB_FREQS[qfreq]


def read_calendar(path: Path) -> pd.DatetimeIndex:
    """Calendar timestamps, in file order (which must be strictly increasing)."""
    lines = path.read_text().splitlines()
    text = pd.Series([ln.strip() for ln in lines], dtype="str")
    ts = pd.to_datetime(text, format="ISO8601", errors="coerce")
    bad = ts.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataValidationError(f"unparseable calendar date {lines[i]!r}", file=str(path), row=i + 1)
    cal = pd.DatetimeIndex(ts).astype("datetime64[ns]")
    if len(cal) == 0:
        raise DataValidationError("empty calendar", file=str(path))
    steps = np.diff(cal.asi8)
    if (steps <= 0).any():
        i = int(np.flatnonzero(steps <= 0)[0]) + 1
        raise DataValidationError(f"calendar not strictly increasing at {lines[i]!r}", file=str(path), row=i + 1)
    return cal


def read_instruments(root: Path) -> pd.DataFrame:
    """All instruments/*.txt as universes rows (universe = file stem, symbol, start, end)."""
    rows = []
    for path in sorted((root / "instruments").glob("*.txt")):
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t") if "\t" in line else line.split()
            if len(parts) < 3:
                raise DataValidationError(f"expected SYMBOL<TAB>start<TAB>end, got {line!r}", file=str(path), row=n)
            span = pd.to_datetime(pd.Series(parts[1:3], dtype="str").str.strip(), format="ISO8601", errors="coerce")
            for col, value, raw in zip(("start", "end"), span, parts[1:3], strict=True):
                if pd.isna(value):
                    raise DataValidationError(f"unparseable date {raw!r}", file=str(path), row=n, column=col)
            if span.iloc[1] < span.iloc[0]:
                raise DataValidationError("end is before start", file=str(path), row=n, column="end")
            rows.append((path.stem, qlib_symbol(parts[0]), parts[0].strip(), span.iloc[0], span.iloc[1]))
    df = pd.DataFrame(rows, columns=["universe", "symbol", "code", "start", "end"])
    df["start"] = df["start"].astype("datetime64[ns]")
    df["end"] = df["end"].astype("datetime64[ns]")
    return df


def read_field(path: Path, n_calendar: int) -> tuple[int, np.ndarray]:
    """(start index into the calendar, float32 values) of one `<field>.<freq>.bin` file."""
    data = np.fromfile(path, dtype="<f4")
    if len(data) == 0:
        raise DataValidationError("empty .bin file (expected a start index, then values)", file=str(path))
    start = float(data[0])
    values = data[1:]
    if not np.isfinite(start) or start < 0 or start != int(start):
        raise DataValidationError(f"bad start index {start!r} (first float of the file)", file=str(path))
    if int(start) + len(values) > n_calendar:
        raise DataValidationError(
            f"start index {int(start)} + {len(values)} values runs past the calendar ({n_calendar} entries)",
            file=str(path))
    return int(start), values


def read_symbol(folder: Path, symbol: str, qfreq: str, calendar: pd.DatetimeIndex) -> pd.DataFrame | None:
    """Canonical raw bars (+ `_row` = calendar line) of one features folder; None if it has no `qfreq` data."""
    present = {f: folder / f"{f}.{qfreq}.bin" for f in REQUIRED_FIELDS + OPTIONAL_FIELDS}
    present = {f: p for f, p in present.items() if p.is_file()}
    if not present:
        return None
    missing = [f for f in REQUIRED_FIELDS if f not in present]
    if missing:
        raise DataValidationError(f"missing {', '.join(f'{f}.{qfreq}.bin' for f in missing)}", file=str(folder),
                                  column=missing[0])
    parts = {f: read_field(p, len(calendar)) for f, p in present.items()}
    lo = min(s for s, _ in parts.values())
    hi = max(s + len(v) for s, v in parts.values())
    cols: dict[str, np.ndarray] = {}
    for f in REQUIRED_FIELDS + OPTIONAL_FIELDS:
        full = np.full(hi - lo, np.nan)
        if f in parts:
            s, v = parts[f]
            full[s - lo: s - lo + len(v)] = v
        cols[f] = full
    prices = np.column_stack([cols[f] for f in PRICE_FIELDS])
    keep = ~np.isnan(prices).all(axis=1)  # not listed yet / suspended: no bar
    idx = np.arange(lo, hi)[keep]
    factor = cols["factor"][keep]
    has_factor = "factor" in parts
    scale = factor if has_factor else np.ones(len(idx))
    bad = ~(scale > 0) | np.isinf(scale)
    if bad.any():
        raise DataValidationError(f"factor must be a positive number, got {float(scale[bad][0])!r}",
                                  file=str(present["factor"]), row=int(idx[bad][0]) + 1, column="factor")
    out = pd.DataFrame({"_row": idx + 1, "symbol": symbol, "ts": calendar[idx]})
    for f in PRICE_FIELDS:
        out[f] = cols[f][keep] / scale  # raw = adjusted / factor
    out["volume"] = cols["volume"][keep] * scale  # raw = adjusted * factor
    out["amount"] = cols["amount"][keep]
    out["adj_factor"] = factor if has_factor else np.nan
    return out


def read_qlib_dir(root: Path, freq: str | None = None) -> tuple[list[tuple[str, pd.DataFrame]], pd.DataFrame, str]:
    """Read a Qlib folder: ([(features folder, bars with `_row`)], universes rows, quantlm freq)."""
    root = Path(root)
    cal_path, qbar_freq = calendar_file(root, freq)
    calendar = read_calendar(cal_path)
    qfreq = cal_path.stem
    universes = read_instruments(root)
    spelled = {c.lower(): c for c in universes["code"]}  # features folders are lower case
    frames = []
    for folder in sorted(p for p in (root / "features").iterdir() if p.is_dir()):
        symbol = qlib_symbol(spelled.get(folder.name.lower(), folder.name.upper()))
        bars = read_symbol(folder, symbol, qfreq, calendar)
        if bars is not None and len(bars):
            frames.append((str(folder), bars))
    if not frames:
        raise DataValidationError(f"no {qfreq} features found", file=str(root / "features"))
    return frames, universes.drop(columns="code"), qbar_freq
