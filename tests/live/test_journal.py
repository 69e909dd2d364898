"""The live journal: durability settings, the order state machine, idempotency, batches, ids, errors."""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
from contextlib import contextmanager

import pandas as pd
import pytest

from quantlm.live.journal import InvalidTransition, Journal, JournalError, UnknownOrder
from quantlm.live.types import TRANSITIONS, Fill, Order, OrderStatus

S = OrderStatus
# a path from NEW to every non-terminal state
PATHS = {S.NEW: [], S.RISK_CHECKED: [S.RISK_CHECKED], S.HELD: [S.RISK_CHECKED, S.HELD],
         S.SENT: [S.RISK_CHECKED, S.SENT], S.PARTIAL: [S.RISK_CHECKED, S.SENT, S.PARTIAL],
         S.UNKNOWN: [S.RISK_CHECKED, S.SENT, S.UNKNOWN], S.FILLED: [S.RISK_CHECKED, S.SENT, S.FILLED],
         S.CANCELLED: [S.RISK_CHECKED, S.CANCELLED], S.REJECTED: [S.REJECTED],
         S.EXPIRED: [S.RISK_CHECKED, S.HELD, S.EXPIRED]}
T0 = pd.Timestamp("2024-01-02 09:30")


def order(cid: str, **kw) -> Order:
    kw.setdefault("shares", 1000.0)
    return Order(client_id=cid, symbol=kw.pop("symbol", "600000.SH"), side=kw.pop("side", "buy"), created=T0, **kw)


def fill(fid: str, cid: str, shares: float, price: float) -> Fill:
    return Fill(fill_id=fid, client_id=cid, symbol="600000.SH", side="buy", shares=shares, price=price,
                ts=T0 + pd.Timedelta(minutes=1), commission=5.0, total_cost=5.0)


def at(j: Journal, cid: str, status: OrderStatus, **kw) -> Order:
    """A new order `cid` walked to `status`."""
    assert j.add_order(order(cid, **kw))
    for s in PATHS[status]:
        j.transition(cid, s, reason="walk")
    return j.order(cid)


@pytest.fixture
def journal(tmp_path):
    with Journal(tmp_path / "journal.sqlite") as j:
        yield j


