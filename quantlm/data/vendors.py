"""China A-share vendor files: encodings, header rows, Chinese column names, suspended rows, volume units.

Formats (names used by `--format` and in import reports):

- `cn-vendor`: full Chinese headers 股票代码, 股票名称, 交易日期, 开盘价, 最高价, 最低价, 收盘价, 前收盘价,
  成交量, 成交额 (+ ignored 流通市值, 总市值, 涨跌幅 ...). Documented volume unit: shares.
- `eastmoney`: East Money / AkShare short spellings 日期, 股票代码, 开盘, 收盘, 最高, 最低, 成交量, 成交额,
  振幅, 涨跌幅, 涨跌额, 换手率 (no symbol column: the file stem). Documented volume unit: lots of 100.
- `baostock`: date, code (sh.600000), open, high, low, close, preclose, volume (shares), amount,
  adjustflag, turn, tradestatus (0 = suspended), pctChg, isST; minute files carry `time`
  (YYYYMMDDHHMMSSsss, bar end). Documented volume unit: shares.

Reading (`read_table_file`): CSV text is decoded as UTF-8 (with or without BOM) first, then GB18030 (a
superset of GBK); the encoding used is reported. Free-text lines above the header ("数据由XX提供...")
are skipped: the header is the first of the first 20 lines holding at least three known column names.
Row numbers in errors are 1-based data rows after that header.

Suspended rows (tradestatus 0, or zero / missing volume with open, high and low empty or zero) are
dropped, not errors. Volume units are inferred per file from median(amount / (volume x close)) over rows
with both > 0 (indices excluded, their close is in points): within [0.5, 2] -> shares, within
[50, 200] -> lots of 100 (x100); anything else is refused. Without an amount column the format's
documented unit is kept (and reported as such).
"""

from __future__ import annotations

import gzip
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.data.schema import DataValidationError

CN_FORMATS = ("cn-vendor", "eastmoney", "baostock")
_CN_ALIASES = {
    "symbol": ("股票代码", "代码", "证券代码"),
    "ts": ("交易日期", "日期", "时间", "交易时间", "日期时间"),
    "open": ("开盘价", "开盘"), "high": ("最高价", "最高"), "low": ("最低价", "最低"), "close": ("收盘价", "收盘"),
    "volume": ("成交量",), "amount": ("成交额", "成交金额"), "adj_factor": ("复权因子",),
    "name": ("股票名称", "名称", "证券名称", "股票简称", "证券简称"),
    "preclose": ("前收盘价", "前收盘", "昨收", "昨收盘", "前收"),
    "change": ("涨跌额",), "pct_change": ("涨跌幅",),
}
_BAOSTOCK_ALIASES = {
    "symbol": ("code",), "ts": ("date",), "open": ("open",), "high": ("high",), "low": ("low",),
    "close": ("close",), "volume": ("volume",), "amount": ("amount",), "preclose": ("preclose",),
    "st": ("isst",), "status": ("tradestatus",),
}
ALIASES = {"cn-vendor": _CN_ALIASES, "eastmoney": _CN_ALIASES, "baostock": _BAOSTOCK_ALIASES}
# Documented volume unit when a file has no amount column to infer it from.
DEFAULT_LOTS = {"cn-vendor": False, "eastmoney": True, "baostock": False}
TEXT_NAMES = {"股票代码", "代码", "证券代码", "交易日期", "日期", "时间", "交易时间", "日期时间", "股票名称", "名称",
              "证券名称", "股票简称", "证券简称"}
_KNOWN = {n for a in _CN_ALIASES.values() for n in a} | {
    "symbol", "code", "ticker", "date", "datetime", "time", "ts", "timestamp", "tradedate", "tscode", "open", "high",
    "low", "close", "volume", "vol", "amount", "factor", "adjclose"}
_EMPTY = {"", "-", "--", "none", "null", "nan"}


def _norm(name: object) -> str:
    return re.sub(r"[\s_\-]", "", str(name).lower())


def detect_cn_format(columns: list[object]) -> str | None:
    """`cn-vendor`, `eastmoney` or `baostock` from the column names, else None."""
    cols = {_norm(c) for c in columns}
    if {"date", "code", "close"} <= cols and cols & {"tradestatus", "adjustflag", "preclose", "isst"}:
        return "baostock"
    if "收盘价" in cols or "开盘价" in cols:
        return "cn-vendor"
    if "收盘" in cols or "开盘" in cols:
        return "eastmoney"
    return None


