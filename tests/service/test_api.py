"""The /api/v1 routes on a real LiveService (in-process): manual orders through the risk manager, review,
cancel, idempotent resend, kill switch, pause / resume, push mode, model switch, and refused inputs that
change nothing."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest
import yaml

from tests.service.conftest import big_buy, on_engine, order_body, symbol_and_price


def counts(client) -> tuple[int, int, int]:
    def f(svc):
        j = svc.session.journal
        return len(j.orders()), len(j.events()), len(j.risk_events())

    return on_engine(client, f)


def events_of(client, cid: str) -> pd.DataFrame:
    return on_engine(client, lambda svc: svc.session.journal.events(cid))


def test_large_order_is_held_then_approved_and_filled(client, keys):
    out = big_buy(client, keys)
    order = out["order"]
    assert out["created"] and order["status"] == "held" and order["actor"] == "tom"
    cid = order["client_id"]
    queue = client.get("/api/v1/review", headers=keys.headers("viewer")).json()
    assert [o["client_id"] for o in queue] == [cid]
    # the trader cannot review; an admin who did not submit it could; the reviewer approves
    assert client.post(f"/api/v1/review/{cid}/approve", headers=keys.headers("trader")).status_code == 403
    r = client.post(f"/api/v1/review/{cid}/approve", json={"reason": "checked the size"},
                    headers=keys.headers("reviewer"))
    assert r.status_code == 200 and r.json()["status"] == "sent"
    assert client.post(f"/api/v1/review/{cid}/approve", headers=keys.headers("reviewer")).status_code == 409
    step = client.post("/api/v1/clock/step", json={"n": 1}, headers=keys.headers("admin")).json()
    assert step["steps"] == 1
    filled = [o for o in client.get("/api/v1/orders?status=filled", headers=keys.headers("viewer")).json()
              if o["client_id"] == cid]
    # the paper exchange fills buys by value (shares x last close) at the next open: within a few %
    assert filled and abs(filled[0]["filled_shares"] / order["shares"] - 1) < 0.05
    fills = client.get("/api/v1/fills", headers=keys.headers("viewer")).json()
    assert any(f["client_id"] == cid for f in fills)
    ev = events_of(client, cid)
    assert list(ev["status"]) == ["new", "risk_checked", "held", "sent", "filled"]
    assert ev.loc[ev["status"] == "sent", "actor"].item() == "rita"
    pos = client.get("/api/v1/positions", headers=keys.headers("viewer")).json()
    assert any(p["symbol"] == order["symbol"] and p["shares"] == filled[0]["filled_shares"] for p in pos)


def test_nobody_approves_their_own_order(client, keys):
    out = big_buy(client, keys, **{"client_id": "own-1"})
    assert out["order"]["status"] == "held"
    # the admin may review, but not an order the admin submitted
    sym, price = symbol_and_price(client, keys)
    r = client.post("/api/v1/orders", json=order_body(sym, shares=int(1.2e6 / price / 100 + 1) * 100),
                    headers=keys.headers("admin"))
    mine = r.json()["order"]["client_id"]
    r = client.post(f"/api/v1/review/{mine}/approve", headers=keys.headers("admin"))
    assert r.status_code == 403 and "another person" in r.json()["detail"]
    assert client.post("/api/v1/review/own-1/reject", headers=keys.headers("admin")).json()["status"] == "rejected"


def test_cancel_and_idempotent_resend(client, keys):
    sym, _ = symbol_and_price(client, keys)
    body = order_body(sym, shares=100, client_id="desk-42", reason="rebalance")
    first = client.post("/api/v1/orders", json=body, headers=keys.headers("trader"))
    assert first.status_code == 201 and first.json()["created"] and first.json()["order"]["status"] == "sent"
    again = client.post("/api/v1/orders", json=body, headers=keys.headers("trader"))
    assert again.status_code == 201 and not again.json()["created"]
    assert again.json()["order"]["client_id"] == "desk-42"
    clash = client.post("/api/v1/orders", json={**body, "shares": 200}, headers=keys.headers("trader"))
    assert clash.status_code == 409
    assert sum(o["client_id"] == "desk-42" for o in client.get("/api/v1/orders", headers=keys.headers("viewer")).json()) == 1
    r = client.post("/api/v1/orders/desk-42/cancel", json={"reason": "changed my mind"}, headers=keys.headers("trader2"))
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.post("/api/v1/orders/desk-42/cancel", headers=keys.headers("trader")).status_code == 409
    assert client.post("/api/v1/orders/nope-1/cancel", headers=keys.headers("trader")).status_code == 404
    ev = events_of(client, "desk-42")
    assert ev["actor"].iloc[-1] == "tara" and "changed my mind" in ev["reason"].iloc[-1]
    client.post("/api/v1/clock/step", headers=keys.headers("admin"))
    fills = client.get("/api/v1/fills", headers=keys.headers("viewer")).json()
    assert not any(f["client_id"] == "desk-42" for f in fills)  # cancelled before the bar: never filled


def test_kill_switch_cancels_everything_and_halts(client, keys):
    sym, _ = symbol_and_price(client, keys)
    sent = client.post("/api/v1/orders", json=order_body(sym, shares=100), headers=keys.headers("trader")).json()
    held = big_buy(client, keys)
    r = client.post("/api/v1/risk/kill", json={"reason": "test"}, headers=keys.headers("admin"))
    assert r.status_code == 200 and r.json()["state"] == "halted"
    assert {sent["order"]["client_id"], held["order"]["client_id"]} <= set(r.json()["cancelled"])
    orders = {o["client_id"]: o["status"] for o in client.get("/api/v1/orders", headers=keys.headers("viewer")).json()}
    assert orders[sent["order"]["client_id"]] == orders[held["order"]["client_id"]] == "cancelled"
    after = client.post("/api/v1/orders", json=order_body(sym, shares=100), headers=keys.headers("trader")).json()
    assert after["order"]["status"] == "rejected"
    ev = events_of(client, after["order"]["client_id"])
    assert "halted" in ev["reason"].iloc[-1]
    assert client.get("/api/v1/status", headers=keys.headers("viewer")).json()["trading_state"] == "halted"
    assert client.post("/api/v1/risk/resume", json={}, headers=keys.headers("admin")).status_code == 409
    ok = client.post("/api/v1/risk/resume", json={"lift_halt": True}, headers=keys.headers("admin"))
    assert ok.status_code == 200 and ok.json()["state"] == "active"
    risk = client.get("/api/v1/risk", headers=keys.headers("viewer")).json()
    assert any("kill switch by ada" in (e["reason"] or "") for e in risk["events"])


def test_pause_and_resume_a_symbol_and_the_market(client, keys):
    sym, _ = symbol_and_price(client, keys)
    h = keys.headers("admin")
    assert client.post("/api/v1/risk/pause", json={"symbol": sym, "reason": "news"}, headers=h).status_code == 200
    o = client.post("/api/v1/orders", json=order_body(sym), headers=keys.headers("trader")).json()["order"]
    assert o["status"] == "rejected"
    assert "manual_pause" in events_of(client, o["client_id"])["reason"].iloc[-1]
    other = client.service.session.symbols[1]
    assert client.post("/api/v1/orders", json=order_body(other), headers=keys.headers("trader")).json()[
        "order"]["status"] == "sent"
    assert client.post("/api/v1/risk/resume", json={"symbol": sym}, headers=h).json()["manual_pauses"] == []
    assert client.post("/api/v1/orders", json=order_body(sym), headers=keys.headers("trader")).json()[
        "order"]["status"] == "sent"
    market = client.post("/api/v1/risk/pause", json={}, headers=h).json()
    assert market["state"] == "reducing"
    third = client.service.session.symbols[2]
    o = client.post("/api/v1/orders", json=order_body(third), headers=keys.headers("trader")).json()["order"]
    assert o["status"] == "rejected" and "REDUCING" in events_of(client, o["client_id"])["reason"].iloc[-1]
    assert client.post("/api/v1/risk/resume", json={}, headers=h).json()["state"] == "active"
    assert client.post("/api/v1/risk/pause", json={"symbol": "NOPE.SZ"}, headers=h).status_code == 422
    events = client.get("/api/v1/risk", headers=keys.headers("viewer")).json()["events"]
    assert any(e["reason"] == "paused by ada: news" for e in events)


def test_push_mode_takes_bars_for_one_timestamp(push_client, keys):
    c, h = push_client, keys.headers("admin")
    st = c.get("/api/v1/status", headers=h).json()
    assert st["mode"] == "push" and st["last_bar"].startswith("2022-06-30")
    syms = c.service.session.symbols
    sym = syms[0]
    o = c.post("/api/v1/orders", json=order_body(sym, shares=1000), headers=keys.headers("trader")).json()["order"]
    assert o["status"] == "sent"
    price = float(c.service.session.engine.portfolio.last_price[sym])
    bars = [{"symbol": s, "open": price, "high": price * 1.01, "low": price * 0.99, "close": price,
             "volume": 1e7} for s in syms]
    r = c.post("/api/v1/bars", json={"ts": "2022-07-01T00:00:00", "bars": bars}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["last_bar"].startswith("2022-07-01") and r.json()["executions"] >= 1
    fills = c.get("/api/v1/fills", headers=h).json()
    assert any(f["client_id"] == o["client_id"] for f in fills)
    again = c.post("/api/v1/bars", json={"ts": "2022-07-01T00:00:00", "bars": bars}, headers=h)
    assert again.status_code == 409 and "not after the last bar" in again.json()["detail"]
    unknown = c.post("/api/v1/bars", json={"ts": "2022-07-04T00:00:00", "bars": [dict(bars[0], symbol="ZZZ.SZ")]},
                     headers=h)
    assert unknown.status_code == 422
    bad = c.post("/api/v1/bars", json={"ts": "2022-07-04T00:00:00", "bars": [dict(bars[0], high=price * 0.5)]},
                 headers=h)
    assert bad.status_code == 422
    assert c.post("/api/v1/clock/step", headers=h).status_code == 409
    assert (c.out / "pushed_bars.csv").exists()


def test_replay_mode_refuses_pushed_bars(client, keys):
    r = client.post("/api/v1/bars", json={"ts": "2030-01-02T00:00:00", "bars": [
        {"symbol": client.service.session.symbols[0], "open": 1, "high": 1, "low": 1, "close": 1, "volume": 1}]},
        headers=keys.headers("admin"))
    assert r.status_code == 409


BAD_ORDERS = [
    ({"shares": -100}, "greater than 0"),
    ({"shares": 0}, "greater than 0"),
    ({"shares": 1.5}, "integer"),
    ({"shares": "100"}, "integer"),
    ({"shares": True}, "integer"),
    ({"side": "steal"}, "buy"),
    ({"symbol": "NOPE.SZ"}, "unknown symbol"),
    ({"symbol": "<script>"}, "pattern"),
    ({"reason": "<b>urgent</b>"}, "markup"),
    ({"reason": "x'; DROP TABLE orders; --"}, "SQL"),
    ({"reason": "1' OR '1'='1"}, "SQL"),
    ({"reason": "a" * 500}, "at most"),
    ({"limit_price": -1}, "greater than 0"),
    ({"client_id": "../../etc"}, "pattern"),
    ({"extra": 1}, "Extra inputs"),
]


@pytest.mark.parametrize(("change", "message"), BAD_ORDERS, ids=[str(c) for c, _ in BAD_ORDERS])
def test_bad_orders_are_refused_and_nothing_is_journaled(shared_client, keys, change, message):
    c = shared_client
    sym = c.service.session.symbols[0]
    before = counts(c)
    r = c.post("/api/v1/orders", json={**order_body(sym), **change}, headers=keys.headers("trader"))
    assert r.status_code in (400, 404, 413, 422), r.text
    assert message.lower() in r.text.lower()
    assert counts(c) == before


def test_malformed_and_oversized_bodies(shared_client, keys):
    c, h = shared_client, keys.headers("admin")
    before = counts(c)
    r = c.post("/api/v1/orders", content=b"{not json", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 422
    huge = b'{"symbol": "000001.SZ", "side": "buy", "shares": 100, "reason": "' + b"a" * (3 * 1024 * 1024) + b'"}'
    r = c.post("/api/v1/orders", content=huge, headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 413
    r = c.post("/api/v1/risk/pause", json={"symbol": "X", "reason": "<img src=x>"}, headers=h)
    assert r.status_code == 422
    r = c.post("/api/v1/clock/step", json={"n": 100000}, headers=h)
    assert r.status_code == 422
    assert c.get("/api/v1/orders?status=bogus", headers=h).status_code == 422
    assert counts(c) == before


def test_a_locked_journal_refuses_the_order_with_503(client, keys):
    sym, _ = symbol_and_price(client, keys)
    on_engine(client, lambda svc: svc.session.journal._conn.execute("PRAGMA busy_timeout = 50"))
    before = counts(client)
    other = sqlite3.connect(str(client.out / "journal.sqlite"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        r = client.post("/api/v1/orders", json=order_body(sym, client_id="locked-1"), headers=keys.headers("trader"))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert r.status_code == 503 and "locked" in r.json()["detail"] and "nothing was acknowledged" in r.json()["detail"]
    assert counts(client) == before
    assert client.service.session.engine.broker.queue == [] or all(
        o.client_id != "locked-1" for o in client.service.session.engine.broker.queue)
    ok = client.post("/api/v1/orders", json=order_body(sym, client_id="locked-1"), headers=keys.headers("trader"))
    assert ok.status_code == 201 and ok.json()["created"]


def test_status_signals_models_and_switch(make_client, keys, market, live_config_path, tmp_path):
    cfg = yaml.safe_load(live_config_path.read_text())
    cfg["backup"] = {"signals": str(market / "scores.csv"), "name": "backup-signals"}
    path = tmp_path / "live-backup.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from tests.service.conftest import build_client

    c = build_client(market, path, keys, tmp_path / "o")
    try:
        h = keys.headers("admin")
        c.post("/api/v1/clock/step", json={"n": 2}, headers=h)
        sig = c.get("/api/v1/signals?limit=3", headers=h).json()
        assert len(sig["scores"]) == 3 and sig["scores"][0]["rank"] == 1 and sig["ts"].startswith("2022-03-02")
        m = c.get("/api/v1/models", headers=h).json()
        assert m["active"] == "signals" and m["backup"] == "backup-signals" and "monitor" in m
        r = c.post("/api/v1/models/switch", json={"to": "backup", "reason": "drill"}, headers=h)
        assert r.status_code == 200 and r.json()["active"] == "backup-signals"
        assert any("by ada: drill" in (e["detail"] or "") for e in r.json()["events"])
        assert c.post("/api/v1/models/switch", json={"to": "backup"}, headers=h).status_code == 409
        assert c.get("/api/v1/status", headers=h).json()["model"] == "backup-signals"
    finally:
        c.__exit__(None, None, None)
    # without a backup there is nothing to switch to
    c2 = make_client()
    assert c2.post("/api/v1/models/switch", json={"to": "backup"}, headers=keys.headers("admin")).status_code == 409


def test_metrics_is_local_only(make_client, keys):
    c = make_client()
    r = c.get("/metrics")
    assert r.status_code in (200, 404)
    far = type(c)(c.app, client=("203.0.113.9", 1))
    assert far.get("/metrics").status_code == 403
