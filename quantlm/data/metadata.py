"""Reference data for imported stores: instruments, ST flags and the benchmark symbol.

- `import_instruments(path_or_df, store, market)`: symbol, name, list_date, delist_date, board ->
  the `instruments` table (whole table under key ""), upserted by symbol.
- `import_flags(path_or_df, store)`: symbol, flag (st / *st), start, end -> the `flags` table; the
  imported symbols' spans of the imported kinds are replaced.
- `set_benchmark(store, symbol)`: store meta `benchmark` (the symbol must have bars in the store).

Files are CSV (UTF-8, UTF-8 with BOM, or GBK / GB18030) or Parquet. Column names are matched case-
and separator-insensitively; Chinese vendor spellings are accepted:

| column | spellings |
|---|---|
| symbol | symbol, code, ts_code, ticker, instrument, 代码, 股票代码, 证券代码 (ts_code wins over a second one) |
| name | name, 名称, 股票名称, 证券简称, 股票简称, 证券名称 |
| list_date | list_date, listing_date, 上市日期 |
| delist_date | delist_date, delisting_date, 退市日期 (the last trading session) |
| board | board, 板块: main, chinext, star, bse, index, other or 主板, 中小板 (= main), 创业板, 科创板, 北交所, 指数 |
| flag | flag, kind: st, *st, s*st, sst, all stored as flag "st" (they share the ST price limit) |
| start, end | start, start_date, begin, 开始日期, 起始日期 / end, end_date, 结束日期, 截止日期 (inclusive; empty end = open) |

cn symbols are normalised to `600000.SH` form by `quantlm.data.symbols` (sh600000, SH600000, sh.600000,
600000.sh, 600000.XSHG / .XSHE, .BJ; a bare code only under `bare_codes`, as for bar imports). Dates are
YYYY-MM-DD, YYYYMMDD or YYYY/MM/DD (a trailing 00:00:00 is allowed); day/month-ambiguous spellings
such as 05/01/2020 are refused. An empty board is the stored board, else `board_from_code` (cn), else
'other'. Columns the file lacks (name, list_date, delist_date) keep the stored values of known symbols.

Overlapping ST spans of one symbol (also two spans sharing a day, as when a vendor ends an ST span on
the day the *ST span starts) are merged into their union, and the report counts the merges.

Every row is checked before anything is written; errors are `DataValidationError`s naming the file,
the 1-based data row and the column as spelled in the file. Writes go through one store transaction.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.backtest.rules import board_from_code
from quantlm.data.schema import BOARDS, INSTRUMENT_COLUMNS, DataValidationError, check_market
from quantlm.data.store import Store
from quantlm.data.symbols import SymbolError, check_bare_rule, normalize_cn_symbol, normalize_symbol_column

INSTRUMENT_ALIASES: dict[str, tuple[str, ...]] = {
    "symbol": ("tscode", "symbol", "code", "ticker", "instrument", "代码", "股票代码", "证券代码"),
    "name": ("name", "名称", "股票名称", "证券简称", "股票简称", "证券名称"),
    "list_date": ("listdate", "listingdate", "上市日期"),
    "delist_date": ("delistdate", "delistingdate", "退市日期"),
    "board": ("board", "板块"),
}
FLAG_ALIASES: dict[str, tuple[str, ...]] = {
    "symbol": INSTRUMENT_ALIASES["symbol"],
    "flag": ("flag", "kind"),
    "start": ("start", "startdate", "begin", "开始日期", "起始日期"),
    "end": ("end", "enddate", "结束日期", "截止日期"),
}
BOARD_NAMES = {**{b: b for b in BOARDS}, "主板": "main", "中小板": "main", "创业板": "chinext", "科创板": "star",
               "北交所": "bse", "北证": "bse", "指数": "index"}
FLAG_NAMES = {"st": "st", "*st": "st", "s*st": "st", "sst": "st"}
_EMPTY = {"", "-", "--", "nan", "nat", "none", "null"}


@dataclass
class MetaImportReport:
    """What a reference-data import wrote: table, input rows, symbols, and what was derived (counts)."""

    table: str
    rows: int
    symbols: list[str]
    new_symbols: int = 0
    derived: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        text = f"{self.table}: {self.rows:,} rows for {len(self.symbols):,} symbol(s) ({self.new_symbols:,} new)"
        extra = ", ".join(f"{k}: {v:,}" for k, v in self.derived.items() if v)
        return text + (f"; {extra}" if extra else "")


@dataclass
class BenchmarkReport:
    """The benchmark `set_benchmark` recorded: symbol, its market, stored bars and what changed."""

    symbol: str
    market: str
    rows: int
    first_ts: pd.Timestamp
    last_ts: pd.Timestamp
    previous: str | None = None
    marked_index: bool = False


# ---------------------------------------------------------------------------------------------- reading
def _norm(name: object) -> str:
    return re.sub(r"[\s_\-]", "", str(name).replace("\ufeff", "").lower())


def read_table_file(source: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """(frame, name for messages) of a CSV / Parquet file or a DataFrame; CSV cells are read as text."""
    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True), "<DataFrame>"
    path = Path(source)
    name = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if name.lower().endswith(".parquet"):
        try:
            return pd.read_parquet(path), name
        except (OSError, ValueError) as e:
            raise DataValidationError(f"cannot read file: {e}", file=name) from None
    if not name.lower().endswith((".csv", ".csv.gz")):
        raise DataValidationError("unsupported file type (expected .csv, .csv.gz or .parquet)", file=name)
    last: Exception | None = None
    for encoding in ("utf-8-sig", "gb18030"):  # gb18030 is a superset of GBK
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding, skipinitialspace=True), name
        except UnicodeDecodeError as e:
            last = e
        except pd.errors.EmptyDataError:
            raise DataValidationError("empty file (no header, no rows)", file=name) from None
        except (pd.errors.ParserError, ValueError) as e:
            raise DataValidationError(f"cannot read file: {e}", file=name) from None
    raise DataValidationError(f"cannot decode the file as UTF-8 or GBK: {last}", file=name)


def match_columns(df: pd.DataFrame, aliases: dict[str, tuple[str, ...]], file: str) -> dict[str, str]:
    """canonical -> column as spelled in the file; two columns for one meaning are an error (ts_code wins)."""
    by_norm: dict[str, str] = {}
    for c in df.columns:
        by_norm.setdefault(_norm(c), str(c))
    found: dict[str, str] = {}
    for canon, names in aliases.items():
        hits = [by_norm[n] for n in names if n in by_norm]
        if len(hits) > 1 and not (canon == "symbol" and _norm(hits[0]) == "tscode"):
            raise DataValidationError(f"columns {' and '.join(map(repr, hits))} both look like '{canon}'; keep one",
                                      file=file, column=hits[1])
        if hits:
            found[canon] = hits[0]
    return found


def _text(raw: pd.Series) -> pd.Series:
    """Cells as stripped strings; empty spellings ('', '-', 'nan', ...) as ''."""
    s = raw.astype(object).where(raw.notna(), "").map(str).str.strip()
    return s.where(~s.str.lower().isin(_EMPTY), "")


# ---------------------------------------------------------------------------------------------- symbols
def _symbols(raw: pd.Series, market: str, file: str, column: str, bare_codes: str,
             names: pd.Series | None = None) -> np.ndarray:
    """Canonical symbols (cn: `quantlm.data.symbols`, e.g. sh600000 -> 600000.SH); an empty cell is an error."""
    check_bare_rule(bare_codes)
    out = normalize_symbol_column(raw, market, bare_codes, file, np.arange(1, len(raw) + 1), column, names=names)
    empty = np.flatnonzero(out == "")
    if len(empty):
        raise DataValidationError("empty symbol", file=file, row=int(empty[0]) + 1, column=column)
    return out


# ---------------------------------------------------------------------------------------------- dates
_ISO = re.compile(r"(\d{4})([-/])(\d{1,2})\2(\d{1,2})(?:[ T]00:00(?::00(?:\.0+)?)?)?")
_COMPACT = re.compile(r"(\d{4})(\d{2})(\d{2})(?:\.0+)?")
_AMBIGUOUS = re.compile(r"\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}.*")


def parse_dates(raw: pd.Series, file: str, column: str, required: bool = False) -> np.ndarray:
    """Dates (datetime64[ns], NaT for empty cells) from YYYY-MM-DD, YYYYMMDD or YYYY/MM/DD (or datetimes)."""
    if pd.api.types.is_datetime64_any_dtype(raw):
        values = pd.to_datetime(raw)
        if values.dt.tz is not None:
            values = values.dt.tz_localize(None)
        out = values.dt.normalize().to_numpy(dtype="datetime64[ns]")
    else:
        text = _text(raw)
        out = np.full(len(text), np.datetime64("NaT"), dtype="datetime64[ns]")
        for i, s in enumerate(text):
            if not s:
                continue
            m = _ISO.fullmatch(s)
            parts = (m.group(1), m.group(3), m.group(4)) if m else None
            if parts is None and (m := _COMPACT.fullmatch(s)):
                parts = m.groups()
            if parts is None:
                problem = (f"day/month order is ambiguous in {s!r}; write dates as YYYY-MM-DD, YYYYMMDD or YYYY/MM/DD"
                           if _AMBIGUOUS.fullmatch(s) else f"not a date: {s!r} (expected YYYY-MM-DD, YYYYMMDD or YYYY/MM/DD)")
                raise DataValidationError(problem, file=file, row=i + 1, column=column)
            try:
                out[i] = np.datetime64(pd.Timestamp(*map(int, parts)), "ns")
            except ValueError:
                raise DataValidationError(f"not a valid date: {s!r}", file=file, row=i + 1, column=column) from None
    if required and np.isnat(out).any():
        i = int(np.flatnonzero(np.isnat(out))[0])
        raise DataValidationError("missing date", file=file, row=i + 1, column=column)
    return out


def _check_order(first: np.ndarray, last: np.ndarray, file: str, column: str, what: str) -> None:
    bad = ~np.isnat(first) & ~np.isnat(last) & (last < first)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataValidationError(f"{what} {pd.Timestamp(last[i]).date()} is before {pd.Timestamp(first[i]).date()}",
                                  file=file, row=i + 1, column=column)


def _bars_market_conflict(store: Store, symbols: np.ndarray, market: str, file: str, column: str) -> None:
    if not store.exists():
        return
    listing = store.listing()
    other = dict(zip(listing["symbol"], listing["market"]))
    for i, s in enumerate(symbols):
        if other.get(s, market) != market:
            raise DataValidationError(f"symbol {s} has bars under market '{other[s]}', not '{market}'",
                                      file=file, row=i + 1, column=column)


# ---------------------------------------------------------------------------------------------- instruments
def import_instruments(source: str | Path | pd.DataFrame, store: Store, market: str = "cn",
                       bare_codes: str = "refuse") -> MetaImportReport:
    """Upsert instruments (symbol, name, list_date, delist_date, board) of `market` into `store`, all or nothing.

    `bare_codes` (refuse, infer, sh, sz): how a code without exchange is read (`quantlm.data.symbols`).
    """
    check_market(market)
    df, file = read_table_file(source)
    cols = match_columns(df, INSTRUMENT_ALIASES, file)
    if "symbol" not in cols:
        raise DataValidationError(f"missing a symbol column (symbol, code, ts_code, 代码, 股票代码); found "
                                  f"{', '.join(map(str, df.columns))}", file=file, column="symbol")
    if len(df) == 0:
        raise DataValidationError("no data rows (header only)", file=file)
    symbols = _symbols(df[cols["symbol"]], market, file, cols["symbol"], bare_codes,
                       names=df[cols["name"]] if "name" in cols else None)
    dup = pd.Series(symbols).duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(symbols == symbols[i])[0]) + 1
        raise DataValidationError(f"{symbols[i]} is already given in row {first}", file=file, row=i + 1,
                                  column=cols["symbol"])
    old = store.instruments() if store.exists() else pd.DataFrame(columns=list(INSTRUMENT_COLUMNS))
    stored = old.drop_duplicates("symbol", keep="last").set_index("symbol")
    known = pd.Index(symbols).isin(stored.index)
    new = pd.DataFrame({"symbol": symbols, "market": market})
    derived: dict[str, int] = {}
    for c in ("list_date", "delist_date"):
        if c in cols:
            new[c] = parse_dates(df[cols[c]], file, cols[c])
        else:
            new[c] = pd.to_datetime(stored[c].reindex(symbols).to_numpy()).to_numpy(dtype="datetime64[ns]") \
                if len(stored) else np.full(len(new), np.datetime64("NaT"), dtype="datetime64[ns]")
    _check_order(new["list_date"].to_numpy(), new["delist_date"].to_numpy(), file, cols.get("delist_date", "delist_date"),
                 "delist_date")
    if "name" in cols:
        new["name"] = _text(df[cols["name"]]).to_numpy()
    else:
        new["name"] = stored["name"].reindex(symbols).fillna("").astype(str).to_numpy() if len(stored) else ""
    new["board"] = _boards(df[cols["board"]] if "board" in cols else None, symbols, market, stored, file,
                           cols.get("board", "board"), derived)
    _bars_market_conflict(store, symbols, market, file, cols["symbol"])
    new = new[list(INSTRUMENT_COLUMNS)]
    for c in ("symbol", "market", "board", "name"):
        new[c] = new[c].astype(object)
    derived["without list_date"] = int(np.isnat(new["list_date"].to_numpy()).sum())
    derived["index symbols"] = int((new["board"] == "index").sum())
    kept = old[~old["symbol"].isin(symbols)] if len(old) else old
    out = pd.concat([kept, new], ignore_index=True) if len(kept) else new
    for c in ("list_date", "delist_date"):
        out[c] = pd.to_datetime(out[c]).astype("datetime64[ns]")
    with store.transaction() as tx:
        tx.put("instruments", "", out.reset_index(drop=True))
    return MetaImportReport("instruments", len(new), sorted(symbols), int((~known).sum()), derived)


def _boards(raw: pd.Series | None, symbols: np.ndarray, market: str, stored: pd.DataFrame, file: str,
            column: str, derived: dict[str, int]) -> np.ndarray:
    """Board per row: the file's (English or Chinese name), else the stored board, else derived from the code."""
    text = _text(raw).to_numpy() if raw is not None else np.full(len(symbols), "", dtype=object)
    out = np.empty(len(symbols), dtype=object)
    stored_board = stored["board"].to_dict() if len(stored) and "board" in stored.columns else {}
    n_stored = n_code = 0
    for i, (s, sym) in enumerate(zip(text, symbols)):
        if s:
            board = BOARD_NAMES.get(s.lower()) or BOARD_NAMES.get(s)
            if board is None:
                raise DataValidationError(f"unknown board {s!r} (expected one of {', '.join(BOARDS)} or 主板, 中小板, "
                                          "创业板, 科创板, 北交所, 指数)", file=file, row=i + 1, column=column)
            out[i] = board
        elif isinstance(stored_board.get(sym), str) and stored_board[sym]:
            out[i], n_stored = stored_board[sym], n_stored + 1
        else:
            out[i], n_code = (board_from_code(sym) if market == "cn" else "other"), n_code + 1
    derived["board kept from the store"] = n_stored
    derived["board derived from the code"] = n_code
    return out


