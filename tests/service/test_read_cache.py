"""Reads come from a cache keyed by the state version: always current by default; with
--read-staleness-ms they may lag OTHER users' changes by that long, never the reader's own."""

from __future__ import annotations

from tests.service.conftest import build_client, order_body, symbol_and_price


def test_reads_are_current_by_default(make_client, keys):
    client = make_client()
    client.post("/api/v1/clock/step", json={"n": 3}, headers=keys.headers("admin"))
    sym, _ = symbol_and_price(client, keys)
    before = client.get("/api/v1/orders", headers=keys.headers("viewer")).json()
    r = client.post("/api/v1/orders", json=order_body(sym), headers=keys.headers("trader"))
    assert r.status_code == 201, r.text
    after = client.get("/api/v1/orders", headers=keys.headers("viewer")).json()
    assert len(after) == len(before) + 1


def test_bounded_staleness_keeps_read_your_writes(market, live_config_path, keys, tmp_path):
    client = build_client(market, live_config_path, keys, tmp_path / "out", read_staleness_ms=60_000)
    try:
        client.post("/api/v1/clock/step", json={"n": 3}, headers=keys.headers("admin"))
        sym, _ = symbol_and_price(client, keys)
        viewer, trader = keys.headers("viewer"), keys.headers("trader")
        seen = client.get("/api/v1/orders", headers=viewer).json()
        assert client.get("/api/v1/orders", headers=trader).json() == seen  # the same cached read
        r = client.post("/api/v1/orders", json=order_body(sym), headers=trader)
        assert r.status_code == 201, r.text
        assert client.get("/api/v1/orders", headers=viewer).json() == seen  # another user: may lag (60 s)
        mine = client.get("/api/v1/orders", headers=trader).json()
        assert len(mine) == len(seen) + 1 and mine[0]["client_id"] == r.json()["order"]["client_id"]
    finally:
        client.__exit__(None, None, None)
