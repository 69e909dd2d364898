"""The store catalog: DuckDB for writers, an immutable Parquet snapshot for readers.

`catalog.duckdb` is the authoritative catalog. Only writers open it, and only while holding the
store's write lock (`quantlm.data.store_lock`), so DuckDB's own file lock is never contended between
quantlm writers. It holds `files` (one row per current Parquet file), `meta` (free-form name/value)
and `catalog_version` (one row: a counter every commit increments).

`catalog.parquet` is a snapshot of `files` that every commit writes after its DuckDB commit: to a
temporary file, fsync'ed, then renamed over the old snapshot with `os.replace` (atomic on POSIX). Its
Arrow schema metadata carries the version, the committing transaction's id and the `meta` table.
Readers read only this file, so they never touch DuckDB's file lock and cannot crash (or block a
writer) while another process commits: they see the snapshot before or after a commit, never half
of one. A crash between the DuckDB commit and the snapshot leaves the snapshot one version behind
(still consistent: the files it names are deleted only after it is replaced); the next writer
notices the version mismatch under the lock and rewrites it.

Stores written before snapshots existed have only `catalog.duckdb`; readers then fall back to
opening it read-only and retry (with backoff, up to the lock timeout) while a writer holds it.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quantlm.data.store_lock import StoreBusyError

CATALOG = "catalog.duckdb"
SNAPSHOT = "catalog.parquet"
FILE_COLUMNS = ("tbl", "key", "path", "rows", "min_ts", "max_ts", "market")
_KEY = b"quantlm.catalog"  # schema metadata: {"version": int, "txid": str}
_META = b"quantlm.meta"  # schema metadata: the meta table as a JSON object
T = TypeVar("T")
_SCHEMA = pa.schema([("tbl", pa.string()), ("key", pa.string()), ("path", pa.string()), ("rows", pa.int64()),
                     ("min_ts", pa.timestamp("us")), ("max_ts", pa.timestamp("us")), ("market", pa.string())])


class StoreConflictError(ValueError):
    """The catalog changed under an open transaction (a writer that ignored the lock); nothing was written."""

    user_facing = True


def empty_files() -> pd.DataFrame:
    """An empty catalog frame with the catalog's columns."""
    return _SCHEMA.empty_table().to_pandas()


def connect_write(root: Path, timeout: float) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) `catalog.duckdb` for writing. Call only while holding the write lock.

    Under the write lock only a foreign process can hold DuckDB's own file lock (a quantlm from before
    the write lock, or a DuckDB shell on the catalog): retried with backoff for up to `timeout`
    seconds, then StoreBusyError.
    """
    root.mkdir(parents=True, exist_ok=True)
    con = _retry_duckdb_lock(lambda: duckdb.connect(str(root / CATALOG)), root, timeout)
    con.execute(
        "CREATE TABLE IF NOT EXISTS files (tbl VARCHAR, key VARCHAR, path VARCHAR, rows BIGINT,"
        " min_ts TIMESTAMP, max_ts TIMESTAMP, market VARCHAR, PRIMARY KEY (tbl, key))"
    )
    con.execute("CREATE TABLE IF NOT EXISTS meta (name VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("CREATE TABLE IF NOT EXISTS catalog_version (version BIGINT)")
    if con.execute("SELECT count(*) FROM catalog_version").fetchone()[0] == 0:
        con.execute("INSERT INTO catalog_version VALUES (0)")
    return con


def _retry_duckdb_lock(open_: Callable[[], T], root: Path, timeout: float) -> T:
    """`open_()`, retried with backoff while DuckDB reports a file-lock conflict, for up to `timeout` s."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            return open_()
        except (duckdb.IOException, duckdb.CatalogException) as e:
            if not _is_lock_conflict(e):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreBusyError(f"store {root} is busy: its catalog {root / CATALOG} stayed locked by another "
                                     f"process for {timeout:g} s; try again when it is done ({e})") from None
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.2)


