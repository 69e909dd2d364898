"""A real kill -9 of a process submitting orders: every acknowledged order survives, exactly once.

The worker prints `ID <cid>` when `next_client_id` returned and `ACK <cid>` only after `submit`
returned (the acknowledgement a caller would pass on). Some orders are submitted in batches of three
(acknowledged after the batch committed), others alone and then walked to a fill, so the kills land in
different kinds of writes. Each run resumes on the journal the previous one was killed on.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

from quantlm.live.journal import Journal

WORKER = r"""
import sys
import pandas as pd
from quantlm.live.journal import Journal
from quantlm.live.oms import OrderManager
from quantlm.live.types import Fill, Order

oms = OrderManager(Journal(sys.argv[1]))
j = oms.journal
ts = pd.Timestamp("2024-01-02 09:30")

def submit(cid):
    o, new = oms.submit(Order(cid, "600000.SH", "buy", shares=100.0, created=ts, reason="crash test"))
    if not new:
        sys.stderr.write(f"client id {cid} was reused\n")
        sys.exit(3)

for i in range(1_000_000):
    if i % 4 == 3:
        ids = []
        with j.batch():
            for _ in range(3):
                cid = j.next_client_id()
                print("ID", cid, flush=True)
                submit(cid)
                oms.mark(cid, "risk_checked")
                ids.append(cid)
        for cid in ids:
            print("ACK", cid, flush=True)
    else:
        cid = j.next_client_id()
        print("ID", cid, flush=True)
        submit(cid)
        print("ACK", cid, flush=True)
        oms.mark(cid, "risk_checked")
        oms.mark(cid, "sent")
        oms.apply_fill(Fill("F" + cid, cid, "600000.SH", "buy", 100.0, 10.0, ts))
"""


def run_and_kill(path, n_acks: int, jitter_s: float) -> tuple[list[str], list[str]]:
    """Start a worker on `path`, SIGKILL it after `n_acks` acknowledgements (+ jitter); (handed out, acked)."""
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    acks = 0
    for line in proc.stdout:
        if not line.endswith("\n"):  # the worker died mid-line
            break
        lines.append(line.split())
        acks += lines[-1][0] == "ACK"
        if acks >= n_acks:
            break
    time.sleep(jitter_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # what the worker printed before the kill is acknowledged too (read through the same buffered file:
    # communicate() would read the raw pipe and drop what the line iterator already buffered)
    rest, err = proc.stdout.read(), proc.stderr.read()
    # a line cut by the kill was never fully delivered: not an acknowledgement
    lines += [x.split() for x in rest.splitlines(keepends=True) if x.endswith("\n")]
    assert acks >= n_acks, f"worker stopped early (rc {proc.returncode}): {err[-2000:]}"
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    assert all(len(x) == 2 and x[0] in ("ID", "ACK") for x in lines), [x for x in lines if len(x) != 2]
    return [cid for kind, cid in lines if kind == "ID"], [cid for kind, cid in lines if kind == "ACK"]


def test_kill_9_loses_no_acknowledged_order_and_reuses_no_id(tmp_path):
    path = tmp_path / "journal.sqlite"
    rng = random.Random(10)
    handed_out: list[str] = []
    acked: list[str] = []
    for n in (5, 17, 40):
        ids, acks = run_and_kill(path, n, rng.uniform(0, 0.003))
        handed_out += ids
        acked += acks
        with sqlite3.connect(path) as raw:  # the file is sound after every kill
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        with Journal(path) as j:
            stored = [o.client_id for o in j.orders()]
            assert set(acked) <= set(stored), set(acked) - set(stored)
            assert len(stored) == len(set(stored))
            ev = j.events()
            news = Counter(ev.loc[ev["status"] == "new", "client_id"])
            assert all(news[cid] == 1 for cid in acked)  # each acknowledged order journaled exactly once
            fills = j.fills()
            assert fills["fill_id"].is_unique
            filled = {o.client_id: o.filled_shares for o in j.orders("filled")}
            assert all(filled[c] == 100.0 for c in fills["client_id"])  # no fill applied twice
    assert len(handed_out) == len(set(handed_out))  # no process reused an id an earlier one handed out
    # a new process never returns an id already used
    out = subprocess.run([sys.executable, "-c", "import sys; from quantlm.live.journal import Journal; "
                          "j = Journal(sys.argv[1]); print(*(j.next_client_id() for _ in range(50)))", str(path)],
                         capture_output=True, text=True, timeout=30, check=True).stdout.split()
    assert len(out) == 50 and not set(out) & set(handed_out)
