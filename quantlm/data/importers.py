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
- `cn-vendor`, `eastmoney`, `baostock`: China A-share vendor files with Chinese headers (or Baostock's),
  any of UTF-8 / UTF-8 with BOM / GBK, free-text lines above the header allowed; see
  `quantlm.data.vendors` (suspended rows, volume units) and `quantlm.data.derive` (adj_factor from the
  previous close, ST spans, listing dates, instruments rows written in the same transaction).
- `auto`: baostock / cn-vendor / eastmoney from their column names; tushare if `ts_code` +
  `trade_date|trade_time`; yahoo if `Adj Close`; qlib-csv if there is a `factor` column and either a
  `change` column or Qlib-style symbols (SH600000); else generic.

Market cn: every symbol spelling becomes `600000.SH` (`quantlm.data.symbols`; bare codes need
`bare_codes`), intraday bars are stored under their START time with the lunch break and call auction
handled (`quantlm.data.intraday`, `bar_label`; Qlib folders label bar starts). Dates must be unambiguous or follow `date_format`
(`quantlm.data.timestamps`).

Every file is read, converted and validated before anything is written; then all files land in the
store in ONE transaction, so a bad file anywhere leaves the store exactly as it was. Errors are
`DataValidationError`s naming the file, the 1-based data row (counted from the first line after the
header row, so free-text lines above the header and the header itself are not counted) and the column
as spelled in the file.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.data import derive, qlib_bin, vendors
from quantlm.data.import_report import ImportReport
from quantlm.data.intraday import align_cn_intraday, check_bar_label
from quantlm.data.overlaps import combine, upsert
from quantlm.data.qlib_bin import qlib_symbol
from quantlm.data.schema import FREQ_TIMEDELTA, DataValidationError, check_freq, check_market, infer_freq, validate_bars
from quantlm.data.store import Store
from quantlm.data.symbols import SymbolError, check_bare_rule, is_index, normalize_cn_symbol, normalize_symbol_column
from quantlm.data.timestamps import parse_ts

FORMATS = ("auto", "generic", "yahoo", "tushare", "qlib-csv", "qlib-bin", *vendors.CN_FORMATS)
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
    "name": ("name", "stockname"),  # only used to resolve an ambiguous bare 000xxx code (an index name)
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
            "tushare": {"ts": "trade_date", "volume": "vol"}, "qlib-csv": {"ts": "date"},
            "cn-vendor": {"ts": "交易日期", "open": "开盘价", "high": "最高价", "low": "最低价", "close": "收盘价",
                          "volume": "成交量"},
            "eastmoney": {"ts": "日期", "open": "开盘", "high": "最高", "low": "最低", "close": "收盘", "volume": "成交量"},
            "baostock": {"ts": "date"}}


@dataclass
class _Source:
    """One converted input (a file, a DataFrame or a Qlib symbol folder) ready to validate."""

    name: str
    frame: pd.DataFrame  # canonical columns (+ `_row`), timestamps parsed, numbers as float64
    format: str
    columns: dict[str, str] = field(default_factory=dict)  # canonical -> column as spelled in the source
    encoding: str | None = None  # text encoding of a CSV
    volume_unit: str | None = None  # vendor formats: how the volume unit was settled
    suspended: int = 0  # suspended-day rows dropped


def _norm(name: object) -> str:
    return re.sub(r"[\s_\-]", "", str(name).lower())


def detect_format(columns: Sequence[object], symbols: Sequence[str] = ()) -> str:
    """Guess a file's format from its column names (and a few symbols, for Qlib-style codes)."""
    cn = vendors.detect_cn_format(list(columns))
    if cn is not None:
        return cn
    cols = {_norm(c) for c in columns}
    if "tscode" in cols and cols & {"tradedate", "tradetime"}:
        return "tushare"
    if "adjclose" in cols:
        return "yahoo"
    if "factor" in cols and ("change" in cols or any(qlib_symbol(str(s)) != str(s).strip() for s in symbols)):
        return "qlib-csv"
    return "generic"


