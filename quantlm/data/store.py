"""The validated store: Parquet files plus a DuckDB catalog, in one directory.

Layout of a store directory::

    catalog.duckdb                 the catalog: which Parquet file is current for each (table, key)
    files/<table>/<key>/<txid>.parquet
    _staging/<txid>/               files written by an unfinished transaction (removed on open)

Tables: `bars/<freq>` (one file per symbol, key = symbol), `instruments`, `flags`, `universes`,
`texts`, and free-form tables such as `oracle` or `text_embeddings` (key "" = the whole table).

Atomicity: a transaction writes new files under `_staging/`, moves them to their final names
(files nobody references yet) and then switches the catalog rows in one DuckDB transaction. A
crash or error before that switch leaves the catalog, and so the store, exactly as it was;
unreferenced files are deleted the next time the store is opened for writing.

Point-in-time reads live here so the rest of the code cannot get them wrong:
`bars(symbols, start, end, freq)`, `members(universe, asof)`, `texts(symbols, visible_before)`.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quantlm.data.schema import (
    BAR_COLUMNS,
    INSTRUMENT_COLUMNS,
    PRICE_COLUMNS,
    TEXT_COLUMNS,
    UNIVERSE_COLUMNS,
    DataValidationError,
    check_freq,
    check_market,
    validate_bars,
)

DEFAULT_STORE_ENV = "QUANTLM_STORE"
_CATALOG = "catalog.duckdb"
_OVERLAP_RTOL = 1e-9


def default_store_path() -> Path:
    """`$QUANTLM_STORE` if set, else `./data/store`."""
    return Path(os.environ.get(DEFAULT_STORE_ENV, "data/store"))


def _safe_key(key: str) -> str:
    """A file-system-safe folder name for a symbol (symbols may contain '/', e.g. BTC/USDT)."""
    return "".join(ch if ch.isalnum() or ch in "._-" else f"%{ord(ch):02X}" for ch in key) or "_"


class Store:
    """A quantlm data store rooted at `root` (created on first write)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_store_path()
        self._cleaned = False  # orphan files are removed once, before this object's first write
        self._catalog_cache: tuple[tuple[int, int], pd.DataFrame] | None = None

    # ------------------------------------------------------------------ catalog plumbing
    @property
    def catalog_path(self) -> Path:
        return self.root / _CATALOG

    def exists(self) -> bool:
        return self.catalog_path.exists()

    def _connect(self, write: bool) -> duckdb.DuckDBPyConnection:
        if write:
            self.root.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(str(self.catalog_path))
            con.execute(
                "CREATE TABLE IF NOT EXISTS files (tbl VARCHAR, key VARCHAR, path VARCHAR, rows BIGINT,"
                " min_ts TIMESTAMP, max_ts TIMESTAMP, market VARCHAR, PRIMARY KEY (tbl, key))"
            )
            con.execute("CREATE TABLE IF NOT EXISTS meta (name VARCHAR PRIMARY KEY, value VARCHAR)")
            return con
        if not self.exists():
            raise FileNotFoundError(f"no quantlm store at {self.root} (create one with 'quantlm data import' or 'quantlm data synth')")
        return duckdb.connect(str(self.catalog_path), read_only=True)

    def _remove_orphans(self, con: duckdb.DuckDBPyConnection) -> None:
        shutil.rmtree(self.root / "_staging", ignore_errors=True)
        referenced = {Path(p) for (p,) in con.execute("SELECT path FROM files").fetchall()}
        files_dir = self.root / "files"
        if files_dir.exists():
            for f in files_dir.rglob("*.parquet"):
                if f.relative_to(self.root) not in referenced:
                    f.unlink()

    def _catalog(self, tbl_prefix: str | None = None) -> pd.DataFrame:
        """Catalog rows for table `tbl_prefix` and its sub-tables (all rows if None).

        The whole catalog is small (one row per file) and opening DuckDB costs ~20 ms, so the frame
        is cached and reused while the catalog file's (mtime, size) is unchanged.
        """
        if not self.exists():
            return pd.DataFrame(columns=["tbl", "key", "path", "rows", "min_ts", "max_ts", "market"])
        st = self.catalog_path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if self._catalog_cache is None or self._catalog_cache[0] != stamp:
            with self._connect(write=False) as con:
                full = con.execute("SELECT * FROM files ORDER BY tbl, key").df()
            self._catalog_cache = (stamp, full)
        full = self._catalog_cache[1]
        if tbl_prefix is None:
            return full.copy()
        mask = (full["tbl"] == tbl_prefix) | full["tbl"].str.startswith(tbl_prefix + "/")
        return full[mask].reset_index(drop=True)

    def meta(self) -> dict[str, str]:
        """Free-form store metadata (e.g. how a synthetic market was generated)."""
        if not self.exists():
            return {}
        with self._connect(write=False) as con:
            return dict(con.execute("SELECT name, value FROM meta").fetchall())

    @contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        """Group writes so that they land together or not at all."""
        if not self._cleaned:
            # Leftovers of a transaction that crashed before its catalog switch: nobody references them.
            with self._connect(write=True) as con:
                self._remove_orphans(con)
            self._cleaned = True
        tx = _Transaction(self)
        try:
            yield tx
        except BaseException:
            tx.abort()
            raise
        tx.commit()

    # ------------------------------------------------------------------ generic tables
    def write_table(self, name: str, df: pd.DataFrame | pa.Table, key: str = "") -> None:
        """Replace table `name` (or one key of it) with `df`, atomically."""
        with self.transaction() as tx:
            tx.put(name, key, df)

    def read_table(self, name: str, key: str | None = None) -> pd.DataFrame:
        """Read a whole table (all keys concatenated) or one key of it; empty frame if absent."""
        cat = self._catalog(name)
        cat = cat[cat["tbl"] == name]
        if key is not None:
            cat = cat[cat["key"] == key]
        if len(cat) == 0:
            return pd.DataFrame()
        tables = [pq.read_table(self.root / p) for p in cat["path"]]
        return pa.concat_tables(tables, promote_options="default").to_pandas()

    def has_table(self, name: str) -> bool:
        cat = self._catalog(name)
        return bool((cat["tbl"] == name).any())

    # ------------------------------------------------------------------ bars
    def write_bars(self, bars: pd.DataFrame, market: str, freq: str = "1d", replace: bool = False,
                   file: str | None = None) -> dict[str, int]:
        """Validate and store bars (append new timestamps per symbol), atomically.

        Overlapping timestamps must agree with what is stored (prices and volume within a relative
        1e-9) unless `replace`, in which case the new rows win. Returns {symbol: rows after write}.
        """
        with self.transaction() as tx:
            return tx.put_bars(bars, market=market, freq=freq, replace=replace, file=file)

    def freqs(self) -> list[str]:
        cat = self._catalog("bars")
        return sorted({t.split("/", 1)[1] for t in cat["tbl"]})

    def symbols(self, freq: str = "1d", market: str | None = None) -> list[str]:
        cat = self._catalog(f"bars/{freq}")
        if market is not None:
            cat = cat[cat["market"] == market]
        return sorted(cat["key"].tolist())

    def listing(self) -> pd.DataFrame:
        """One row per (symbol, freq): market, first and last timestamp, rows."""
        cat = self._catalog("bars")
        out = pd.DataFrame({
            "symbol": cat["key"],
            "freq": cat["tbl"].str.split("/", n=1).str[1],
            "market": cat["market"],
            "first_ts": cat["min_ts"],
            "last_ts": cat["max_ts"],
            "rows": cat["rows"].astype("int64"),
        })
        return out.sort_values(["freq", "symbol"]).reset_index(drop=True)

    def bars(self, symbols: Iterable[str] | str | None = None, start=None, end=None, freq: str = "1d",
             fields: Iterable[str] | None = None, market: str | None = None) -> pd.DataFrame:
        """Bars for `symbols` (default all) with start <= ts <= end (inclusive), sorted by symbol, ts.

        `start`/`end` accept anything pandas parses; None means unbounded.
        """
        cat = self._catalog(f"bars/{freq}")
        cat = cat[cat["tbl"] == f"bars/{freq}"]
        if market is not None:
            cat = cat[cat["market"] == market]
        if symbols is not None:
            wanted = [symbols] if isinstance(symbols, str) else list(symbols)
            cat = cat[cat["key"].isin(wanted)]
        columns = list(BAR_COLUMNS) if fields is None else ["symbol", "ts", *[f for f in fields if f not in ("symbol", "ts")]]
        start_ts = pd.Timestamp(start) if start is not None else None
        end_ts = pd.Timestamp(end) if end is not None else None
        if start_ts is not None:
            cat = cat[cat["max_ts"] >= start_ts]
        if end_ts is not None:
            cat = cat[cat["min_ts"] <= end_ts]
        if len(cat) == 0:
            return _empty_bars()[columns]
        filters = []
        if start_ts is not None:
            filters.append(("ts", ">=", start_ts))
        if end_ts is not None:
            filters.append(("ts", "<=", end_ts))
        paths = [str(self.root / p) for p in cat.sort_values("key")["path"]]
        # One file per symbol, each already sorted by ts: reading in key order keeps the result
        # sorted by (symbol, ts) with no sort.
        table = pq.ParquetDataset(paths, filters=filters or None).read(columns=columns)
        df = table.to_pandas()
        return df.reset_index(drop=True)

    def calendar(self, freq: str = "1d", market: str | None = None) -> pd.DatetimeIndex:
        """Sorted unique timestamps present in the store's bars."""
        df = self.bars(freq=freq, fields=[], market=market)
        return pd.DatetimeIndex(np.unique(df["ts"].to_numpy()))

    # ------------------------------------------------------------------ reference data
    def instruments(self) -> pd.DataFrame:
        df = self.read_table("instruments")
        return df if len(df) else pd.DataFrame(columns=list(INSTRUMENT_COLUMNS))

    def flags(self, flag: str | None = None) -> pd.DataFrame:
        df = self.read_table("flags")
        if len(df) == 0:
            return pd.DataFrame(columns=["symbol", "flag", "start", "end"])
        return df if flag is None else df[df["flag"] == flag].reset_index(drop=True)

    def members(self, universe: str, asof) -> list[str]:
        """Symbols in `universe` on date `asof` (spans are inclusive; NaT end = still a member)."""
        df = self.read_table("universes")
        if len(df) == 0:
            return []
        asof = pd.Timestamp(asof)
        df = df[df["universe"] == universe]
        live = (df["start"] <= asof) & (df["end"].isna() | (df["end"] >= asof))
        return sorted(df.loc[live, "symbol"].unique().tolist())

    def texts(self, symbols: Iterable[str] | str | None = None, visible_before=None,
              since=None) -> pd.DataFrame:
        """Texts published strictly before `visible_before` (and at or after `since`).

        `symbols` filters symbol-specific texts; market-wide texts (symbol "") are always included.
        """
        df = self.read_table("texts")
        if len(df) == 0:
            return pd.DataFrame(columns=list(TEXT_COLUMNS))
        if symbols is not None:
            wanted = [symbols] if isinstance(symbols, str) else list(symbols)
            df = df[df["symbol"].isin(wanted) | (df["symbol"] == "")]
        if visible_before is not None:
            df = df[df["published_at"] < pd.Timestamp(visible_before)]
        if since is not None:
            df = df[df["published_at"] >= pd.Timestamp(since)]
        return df.sort_values(["published_at", "text_id"]).reset_index(drop=True)


