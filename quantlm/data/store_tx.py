"""Store transactions: staged writes that land together or not at all (see `quantlm.data.store`).

A `_Transaction` is created by `Store.transaction()` while it holds the store's write lock: it reads
the state it builds on (catalog version and files) from the authoritative DuckDB catalog, stages new
Parquet files under `_staging/<txid>/`, and in `commit` moves them to their final names, switches the
catalog rows in one DuckDB transaction if the version is unchanged, then replaces the reader snapshot.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quantlm.data.schema import DataValidationError, check_freq, check_market, validate_bars
from quantlm.data.store_catalog import StoreConflictError, read_state, snapshot_version, write_snapshot
from quantlm.data.store_merge import merge_bars, to_exchange_local

if TYPE_CHECKING:
    from quantlm.data.store import Store


def _safe_key(key: str) -> str:
    """A file-system-safe folder name for a symbol (symbols may contain '/', e.g. BTC/USDT)."""
    return "".join(ch if ch.isalnum() or ch in "._-" else f"%{ord(ch):02X}" for ch in key) or "_"


class _Transaction:
    """Staged writes that become visible together in `commit`; created holding the write lock.

    `notes`: messages for the user collected while merging (e.g. an adj_factor re-basing); importers
    copy them into their reports.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.txid = uuid.uuid4().hex[:12]
        self.staging = store.root / "_staging" / self.txid
        self.pending: dict[tuple[str, str], tuple[Path, int, object, object, str | None]] = {}
        self.meta: dict[str, str] = {}
        self.notes: list[str] = []
        self._bars_cache: dict[tuple[str, str], pd.DataFrame] = {}
        self._n_staged = 0
        # The state this transaction builds on, read from the authoritative catalog under the lock.
        con = store._connect(write=True)
        try:
            self.base_version, self.base_files, meta = read_state(con)
        finally:
            con.close()
        if snapshot_version(store.root) != self.base_version:
            # New store, a store from before snapshots, or a writer that died between its DuckDB
            # commit and its snapshot: bring the snapshot up to date before anything reads it.
            write_snapshot(store.root, self.base_version, self.txid, self.base_files, meta)
        if not store._cleaned:
            store._remove_orphans({Path(p) for p in self.base_files["path"]})
            store._cleaned = True

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
        """Validate `bars` (tz-aware ts converted to exchange-local first), merge them per symbol with
        the stored ones (see `merge_bars`) and stage the results. Returns {symbol: rows after write}."""
        check_market(market)
        check_freq(freq)
        new = validate_bars(to_exchange_local(bars, market, file=file), file=file, freq=freq, market=market)
        counts: dict[str, int] = {}
        tbl = f"bars/{freq}"
        cat = self.base_files[self.base_files["tbl"] == tbl]
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
            if old is None:
                merged = part
            else:
                merged, notes = merge_bars(old, part, replace=replace, file=file)
                self.notes.extend(notes)
            self._bars_cache[(tbl, symbol)] = merged
            self.put(tbl, symbol, merged.reset_index(drop=True), market=market)
            counts[symbol] = len(merged)
        return counts

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def commit(self) -> None:
        """Move the staged files to their final names, then switch the catalog rows in one DuckDB
        transaction (if the catalog version is still `base_version`), then replace the snapshot."""
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
                version = int(con.execute("SELECT max(version) FROM catalog_version").fetchone()[0])
                if version != self.base_version:
                    raise StoreConflictError(
                        f"store {root} was changed by another writer while this transaction was open (catalog "
                        f"version {self.base_version} -> {version}; a quantlm without the write lock?); nothing "
                        "was written: run this again"
                    )
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
                con.execute("UPDATE catalog_version SET version = ?", [version + 1])
                con.execute("COMMIT")
                new_version, files, meta = read_state(con)
            except BaseException:
                _rollback(con)
                raise
            finally:
                con.close()
        except BaseException:
            for _, _, rel, *_ in moved:
                (root / rel).unlink(missing_ok=True)
            self.abort()
            raise
        # Committed. Readers switch to the new state with the snapshot; only then are the replaced
        # files deleted (a reader still holding the old snapshot re-reads the catalog and retries).
        write_snapshot(root, new_version, self.txid, files, meta)
        self.store._catalog_cache = None
        for p in old_paths:
            (root / p).unlink(missing_ok=True)
        self.abort()


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:  # no transaction left to roll back (e.g. COMMIT itself failed)
        pass


def _py_ts(value):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return pd.Timestamp(value).to_pydatetime()