# ---------------------------------------------------------------------------------------------- flags
def import_flags(source: str | Path | pd.DataFrame, store: Store, market: str = "cn",
                 bare_codes: str = "refuse") -> MetaImportReport:
    """Replace the imported symbols' ST spans with the file's (symbol, flag, start, end), all or nothing."""
    check_market(market)
    df, file = read_table_file(source)
    cols = match_columns(df, FLAG_ALIASES, file)
    missing = [c for c in ("symbol", "start") if c not in cols]
    if missing:
        raise DataValidationError(f"missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}",
                                  file=file, column=missing[0])
    if len(df) == 0:
        raise DataValidationError("no data rows (header only)", file=file)
    symbols = _symbols(df[cols["symbol"]], market, file, cols["symbol"], bare_codes)
    derived: dict[str, int] = {}
    if "flag" in cols:
        text = _text(df[cols["flag"]])
        flags = text.str.lower().map(FLAG_NAMES)
        if flags.isna().any():
            i = int(np.flatnonzero(flags.isna().to_numpy())[0])
            raise DataValidationError(f"unknown flag {text.iloc[i]!r} (expected st or *st)", file=file, row=i + 1,
                                      column=cols["flag"])
        flags = flags.to_numpy(dtype=object)
    else:
        flags = np.full(len(df), "st", dtype=object)
        derived["flag st (no flag column)"] = len(df)
    start = parse_dates(df[cols["start"]], file, cols["start"], required=True)
    end = parse_dates(df[cols["end"]], file, cols["end"]) if "end" in cols else \
        np.full(len(df), np.datetime64("NaT"), dtype="datetime64[ns]")
    _check_order(start, end, file, cols.get("end", "end"), "end")
    _bars_market_conflict(store, symbols, market, file, cols["symbol"])
    spans = pd.DataFrame({"symbol": symbols, "flag": flags, "start": start, "end": end})
    merged = merge_spans(spans)
    derived["overlapping spans merged"] = len(spans) - len(merged)
    derived["open-ended spans"] = int(merged["end"].isna().sum())
    old = store.flags() if store.exists() else pd.DataFrame(columns=list(merged.columns))
    n_new = len(set(symbols))
    if len(old):
        kind = old["flag"].astype(str).str.lower().map(FLAG_NAMES).fillna(old["flag"].astype(str))
        replaced = old["symbol"].isin(set(symbols)) & kind.isin(set(flags))
        n_new -= old.loc[replaced, "symbol"].nunique()
        old = old[~replaced]
    out = pd.concat([old, merged], ignore_index=True) if len(old) else merged
    for c in ("start", "end"):
        out[c] = pd.to_datetime(out[c]).astype("datetime64[ns]")
    for c in ("symbol", "flag"):
        out[c] = out[c].astype(str).astype(object)
    with store.transaction() as tx:
        tx.put("flags", "", out.sort_values(["symbol", "flag", "start"]).reset_index(drop=True))
    return MetaImportReport("flags", len(df), sorted(set(symbols)), n_new, derived)


