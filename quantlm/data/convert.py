"""Raw tables (CSV / Parquet / DataFrame) in one of the importer formats -> canonical bars (see importers)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.data import derive, vendors
from quantlm.data.qlib_bin import qlib_symbol
from quantlm.data.schema import DataValidationError
from quantlm.data.symbols import SymbolError, is_index, normalize_cn_symbol, normalize_symbol_column
from quantlm.data.timestamps import parse_ts

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
TEXT_COLUMNS = {n for a in (_GENERIC_ALIASES, _TUSHARE_ALIASES) for k in ("symbol", "ts") for n in a[k]}
# How each format spells a required column, for "missing column" messages.
_SPELLED = {"generic": {}, "yahoo": {"ts": "Date", **{c: c.title() for c in _REQUIRED[1:]}},
            "tushare": {"ts": "trade_date", "volume": "vol"}, "qlib-csv": {"ts": "date"},
            "cn-vendor": {"ts": "交易日期", "open": "开盘价", "high": "最高价", "low": "最低价", "close": "收盘价",
                          "volume": "成交量"},
            "eastmoney": {"ts": "日期", "open": "开盘", "high": "最高", "low": "最低", "close": "收盘", "volume": "成交量"},
            "baostock": {"ts": "date"}}


@dataclass
class Source:
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
    name = symbol or stem(file)
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


def convert(df: pd.DataFrame, fmt: str, file: str, market: str, symbol: str | None, bare_codes: str = "refuse",
             date_format: str | None = None) -> Source:
    """A raw table in format `fmt` -> canonical bars with `_row`, in currency units and shares.

    Vendor formats also carry `_preclose`, `_name` and `_st` (1.0 / 0.0 / NaN) columns for `derive`.
    """
    if fmt == "auto":
        sym_col = next((c for c in df.columns if _norm(c) in ("symbol", "code", "instrument")), None)
        sample = df[sym_col].dropna().astype("str").head(5).tolist() if sym_col is not None else [symbol or stem(file)]
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
    return Source(name=file, frame=out, format=fmt, columns=cols, volume_unit=unit, suspended=suspended)


def _vendor_extras(out: pd.DataFrame, df: pd.DataFrame, cols: dict[str, str], fmt: str, file: str,
                   rows: np.ndarray) -> str:
    """Add `_preclose`, `_name`, `_st` to `out`, scale volume to shares; returns the volume-unit label."""
    names = df[cols["name"]].astype("str").str.strip().where(df[cols["name"]].notna()) if "name" in cols else None
    out["_name"] = names.to_numpy(dtype=object) if names is not None else None
    if "preclose" in cols:
        out["_preclose"] = _to_float(df[cols["preclose"]], file, rows, cols["preclose"])
    elif "change" in cols or "pct_change" in cols:
        out["_preclose"] = _preclose_from_change(out, df, cols, file, rows)
    else:
        out["_preclose"] = np.nan
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


def _preclose_from_change(out: pd.DataFrame, df: pd.DataFrame, cols: dict[str, str], file: str,
                          rows: np.ndarray) -> np.ndarray:
    """The ex-rights previous close implied by 涨跌额 (close - change) or 涨跌幅 (close / (1 + pct / 100)).

    Vendors compute both against the ex-rights reference, so a dividend or bonus issue shows up as a
    previous close below the day before's close. 涨跌幅 is rounded (usually to 0.01%), so the implied
    price is uncertain by about close x 5e-5: within that (plus half a tick) of the day before's close
    it is snapped to it, and only larger gaps count as corporate actions.
    """
    close = out["close"].to_numpy()
    if "change" in cols:
        est = close - _to_float(df[cols["change"]], file, rows, cols["change"])
        tol = np.full(len(close), 0.005)
    else:
        pct = _to_float(df[cols["pct_change"]], file, rows, cols["pct_change"])
        with np.errstate(invalid="ignore", divide="ignore"):
            est = close / (1.0 + pct / 100.0)
        tol = 0.005 + np.abs(close) * 5e-5
    order = np.lexsort((out["ts"].to_numpy(), out["symbol"].astype("str").to_numpy()))
    sym = out["symbol"].astype("str").to_numpy()[order]
    prev = np.r_[np.nan, close[order][:-1]]
    prev[np.r_[True, sym[1:] != sym[:-1]]] = np.nan
    snapped = est[order].copy()
    near = np.abs(snapped - prev) <= tol[order]
    snapped[near] = prev[near]
    result = np.empty(len(close))
    result[order] = snapped
    return result


def stem(file: str) -> str:
    name = Path(file).name
    for suffix in DATA_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(file).stem