_DATE_TIME = ({"date", "time"}, {"日期", "时间"})


def _match_columns(df: pd.DataFrame, aliases: dict[str, tuple[str, ...]], file: str) -> dict[str, str]:
    """canonical -> source column; an ambiguous match (two columns for one meaning) is an error."""
    by_norm: dict[str, str] = {}
    for c in df.columns:
        by_norm.setdefault(_norm(c), str(c))
    found: dict[str, str] = {}
    for canon, names in aliases.items():
        hits = [by_norm[n] for n in names if n in by_norm]
        if canon == "ts" and len(hits) == 2 and {_norm(h) for h in hits} in _DATE_TIME:
            found["_date"], found["_time"] = sorted(hits, key=lambda h: _norm(h) in ("time", "时间"))
            found["ts"] = f"{found['_date']}+{found['_time']}"
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


def _symbols(df: pd.DataFrame, cols: dict[str, str], fmt: str, file: str, market: str, symbol: str | None,
             rows: np.ndarray, bare_codes: str) -> np.ndarray | str:
    """Canonical symbols of the rows (a column) or of the file (`symbol`, else the file stem)."""
    names = df[cols["name"]] if "name" in cols else None
    if "symbol" in cols:
        raw = df[cols["symbol"]]
        if fmt == "qlib-csv":
            raw = raw.astype("str").str.strip().map(qlib_symbol).where(raw.notna())
        return normalize_symbol_column(raw, market, bare_codes, file, rows, cols["symbol"], names=names)
    name = symbol or _stem(file)
    if fmt == "qlib-csv":
        name = qlib_symbol(name)
    if market != "cn":
        return name.strip()
    first_name = names.dropna().astype("str").iloc[0] if names is not None and names.notna().any() else None
    try:
        return normalize_cn_symbol(name, bare_codes, name=first_name)
    except SymbolError as e:
        where = "--symbol" if symbol else "the file name"
        raise DataValidationError(f"symbol from {where}: {e}", file=file) from None


def _convert(df: pd.DataFrame, fmt: str, file: str, market: str, symbol: str | None, bare_codes: str = "refuse",
             date_format: str | None = None) -> _Source:
    """A raw table in format `fmt` -> canonical bars with `_row`, in currency units and shares.

    Vendor formats also carry `_preclose`, `_name` and `_st` (1.0 / 0.0 / NaN) columns for `derive`.
    """
    if fmt == "auto":
        sym_col = next((c for c in df.columns if _norm(c) in ("symbol", "code", "instrument")), None)
        sample = df[sym_col].dropna().astype("str").head(5).tolist() if sym_col is not None else [symbol or _stem(file)]
        fmt = detect_format(list(df.columns), sample)
    aliases = vendors.ALIASES.get(fmt) or {"generic": _GENERIC_ALIASES, "yahoo": _YAHOO_ALIASES,
                                           "tushare": _TUSHARE_ALIASES, "qlib-csv": _QLIB_CSV_ALIASES}[fmt]
    cols = _match_columns(df, aliases, file)
    if fmt == "baostock" and "time" in {_norm(c) for c in df.columns}:  # minute files: time = YYYYMMDDHHMMSSsss
        cols["ts"] = next(str(c) for c in df.columns if _norm(c) == "time")
    missing = [_SPELLED.get(fmt, {}).get(c, c) for c in _REQUIRED if c not in cols]
    if missing:
        hint = "; ts may also be called date, datetime, time, timestamp or trade_date" if fmt == "generic" else ""
        raise DataValidationError(
            f"missing required column(s) {', '.join(missing)} for format {fmt}; found {', '.join(map(str, df.columns))}"
            + hint, file=file, column=missing[0])
    if len(df) == 0:
        raise DataValidationError("no data rows (header only)", file=file)
    rows = np.arange(1, len(df) + 1)
    suspended = 0
    if fmt in vendors.CN_FORMATS:
        drop = vendors.suspended_rows(df, cols)
        if drop.any():
            suspended = int(drop.sum())
            df, rows = df[~drop].reset_index(drop=True), rows[~drop]
    out = pd.DataFrame({"_row": rows})
    out["symbol"] = _symbols(df, cols, fmt, file, market, symbol, rows, bare_codes) if len(df) else ""
    if "_date" in cols:
        d, t = df[cols["_date"]], df[cols["_time"]]
        raw_ts = (d.astype("str").str.strip() + " " + t.astype("str").str.strip()).where(d.notna() & t.notna())
    else:
        raw_ts = df[cols["ts"]]
    daily_tushare = fmt == "tushare" and _norm(cols["ts"]) == "tradedate"
    ts_fmt = "%Y%m%d" if daily_tushare else None
    if fmt == "baostock" and _norm(cols["ts"]) == "time":
        raw_ts, ts_fmt = raw_ts.astype("str").str.strip().str[:14].where(raw_ts.notna()), "%Y%m%d%H%M%S"
    out["ts"] = parse_ts(raw_ts, market, file, rows, cols["ts"], fmt=ts_fmt, date_format=date_format)
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
    unit = None
    if fmt in vendors.CN_FORMATS:
        unit = _vendor_extras(out, df, cols, fmt, file, rows)
    return _Source(name=file, frame=out, format=fmt, columns=cols, volume_unit=unit, suspended=suspended)