def merge_spans(spans: pd.DataFrame) -> pd.DataFrame:
    """Union of overlapping (or day-sharing) inclusive spans per (symbol, flag); NaT end = open."""
    s = spans.sort_values(["symbol", "flag", "start"], kind="stable").reset_index(drop=True)
    end_i = s["end"].to_numpy(dtype="datetime64[ns]").astype("int64")
    end_i = np.where(s["end"].isna().to_numpy(), np.iinfo(np.int64).max, end_i)
    start_i = s["start"].to_numpy(dtype="datetime64[ns]").astype("int64")
    group = (s["symbol"] + "\0" + s["flag"]).to_numpy()
    prev_end = pd.Series(end_i).groupby(group).cummax().groupby(group).shift(1).to_numpy()
    new_span = np.isnan(prev_end) | (start_i > np.nan_to_num(prev_end, nan=-np.inf))
    span_id = np.cumsum(new_span)
    out = s.groupby(span_id).agg(symbol=("symbol", "first"), flag=("flag", "first"), start=("start", "min"))
    out["end"] = pd.Series(end_i).groupby(span_id).max().to_numpy()
    out["end"] = pd.to_datetime(out["end"].where(out["end"] != np.iinfo(np.int64).max), unit="ns")
    return out.reset_index(drop=True)[["symbol", "flag", "start", "end"]]


