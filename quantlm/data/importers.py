"""Importers: CSV / Parquet files, DataFrames and Qlib folders -> validated bars in a Store.

Formats (`format=`):

- `generic`: case-insensitive column aliases - symbol (symbol, code, ticker, instrument), ts (ts, date,
  datetime, time, timestamp, trade_date; separate `date` + `time` columns are joined), open, high,
  low, close, volume (volume, vol), amount (amount, turnover, value), adj_factor (adj_factor, factor).
  Values are taken as they are: prices in currency, volume in shares, amount in currency.
- `yahoo`: `Date, Open, High, Low, Close, Adj Close, Volume`; adj_factor = Adj Close / Close
  (NaN when the file has no Adj Close column).
- `tushare`: daily `ts_code, trade_date (YYYYMMDD), open, high, low, close, vol, amount`: vol is in
  LOTS of 100 shares (-> x100) and amount in THOUSANDS of CNY (-> x1000). Minute files
  (`trade_time` instead of `trade_date`) already use shares and CNY and are not scaled.
- `qlib-csv`: the input of Qlib's dump_bin, `date, open, high, low, close, volume, factor` (+ optional
  `symbol`, `change`). Qlib stores ADJUSTED prices: raw price = price / factor, raw volume =
  volume * factor, and adj_factor = factor (adjusted = raw * adj_factor, our convention). Without a
  factor column values are taken as raw. Symbols SH600000 -> 600000.SH (also from file stems).
- `qlib-bin`: a Qlib data folder (see `quantlm.data.qlib_bin`).
- `auto`: tushare if `ts_code` + `trade_date|trade_time`; yahoo if `Adj Close`; qlib-csv if there is a
  `factor` column and either a `change` column or Qlib-style symbols (SH600000); else generic.

Every file is read, converted and validated before anything is written; then all files land in the
store in ONE transaction, so a bad file anywhere leaves the store exactly as it was. Errors are
`DataValidationError`s naming the file, the 1-based data row (header excluded) and the column as
spelled in the file.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.data import qlib_bin
from quantlm.data.calendars import TIMEZONES
from quantlm.data.qlib_bin import qlib_symbol
from quantlm.data.schema import (
    INSTRUMENT_COLUMNS,
    DataValidationError,
    check_freq,
    check_market,
    infer_freq,
    validate_bars,
)
from quantlm.data.store import Store

FORMATS = ("auto", "generic", "yahoo", "tushare", "qlib-csv", "qlib-bin")
DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet")

# canonical column -> accepted spellings, compared after `_norm` (lower case, no spaces/_/-).
_GENERIC_ALIASES = {
    "symbol": ("symbol", "code", "ticker", "instrument"),
    "ts": ("ts", "datetime", "timestamp", "date", "time", "tradedate"),
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "volume": ("volume", "vol"),
    "amount": ("amount", "turnover", "value"),
    "adj_factor": ("adjfactor", "factor"),
}
_TUSHARE_ALIASES = {
    "symbol": ("tscode",), "ts": ("tradedate", "tradetime"), "open": ("open",), "high": ("high",),
    "low": ("low",), "close": ("close",), "volume": ("vol",), "amount": ("amount",), "adj_factor": ("adjfactor",),
}
_QLIB_CSV_ALIASES = {
    "symbol": ("symbol",), "ts": ("date",), "open": ("open",), "high": ("high",), "low": ("low",),
    "close": ("close",), "volume": ("volume",), "amount": ("amount",), "adj_factor": ("factor",),
}
_YAHOO_ALIASES = {k: v for k, v in _GENERIC_ALIASES.items() if k != "adj_factor"}
_REQUIRED = ("ts", "open", "high", "low", "close", "volume")
# Columns read from CSV as text: every spelling of a symbol or a time stamp in any format.
_TEXT_COLUMNS = {n for a in (_GENERIC_ALIASES, _TUSHARE_ALIASES) for k in ("symbol", "ts") for n in a[k]}
# How each format spells a required column, for "missing column" messages.
_SPELLED = {"generic": {}, "yahoo": {"ts": "Date", **{c: c.title() for c in _REQUIRED[1:]}},
            "tushare": {"ts": "trade_date", "volume": "vol"}, "qlib-csv": {"ts": "date"}}


@dataclass
class ImportReport:
    """What an import wrote: counts of input files, symbols and validated input rows."""

    market: str
    freq: str
    files: int
    symbols: list[str]
    rows: int  # validated input rows
    new_rows: int = 0  # (symbol, ts) bars that were not in the store before
    formats: dict[str, int] = field(default_factory=dict)  # format -> number of files read with it
    universes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        fmts = ", ".join(f"{k} x{v}" for k, v in sorted(self.formats.items()))
        text = (f"imported {self.rows:,} rows ({self.new_rows:,} new) of {len(self.symbols):,} symbol(s) "
                f"({self.freq}, market {self.market}) from {self.files:,} file(s) [{fmts}]")
        if self.universes:
            text += f"; universes: {', '.join(self.universes)}"
        return text


@dataclass
class _Source:
    """One converted input (a file, a DataFrame or a Qlib symbol folder) ready to validate."""

    name: str
    frame: pd.DataFrame  # canonical columns (+ `_row`), timestamps parsed, numbers as float64
    format: str
    columns: dict[str, str] = field(default_factory=dict)  # canonical -> column as spelled in the source


def _norm(name: object) -> str:
    return re.sub(r"[\s_\-]", "", str(name).lower())


def detect_format(columns: Sequence[object], symbols: Sequence[str] = ()) -> str:
    """Guess a file's format from its column names (and a few symbols, for Qlib-style codes)."""
    cols = {_norm(c) for c in columns}
    if "tscode" in cols and cols & {"tradedate", "tradetime"}:
        return "tushare"
    if "adjclose" in cols:
        return "yahoo"
    if "factor" in cols and ("change" in cols or any(qlib_symbol(str(s)) != str(s).strip() for s in symbols)):
        return "qlib-csv"
    return "generic"