def _vendor_extras(out: pd.DataFrame, df: pd.DataFrame, cols: dict[str, str], fmt: str, file: str,
                   rows: np.ndarray) -> str:
    """Add `_preclose`, `_name`, `_st` to `out`, scale volume to shares; returns the volume-unit label."""
    names = df[cols["name"]].astype("str").str.strip().where(df[cols["name"]].notna()) if "name" in cols else None
    out["_name"] = names.to_numpy(dtype=object) if names is not None else None
    out["_preclose"] = _to_float(df[cols["preclose"]], file, rows, cols["preclose"]) if "preclose" in cols else np.nan
    if "st" in cols:
        out["_st"] = _to_float(df[cols["st"]], file, rows, cols["st"])
    else:
        out["_st"] = derive.st_from_names(names) if names is not None else np.nan
    sym = out["symbol"].astype("str")
    index_rows = sym.map({s: is_index(s) for s in sym.unique()}).to_numpy(dtype=bool)
    if names is not None:
        index_rows = index_rows | names.fillna("").str.contains("指数").to_numpy(dtype=bool)
    amount = out["amount"].to_numpy() if "amount" in cols else None
    mult, label = vendors.volume_unit(out["volume"].to_numpy(), out["close"].to_numpy(), amount, index_rows, fmt,
                                      file, cols["volume"])
    if mult != 1.0:
        out["volume"] = out["volume"].to_numpy() * mult
    return label


def _stem(file: str) -> str:
    name = Path(file).name
    for suffix in DATA_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(file).stem


_EXTRAS = ("_name", "_preclose", "_st")


def _spelled(src: _Source, e: DataValidationError) -> DataValidationError:
    """`e` with its column as spelled in the source file."""
    spelled = src.columns.get(e.column or "")
    return dataclasses.replace(e, column=spelled) if spelled and spelled != e.column else e


def _settle_freq(src: _Source, freq: str | None, market: str) -> str:
    """The source's frequency: `freq` if given (checked against the data), else inferred from the time stamps."""
    try:
        inferred = infer_freq(pd.Series(src.frame["ts"]), market)
        if freq is not None and inferred is not None and inferred != freq:
            raise DataValidationError(f"bars look like {inferred} bars, but the frequency asked for is {freq}",
                                      file=src.name, column="ts")
        if freq is None and inferred is None:
            validate_bars(src.frame, file=src.name, market=market)  # names the offending row when mixed
            raise DataValidationError("cannot infer the bar frequency from the timestamps; pass --freq",
                                      file=src.name, column="ts")
    except DataValidationError as e:
        raise _spelled(src, e) from None
    return freq or str(inferred)


