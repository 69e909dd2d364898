"""Store under concurrency, with real processes: one writer at a time, no lost updates, readers never crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from quantlm.data.store import Store, StoreBusyError
from tests.conftest import make_bars

REPO = Path(__file__).parents[2]

# Opens a transaction, signals (touches `ready`) once inside it, stages bars of `symbol`, holds the
# transaction open for `hold` seconds, commits; prints how long entering the transaction took.
WRITER = textwrap.dedent("""
    import json, pathlib, sys, time
    from quantlm.data.store import Store
    from tests.conftest import make_bars

    root, symbol, hold, ready = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    store = Store(root)
    t0 = time.monotonic()
    with store.transaction() as tx:
        waited = time.monotonic() - t0
        pathlib.Path(ready).touch()
        tx.put_bars(make_bars(symbols=(symbol,)), market="cn", freq="1d")
        time.sleep(hold)
    print(json.dumps({"waited": waited}))
""")

# Commits `n` times: each commit rewrites symbol X (one more day) and adds a new symbol N<i>.
REPEATED_WRITER = textwrap.dedent("""
    import sys
    import pandas as pd
    from quantlm.data.store import Store
    from tests.conftest import make_bars

    store, n = Store(sys.argv[1]), int(sys.argv[2])
    x = make_bars(symbols=("X",), periods=n + 5)
    for i in range(n):
        with store.transaction() as tx:
            tx.put_bars(x.iloc[: 5 + i + 1], market="cn", freq="1d")
            tx.put_bars(make_bars(symbols=(f"N{i:03d}",), periods=3), market="cn", freq="1d")
            tx.set_meta("commits", str(i + 1))
""")


# A CLI command that writes bars, reporting errors the way every quantlm command does (`user_errors`).
CLI_WRITE = textwrap.dedent("""
    import pandas as pd, typer
    from quantlm.cli.common import user_errors
    from quantlm.data.store import Store

    app = typer.Typer()

    @app.command()
    @user_errors
    def write(root: str, csv: str) -> None:
        Store(root).write_bars(pd.read_csv(csv, dtype={"symbol": str}), market="cn")

    app()