def _match_columns(df: pd.DataFrame, aliases: dict[str, tuple[str, ...]], file: str) -> dict[str, str]:
    """canonical -> source column; an ambiguous match (two columns for one meaning) is an error."""
    by_norm: dict[str, str] = {}
    for c in df.columns:
        by_norm.setdefault(_norm(c), str(c))
    found: dict[str, str] = {}
    for canon, names in aliases.items():
        hits = [by_norm[n] for n in names if n in by_norm]
        if canon == "ts" and len(hits) > 1 and {_norm(h) for h in hits} == {"date", "time"}:
            found["ts"] = "date+time"
            continue
        if len(hits) > 1:
            raise DataValidationError(f"columns {' and '.join(map(repr, hits))} both look like '{canon}'; keep one",
                                      file=file, column=hits[1])
        if hits:
            found[canon] = hits[0]
    return found


def _to_float(raw: pd.Series, file: str, rows: np.ndarray, column: str) -> np.ndarray:
    """Numbers as float64; a value that is present but not a number is an error naming its row."""
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        return raw.to_numpy(dtype="float64", na_value=np.nan)
    values = pd.to_numeric(raw.astype("str").str.strip().where(raw.notna()),
                           errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    bad = np.isnan(values) & raw.notna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataValidationError(f"not a number: {raw.iloc[i]!r}", file=file, row=int(rows[i]), column=column)
    return values


def _parse_ts(raw: pd.Series, market: str, file: str, rows: np.ndarray, column: str,
              fmt: str | None = None) -> np.ndarray:
    """Timestamps as tz-naive exchange-local datetime64[ns]; tz-aware input is converted to the market's zone."""
    if pd.api.types.is_datetime64_any_dtype(raw):
        ts = raw
    else:
        text = raw.astype("str").str.strip().where(raw.notna())
        try:
            ts = pd.to_datetime(text, format=fmt or "ISO8601", errors="coerce")
        except ValueError:  # mixed UTC offsets: put them on one clock first, unless some have none
            has_tz = text.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True).fillna(False).to_numpy(dtype=bool)
            if not has_tz.all():
                i = int(np.flatnonzero(has_tz != has_tz[0])[0])
                raise DataValidationError(f"timestamp {raw.iloc[i]!r} {'has' if has_tz[i] else 'lacks'} a UTC offset "
                                          f"unlike row {int(rows[0])}", file=file, row=int(rows[i]), column=column) from None
            ts = pd.to_datetime(text, format=fmt or "ISO8601", errors="coerce", utc=True)
        if fmt == "%Y%m%d":  # strptime would also take 7-digit '2023014'; Tushare dates are exactly 8 digits
            ts = ts.where(text.str.fullmatch(r"\d{8}").fillna(False).astype(bool))
        if fmt is None and ts.isna().any():  # other spellings (e.g. 01/05/2023), element by element
            retry = ts.isna() & text.notna()
            ts = ts.copy()
            ts[retry] = pd.to_datetime(text[retry], format="mixed", errors="coerce", utc=ts.dt.tz is not None)
        bad = ts.isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataValidationError(f"unparseable timestamp {raw.iloc[i]!r}", file=file, row=int(rows[i]),
                                      column=column)
    if ts.dt.tz is not None:
        ts = ts.dt.tz_convert(TIMEZONES[market]).dt.tz_localize(None)
    return ts.to_numpy(dtype="datetime64[ns]")