def _decode(data: bytes) -> tuple[str, str]:
    """(text, encoding): UTF-8 (BOM stripped) first, then GB18030."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8"), "utf-8-sig"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030"), "gb18030"
    except UnicodeDecodeError as e:
        raise DataValidationError(f"cannot decode the file as UTF-8 or GB18030/GBK (byte {e.start})") from None


def _header_line(lines: list[str]) -> int:
    """Index of the header among the first lines: the first with >= 3 known column names (else 0)."""
    for i, line in enumerate(lines[:20]):
        cells = {_norm(c.strip().strip('"')) for c in re.split(r"[,\t]", line)}
        if len(cells & _KNOWN) >= 3:
            return i
    return 0


def read_table_file(path: Path, text_columns: set[str]) -> tuple[pd.DataFrame, str | None, int]:
    """(table, encoding or None for Parquet, lines skipped above the header) of a CSV / CSV.gz / Parquet file.

    Columns whose normalised name is in `text_columns` (codes, dates, names) are read as text, so codes
    keep leading zeros and dates their spelling; other columns go through pandas' C parser.
    """
    name = str(path)
    try:
        if name.lower().endswith(".parquet"):
            return pd.read_parquet(path), None, 0
        data = path.read_bytes()
        if name.lower().endswith(".gz"):
            data = gzip.decompress(data)
        try:
            text, encoding = _decode(data)
        except DataValidationError as e:
            raise DataValidationError(e.problem, file=name) from None
        head = text[:65536].splitlines()
        skip = _header_line(head)
        sep = "\t" if head and "\t" in head[skip] and "," not in head[skip] else ","
        header = pd.read_csv(io.StringIO(text), nrows=0, skiprows=skip, sep=sep, skipinitialspace=True).columns
        dtypes = {c: "str" for c in header if _norm(c) in text_columns or _norm(c) in TEXT_NAMES}
        return pd.read_csv(io.StringIO(text), dtype=dtypes, skiprows=skip, sep=sep, skipinitialspace=True), encoding, skip
    except pd.errors.EmptyDataError:
        raise DataValidationError("empty file (no header, no rows)", file=name) from None
    except (pd.errors.ParserError, OSError, ValueError, EOFError) as e:
        if isinstance(e, FileNotFoundError | DataValidationError):
            raise
        raise DataValidationError(f"cannot read file: {e}", file=name) from None


def _emptyish(col: pd.Series) -> np.ndarray:
    """Cells that are missing, blank, a dash or zero."""
    num = pd.to_numeric(col, errors="coerce")
    text = col.astype("str").str.strip().str.lower()
    return (num.fillna(0).to_numpy() == 0) & (num.notna().to_numpy() | text.isin(_EMPTY).to_numpy()
                                              | col.isna().to_numpy())


def suspended_rows(df: pd.DataFrame, cols: dict[str, str]) -> np.ndarray:
    """Rows of a vendor table that are suspension placeholders (see the module docstring)."""
    mask = np.zeros(len(df), dtype=bool)
    if "status" in cols:
        mask |= pd.to_numeric(df[cols["status"]], errors="coerce").to_numpy() == 0
    if all(c in cols for c in ("open", "high", "low", "volume")):
        mask |= _emptyish(df[cols["volume"]]) & _emptyish(df[cols["open"]]) & _emptyish(df[cols["high"]]) \
            & _emptyish(df[cols["low"]])
    return mask


def volume_unit(volume: np.ndarray, close: np.ndarray, amount: np.ndarray | None, index_rows: np.ndarray,
                fmt: str, file: str, column: str) -> tuple[float, str]:
    """(multiplier to shares, report label) for one file's volume column (see the module docstring)."""
    lots = DEFAULT_LOTS.get(fmt, False)
    default = (100.0, f"lots ({fmt} default, no amount)") if lots else (1.0, f"shares ({fmt} default, no amount)")
    if amount is None:
        return default
    ok = (amount > 0) & (volume > 0) & (close > 0) & ~index_rows
    if not ok.any():
        return (default[0], default[1].replace("no amount", "no usable amount"))
    ratio = float(np.median(amount[ok] / (volume[ok] * close[ok])))
    if 0.5 <= ratio <= 2.0:
        return 1.0, "shares (inferred from amount)"
    if 50.0 <= ratio <= 200.0:
        return 100.0, "lots of 100 (inferred from amount)"
    raise DataValidationError(
        f"cannot tell the volume unit: median amount / (volume x close) = {ratio:.4g}, expected about 1 (shares) "
        "or about 100 (lots of 100 shares); check the volume and amount columns", file=file, column=column)