""")


def run_py(script: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early: {proc.communicate()}")
        assert time.monotonic() < deadline, "writer never entered its transaction"
        time.sleep(0.01)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_two_concurrent_writers_both_land_and_the_second_waits(tmp_path):
    root = tmp_path / "store"
    first = run_py(WRITER, root, "600000.SH", 2.0, tmp_path / "ready1")
    wait_for(tmp_path / "ready1", first)
    second = run_py(WRITER, root, "000001.SZ", 0.0, tmp_path / "ready2")
    rc1, out1, err1 = finish(first)
    rc2, out2, err2 = finish(second)
    assert rc1 == 0 and rc2 == 0, err1 + err2
    assert json.loads(out2)["waited"] > 0.5  # it waited for the first writer's lock
    store = Store(root)
    assert store.symbols() == ["000001.SZ", "600000.SH"]
    assert store.listing()["rows"].tolist() == [60, 60]
    assert not any((root / "_staging").glob("*/*"))


def test_writer_gives_up_after_lock_timeout_with_a_clear_message(tmp_path):
    root = tmp_path / "store"
    holder = run_py(WRITER, root, "600000.SH", 4.0, tmp_path / "ready")
    csv = tmp_path / "000001.SZ.csv"
    make_bars(symbols=("000001.SZ",)).to_csv(csv, index=False)
    wait_for(tmp_path / "ready", holder)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CLI_WRITE, str(root), str(csv)],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "QUANTLM_STORE_LOCK_TIMEOUT": "0.5",
                                                                           "COLUMNS": "400"})
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    message = " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr and "duckdb" not in message.lower()
    assert f"store {root} is busy" in message and "QUANTLM_STORE_LOCK_TIMEOUT" in message
    assert f"pid {holder.pid}" in message  # names who holds the lock
    assert elapsed < 3.5  # gave up after its timeout, long before the holder finished
    assert finish(holder)[0] == 0
    assert Store(root).symbols() == ["600000.SH"]


def test_reader_polling_during_repeated_commits_never_raises(tmp_path):
    root = tmp_path / "store"
    n = 15
    Store(root).write_bars(make_bars(symbols=("X",), periods=n + 5).iloc[:5], market="cn")
    writer = run_py(REPEATED_WRITER, root, n)
    reader = Store(root)
    seen_rows, seen_commits, reads = [], set(), 0
    while writer.poll() is None or reads == 0:
        listing = reader.listing()
        x = reader.bars("X")
        everything = reader.bars(fields=["close"])
        seen_commits.add(reader.meta().get("commits"))
        n_syms = len(listing)
        assert len(everything) >= 5 and n_syms >= 1
        seen_rows.append(len(x))
        reads += 1
    rc, _, err = finish(writer)
    assert rc == 0, err
    assert seen_rows == sorted(seen_rows)  # X only ever grows: no read saw an older state after a newer one
    assert len(seen_commits) >= 3, seen_commits  # the reads really interleaved with the commits
    assert len(reader.bars("X")) == n + 5 and len(reader.symbols()) == n + 1


def test_long_lived_store_object_sees_other_process_commit(tmp_path):
    """A: a Store object that read the catalog; B (another process) commits X; then A writes X and Y."""
    root = tmp_path / "store"
    x = make_bars(symbols=("X",), periods=60)
    a = Store(root)
    a.write_bars(x.iloc[:20], market="cn")
    assert a.listing()["rows"].tolist() == [20]  # A's catalog is loaded (and cached)
    stamps = {p: p.stat() for p in root.glob("catalog.*")}

    x.iloc[20:40].to_parquet(tmp_path / "b.parquet")
    script = ("import sys, pandas as pd; from quantlm.data.store import Store; "
              "Store(sys.argv[1]).write_bars(pd.read_parquet(sys.argv[2]), market='cn')")
    rc, _, err = finish(run_py(script, root, tmp_path / "b.parquet"))
    assert rc == 0, err
    # A file system with coarse timestamps (or two commits within one clock tick) leaves the catalog
    # files' mtimes unchanged: A must not rely on them to notice B's commit.
    for p, st in stamps.items():
        if p.exists():
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))

    with a.transaction() as tx:
        tx.put_bars(x.iloc[40:], market="cn", freq="1d")
        tx.put_bars(make_bars(symbols=("Y",), periods=10), market="cn", freq="1d")
    fresh = Store(root)
    assert fresh.listing()[["symbol", "rows"]].values.tolist() == [["X", 60], ["Y", 10]]
    pd.testing.assert_frame_equal(fresh.bars("X"), a.bars("X"))
    assert fresh.bars("X")["ts"].tolist() == x["ts"].tolist()


def test_transaction_that_read_a_symbol_before_another_process_wrote_it_loses_nothing(tmp_path):
    """The lost update: A reads X in its transaction, B appends to X, A commits its merge of X. B must
    wait for A (and then merge with A's X), not commit in between and be overwritten."""
    root = tmp_path / "store"
    x = make_bars(symbols=("X",), periods=60)
    a = Store(root)
    a.write_bars(x.iloc[:20], market="cn")
    x.iloc[20:40].to_parquet(tmp_path / "b.parquet")
    script = ("import sys, pandas as pd; from quantlm.data.store import Store; "
              "Store(sys.argv[1]).write_bars(pd.read_parquet(sys.argv[2]), market='cn')")
    with a.transaction() as tx:
        tx.put_bars(x.iloc[40:], market="cn", freq="1d")  # merged with the X A read: rows 0-19
        b = run_py(script, root, tmp_path / "b.parquet")
        time.sleep(2.0)  # B starts and tries to commit meanwhile
        assert b.poll() is None  # B is waiting for A's lock
    rc, _, err = finish(b)
    assert rc == 0, err
    assert Store(root).bars("X")["ts"].tolist() == x["ts"].tolist()


def test_reader_of_a_store_without_snapshot_retries_while_duckdb_is_locked(tmp_path):
    """Stores written before catalog snapshots existed are read from catalog.duckdb; another process
    holding DuckDB's file lock makes the reader wait and retry, never crash."""
    root = tmp_path / "store"
    Store(root).write_bars(make_bars(symbols=("X",), periods=5), market="cn")
    (root / "catalog.parquet").unlink()
    hold = textwrap.dedent("""
        import sys, time, pathlib, duckdb
        con = duckdb.connect(sys.argv[1])
        pathlib.Path(sys.argv[2]).touch()
        time.sleep(1.0)
        con.close()
    """)
    proc = run_py(hold, root / "catalog.duckdb", tmp_path / "ready")
    wait_for(tmp_path / "ready", proc)
    # A writer meets the foreign DuckDB lock too: it retries, then says the store is busy (no DuckDB traceback).
    with pytest.raises(StoreBusyError, match=rf"store {root} is busy: its catalog .* stayed locked"):
        Store(root, lock_timeout=0.2).write_bars(make_bars(symbols=("Y",), periods=5), market="cn")
    assert Store(root).listing()["rows"].tolist() == [5]
    assert finish(proc)[0] == 0