def test_durability_settings(journal):
    c = journal._conn
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert c.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert {"orders", "order_events", "fills", "risk_events", "model_events", "state", "equity"} <= {
        r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_every_allowed_transition_works(journal):
    n = 0
    for src, targets in TRANSITIONS.items():
        for dst in targets:
            cid = f"o{n}"
            n += 1
            at(journal, cid, src)
            before = len(journal.events(cid))
            got = journal.transition(cid, dst, reason="test", actor="alice", ts=T0)
            assert got.status == dst and journal.order(cid).status == dst
            ev = journal.events(cid)
            assert len(ev) == before + 1
            assert ev.iloc[-1][["status", "reason", "actor"]].tolist() == [dst.value, "test", "alice"]
    assert n == sum(len(t) for t in TRANSITIONS.values())


def test_forbidden_transitions_raise_and_change_nothing(journal):
    for src in S:
        for dst in set(S) - TRANSITIONS[src]:
            cid = f"{src.value}-{dst.value}"
            before = at(journal, cid, src)
            events = len(journal.events(cid))
            with pytest.raises(InvalidTransition, match=f"{src.value} -> {dst.value}"):
                journal.transition(cid, dst, limit_price=9.99)
            assert journal.order(cid) == before
            assert len(journal.events(cid)) == events
    with pytest.raises(UnknownOrder):
        journal.transition("nope", S.RISK_CHECKED)


def test_order_roundtrip_and_idempotent_add(journal):
    o = order("A1", value=50_000.0, shares=0.0, score=0.7, model="student", reason="strategy", limit_price=10.5)
    assert journal.add_order(o)
    assert journal.order("A1") == o
    other = order("A1", symbol="000001.SZ", shares=5.0)
    assert not journal.add_order(other) and not journal.add_order(o)
    assert journal.order("A1") == o
    assert len(journal.orders()) == 1 and len(journal.events("A1")) == 1
    assert math.isnan(order("A2").limit_price) and journal.add_order(order("A2"))
    assert math.isnan(journal.order("A2").limit_price)
    journal.transition("A2", S.RISK_CHECKED)
    journal.transition("A2", S.REJECTED, reason="risk")
    assert [o.client_id for o in journal.open_orders()] == ["A1"]
    assert [o.client_id for o in journal.orders("rejected")] == ["A2"]
    assert len(journal.orders([S.NEW, S.REJECTED])) == 2


def test_fills_are_idempotent_and_update_the_order(journal):
    at(journal, "B1", S.SENT, shares=1000.0)
    assert journal.add_fill(fill("f1", "B1", 400, 10.0))
    assert not journal.add_fill(fill("f1", "B1", 400, 10.0))  # the same fill again: nothing changes
    o = journal.order("B1")
    assert (o.status, o.filled_shares, o.avg_price) == (S.PARTIAL, 400, 10.0)
    assert journal.add_fill(fill("f2", "B1", 600, 11.0))
    o = journal.order("B1")
    assert o.status == S.FILLED and o.filled_shares == 1000 and o.avg_price == pytest.approx(10.6)
    assert journal.fills("B1")["fill_id"].tolist() == ["f1", "f2"] and len(journal.fills()) == 2
    # value-sized: the first fill completes it, unless the caller says otherwise
    at(journal, "B2", S.SENT, shares=0.0, value=10_000.0)
    journal.add_fill(fill("f3", "B2", 900, 11.0))
    assert journal.order("B2").status == S.FILLED
    at(journal, "B3", S.SENT, shares=0.0, value=10_000.0)
    journal.add_fill(fill("f4", "B3", 500, 11.0), complete=False)
    assert journal.order("B3").status == S.PARTIAL
    # a late fill on a cancelled order is recorded (money moved), its status kept
    at(journal, "B4", S.SENT)
    journal.transition("B4", S.CANCELLED)
    assert journal.add_fill(fill("f5", "B4", 100, 10.0))
    o = journal.order("B4")
    assert o.status == S.CANCELLED and o.filled_shares == 100
    assert "status kept" in journal.events("B4")["reason"].iloc[-1]
    with pytest.raises(UnknownOrder):
        journal.add_fill(fill("f6", "nope", 100, 10.0))
    assert not journal.has_fill("f6")
    with pytest.raises(ValueError, match="positive"):
        journal.add_fill(fill("f7", "B1", -100, 10.0))
    assert not journal.has_fill("f7") and journal.order("B1").filled_shares == 1000


def test_batch_is_one_transaction(journal, tmp_path):
    reader = sqlite3.connect(tmp_path / "journal.sqlite")
    with pytest.raises(RuntimeError):
        with journal.batch():
            journal.add_order(order("C1"))
            journal.set_state("k", 1)
            journal.add_risk_event(T0, "C1", "600000.SH", "max_value", "reject", "too big")
            assert reader.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 0  # not visible before commit
            raise RuntimeError("boom")
    assert journal.orders() == [] and journal.get_state("k") is None and journal.risk_events().empty
    assert journal.events().empty
    with journal.batch():
        journal.add_order(order("C2"))
        try:
            with journal.batch():  # a nested batch that fails undoes only itself
                journal.add_order(order("C3"))
                raise KeyError("inner")
        except KeyError:
            pass
        journal.add_order(order("C4"))
    assert [o.client_id for o in journal.orders()] == ["C2", "C4"]
    # outside a batch every write is committed at once
    journal.add_order(order("C5"))
    assert reader.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 3


def test_client_ids_never_repeat(tmp_path):
    path = tmp_path / "j.sqlite"
    seen = []
    for _ in range(3):
        with Journal(path) as j:
            seen += [j.next_client_id() for _ in range(5)]
            seen.append(j.next_client_id(prefix="M"))
    assert len(set(seen)) == len(seen) and seen[:2] == ["Q-00000001", "Q-00000002"]
    with Journal(path) as j:  # a reserved block is durable before its first id is handed out
        j.next_client_id()
        assert j.get_state("client_id_counter") > int(seen[-1].split("-")[1]) + 1
    with Journal(path) as j:  # an id handed out in a batch that dies with its process is never reused
        with pytest.raises(RuntimeError), j.batch():
            inside = j.next_client_id()
            raise RuntimeError("killed")
    with Journal(path) as j:
        assert j.next_client_id() > inside
        j.add_order(order("Q-00050000"))  # typed by a user: skipped
        j.set_state("client_id_counter", 50_000)
    with Journal(path) as j:
        assert j.next_client_id() == "Q-00050001"
        with pytest.raises(RuntimeError), j.batch():
            rolled = j.next_client_id()
            raise RuntimeError
        assert j.next_client_id() != rolled  # this process never hands it out again


@contextmanager
def read_only(path):
    """Make `path` unwritable: chmod for a normal user, the immutable flag for root."""
    if os.geteuid() != 0:
        os.chmod(path, 0o444)
        try:
            yield
        finally:
            os.chmod(path, 0o644)
        return
    r = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    if r.returncode:
        pytest.skip(f"running as root and chattr +i failed ({r.stderr.decode().strip()}): no read-only file")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_journal_raises_journal_error(tmp_path):
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        j.add_order(order("D1"))
    with read_only(path):
        with pytest.raises(JournalError, match="read-only") as e:
            Journal(path).add_order(order("D2"))
        assert e.value.user_facing and isinstance(e.value, ValueError)
    with Journal(path) as j:
        assert [o.client_id for o in j.orders()] == ["D1"]


def test_locked_journal_raises_after_busy_timeout(tmp_path):
    path = tmp_path / "j.sqlite"
    j = Journal(path, busy_timeout=0.1)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(JournalError, match="locked by another writer"):
        j.add_order(order("E1"))
    with pytest.raises(JournalError, match="locked"), j.batch():
        pass
    with pytest.raises(JournalError, match="locked"):
        Journal(path, busy_timeout=0.1)
    other.execute("ROLLBACK")
    other.close()
    assert j.order("E1") is None
    assert j.add_order(order("E1"))
    j.close()


def test_full_disk_raises_and_writes_nothing(journal):
    journal.add_order(order("F0"))
    pages = journal._conn.execute("PRAGMA page_count").fetchone()[0]
    journal._conn.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: SQLITE_FULL
    with pytest.raises(JournalError, match="disk is full"):
        with journal.batch():
            for i in range(500):
                journal.add_order(order(f"F{i + 1}", reason="x" * 400))
    with pytest.raises(JournalError, match="disk is full"):
        journal.add_order(order("F-big", reason="x" * 100_000))
    assert [o.client_id for o in journal.orders()] == ["F0"]


def test_state_events_equity_and_export(journal, tmp_path):
    journal.set_state("trading_state", {"state": "halted", "since": T0})
    assert journal.get_state("trading_state") == {"state": "halted", "since": str(T0)}
    assert journal.get_state("missing", 7) == 7
    journal.add_risk_event(T0, "G1", "600000.SH", "review", "hold", "value 1,200,000 >= 1,000,000")
    journal.add_model_event(T0, "fallback", "primary", "backup", "NaN scores", {"nan": 3})
    journal.record_equity(T0, equity=1e6, cash=4e5, gross=6e5, costs=12.5, exposure=0.6)
    journal.record_equity(T0, equity=1.1e6, cash=4e5)  # the same ts again replaces the row
    eq = journal.equity()
    assert len(eq) == 1 and eq["equity"].iloc[0] == 1.1e6 and math.isnan(eq["gross"].iloc[0])
    assert journal.risk_events()["rule"].tolist() == ["review"]
    assert journal.model_events()["detail"].tolist() == ['{"nan": 3}']
    at(journal, "G1", S.SENT)
    journal.add_fill(fill("g1", "G1", 1000, 10.0))
    paths = journal.export_csv(tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == ["equity.csv", "fills.csv", "model_events.csv", "orders.csv",
                                                      "risk_events.csv"]
    orders = pd.read_csv(paths["orders"])
    assert orders[["client_id", "status", "filled_shares"]].values.tolist() == [["G1", "filled", 1000.0]]
    assert pd.read_csv(paths["fills"])["fill_id"].tolist() == ["g1"]
