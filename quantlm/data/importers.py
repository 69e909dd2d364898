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
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from quantlm.data import derive, qlib_bin, vendors
from quantlm.data.convert import DATA_SUFFIXES, TEXT_COLUMNS, Source, convert, detect_format
from quantlm.data.import_report import ImportReport
from quantlm.data.intraday import align_cn_intraday, check_bar_label
from quantlm.data.overlaps import combine, upsert
from quantlm.data.schema import FREQ_TIMEDELTA, DataValidationError, check_freq, check_market, infer_freq, validate_bars
from quantlm.data.store import Store
from quantlm.data.symbols import check_bare_rule

FORMATS = ("auto", "generic", "yahoo", "tushare", "qlib-csv", "qlib-bin", *vendors.CN_FORMATS)
__all__ = ["DATA_SUFFIXES", "FORMATS", "ImportReport", "detect_format", "expand_paths", "import_frame",
           "import_paths"]
_EXTRAS = ("_name", "_preclose", "_st")


def _spelled(src: Source, e: DataValidationError) -> DataValidationError:
    """`e` with its column as spelled in the source file."""
    spelled = src.columns.get(e.column or "")
    return dataclasses.replace(e, column=spelled) if spelled and spelled != e.column else e


def _settle_freq(src: Source, freq: str | None, market: str) -> str:
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


def _validate(src: Source, target: str, market: str,
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
    sources: list[Source] = []
    universes: pd.DataFrame | None = None
    qlib_dirs = [Path(p) for p in paths if format in ("auto", "qlib-bin") and qlib_bin.is_qlib_dir(Path(p))]
    if format == "qlib-bin" and len(qlib_dirs) != len(paths):
        bad = next(p for p in paths if Path(p) not in qlib_dirs)
        raise DataValidationError("not a Qlib data folder (needs calendars/ and features/)", file=str(bad))
    for qdir in qlib_dirs:
        frames, universes_q, _ = qlib_bin.read_qlib_dir(qdir, freq=freq)
        sources += [Source(name=n, frame=f, format="qlib-bin") for n, f in frames]
        universes = universes_q if universes is None else pd.concat([universes, universes_q], ignore_index=True)
    for path in expand_paths([p for p in paths if Path(p) not in qlib_dirs]):
        df, encoding, _ = vendors.read_table_file(path, TEXT_COLUMNS)
        src = convert(df, format, str(path), market, symbol, bare_codes, date_format)
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
    src = convert(df, format, source, market, symbol, bare_codes, date_format)
    return _import_sources([src], store, market, freq, replace, instruments=instruments, bar_label=bar_label)


def _import_sources(sources: list[Source], store: Store, market: str, freq: str | None, replace: bool,
                    universes: pd.DataFrame | None = None, instruments: pd.DataFrame | None = None,
                    bar_label: str = "auto") -> ImportReport:
    """Validate every source first, derive what the files imply, then write everything in one transaction."""
    if not sources:
        raise DataValidationError("nothing to import (no bars found)")
    report = ImportReport(market=market, freq="", files=len(sources), symbols=[], rows=0)
    checked: list[tuple[Source, pd.DataFrame]] = []
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
    def plan() -> tuple[derive.Derived | None, pd.DataFrame, int]:
        found = derive.derive_for_import([b for _, b in checked], extras, store, market, first[0]) \
            if market == "cn" else None
        return (found, *combine(checked, store, market, first[0], replace))

    # An existing store is read under its write lock, so what the derivation and the overlap check saw
    # cannot change before the commit; a new store is planned first, so a refused import creates nothing.
    fresh = not store.exists()
    if fresh:
        found, new, n_new = plan()
    with store.transaction() as tx:
        if not fresh:
            found, new, n_new = plan()
        if len(new):  # one put_bars for everything: validation and merging run once, vectorised
            tx.put_bars(new, market=market, freq=first[0], replace=replace, file=checked[0][0].name if
                        len(checked) == 1 else None)
        report.notes = [str(n) for n in getattr(tx, "notes", [])]
        if not store.meta().get("market"):  # the first import names the store's market (evaluations default to it)
            tx.set_meta("market", market)
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