def _empty_bars() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype="float64") for c in BAR_COLUMNS})
    df["symbol"] = pd.Series(dtype="object")
    df["ts"] = pd.Series(dtype="datetime64[ns]")
    return df


class _Transaction:
    """Staged writes that become visible together in `commit`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.txid = uuid.uuid4().hex[:12]
        self.staging = store.root / "_staging" / self.txid
        self.pending: dict[tuple[str, str], tuple[Path, int, object, object, str | None]] = {}
        self.meta: dict[str, str] = {}
        self._bars_cache: dict[tuple[str, str], pd.DataFrame] = {}
        self._n_staged = 0
        self._catalog_cache: dict[str, pd.DataFrame] = {}

    def put(self, tbl: str, key: str, df: pd.DataFrame | pa.Table, market: str | None = None) -> None:
        """Stage `df` (a DataFrame, or an Arrow table kept as is) as the new content of (tbl, key)."""
        self.staging.mkdir(parents=True, exist_ok=True)
        # A fresh name per put: re-putting a key must not reuse (and later clobber) another key's file.
        self._n_staged += 1
        path = self.staging / f"{self._n_staged}.parquet"
        if isinstance(df, pa.Table):  # Arrow types pandas cannot round-trip (e.g. fixed-size lists)
            table = df
            df = table.select([c for c in ("ts", "published_at") if c in table.column_names]).to_pandas()
        else:
            table = pa.Table.from_pandas(df, preserve_index=False)
        pq.write_table(table, path, compression="zstd")
        min_ts = max_ts = None
        ts_col = "ts" if "ts" in df.columns else ("published_at" if "published_at" in df.columns else None)
        if ts_col is not None and len(df):
            min_ts, max_ts = df[ts_col].min(), df[ts_col].max()
        self.pending[(tbl, key)] = (path, table.num_rows, min_ts, max_ts, market)

    def set_meta(self, name: str, value: str) -> None:
        self.meta[name] = value

    def put_bars(self, bars: pd.DataFrame, market: str, freq: str, replace: bool = False,
                 file: str | None = None) -> dict[str, int]:
        check_market(market)
        check_freq(freq)
        new = validate_bars(bars, file=file, freq=freq)
        counts: dict[str, int] = {}
        tbl = f"bars/{freq}"
        if tbl not in self._catalog_cache:  # one catalog read per table and transaction (importers call per file)
            self._catalog_cache[tbl] = self.store._catalog(tbl)
        cat = self._catalog_cache[tbl]
        current = dict(zip(cat["key"], cat["path"]))
        markets = dict(zip(cat["key"], cat["market"]))
        bounds = np.flatnonzero(np.r_[True, new["symbol"].to_numpy()[1:] != new["symbol"].to_numpy()[:-1], True])
        for a, b in zip(bounds[:-1], bounds[1:]):
            part = new.iloc[a:b]
            symbol = part["symbol"].iat[0]
            if symbol in markets and markets[symbol] != market:
                raise DataValidationError(
                    f"symbol {symbol} is stored under market '{markets[symbol]}', not '{market}'", file=file, column="symbol"
                )
            old = self._bars_cache.get((tbl, symbol))
            if old is None and symbol in current:
                old = pq.read_table(self.store.root / current[symbol]).to_pandas()
            merged = part if old is None else _merge_bars(old, part, replace=replace, file=file)
            self._bars_cache[(tbl, symbol)] = merged
            self.put(tbl, symbol, merged.reset_index(drop=True), market=market)
            counts[symbol] = len(merged)
        return counts

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def commit(self) -> None:
        if not self.pending and not self.meta:
            self.abort()
            return
        root = self.store.root
        moved: list[tuple[str, str, str, int, object, object, str | None]] = []
        try:
            for (tbl, key), (path, rows, min_ts, max_ts, market) in self.pending.items():
                rel = Path("files") / tbl / _safe_key(key) / f"{self.txid}.parquet"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, root / rel)
                moved.append((tbl, key, str(rel), rows, min_ts, max_ts, market))
            con = self.store._connect(write=True)
            try:
                old_paths = []
                con.execute("BEGIN TRANSACTION")
                for tbl, key, rel, rows, min_ts, max_ts, market in moved:
                    prev = con.execute("SELECT path FROM files WHERE tbl = ? AND key = ?", [tbl, key]).fetchone()
                    if prev:
                        old_paths.append(prev[0])
                    con.execute("DELETE FROM files WHERE tbl = ? AND key = ?", [tbl, key])
                    con.execute(
                        "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [tbl, key, rel, rows, _py_ts(min_ts), _py_ts(max_ts), market],
                    )
                for name, value in self.meta.items():
                    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [name, value])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                con.close()
        except BaseException:
            for _, _, rel, *_ in moved:
                (root / rel).unlink(missing_ok=True)
            self.abort()
            raise
        self.store._catalog_cache = None
        for p in old_paths:
            (root / p).unlink(missing_ok=True)
        self.abort()


def _py_ts(value):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return pd.Timestamp(value).to_pydatetime()


def _merge_bars(old: pd.DataFrame, new: pd.DataFrame, replace: bool, file: str | None) -> pd.DataFrame:
    """Union of stored and new bars of one symbol; overlaps must agree unless `replace`."""
    overlap = pd.Index(old["ts"]).intersection(pd.Index(new["ts"]))
    if len(overlap) and not replace:
        o = old.set_index("ts").loc[overlap]
        n = new.set_index("ts").loc[overlap]
        for col in (*PRICE_COLUMNS, "volume"):
            a, b = o[col].to_numpy(), n[col].to_numpy()
            bad = ~np.isclose(a, b, rtol=_OVERLAP_RTOL, atol=0.0)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataValidationError(
                    f"overlaps stored data for {new['symbol'].iat[0]} at {overlap[i]}: stored {col}={float(a[i])!r}, "
                    f"new {col}={float(b[i])!r} (use --replace to overwrite)",
                    file=file,
                    column=col,
                )
    keep_old = old[~old["ts"].isin(new["ts"])] if replace else old
    add_new = new if replace else new[~new["ts"].isin(old["ts"])]
    merged = pd.concat([keep_old, add_new], ignore_index=True)
    return merged.sort_values("ts", kind="stable").reset_index(drop=True)[list(BAR_COLUMNS)]


__all__ = ["Store", "default_store_path", "DataValidationError", "TEXT_COLUMNS", "UNIVERSE_COLUMNS"]
