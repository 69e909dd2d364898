"""The dashboard in-process (TestClient): login, every page, the review queue's buttons by role, CSRF and
role refusals on every form action, the actions journaled with the user's name, escaping."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import big_buy

PAGES = {"/": "Overview", "/positions": "Positions", "/orders": "Orders and fills", "/review": "Review queue",
         "/risk": "Risk", "/models": "Models"}
ACTIONS = ["/risk/pause", "/risk/resume", "/risk/kill"]


def browser(client, keys, role: str | None = None) -> TestClient:
    """A second cookie jar on the same running app (the service is already started), logged in as `role`."""
    c = TestClient(client.app, client=("127.0.0.1", 50001), follow_redirects=False)
    if role is not None:
        r = c.post("/login", data={"name": keys.name[role], "key": keys.key[role], "next": "/"})
        assert r.status_code == 303, r.text
    return c


def csrf(page_html: str) -> str:
    m = re.search(r'<meta name="csrf-token" content="([^"]+)">', page_html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def order_status(client, keys, cid: str) -> str:
    r = client.get("/api/v1/orders", params={"limit": 10_000}, headers=keys.headers("viewer"))
    assert r.status_code == 200, r.text
    return next(o["status"] for o in r.json() if o["client_id"] == cid)


def on_worker(client, fn, *args):
    """`fn(*args)` on the service's engine thread (through LiveService.call, on the TestClient's loop)."""
    return client.portal.call(client.service.call, fn, *args)


def test_pages_need_a_login(shared_client, keys):
    anon = browser(shared_client, keys)
    for path in PAGES:
        r = anon.get(path)
        assert r.status_code == 303 and "/login?next=" in r.headers["location"], path
    form = anon.get("/login?next=/orders")
    assert form.status_code == 200 and 'name="key"' in form.text and 'value="/orders"' in form.text
    # an open redirect or markup in `next` is neutralised (and escaped)
    assert 'value="/"' in anon.get("/login?next=//evil.example").text
    page = anon.get('/login?next=/x"><script>alert(1)</script>').text
    assert "<script>alert(1)" not in page and "&lt;script&gt;" in page
    assert anon.post("/login", data={"name": keys.name["viewer"], "key": "qlm_00000000_" + "x" * 30}).status_code == 401


@pytest.mark.parametrize("role", ["viewer", "admin"])
def test_every_page_renders(shared_client, keys, role):
    c = browser(shared_client, keys, role)
    for path, title in PAGES.items():
        r = c.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        assert f"<h1>{title}</h1>" in r.text and f'id="user-role">{role}<' in r.text
        assert 'id="nav-review"' in r.text
    assert c.get("/dashboard/static/dashboard.css").status_code == 200
    assert c.get("/dashboard/static/../app.py").status_code == 404
    js = c.get("/dashboard/plotly.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000
    controls = c.get("/risk").text
    assert ('id="risk-kill"' in controls) == (role == "admin")


def test_overview_charts_after_bars(client, keys):
    assert client.post("/api/v1/clock/step", json={"n": 5}, headers=keys.headers("admin")).status_code == 200
    page = browser(client, keys, "viewer").get("/").text
    for div in ("fig-equity", "fig-pnl", "fig-exposure"):
        assert f'id="{div}"' in page, div
    assert "Growth of 1" in page and "/dashboard/plotly.js" in page
    orders = browser(client, keys, "viewer").get("/orders").text
    assert 'id="open-orders"' in orders and 'data-status="held"' in orders  # the strategy's big orders wait


def test_review_buttons_csrf_roles_and_journal(client, keys):
    held = big_buy(client, keys)["order"]
    cid = held["client_id"]
    assert held["status"] == "held"
    viewer, reviewer, trader = (browser(client, keys, r) for r in ("viewer", "reviewer", "trader"))

    vpage = viewer.get("/review").text
    assert f'data-client-id="{cid}"' in vpage and "1,2" in vpage  # the order and its ~1.2M value are listed
    assert f'id="approve-{cid}"' not in vpage and "Approve</button>" not in vpage
    rpage = reviewer.get("/review").text
    assert f'id="approve-{cid}"' in rpage and f'id="reject-{cid}"' in rpage

    url = f"/review/{cid}/approve"
    # forged: no token, a wrong token, a viewer's / trader's own valid token, no session at all -> refused
    assert reviewer.post(url, data={}).status_code == 403
    assert reviewer.post(url, data={"csrf_token": "forged"}).status_code == 403
    assert viewer.post(url, data={"csrf_token": csrf(vpage)}).status_code == 403
    assert trader.post(url, data={"csrf_token": csrf(trader.get("/review").text)}).status_code == 403
    assert browser(client, keys).post(url, data={"csrf_token": csrf(rpage)}).status_code == 401
    assert order_status(client, keys, cid) == "held"

    # markup in the reason is refused with the API's rule, nothing changes
    bad = reviewer.post(url, data={"csrf_token": csrf(rpage), "reason": "<b>ok</b>"})
    assert bad.status_code == 422 and "markup" in bad.text and order_status(client, keys, cid) == "held"

    ok = reviewer.post(url, data={"csrf_token": csrf(rpage), "reason": "checked the size"})
    assert ok.status_code == 303 and "done=approved" in ok.headers["location"]
    assert f"Order {cid} approved" in reviewer.get(ok.headers["location"]).text
    assert order_status(client, keys, cid) == "sent"
    ev = on_worker(client, client.service.session.journal.events, cid)
    assert ev.iloc[-1]["status"] == "sent" and ev.iloc[-1]["actor"] == keys.name["reviewer"]

    again = reviewer.post(url, data={"csrf_token": csrf(rpage)})  # not held any more: shown, 409
    assert again.status_code == 409 and "not held" in again.text
    assert client.post("/api/v1/clock/step", json={"n": 1}, headers=keys.headers("admin")).status_code == 200
    assert order_status(client, keys, cid) == "filled"
    row = re.search(rf'<tr data-client-id="{cid}" data-status="(\w+)"', reviewer.get("/orders").text)
    assert row and row.group(1) == "filled"


def test_reviewer_cannot_approve_own_order_and_reject(client, keys):
    cid = big_buy(client, keys)["order"]["client_id"]
    reviewer = browser(client, keys, "reviewer")
    token = csrf(reviewer.get("/review").text)
    r = reviewer.post(f"/review/{cid}/reject", data={"csrf_token": token})
    assert r.status_code == 303 and order_status(client, keys, cid) == "rejected"
    decided = reviewer.get("/review").text
    assert 'id="decided"' in decided and keys.name["reviewer"] in decided


def test_risk_actions_admin_only(client, keys):
    admin, reviewer = browser(client, keys, "admin"), browser(client, keys, "reviewer")
    rtoken = csrf(reviewer.get("/risk").text)
    for path in ACTIONS:
        assert reviewer.post(path, data={"csrf_token": rtoken}).status_code == 403, path
        assert admin.post(path, data={}).status_code == 403, path
    assert client.get("/api/v1/risk", headers=keys.headers("viewer")).json()["state"] == "active"

    token = csrf(admin.get("/risk").text)
    r = admin.post("/risk/pause", data={"csrf_token": token, "reason": "lunch"})
    assert r.status_code == 303
    risk = client.get("/api/v1/risk", headers=keys.headers("viewer")).json()
    assert risk["state"] == "reducing" and any("paused by ada" in e["reason"] for e in risk["events"])
    page = admin.get("/risk").text
    assert 'id="trading-state">reducing<' in page and "paused by ada" in page
    bad = admin.post("/risk/pause", data={"csrf_token": token, "symbol": "x'; drop table orders --"})
    assert bad.status_code == 422
    assert admin.post("/risk/resume", data={"csrf_token": token}).status_code == 303
    assert client.get("/api/v1/risk", headers=keys.headers("viewer")).json()["state"] == "active"

    held = big_buy(client, keys)["order"]["client_id"]
    r = admin.post("/risk/kill", data={"csrf_token": token, "reason": "drill"})
    assert r.status_code == 303 and "done=killed" in r.headers["location"]
    assert order_status(client, keys, held) == "cancelled"
    refused = admin.post("/risk/resume", data={"csrf_token": token})  # HALTED needs lift_halt
    assert refused.status_code == 409 and "lift_halt" in refused.text
    assert admin.post("/risk/resume", data={"csrf_token": token, "lift_halt": "1"}).status_code == 303
    assert client.get("/api/v1/risk", headers=keys.headers("viewer")).json()["state"] == "active"


def test_models_page(client, keys):
    client.post("/api/v1/clock/step", json={"n": 3}, headers=keys.headers("admin"))
    page = browser(client, keys, "viewer").get("/models").text
    assert "Serving" in page and "signals" in page and 'id="monitor"' in page and "latency_p50_ms" in page