def _validate(src: _Source, target: str, market: str,
              bar_label: str) -> tuple[pd.DataFrame, pd.DataFrame | None, str | None, int]:
    """Validate one source at frequency `target` (intraday cn bars relabelled to bar starts first).

    Returns (bars, extras aligned row by row with bars or None, bar label used, auction bars merged).
    """
    try:
        frame, label, n_auction = src.frame, None, 0
        if target != "1d":
            if market == "cn":
                if bar_label == "auto" and src.format == "qlib-bin":
                    bar_label = "start"  # Qlib's cn minute calendars label bar starts (09:30 ... 14:59)
                try:
                    frame, label, n_auction = align_cn_intraday(frame, target, bar_label, src.name,
                                                                src.columns.get("ts", "ts"))
                except DataValidationError:
                    validate_bars(frame, file=src.name, freq=target, market=market)  # a plainer problem first
                    raise
            elif bar_label == "end":
                frame = frame.assign(ts=frame["ts"] - FREQ_TIMEDELTA[target])
                label = "end"
        bars = validate_bars(frame, file=src.name, freq=target, market=market)
    except DataValidationError as e:
        raise _spelled(src, e) from None
    extras = None
    if any(c in frame.columns for c in _EXTRAS):
        extras = (frame[["symbol", "ts", *[c for c in _EXTRAS if c in frame.columns]]]
                  .sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True))
    return bars, extras, label, n_auction


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


def _check_args(market: str, freq: str | None, format: str, bare_codes: str = "refuse", bar_label: str = "auto") -> None:
    check_market(market)
    if freq is not None:
        check_freq(freq)
    if format not in FORMATS:
        raise DataValidationError(f"unknown format '{format}' (expected one of {', '.join(FORMATS)})")
    check_bare_rule(bare_codes)
    check_bar_label(bar_label)


def import_paths(paths: Sequence[str | Path], store: Store, market: str, freq: str | None = None,
                 format: str = "auto", replace: bool = False, symbol: str | None = None,
                 instruments: pd.DataFrame | None = None, bare_codes: str = "refuse",
                 date_format: str | None = None, bar_label: str = "auto") -> ImportReport:
    """Import CSV / Parquet files or folders (or Qlib folders) into `store`, all or nothing.

    One file per symbol (symbol from a symbol column, else `symbol`, else the file stem) or long
    files with a symbol column. `freq` is inferred per file when None; all files must agree.
    `instruments` (optional rows of the instruments table) are upserted in the same transaction, after
    (and over) the rows derived from the files. `bare_codes` (infer | sh | sz | refuse) settles codes
    without an exchange, `date_format` (strptime) reads day/month-ambiguous dates, `bar_label`
    (auto | start | end) says how intraday time stamps label bars (see the module docstring).
    """
    _check_args(market, freq, format, bare_codes, bar_label)
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
        df, encoding, _ = vendors.read_table_file(path, _TEXT_COLUMNS)
        src = _convert(df, format, str(path), market, symbol, bare_codes, date_format)
        src.encoding = encoding
        sources.append(src)
    return _import_sources(sources, store, market, freq, replace, universes=universes, instruments=instruments,
                           bar_label=bar_label)