# ---------------------------------------------------------------------------------------------- benchmark
def index_symbols(store: Store) -> list[str]:
    """Stored symbols (with bars) that are indices: board 'index' in instruments, else by code (`board_from_code`)."""
    from quantlm.backtest.rules import symbol_boards

    if not store.exists():
        return []
    syms = sorted(set(store.listing()["symbol"].astype(str)))
    return [s for s, b in zip(syms, symbol_boards(syms, store.instruments()), strict=True) if b == "index"]


def set_benchmark(store: Store, symbol: str) -> BenchmarkReport:
    """Record `symbol` as the store's benchmark (meta `benchmark`); it must have bars in the store.

    cn spellings (SH000300, sh.000300, 000300.XSHG) are normalised. An index code (`board_from_code`)
    is marked board 'index' in instruments, so it is never traded as a stock.
    """
    if not store.exists():
        raise FileNotFoundError(f"no quantlm store at {store.root} (import the benchmark's bars with 'quantlm data import')")
    listing = store.listing()
    wanted = [str(symbol).strip()]
    try:
        wanted.append(normalize_cn_symbol(symbol))
    except SymbolError:
        pass
    hit = next((s for s in wanted if s in set(listing["symbol"])), None)
    if hit is None:
        indices = index_symbols(store)
        close = [c for c in difflib.get_close_matches(wanted[-1], sorted(set(listing["symbol"].astype(str))), n=5,
                                                      cutoff=0.8) if c not in indices]
        hint = (f"stored index symbols (candidates): {', '.join(indices)}" if indices else
                "the store holds no index bars: import them first with 'quantlm data import FILE --market cn'")
        hint += f"; similar stored symbols: {', '.join(close)}" if close else ""
        raise DataValidationError(f"no bars for {wanted[-1]} in {store.root}; {hint}")
    rows = listing[listing["symbol"] == hit]
    market = str(rows["market"].iloc[0])
    previous = store.meta().get("benchmark")
    marked = False
    with store.transaction() as tx:
        tx.set_meta("benchmark", hit)
        if market == "cn" and board_from_code(hit) == "index":
            ins = store.instruments()
            if not ((ins["symbol"] == hit) & (ins["board"] == "index")).any():
                marked = True
                row = ins[ins["symbol"] == hit].tail(1)
                new = row.assign(board="index") if len(row) else pd.DataFrame({
                    "symbol": [hit], "market": [market], "board": ["index"], "name": [""],
                    "list_date": pd.Series([pd.NaT], dtype="datetime64[ns]"),
                    "delist_date": pd.Series([pd.NaT], dtype="datetime64[ns]")})
                kept = ins[ins["symbol"] != hit]
                tx.put("instruments", "", pd.concat([kept, new], ignore_index=True) if len(kept) else new)
    return BenchmarkReport(hit, market, int(rows["rows"].sum()), pd.Timestamp(rows["first_ts"].min()),
                           pd.Timestamp(rows["last_ts"].max()), previous, marked)


__all__ = ["BenchmarkReport", "MetaImportReport", "import_flags", "import_instruments", "index_symbols",
           "merge_spans", "parse_dates", "set_benchmark"]