def _is_lock_conflict(e: duckdb.Error) -> bool:
    """DuckDB's file lock is held by another process (IOException), or a writer that holds it is still
    creating the tables (CatalogException, seen by a reader that got in between)."""
    return isinstance(e, duckdb.CatalogException) or "lock" in str(e).lower()


def read_state(con: duckdb.DuckDBPyConnection) -> tuple[int, pd.DataFrame, dict[str, str]]:
    """(version, files frame, meta) as the connection sees them."""
    version = con.execute("SELECT max(version) FROM catalog_version").fetchone()[0]
    files = _query_files(con)
    meta = dict(con.execute("SELECT name, value FROM meta").fetchall())
    return int(version or 0), files, meta


def _query_files(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    df = con.execute("SELECT * FROM files ORDER BY tbl, key").df()
    return _files_frame(pa.Table.from_pandas(df, preserve_index=False))


def _files_frame(table: pa.Table) -> pd.DataFrame:
    """The catalog as pandas, with the same dtypes whichever way it was read."""
    table = pa.Table.from_arrays([table.column(c).cast(_SCHEMA.field(c).type) for c in FILE_COLUMNS], schema=_SCHEMA)
    return table.to_pandas()


def write_snapshot(root: Path, version: int, txid: str, files: pd.DataFrame, meta: dict[str, str]) -> None:
    """Atomically replace `catalog.parquet` with (version, files, meta)."""
    table = pa.Table.from_pandas(files[list(FILE_COLUMNS)], schema=_SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata({_KEY: json.dumps({"version": version, "txid": txid}).encode(),
                                           _META: json.dumps(meta).encode()})
    tmp = root / f"{SNAPSHOT}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / SNAPSHOT)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable before the caller deletes the files the old snapshot names
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - platforms that cannot fsync a directory
        pass


def snapshot_version(root: Path) -> int | None:
    """The version recorded in `catalog.parquet`, or None if there is no (readable) snapshot."""
    try:
        md = pq.read_schema(root / SNAPSHOT).metadata or {}
        return int(json.loads(md[_KEY])["version"])
    except (FileNotFoundError, KeyError, ValueError, pa.ArrowInvalid):
        return None


def _read_legacy(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    with duckdb.connect(str(path), read_only=True) as con:
        return _query_files(con), dict(con.execute("SELECT name, value FROM meta").fetchall())


def read_catalog(root: Path, known: str | None, timeout: float) -> tuple[str, pd.DataFrame | None, dict | None]:
    """(cache key, files, meta) of the store at `root`; files and meta are None when the key is `known`.

    Reads the snapshot (one open file: the footer is enough to see the cache is still current). Without
    a snapshot, reads `catalog.duckdb` read-only, retrying with backoff for up to `timeout` seconds
    while a writer holds DuckDB's file lock (StoreBusyError after that).
    """
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            with open(root / SNAPSHOT, "rb") as f:
                pf = pq.ParquetFile(f)
                md = pf.schema_arrow.metadata or {}
                key = "snapshot:" + md[_KEY].decode()
                if key == known:
                    return key, None, None
                return key, _files_frame(pf.read()), json.loads(md[_META])
        except FileNotFoundError:
            pass
        path = root / CATALOG
        if not path.exists():
            raise FileNotFoundError(f"no quantlm store at {root} (create one with 'quantlm data import' or "
                                    "'quantlm data synth')")
        st = path.stat()
        key = f"duckdb:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"
        if key == known:
            return key, None, None
        try:
            files, meta = _read_legacy(path)
            return key, files, meta
        except (duckdb.IOException, duckdb.CatalogException) as e:
            if not _is_lock_conflict(e):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreBusyError(f"store {root} is busy: its catalog {path} stayed locked by another process "
                                     f"for {timeout:g} s; try again when it is done ({e})") from None
            time.sleep(min(delay, left))  # then look for a snapshot again: a writer may just have made one
            delay = min(delay * 2, 0.2)
