"""Reading signal files (any model's Scores: CSV or Parquet, Qlib predictions included).

Time stamps: ISO 8601 (``2024-01-02``, ``2024-01-02 15:00``, ``2024-01-02T15:00:00+08:00``),
``YYYYMMDD`` and ``YYYY/MM/DD`` are read; day/month-first spellings such as ``03/04/2024`` are
refused (is it 3 April or 4 March?). Time-zone-aware stamps are converted to the exchange-local
time of the market (`quantlm.data.calendars.TIMEZONES`) and stored tz-naive, as every canonical
table is; reading them needs the market.

Symbols: for market cn (or no market given), Qlib codes (``SH600000``, ``sz000001``) become
``600000.SH`` / ``000001.SZ`` and lower-case suffixes (``600000.sh``) are upper-cased.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.data.schema import DataValidationError

# year first: YYYY-MM-DD / YYYY/MM/DD (1-2 digit month and day) or YYYYMMDD; optional time and zone
_TS_RE = (r"^(?P<y>\d{4})(?:(?P<sep>[-/])(?P<m>\d{1,2})(?P=sep)(?P<d>\d{1,2})|(?P<m2>\d{2})(?P<d2>\d{2}))"
          r"(?:[T ](?P<time>\d{1,2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?))?"
          r"\s*(?P<tz>Z|UTC|[+-]\d{2}(?::?\d{2})?)?$")
_DAY_MONTH_RE = re.compile(r"^\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b")
_CN_SYMBOL_RE = r"^(?:(?P<ex>SH|SZ|BJ)(?P<code>\d{6})|(?P<code2>\d{6})\.(?P<ex2>SH|SZ|BJ))$"
_TS_FORMATS = "YYYY-MM-DD[ HH:MM[:SS]][zone], YYYYMMDD or YYYY/MM/DD"


def _market_zone(market: str | None, name: str) -> str | None:
    from quantlm.data.calendars import TIMEZONES

    if market is None:
        return None
    if market not in TIMEZONES:
        raise DataValidationError(f"unknown market '{market}' (expected one of {', '.join(TIMEZONES)})", file=name)
    return TIMEZONES[market]


def _ts_text(col: pd.Series) -> pd.Series:
    """The ts column as stripped strings (integers such as 20240102 as their digits)."""
    if pd.api.types.is_bool_dtype(col):
        return col.astype("string")
    if pd.api.types.is_integer_dtype(col):
        return col.astype("Int64").astype("string")
    if pd.api.types.is_float_dtype(col):
        v = col.to_numpy(dtype="float64")
        whole = np.isfinite(v) & (v == np.round(v))
        ints = pd.Series(np.where(whole, v, 0).astype("int64"), index=col.index).astype("string")
        return ints.where(whole, col.astype("string")).str.strip()
    return col.astype("string").str.strip()


def parse_signal_ts(col: pd.Series, name: str, market: str | None = None) -> np.ndarray:
    """Parse a signals ts column to tz-naive exchange-local datetime64[ns] (rules in the module docstring).

    col: the raw column (strings, integers YYYYMMDD or datetimes); name: the file, for errors;
    market: cn / us / crypto, needed when stamps carry a time zone. Raises DataValidationError
    naming the 1-based data row for an ambiguous, unparseable or zone-mixed stamp.
    """
    zone = _market_zone(market, name)

    def need_market(row: int) -> DataValidationError:
        return DataValidationError("time-zone-aware timestamps need the market (cn, us or crypto) to convert them "
                                   "to exchange-local time; pass market= (CLI: --market or a store with a market)",
                                   file=name, row=row, column="ts")

    if isinstance(col.dtype, pd.DatetimeTZDtype):
        if zone is None:
            raise need_market(1)
        ts = col.dt.tz_convert(zone).dt.tz_localize(None)
        bad = ts.isna().to_numpy()
        if bad.any():
            raise DataValidationError("missing timestamp", file=name, row=int(np.flatnonzero(bad)[0]) + 1, column="ts")
        return ts.to_numpy().astype("datetime64[ns]")
    if pd.api.types.is_datetime64_dtype(col):
        bad = col.isna().to_numpy()
        if bad.any():
            raise DataValidationError("missing timestamp", file=name, row=int(np.flatnonzero(bad)[0]) + 1, column="ts")
        return col.to_numpy().astype("datetime64[ns]")

    codes, uniq = pd.factorize(_ts_text(col), use_na_sentinel=False)
    text = pd.Series(np.asarray(uniq, dtype=object)).astype("string").fillna("")
    parts = text.str.extract(_TS_RE, flags=re.IGNORECASE)

    def first_row(mask_uniq: np.ndarray) -> int:
        return int(np.flatnonzero(mask_uniq[codes])[0]) + 1

    unmatched = parts["y"].isna().to_numpy()
    if unmatched.any():
        row = first_row(unmatched)
        raw = text.iloc[codes[row - 1]]
        if raw == "":
            problem = "empty timestamp"
        elif _DAY_MONTH_RE.match(raw):
            problem = f"ambiguous date {raw!r}: day/month order unknown; write dates as {_TS_FORMATS}"
        else:
            problem = f"unparseable timestamp {raw!r} (expected {_TS_FORMATS})"
        raise DataValidationError(problem, file=name, row=row, column="ts")
    month = parts["m"].fillna(parts["m2"]).str.zfill(2)
    day = parts["d"].fillna(parts["d2"]).str.zfill(2)
    clock = parts["time"].fillna("00:00").str.replace(r"^(\d):", r"0\1:", regex=True)
    canon = parts["y"] + "-" + month + "-" + day + " " + clock
    tz = parts["tz"].str.upper()
    aware = tz.notna().to_numpy()
    if aware.any():
        if not aware.all():
            row1_aware = aware[codes[0]]
            row = first_row(aware != row1_aware)
            raise DataValidationError("mixes time-zone-aware and naive timestamps (give every stamp a zone, or none)",
                                      file=name, row=row, column="ts")
        if zone is None:
            raise need_market(1)
        offset = tz.replace({"Z": "+00:00", "UTC": "+00:00"})
        offset = offset.str.replace(r"^([+-]\d{2})$", r"\1:00", regex=True)
        offset = offset.str.replace(r"^([+-]\d{2})(\d{2})$", r"\1:\2", regex=True)
        parsed = pd.DatetimeIndex(pd.to_datetime(canon + offset, format="ISO8601", utc=True, errors="coerce"))
        parsed = parsed.tz_convert(zone).tz_localize(None)
    else:
        parsed = pd.to_datetime(canon, format="ISO8601", errors="coerce")
    values = pd.DatetimeIndex(parsed).as_unit("ns").to_numpy()
    bad = np.isnat(values)
    if bad.any():
        row = first_row(bad)
        raise DataValidationError(f"unparseable timestamp {text.iloc[codes[row - 1]]!r} (no such date or time)",
                                  file=name, row=row, column="ts")
    return values[codes]


def normalize_symbols(sym: pd.Series, market: str | None) -> pd.Series:
    """Stripped symbols; for market cn or None, Qlib codes -> 600000.SH and suffixes upper-cased."""
    from quantlm.data.qlib_bin import qlib_symbol

    sym = sym.astype("string").str.strip()
    if market not in (None, "cn"):
        return sym
    uniq = pd.Series(sym.dropna().unique(), dtype="string")
    cn = uniq.str.fullmatch(_CN_SYMBOL_RE, case=False).fillna(False).to_numpy(dtype=bool)
    mapping = {s: qlib_symbol(s).upper() for s in uniq[cn]}
    return sym.replace(mapping) if mapping else sym


def read_signals(path: str | Path, market: str | None = None) -> pd.DataFrame:
    """Read a signals file: CSV or Parquet with symbol, ts and score and/or weight.

    Qlib prediction columns (instrument, datetime) are accepted as symbol, ts. Empty scores mean "no
    signal" and are dropped. market: cn / us / crypto: converts time-zone-aware stamps to the
    exchange's local time (without it such stamps are refused) and, for cn, maps Qlib codes.
    Raises DataValidationError naming file, 1-based data row and column for a missing column, an
    empty symbol, an ambiguous (day/month-first) or unparseable timestamp, a number that is not one,
    an infinite value, or a duplicate (symbol, ts). Returns symbol (str), ts (datetime64[ns],
    tz-naive exchange-local) and the value column(s), sorted by (ts, symbol).
    """
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise FileNotFoundError(f"signals file not found: {path}")
    suffix = "".join(path.suffixes[-2:]).lower()
    if suffix.endswith((".parquet", ".pq")):
        df = pd.read_parquet(path)
    elif suffix.endswith((".csv", ".csv.gz", ".txt")):
        try:
            df = pd.read_csv(path, dtype={"symbol": str, "instrument": str, "ts": str, "datetime": str, "date": str})
        except pd.errors.EmptyDataError:
            raise DataValidationError("empty file", file=name) from None
    else:
        raise DataValidationError(f"unsupported signals file type '{path.suffix}' (expected .csv or .parquet)", file=name)
    df = df.rename(columns=lambda c: str(c).strip().lower())
    df = df.rename(columns={k: v for k, v in {"instrument": "symbol", "datetime": "ts", "date": "ts"}.items()
                            if k in df.columns and v not in df.columns})
    for col in ("symbol", "ts"):
        if col not in df.columns:
            raise DataValidationError(f"missing column '{col}'; found {', '.join(map(str, df.columns))}", file=name, column=col)
    values = [c for c in ("score", "weight") if c in df.columns]
    if not values:
        raise DataValidationError("missing column 'score' (or 'weight')", file=name, column="score")
    if len(df) == 0:
        raise DataValidationError("no rows", file=name)
    df = df.reset_index(drop=True)
    sym = normalize_symbols(df["symbol"], market)
    bad = (sym.fillna("") == "").to_numpy(dtype=bool)
    if bad.any():
        raise DataValidationError("empty symbol", file=name, row=int(np.flatnonzero(bad)[0]) + 1, column="symbol")
    ts = parse_signal_ts(df["ts"], name, market)
    out = pd.DataFrame({"symbol": sym.to_numpy(dtype=object).astype(str), "ts": ts})
    for col in values:
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype="float64")
        raw = df[col].to_numpy()
        text = pd.Series(raw).astype("string").str.strip().fillna("")
        bad = np.isnan(v) & (text != "").to_numpy(dtype=bool)
        bad |= np.isinf(v)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataValidationError(f"not a finite number: {raw[i]!r}", file=name, row=i + 1, column=col)
        out[col] = v
    dup = out.duplicated(["symbol", "ts"]).to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataValidationError(f"duplicate (symbol, ts) = ({out['symbol'].iloc[i]}, {out['ts'].iloc[i]})",
                                  file=name, row=i + 1, column="ts")
    out = out[out[values].notna().any(axis=1)]
    return out.sort_values(["ts", "symbol"], kind="stable").reset_index(drop=True)


__all__ = ["read_signals", "parse_signal_ts", "normalize_symbols"]
