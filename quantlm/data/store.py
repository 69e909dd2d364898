"""The validated store: Parquet files plus a catalog, in one directory.

Layout of a store directory::

    catalog.duckdb                 the catalog: which Parquet file is current for each (table, key)
    catalog.parquet                immutable snapshot of the catalog that readers read (store_catalog)
    .write.lock                    the inter-process write lock (store_lock)
    files/<table>/<key>/<txid>.parquet
    _staging/<txid>/               files written by an unfinished transaction

Tables: `bars/<freq>` (one file per symbol, key = symbol), `instruments`, `flags`, `universes`,
`texts`, and free-form tables such as `oracle` or `text_embeddings` (key "" = the whole table).

Atomicity: a transaction writes new files under `_staging/`, moves them to their final names
(files nobody references yet) and then switches the catalog rows in one DuckDB transaction. A
crash or error before that switch leaves the catalog, and so the store, exactly as it was;
unreferenced files are deleted by the next writer.

Concurrency: one writer at a time. `transaction()` holds the store's write lock (an flock on
`.write.lock`, waiting up to `lock_timeout` seconds, then StoreBusyError) from before it reads the
catalog it builds on until after its commit, so a transaction always merges with the current stored
files and a long-lived Store object never writes from a stale view. The commit also checks that the
catalog version is still the one the transaction started from (compare-and-swap) and raises
StoreConflictError otherwise, so even a writer that ignores the lock cannot cause a silent lost update.
Readers take no lock: they read the catalog snapshot, which each commit replaces atomically, and if a
file they were about to read was just replaced by a commit they reload the catalog and read again.

Point-in-time reads live here so the rest of the code cannot get them wrong:
`bars(symbols, start, end, freq)`, `members(universe, asof)`, `texts(symbols, visible_before)`.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quantlm.data.schema import (
    BAR_COLUMNS,
    INSTRUMENT_COLUMNS,
    TEXT_COLUMNS,
    UNIVERSE_COLUMNS,
    DataValidationError,
)
from quantlm.data.store_catalog import (
    CATALOG,
    SNAPSHOT,
    StoreConflictError,
    connect_write,
    empty_files,
    read_catalog,
)
from quantlm.data.store_lock import StoreBusyError, WriteLock, resolve_lock_timeout
from quantlm.data.store_tx import _Transaction

DEFAULT_STORE_ENV = "QUANTLM_STORE"
_READ_ATTEMPTS = 20  # a read retried after a concurrent commit replaced the file it was about to open
T = TypeVar("T")


def default_store_path() -> Path:
    """`$QUANTLM_STORE` if set, else `./data/store`."""
    return Path(os.environ.get(DEFAULT_STORE_ENV, "data/store"))


class Store:
    """A quantlm data store rooted at `root` (created on first write).

    `lock_timeout`: seconds a writer waits for another process's write to finish before raising
    StoreBusyError (default $QUANTLM_STORE_LOCK_TIMEOUT, else 60). `last_notes`: what the last
    transaction committed by this object had to tell the user (e.g. adj_factor re-basing).
    """

    def __init__(self, root: str | os.PathLike | None = None, lock_timeout: float | None = None) -> None:
        self.root = Path(root) if root is not None else default_store_path()
        self._lock_timeout = lock_timeout
        self._cleaned = False  # leftovers of dead transactions are removed once, at this object's first write
        self._catalog_cache: tuple[str, pd.DataFrame, dict[str, str]] | None = None
        self.last_notes: list[str] = []

    # ------------------------------------------------------------------ catalog plumbing
    @property
    def catalog_path(self) -> Path:
        return self.root / CATALOG

    @property
    def lock_timeout(self) -> float:
        """Seconds a writer waits for the write lock (and a reader for a legacy catalog)."""
        return resolve_lock_timeout(self._lock_timeout)

    def exists(self) -> bool:
        return (self.root / SNAPSHOT).exists() or self.catalog_path.exists()

    def _connect(self, write: bool) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection to the catalog. Writing: only while holding the write lock."""
        if write:
            return connect_write(self.root, self.lock_timeout)
        if not self.exists():
            raise FileNotFoundError(f"no quantlm store at {self.root} (create one with 'quantlm data import' or 'quantlm data synth')")
        return duckdb.connect(str(self.catalog_path), read_only=True)

    def _remove_orphans(self, referenced: set[Path]) -> None:
        """Delete what dead transactions left: staging folders, snapshot temp files, unreferenced files.

        Call only while holding the write lock: every transaction holds it from start to end, so no
        other one is running and everything found here belongs to one that crashed.
        """
        shutil.rmtree(self.root / "_staging", ignore_errors=True)
        for tmp in self.root.glob(f"{SNAPSHOT}.tmp-*"):
            tmp.unlink(missing_ok=True)
        files_dir = self.root / "files"
        if files_dir.exists():
            for f in files_dir.rglob("*.parquet"):
                if f.relative_to(self.root) not in referenced:
                    f.unlink()

    def _load(self) -> tuple[pd.DataFrame, dict[str, str]]:
        """(catalog files frame, meta), re-read only when a commit replaced the snapshot since."""
        known = self._catalog_cache[0] if self._catalog_cache is not None else None
        key, files, meta = read_catalog(self.root, known, self.lock_timeout)
        if files is not None or self._catalog_cache is None:
            self._catalog_cache = (key, files if files is not None else empty_files(), meta or {})
        return self._catalog_cache[1], self._catalog_cache[2]

    def _catalog(self, tbl_prefix: str | None = None) -> pd.DataFrame:
        """Catalog rows for table `tbl_prefix` and its sub-tables (all rows if None).

        The whole catalog is small (one row per file): the frame is cached and reused while the
        snapshot's version is unchanged (checked by reading its footer, well under a millisecond).
        """
        if not self.exists():
            return empty_files()
        full = self._load()[0]
        if tbl_prefix is None:
            return full.copy()
        mask = (full["tbl"] == tbl_prefix) | full["tbl"].str.startswith(tbl_prefix + "/")
        return full[mask].reset_index(drop=True)

    def _read(self, read: Callable[[], T]) -> T:
        """`read()`, again with a fresh catalog if a concurrent commit deleted a file it had to open."""
        for attempt in range(_READ_ATTEMPTS):
            try:
                return read()
            except FileNotFoundError:
                used = self._catalog_cache[0] if self._catalog_cache is not None else None
                self._load()
                if attempt == _READ_ATTEMPTS - 1 or self._catalog_cache[0] == used:
                    raise  # the catalog did not change: the file is really missing
                time.sleep(0.001 * attempt)
        raise AssertionError("unreachable")

    def meta(self) -> dict[str, str]:
        """Free-form store metadata (e.g. how a synthetic market was generated)."""
        if not self.exists():
            return {}
        return dict(self._load()[1])

    @contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        """Group writes so that they land together or not at all, one writer at a time.

        Holds the store's write lock for the whole transaction (StoreBusyError if another process
        keeps it longer than `lock_timeout` seconds). Notes for the user end up in `tx.notes` and,
        after the commit, in `self.last_notes`.
        """
        self.last_notes = []
        with WriteLock(self.root, self.lock_timeout):
            tx = _Transaction(self)
            try:
                yield tx
            except BaseException:
                tx.abort()
                raise
            tx.commit()
            self.last_notes = list(tx.notes)

    # ------------------------------------------------------------------ generic tables
    def write_table(self, name: str, df: pd.DataFrame | pa.Table, key: str = "") -> None:
        """Replace table `name` (or one key of it) with `df`, atomically."""
        with self.transaction() as tx:
            tx.put(name, key, df)

    def read_table(self, name: str, key: str | None = None) -> pd.DataFrame:
        """Read a whole table (all keys concatenated) or one key of it; empty frame if absent."""
        return self._read(lambda: self._read_table_once(name, key))

    def _read_table_once(self, name: str, key: str | None) -> pd.DataFrame:
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

        tz-aware timestamps are converted to the market's exchange-local time first. Overlapping
        timestamps must agree with what is stored (prices and volume within a relative 1e-9) unless
        `replace`, in which case the new rows win; adj_factor re-basing is handled as `merge_bars`
        describes, with notes in `self.last_notes`. Returns {symbol: rows after write}.
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
        return self._read(lambda: self._bars_once(symbols, start, end, freq, fields, market))

    def _bars_once(self, symbols, start, end, freq: str, fields, market: str | None) -> pd.DataFrame:
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


__all__ = ["Store", "default_store_path", "DataValidationError", "StoreBusyError", "StoreConflictError",
           "TEXT_COLUMNS", "UNIVERSE_COLUMNS"]
