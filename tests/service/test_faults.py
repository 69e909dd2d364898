"""Fault tests of the trading service (issue 11): a lost broker message, a crashing model, a locked or
full journal, and kill -9 of the server while orders stream in."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pandas as pd
import pytest

from quantlm.live.types import Order, OrderStatus
from tests.service.fault_helpers import LossyBroker, Silent

ROOT = Path(__file__).resolve().parents[2]
START, END = "2022-03-01", "2022-05-31"


# ---------------------------------------------------------------------- broker faults (engine level)
def paper_session(market: Path, out: Path, **lossy):
    """A warmed-up Session (silent scorer: only manual orders) with a LossyBroker; (session, clock, broker)."""
    from quantlm.data.store import Store
    from quantlm.live.config import LiveConfig
    from quantlm.live.replay import ReplayClock, Session

    cfg = LiveConfig(history_days=30, primary={"signals": str(market / "scores.csv")},
                     risk={"pause_move": None, "market_pause_move": None})  # the synthetic benchmark jumps
    s = Session(cfg, Store(market / "store"), out, scorer=Silent())
    broker = LossyBroker(s.engine.exchange, **lossy)
    s.engine.broker = broker
    clock = ReplayClock(s, START, END)
    clock.warm_up()
    clock.step()
    return s, clock, broker


def manual(s, cid: str, symbol: str | None = None) -> Order:
    """Submit a manual buy of 50,000 (currency; the paper exchange sizes buys by value) of the first
    symbol the risk manager accepts, as the service does."""
    for sym in [symbol] if symbol else s.symbols:
        order = Order(client_id=f"{cid}-{sym}", symbol=sym, side="buy", value=50_000.0, reason="manual",
                      actor="tester", created=s.engine.last_ts)
        with s.journal.batch():
            got = s.engine.submit(order, s.engine.last_ts)
        if got.status != OrderStatus.REJECTED:
            return got
    raise AssertionError("the risk manager rejected a 50,000 buy of every symbol")


def test_a_dropped_fill_leaves_the_order_in_flight_until_reconciled(market, tmp_path):
    s, clock, broker = paper_session(market, tmp_path / "out")
    order = manual(s, "DROP")
    broker.drop_fill.add(order.client_id)
    assert order.status == OrderStatus.SENT
    ts = clock.step()  # the broker fills it; the report is lost
    assert broker.dropped and broker.query_orders()[order.client_id][0] == OrderStatus.FILLED
    stored = s.journal.order(order.client_id)
    assert stored.status == OrderStatus.SENT and stored.filled_shares == 0  # in flight: outcome not known
    assert s.journal.fills(order.client_id).empty
    assert [o.client_id for o in s.oms.open_orders()] == [order.client_id]

    report = s.oms.reconcile(broker.query_orders(), broker.query_fills(), ts)  # the next broker query
    assert report.ok, report.summary()
    assert report.applied_fills == [broker.dropped[0]["fill_id"]]
    stored = s.journal.order(order.client_id)
    shares = broker.dropped[0]["shares_filled"]
    assert shares > 0 and stored.status == OrderStatus.FILLED and stored.filled_shares == pytest.approx(shares)
    fills = s.journal.fills(order.client_id)
    assert len(fills) == 1 and fills["price"].iloc[0] == pytest.approx(broker.dropped[0]["price"])
    assert s.engine.portfolio.position(order.symbol) == pytest.approx(shares)  # the money moved all along
    assert not s.oms.open_orders()
    again = s.oms.reconcile(broker.query_orders(), broker.query_fills(), ts)  # idempotent
    assert again.ok and not again.applied_fills and not again.transitions


def test_a_send_timeout_leaves_the_order_unknown_until_the_broker_answers(market, tmp_path):
    s, clock, broker = paper_session(market, tmp_path / "out")
    a, b = s.symbols[:2]
    broker.timeout_after_send.add(f"LOST-ACK-{a}")
    broker.timeout_before_send.add(f"LOST-SEND-{b}")
    acked = manual(s, "LOST-ACK", a)  # reached the broker, acknowledgement lost
    never = manual(s, "LOST-SEND", b)  # never reached it
    for o in (acked, never):
        assert o.status == OrderStatus.UNKNOWN
        assert s.journal.order(o.client_id).status == OrderStatus.UNKNOWN
    report = s.oms.reconcile(broker.query_orders(), broker.query_fills(), s.engine.last_ts)
    assert (acked.client_id, "unknown", "sent") in report.transitions  # the broker has it: in flight again
    assert never.client_id in report.unresolved  # the broker never heard of it: not guessed
    assert s.journal.order(never.client_id).status == OrderStatus.UNKNOWN
    clock.step()
    assert s.journal.order(acked.client_id).status == OrderStatus.FILLED
    assert len(s.journal.fills(acked.client_id)) == 1


# ---------------------------------------------------------------------- kill -9 of `quantlm serve`
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(market: Path, config: Path, keys_path: Path, out: Path) -> tuple[subprocess.Popen, str]:
    """`quantlm serve` on a free 127.0.0.1 port (replay clock, nothing stepped); (process, base url)."""
    port = free_port()
    cmd = [sys.executable, "-m", "quantlm.cli", "serve", "--config", str(config), "--store", str(market / "store"),
           "--keys", str(keys_path), "--out", str(out), "--host", "127.0.0.1", "--port", str(port),
           "--start", "2022-03-01", "--end", "2022-06-30"]
    log = open(out.parent / f"serve-{port}.log", "w")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"quantlm serve exited {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/api/v1/health", timeout=1, trust_env=False).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"quantlm serve did not answer in 90 s: {Path(log.name).read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def order_for(i: int, symbols: list[str]) -> dict:
    """The i-th streamed order (deterministic: a resend carries the same content)."""
    return {"symbol": symbols[i % len(symbols)], "side": "buy", "shares": 100, "client_id": f"K-{i:05d}"}


def test_kill_9_while_orders_stream_in_then_restart_and_resend(market, live_config_path, keys, tmp_path):
    """Every order acknowledged (2xx) before a SIGKILL is in the journal exactly once after the restart;
    resending any of them (or the one in flight at the kill) with the same client id makes no duplicate."""
    from quantlm.data.store import Store
    from quantlm.live.replay import tradable_symbols

    symbols = tradable_symbols(Store(market / "store"), "cn", "000300.SH")
    out = tmp_path / "out"
    out.mkdir()
    trader = keys.headers("trader")
    proc, base = serve(market, live_config_path, keys.path, out)
    acked: list[str] = []
    unanswered: list[str] = []
    other: list[tuple[str, int, str]] = []
    stop_flag = threading.Event()

    def stream() -> None:
        with httpx.Client(base_url=base, headers=trader, timeout=10, trust_env=False) as c:
            for i in itertools.count():
                if stop_flag.is_set():
                    return
                body = order_for(i, symbols)
                try:
                    r = c.post("/api/v1/orders", json=body)
                except httpx.TransportError:
                    unanswered.append(body["client_id"])  # the server died with this one in flight
                    return
                (acked.append(body["client_id"]) if r.status_code == 201 else
                 other.append((body["client_id"], r.status_code, r.text)))

    streamer = threading.Thread(target=stream, daemon=True)
    try:
        streamer.start()
        deadline = time.monotonic() + 30
        while len(acked) < 60 and time.monotonic() < deadline and streamer.is_alive():
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 while the stream goes on
        proc.wait(timeout=10)
        streamer.join(timeout=15)
        stop_flag.set()
        assert proc.returncode == -signal.SIGKILL
        assert len(acked) >= 60 and not other, other[:3]

        proc, base = serve(market, live_config_path, keys.path, out)  # restart on the same out folder
        with httpx.Client(base_url=base, headers=trader, timeout=10, trust_env=False) as c:
            journaled = Counter(o["client_id"] for o in c.get("/api/v1/orders", params={"limit": 10_000}).json())
            missing = [cid for cid in acked if journaled[cid] != 1]
            assert not missing, f"acknowledged but not in the journal exactly once: {missing[:5]}"
            assert set(journaled) <= set(acked) | set(unanswered)  # nothing invented
            resend = acked[:3] + acked[-3:] + unanswered
            for cid in resend:
                i = int(cid.split("-")[1])
                r = c.post("/api/v1/orders", json=order_for(i, symbols))
                assert r.status_code == 201, r.text
                assert r.json()["order"]["client_id"] == cid
                if cid in acked:
                    assert r.json()["created"] is False  # the stored order comes back: no duplicate
            after = Counter(o["client_id"] for o in c.get("/api/v1/orders", params={"limit": 10_000}).json())
        assert set(after.values()) == {1}
        assert set(after) == set(journaled) | set(unanswered)
    finally:
        stop_flag.set()
        stop(proc)
    with sqlite3.connect(out / "journal.sqlite") as db:  # one insertion event per order, none replayed
        news = Counter(cid for (cid,) in db.execute("SELECT client_id FROM order_events WHERE status = 'new'"))
    assert all(news[cid] == 1 for cid in acked)


# ---------------------------------------------------------------------- model and journal faults (in-process app)
@pytest.fixture
def fallback_client(market, keys, tmp_path):
    from tests.service.fault_helpers import fallback_config, open_client

    c = open_client(market, fallback_config(market, tmp_path), keys.path, tmp_path / "out")
    yield c
    c.__exit__(None, None, None)


def test_the_primary_raises_and_the_backup_serves_that_same_decision(fallback_client, keys):
    from tests.service.fault_helpers import Raising, on_worker

    c, s = fallback_client, fallback_client.service.session
    admin, viewer = keys.headers("admin"), keys.headers("viewer")
    assert c.post("/api/v1/clock/step", json={"n": 3}, headers=admin).status_code == 200
    before = c.get("/api/v1/models", headers=viewer).json()
    assert (before["active"], before["active_role"]) == ("student", "primary")
    fb = s.scorer
    on_worker(c, lambda: fb.scorers.__setitem__("primary", Raising(fb.scorers["primary"], fail_at=1)))
    step = c.post("/api/v1/clock/step", json={"n": 1}, headers=admin).json()
    ts = pd.Timestamp(step["last_bar"])

    models = c.get("/api/v1/models", headers=viewer).json()
    assert (models["active"], models["active_role"]) == ("teacher", "backup")
    events = on_worker(c, s.journal.model_events)
    assert len(events) == 1
    e = events.iloc[0]
    assert (e["model_from"], e["model_to"], e["reason"]) == ("student", "teacher", "error")
    assert pd.Timestamp(e["ts"]) == ts  # switched at the decision where the primary raised
    assert "primary model crashed" in e["detail"]
    # that decision was served by the backup: its scores are the teacher's for this bar
    signals = c.get("/api/v1/signals", headers=viewer).json()
    assert pd.Timestamp(signals["ts"]) == ts and signals["model"] == "teacher"
    teacher = pd.read_csv(Path(s.cfg.backup.signals), parse_dates=["ts"])
    want = teacher[teacher["ts"] == ts].set_index("symbol")["score"]
    got = {r["symbol"]: r["score"] for r in signals["scores"] if r["score"] is not None}
    assert got and all(got[sym] == pytest.approx(want[sym]) for sym in got)
    decided = [o for o in c.get("/api/v1/orders", headers=viewer).json()
               if o["reason"] == "strategy" and pd.Timestamp(o["created"]) == ts]
    assert all(o["model"] == "backup" for o in decided)
    assert c.post("/api/v1/clock/step", json={"n": 2}, headers=admin).status_code == 200  # keeps trading on the backup


def refused_and_never_acknowledged(c, keys, cid: str, symbol: str, what: str, reason: str = "") -> None:
    """An order POSTed now is refused with 503 and a message saying `what`."""
    r = c.post("/api/v1/orders", json={"symbol": symbol, "side": "buy", "shares": 100, "client_id": cid,
                                       "reason": reason}, headers=keys.headers("trader"))
    assert r.status_code == 503, r.text
    detail = r.json()["detail"]
    assert what in detail and "nothing was acknowledged" in detail


def test_a_locked_journal_refuses_orders_with_503(client, keys):
    from tests.service.fault_helpers import on_worker

    s = client.service.session
    sym = s.symbols[0]

    def short_busy_timeout() -> None:  # the service's journal waits 0.2 s for the lock, not 5 s
        s.journal.busy_timeout = 0.2
        s.journal._conn.execute("PRAGMA busy_timeout = 200")

    on_worker(client, short_busy_timeout)
    locker = sqlite3.connect(s.journal.path, timeout=0.1, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")  # another process holds the journal's write lock
        refused_and_never_acknowledged(client, keys, "LOCK-1", sym, "locked by another writer")
        reads = client.get("/api/v1/orders", headers=keys.headers("viewer"))  # WAL: readers go on
        assert reads.status_code == 200 and "LOCK-1" not in {o["client_id"] for o in reads.json()}
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert on_worker(client, s.journal.order, "LOCK-1") is None
    assert "LOCK-1" not in {o.client_id for o in on_worker(client, lambda: list(s.engine.broker.queue))}
    again = client.post("/api/v1/orders", json={"symbol": sym, "side": "buy", "shares": 100, "client_id": "LOCK-1"},
                        headers=keys.headers("trader"))
    assert again.status_code == 201 and again.json()["created"] is True  # the refused order was never stored


def test_a_full_disk_refuses_orders_with_503(client, keys):
    from tests.service.fault_helpers import on_worker

    s = client.service.session
    syms = s.symbols

    def cap(pages: int | None) -> None:  # SQLite may not grow the file: SQLITE_FULL, as on a full disk
        n = pages or s.journal._conn.execute("PRAGMA page_count").fetchone()[0]
        s.journal._conn.execute(f"PRAGMA max_page_count = {n}")

    on_worker(client, cap, None)
    acked, refused = [], None
    for i in range(400):  # the last pages fill up, then every write needs a new one
        cid = f"FULL-{i:03d}"
        body = {"symbol": syms[i % len(syms)], "side": "buy", "shares": 100, "client_id": cid, "reason": "x" * 200}
        r = client.post("/api/v1/orders", json=body, headers=keys.headers("trader"))
        if r.status_code == 201:
            acked.append(cid)
            continue
        assert r.status_code == 503, r.text
        assert "disk is full" in r.json()["detail"] and "nothing was acknowledged" in r.json()["detail"]
        refused = cid
        break
    assert refused is not None, "the capped journal never filled up"
    refused_and_never_acknowledged(client, keys, "FULL-nxt", syms[0], "disk is full", "x" * 200)  # still full
    stored = {o.client_id for o in on_worker(client, s.journal.orders)}
    assert set(acked) <= stored and refused not in stored and "FULL-nxt" not in stored
    on_worker(client, cap, 1_073_741_823)  # space again
    r = client.post("/api/v1/orders", json={"symbol": syms[0], "side": "buy", "shares": 100, "client_id": refused,
                                            "reason": "x" * 200}, headers=keys.headers("trader"))
    assert r.status_code == 201 and r.json()["created"] is True