def _convert(df: pd.DataFrame, fmt: str, file: str, market: str, symbol: str | None) -> _Source:
    """A raw table in format `fmt` -> canonical bars with `_row`, in currency units and shares."""
    if fmt == "auto":
        sym_col = next((c for c in df.columns if _norm(c) in ("symbol", "code", "instrument")), None)
        sample = df[sym_col].dropna().astype("str").head(5).tolist() if sym_col is not None else [symbol or _stem(file)]
        fmt = detect_format(list(df.columns), sample)
    aliases = {"generic": _GENERIC_ALIASES, "yahoo": _YAHOO_ALIASES, "tushare": _TUSHARE_ALIASES,
               "qlib-csv": _QLIB_CSV_ALIASES}[fmt]
    cols = _match_columns(df, aliases, file)
    missing = [_SPELLED[fmt].get(c, c) for c in _REQUIRED if c not in cols]
    if missing:
        hint = "; ts may also be called date, datetime, time, timestamp or trade_date" if fmt == "generic" else ""
        raise DataValidationError(
            f"missing required column(s) {', '.join(missing)} for format {fmt}; found {', '.join(map(str, df.columns))}"
            + hint, file=file, column=missing[0])
    if len(df) == 0:
        raise DataValidationError("no data rows (header only)", file=file)
    rows = np.arange(1, len(df) + 1)
    out = pd.DataFrame({"_row": rows})

    if "symbol" in cols:
        sym = df[cols["symbol"]].astype("str").str.strip().where(df[cols["symbol"]].notna(), "")
        out["symbol"] = sym.map(qlib_symbol).to_numpy() if fmt == "qlib-csv" else sym.to_numpy()
    else:
        name = symbol or _stem(file)
        out["symbol"] = qlib_symbol(name) if fmt == "qlib-csv" else name
    if cols["ts"] == "date+time":
        date_col, time_col = (next(c for c in df.columns if _norm(c) == n) for n in ("date", "time"))
        raw_ts = df[date_col].astype("str").str.strip() + " " + df[time_col].astype("str").str.strip()
        raw_ts = raw_ts.where(df[date_col].notna() & df[time_col].notna())
    else:
        raw_ts = df[cols["ts"]]
    daily_tushare = fmt == "tushare" and _norm(cols["ts"]) == "tradedate"
    out["ts"] = _parse_ts(raw_ts, market, file, rows, cols["ts"], fmt="%Y%m%d" if daily_tushare else None)
    for canon in ("open", "high", "low", "close", "volume", "amount", "adj_factor"):
        out[canon] = _to_float(df[cols[canon]], file, rows, cols[canon]) if canon in cols else np.nan

    if daily_tushare:
        out["volume"] *= 100.0  # lots of 100 shares -> shares
        out["amount"] *= 1000.0  # thousands of CNY -> CNY
    if fmt == "yahoo":
        adj = next((c for c in df.columns if _norm(c) == "adjclose"), None)
        if adj is not None:
            cols["adj_factor"] = adj
            out["adj_factor"] = _to_float(df[adj], file, rows, adj) / out["close"].to_numpy()
    if fmt == "qlib-csv" and "adj_factor" in cols:
        factor = out["adj_factor"].to_numpy()
        bad = ~(factor > 0) | np.isinf(factor)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataValidationError(f"factor must be a positive number, got {factor[i]!r}", file=file,
                                      row=int(rows[i]), column=cols["adj_factor"])
        for c in ("open", "high", "low", "close"):
            out[c] = out[c].to_numpy() / factor  # Qlib prices are adjusted: raw = adjusted / factor
        out["volume"] = out["volume"].to_numpy() * factor  # adjusted volume = raw / factor
    return _Source(name=file, frame=out, format=fmt, columns=cols)