def import_frame(df: pd.DataFrame, store: Store, market: str, freq: str | None = None, format: str = "generic",
                 replace: bool = False, source: str = "<DataFrame>", symbol: str | None = None,
                 instruments: pd.DataFrame | None = None, bare_codes: str = "refuse",
                 date_format: str | None = None, bar_label: str = "auto") -> ImportReport:
    """Import a DataFrame in one of the file formats (a named index, or a DatetimeIndex, is used as a column)."""
    _check_args(market, freq, format, bare_codes, bar_label)
    if format == "qlib-bin":
        raise DataValidationError("format qlib-bin reads folders; use import_paths", file=source)
    if isinstance(df.index, pd.DatetimeIndex) and df.index.name is None:
        df = df.rename_axis("ts")
    if df.index.name is not None or isinstance(df.index, pd.MultiIndex):
        df = df.reset_index()
    src = _convert(df, format, source, market, symbol, bare_codes, date_format)
    return _import_sources([src], store, market, freq, replace, instruments=instruments, bar_label=bar_label)


def _import_sources(sources: list[_Source], store: Store, market: str, freq: str | None, replace: bool,
                    universes: pd.DataFrame | None = None, instruments: pd.DataFrame | None = None,
                    bar_label: str = "auto") -> ImportReport:
    """Validate every source first, derive what the files imply, then write everything in one transaction."""
    if not sources:
        raise DataValidationError("nothing to import (no bars found)")
    report = ImportReport(market=market, freq="", files=len(sources), symbols=[], rows=0)
    checked: list[tuple[_Source, pd.DataFrame]] = []
    extras: list[pd.DataFrame | None] = []
    labels: set[str] = set()
    first: tuple[str, str] | None = None  # (freq, source name) everything must agree with
    for src in sources:
        report.formats[src.format] = report.formats.get(src.format, 0) + 1
        for counter, key in ((report.encodings, src.encoding), (report.volume_units, src.volume_unit)):
            if key is not None:
                counter[key] = counter.get(key, 0) + 1
        report.suspended_rows += src.suspended
        if len(src.frame) == 0:  # every row a suspended day
            continue
        f = _settle_freq(src, freq, market)
        if first is not None and f != first[0]:
            raise DataValidationError(f"bars are {f}, but {first[1]} is {first[0]}; import one frequency at a time",
                                      file=src.name, column=src.columns.get("ts", "ts"))
        first = first or (f, src.name)
        bars, ex, label, n_auction = _validate(src, f, market, bar_label)
        checked.append((src, bars))
        extras.append(ex)
        labels |= {label} if label else set()
        report.auction_bars += n_auction
    if first is None:
        raise DataValidationError("nothing to import: every row is a suspended day", file=sources[0].name)
    report.freq = first[0]
    report.bar_label = ", ".join(sorted(labels)) or None
    found = derive.derive_for_import([b for _, b in checked], extras, store, market, first[0]) if market == "cn" \
        else None
    new, n_new = combine(checked, store, market, first[0], replace)
    with store.transaction() as tx:
        if len(new):  # one put_bars for everything: validation and merging run once, vectorised
            tx.put_bars(new, market=market, freq=first[0], replace=replace, file=checked[0][0].name if
                        len(checked) == 1 else None)
        report.notes = [str(n) for n in getattr(tx, "notes", [])]
        if universes is not None and len(universes):
            tx.put("universes", "", upsert(store.read_table("universes"), universes, "universe"))
        if found is not None and found.st_ranges is not None:
            tx.put("flags", "", derive.replace_st_spans(store.flags(), found.st_spans, found.st_ranges))
        inst = store.instruments() if (found is not None and len(found.instruments)) or instruments is not None \
            else None
        if found is not None and len(found.instruments):
            inst = derive.merge_instruments(inst, found.instruments)
        if instruments is not None and len(instruments):
            inst = upsert(inst, instruments, "symbol")
        if inst is not None and len(inst):
            tx.put("instruments", "", inst.reset_index(drop=True))
    report.derived = found.counts if found is not None else {}
    report.symbols = sorted({s for _, b in checked for s in b["symbol"].unique()})
    report.files = len(sources)
    report.rows, report.new_rows = sum(len(b) for _, b in checked), n_new
    report.universes = sorted(universes["universe"].unique()) if universes is not None else []
    return report