def _stem(file: str) -> str:
    name = Path(file).name
    for suffix in DATA_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(file).stem


def _validate(src: _Source, freq: str | None) -> tuple[pd.DataFrame, str]:
    """Validate one source and settle its frequency (`freq` if given, else inferred from the data)."""
    try:
        inferred = infer_freq(pd.Series(src.frame["ts"]))
        if freq is not None and inferred is not None and inferred != freq:
            raise DataValidationError(f"bars look like {inferred} bars, but the frequency asked for is {freq}",
                                      file=src.name, column="ts")
        target = freq or inferred
        if target is None:
            validate_bars(src.frame, file=src.name)  # names the offending row when frequencies are mixed
            raise DataValidationError("cannot infer the bar frequency from the timestamps; pass --freq",
                                      file=src.name, column="ts")
        return validate_bars(src.frame, file=src.name, freq=target), target
    except DataValidationError as e:
        spelled = src.columns.get(e.column or "")
        if spelled and spelled != e.column:
            raise dataclasses.replace(e, column=spelled) from None
        raise


def _read_file(path: Path) -> pd.DataFrame:
    """A CSV (optionally gzipped) or Parquet file as a DataFrame.

    CSV symbol and time columns are read as text (codes keep leading zeros, dates keep their
    spelling); other columns are parsed by pandas' C parser (fast), and any column that is not
    numeric stays text so that `_to_float` can name the bad cell.
    """
    name = str(path)
    try:
        if name.lower().endswith(".parquet"):
            return pd.read_parquet(path)
        header = pd.read_csv(path, nrows=0, skipinitialspace=True).columns
        text = {c: "str" for c in header if _norm(c) in _TEXT_COLUMNS}
        return pd.read_csv(path, dtype=text, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataValidationError("empty file (no header, no rows)", file=name) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataValidationError(f"cannot read file: {e}", file=name) from None


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files named directly, plus *.csv / *.csv.gz / *.parquet found recursively under folders (sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and f.name.lower().endswith(DATA_SUFFIXES))
            if not found:
                raise DataValidationError("no *.csv, *.csv.gz or *.parquet files in this folder", file=str(p))
            files.extend(found)
        elif p.is_file():
            if not p.name.lower().endswith(DATA_SUFFIXES):
                raise DataValidationError("unsupported file type (expected .csv, .csv.gz or .parquet)", file=str(p))
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return files


def _check_args(market: str, freq: str | None, format: str) -> None:
    check_market(market)
    if freq is not None:
        check_freq(freq)
    if format not in FORMATS:
        raise DataValidationError(f"unknown format '{format}' (expected one of {', '.join(FORMATS)})")


def import_paths(paths: Sequence[str | Path], store: Store, market: str, freq: str | None = None,
                 format: str = "auto", replace: bool = False, symbol: str | None = None,
                 instruments: pd.DataFrame | None = None) -> ImportReport:
    """Import CSV / Parquet files or folders (or Qlib folders) into `store`, all or nothing.

    One file per symbol (symbol from a symbol column, else `symbol`, else the file stem) or long
    files with a symbol column. `freq` is inferred per file when None; all files must agree.
    `instruments` (optional rows of the instruments table) are upserted in the same transaction.
    """
    _check_args(market, freq, format)
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise DataValidationError("no input paths given")
    sources: list[_Source] = []
    universes: pd.DataFrame | None = None
    qlib_dirs = [Path(p) for p in paths if format in ("auto", "qlib-bin") and qlib_bin.is_qlib_dir(Path(p))]
    if format == "qlib-bin" and len(qlib_dirs) != len(paths):
        bad = next(p for p in paths if Path(p) not in qlib_dirs)
        raise DataValidationError("not a Qlib data folder (needs calendars/ and features/)", file=str(bad))
    for qdir in qlib_dirs:
        frames, universes_q, _ = qlib_bin.read_qlib_dir(qdir, freq=freq)
        sources += [_Source(name=n, frame=f, format="qlib-bin") for n, f in frames]
        universes = universes_q if universes is None else pd.concat([universes, universes_q], ignore_index=True)
    for path in expand_paths([p for p in paths if Path(p) not in qlib_dirs]):
        sources.append(_convert(_read_file(path), format, str(path), market, symbol))
    return _import_sources(sources, store, market, freq, replace, universes=universes, instruments=instruments)


def import_frame(df: pd.DataFrame, store: Store, market: str, freq: str | None = None, format: str = "generic",
                 replace: bool = False, source: str = "<DataFrame>", symbol: str | None = None,
                 instruments: pd.DataFrame | None = None) -> ImportReport:
    """Import a DataFrame in one of the file formats (a named index, or a DatetimeIndex, is used as a column)."""
    _check_args(market, freq, format)
    if format == "qlib-bin":
        raise DataValidationError("format qlib-bin reads folders; use import_paths", file=source)
    if isinstance(df.index, pd.DatetimeIndex) and df.index.name is None:
        df = df.rename_axis("ts")
    if df.index.name is not None or isinstance(df.index, pd.MultiIndex):
        df = df.reset_index()
    src = _convert(df, format, source, market, symbol)
    return _import_sources([src], store, market, freq, replace, instruments=instruments)


def _import_sources(sources: list[_Source], store: Store, market: str, freq: str | None, replace: bool,
                    universes: pd.DataFrame | None = None, instruments: pd.DataFrame | None = None) -> ImportReport:
    """Validate every source first, then write everything in one store transaction."""
    if not sources:
        raise DataValidationError("nothing to import (no bars found)")
    checked: list[tuple[_Source, pd.DataFrame]] = []
    first: tuple[str, str] | None = None  # (freq, source name) everything must agree with
    for src in sources:
        bars, f = _validate(src, freq)
        if first is not None and f != first[0]:
            raise DataValidationError(f"bars are {f}, but {first[1]} is {first[0]}; import one frequency at a time",
                                      file=src.name, column=src.columns.get("ts", "ts"))
        first = first or (f, src.name)
        checked.append((src, bars))
    assert first is not None
    new, n_new = _combine(checked, store, market, first[0], replace)
    with store.transaction() as tx:
        if len(new):  # one put_bars for everything: validation and merging run once, vectorised
            tx.put_bars(new, market=market, freq=first[0], replace=replace, file=checked[0][0].name if
                        len(checked) == 1 else None)
        if universes is not None and len(universes):
            tx.put("universes", "", _upsert(store.read_table("universes"), universes, "universe"))
        if instruments is not None and len(instruments):
            tx.put("instruments", "", _upsert(store.read_table("instruments"), instruments, "symbol"))
    symbols = sorted({s for _, b in checked for s in b["symbol"].unique()})
    formats: dict[str, int] = {}
    for src, _ in checked:
        formats[src.format] = formats.get(src.format, 0) + 1
    return ImportReport(market=market, freq=first[0], files=len(checked), symbols=symbols,
                        rows=sum(len(b) for _, b in checked), new_rows=n_new, formats=formats,
                        universes=sorted(universes["universe"].unique()) if universes is not None else [])


def _combine(checked: list[tuple[_Source, pd.DataFrame]], store: Store, market: str, freq: str,
             replace: bool) -> tuple[pd.DataFrame, int]:
    """(rows to write, number of (symbol, ts) not yet stored): all sources as one frame, checked against
    each other and the store before anything is written.

    A (symbol, ts) present twice (in two files, or in a file and the store) must agree on prices and
    volume within a relative 1e-9 (the store's rule) unless `replace`, where the later file wins.
    """
    listing = store.listing() if store.exists() else pd.DataFrame(columns=["symbol", "freq", "market"])
    listing = listing[listing["freq"] == freq]
    sources_of: dict[str, list[int]] = {}
    for i, (_, bars) in enumerate(checked):
        for sym in bars["symbol"].unique():
            sources_of.setdefault(sym, []).append(i)
    other = listing[listing["symbol"].isin(list(sources_of)) & (listing["market"] != market)]
    if len(other):
        sym, where = other["symbol"].iloc[0], other["market"].iloc[0]
        src = checked[sources_of[sym][0]][0]
        raise DataValidationError(f"symbol {sym} is stored under market '{where}', not '{market}'",
                                  file=src.name, column=src.columns.get("symbol", "symbol"))
    allb = pd.concat([bars.assign(_src=i) for i, (_, bars) in enumerate(checked)], ignore_index=True)
    # Only symbols in two sources, or already stored, can overlap: the (costly) check runs on them alone.
    stored_syms = sorted(set(sources_of) & set(listing["symbol"]))
    shared = set(stored_syms) | {s for s, owners in sources_of.items() if len(owners) > 1}
    if not shared:
        return allb.drop(columns="_src"), len(allb)
    in_shared = allb["symbol"].isin(shared).to_numpy()
    part = allb[in_shared]
    if stored_syms:
        stored = store.bars(stored_syms, start=part["ts"].min(), end=part["ts"].max(), freq=freq)
        part = pd.concat([stored.assign(_src=-1), part], ignore_index=True)
    part, n_new = _resolve_overlaps(part, checked, replace)
    out = pd.concat([allb[~in_shared], part], ignore_index=True).drop(columns="_src")
    return out, int((~in_shared).sum()) + n_new


def _resolve_overlaps(part: pd.DataFrame, checked: list[tuple[_Source, pd.DataFrame]],
                      replace: bool) -> tuple[pd.DataFrame, int]:
    """Rows of `part` (`_src` = source index, -1 = stored) to write, one per (symbol, ts), and how many are new."""
    part = part.sort_values(["symbol", "ts", "_src"], kind="stable").reset_index(drop=True)
    dup = part.duplicated(["symbol", "ts"], keep=False).to_numpy()
    if dup.any() and not replace:
        d = part[dup]
        cols = ["open", "high", "low", "close", "volume"]
        ref = d.groupby(["symbol", "ts"], sort=False)[cols].transform("first")
        bad = ~np.isclose(d[cols].to_numpy(), ref.to_numpy(), rtol=1e-9, atol=0.0)
        if bad.any():
            r, c = (int(x[0]) for x in np.nonzero(bad))
            row = d.iloc[r]
            src, col = checked[int(row["_src"])][0], cols[c]
            first = d[(d["symbol"] == row["symbol"]) & (d["ts"] == row["ts"])].iloc[0]
            where = "the stored bar" if first["_src"] < 0 else f"the bar in {checked[int(first['_src'])][0].name}"
            hit = src.frame[(src.frame["symbol"].astype("str").str.strip() == row["symbol"])
                            & (src.frame["ts"] == row["ts"])]["_row"]
            raise DataValidationError(
                f"{row['symbol']} at {row['ts']}: {col}={float(row[col])!r} disagrees with {where} "
                f"({col}={float(ref.iloc[r, c])!r}); use --replace to overwrite",
                file=src.name, row=int(hit.iloc[0]) if len(hit) else None, column=src.columns.get(col, col))
    stored_key = part.groupby(["symbol", "ts"], sort=False)["_src"].transform("min").to_numpy() < 0
    keep = ~part.duplicated(["symbol", "ts"], keep="last" if replace else "first").to_numpy()
    n_new = int((keep & ~stored_key).sum())
    return part[keep & (part["_src"] >= 0).to_numpy()], n_new


def _upsert(old: pd.DataFrame, new: pd.DataFrame, key: str) -> pd.DataFrame:
    """Rows of `old` whose `key` is not in `new`, then `new` (a whole-table rewrite of a small table)."""
    if key == "symbol":
        new = new.reindex(columns=list(INSTRUMENT_COLUMNS))
    if len(old) == 0:
        return new.reset_index(drop=True)
    kept = old[~old[key].isin(new[key])]
    return pd.concat([kept, new], ignore_index=True)
