"""Auth: every /api/v1 route refuses a missing key, a wrong key and the wrong role (routes enumerated from
the app itself, so a new route cannot be forgotten); keys file; `quantlm keys`; dashboard sessions, CSRF
and the failed-login rate limit."""

from __future__ import annotations

import json
import stat

import pytest
from fastapi.routing import APIRoute
from typer.testing import CliRunner

from quantlm.cli import app as cli_app
from quantlm.service.app import create_app
from quantlm.service.auth import GRANTS, ROLES, SESSION_COOKIE, KeyStore
from quantlm.service.state import LiveService

OPEN = {("GET", "/api/v1/health")}  # the only /api/v1 route without auth
# a valid body per route that takes one (so that only the credentials decide the answer)
BODIES = {
    "/api/v1/orders": {"symbol": "000001.SZ", "side": "buy", "shares": 100},
    "/api/v1/risk/pause": {"reason": "test"},
    "/api/v1/risk/resume": {"reason": "test"},
    "/api/v1/models/switch": {"to": "backup"},
    "/api/v1/bars": {"ts": "2030-01-02T00:00:00", "bars": [{"symbol": "000001.SZ", "open": 1, "high": 1, "low": 1,
                                                            "close": 1, "volume": 1}]},
    "/api/v1/clock/step": {"n": 1},
}


def _role_of(route: APIRoute) -> str | None:
    """The role a route's `require_role` dependency asks for (None without one)."""
    stack = list(route.dependant.dependencies)
    while stack:
        d = stack.pop()
        role = getattr(d.call, "required_role", None)
        if role:
            return role
        stack.extend(d.dependencies)
    return None


def api_routes() -> list[tuple[str, str, str | None]]:
    """(method, path, role) of every /api/v1 operation in the app's OpenAPI schema (what the app serves),
    with the role from the route's `require_role` dependency (None when it has none)."""
    from quantlm.service import api

    app = create_app(LiveService(None, None, "unused"), KeyStore("/nonexistent/keys.json"))
    roles = {(m, r.path): _role_of(r) for r in api.router.routes if isinstance(r, APIRoute) for m in r.methods}
    out = []
    for path, ops in app.openapi()["paths"].items():
        if path.startswith("/api/v1"):
            for m in ops:
                out.append((m.upper(), path, roles.get((m.upper(), path))))
    return out


ROUTES = api_routes()
PROTECTED = [(m, p, role) for m, p, role in ROUTES if (m, p) not in OPEN]


def _call(client, method: str, path: str, headers: dict | None = None):
    path = path.replace("{client_id}", "X-1")
    body = BODIES.get(path) if method == "POST" else None
    return client.request(method, path, json=body, headers=headers or {})


def test_every_route_is_enumerated_and_has_a_role():
    assert len(PROTECTED) >= 20
    paths = {p for _, p, _ in ROUTES}
    for p in ("/api/v1/orders", "/api/v1/review/{client_id}/approve", "/api/v1/risk/kill", "/api/v1/models/switch",
              "/api/v1/bars", "/api/v1/clock/step", "/api/v1/signals"):
        assert p in paths
    missing = [(m, p) for m, p, role in PROTECTED if role not in ROLES]
    assert not missing, f"routes without require_role: {missing}"
    for m, _, role in PROTECTED:
        if m != "GET":
            assert role != "viewer"  # nothing that changes state is open to viewers


@pytest.mark.parametrize(("method", "path", "role"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_route_refuses_missing_wrong_key_and_wrong_role(shared_client, keys, method, path, role):
    c = shared_client
    assert _call(c, method, path).status_code == 401
    assert _call(c, method, path, {"Authorization": "Bearer nope"}).status_code == 401
    kid = keys.key["admin"].split("_")[1]
    forged = f"qlm_{kid}_{'A' * 43}"  # a real key id with a wrong secret
    assert _call(c, method, path, {"X-API-Key": forged}).status_code == 401
    assert _call(c, method, path, {"Authorization": "Basic " + keys.key["admin"]}).status_code == 401
    for other in ROLES:
        r = _call(c, method, path, keys.headers(other))
        if role in GRANTS[other]:
            assert r.status_code not in (401, 403) or "submitted order" in r.text, (other, r.text)
        else:
            assert r.status_code == 403, (other, r.status_code, r.text)
            assert role in r.json()["detail"]


def test_health_needs_no_key(shared_client):
    r = shared_client.get("/api/v1/health")
    assert r.status_code == 200 and r.json()["ok"] is True


def test_keys_file_holds_no_plaintext_and_is_private(keys):
    text = keys.path.read_text()
    for key in keys.key.values():
        assert key not in text and key[13:] not in text
    assert stat.S_IMODE(keys.path.stat().st_mode) == 0o600
    entries = json.loads(text)["keys"]
    assert {e["name"] for e in entries} >= {"vera", "tom", "rita", "ada"}
    assert all(len(bytes.fromhex(e["hash"])) == 32 and len(bytes.fromhex(e["salt"])) == 16 for e in entries)


def test_cli_keys_add_prints_the_key_once_and_list_shows_no_secret(tmp_path):
    path = tmp_path / "keys.yaml"
    res = CliRunner().invoke(cli_app, ["keys", "add", "--name", "ops", "--role", "reviewer", "--keys", str(path)])
    assert res.exit_code == 0, res.output
    key = [w for w in res.output.split() if w.startswith("qlm_")]
    assert len(key) == 1 and res.output.count(key[0]) == 1
    assert key[0] not in path.read_text() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KeyStore(path).verify(key[0]).role == "reviewer"
    listed = CliRunner().invoke(cli_app, ["keys", "list", "--keys", str(path)])
    assert "ops" in listed.output and "reviewer" in listed.output and "qlm_" not in listed.output
    bad = CliRunner().invoke(cli_app, ["keys", "add", "--name", "x", "--role", "root", "--keys", str(path)])
    assert bad.exit_code == 2 and "not one of" in bad.output
    dup = CliRunner().invoke(cli_app, ["keys", "add", "--name", "ops", "--role", "viewer", "--keys", str(path)])
    assert dup.exit_code == 2 and "already has a key" in dup.output


def test_serve_refuses_to_start_without_an_admin_key(tmp_path, live_config_path, market):
    path = tmp_path / "keys.json"
    KeyStore(path).add("v", "viewer")
    args = ["serve", "--config", str(live_config_path), "--store", str(market / "store"), "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(cli_app, [*args, "--keys", str(path)])
    assert res.exit_code == 2 and "no admin key" in res.output
    res = CliRunner().invoke(cli_app, [*args, "--keys", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "no keys file" in res.output


def test_session_login_cookie_and_csrf(shared_client, keys):
    c = shared_client
    c.cookies.clear()
    r = c.post("/login", data={"name": "rita", "key": keys.key["reviewer"], "next": "/review"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/review"
    cookie = r.cookies.get(SESSION_COOKIE)
    assert cookie and keys.key["reviewer"] not in cookie
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    assert c.get("/api/v1/review").status_code == 200  # the cookie authenticates reads
    # a state change by cookie needs the CSRF token: a forged cross-site POST has none
    forged = c.post("/api/v1/review/X-1/reject", json={})
    assert forged.status_code == 403 and "CSRF" in forged.json()["detail"]
    from quantlm.service.auth import csrf_token

    class _Req:  # csrf_token reads the cookie through the app's Auth
        cookies = {SESSION_COOKIE: cookie}

        class app:  # noqa: N801
            state = c.app.state

        class state:  # noqa: N801
            pass

    token = csrf_token(_Req())
    assert token
    ok = c.post("/api/v1/review/X-1/reject", json={}, headers={"X-CSRF-Token": token})
    assert ok.status_code == 404  # past auth and CSRF: the order does not exist
    form = c.post("/api/v1/review/X-1/reject", data={"csrf_token": token})
    assert form.status_code != 403
    # a reviewer's session still cannot do admin things
    assert c.post("/api/v1/risk/kill", json={}, headers={"X-CSRF-Token": token}).status_code == 403
    # a tampered cookie is no session
    c.cookies.clear()
    tampered = cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BB")
    assert c.get("/api/v1/review", cookies={SESSION_COOKIE: tampered}).status_code == 401
    assert c.get("/api/v1/review", cookies={SESSION_COOKIE: cookie}).status_code == 200
    c.cookies.clear()
    assert c.get("/api/v1/review").status_code == 401


def test_login_with_a_wrong_name_or_key_fails_and_is_rate_limited(make_client, keys):
    c = make_client(app_kwargs={"login_limit": 5})
    assert c.post("/login", data={"name": "ada", "key": keys.key["viewer"]}).status_code == 401  # key of another
    for _ in range(4):
        assert c.post("/login", data={"name": "ada", "key": "qlm_00000000_" + "x" * 43}).status_code == 401
    r = c.post("/login", data={"name": "ada", "key": keys.key["admin"]}, follow_redirects=False)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0  # even the right key, once limited
    # another address is not limited
    c2 = type(c)(c.app, client=("127.0.0.2", 1))
    assert c2.post("/login", data={"name": "ada", "key": keys.key["admin"]}, follow_redirects=False).status_code == 303


def test_failed_api_keys_are_rate_limited(make_client, keys):
    c = make_client(app_kwargs={"key_fail_limit": 3})
    for _ in range(3):
        assert c.get("/api/v1/status", headers={"X-API-Key": "bad"}).status_code == 401
    assert c.get("/api/v1/status", headers={"X-API-Key": "bad"}).status_code == 429
    assert c.get("/api/v1/status", headers=keys.headers("viewer")).status_code == 429


def test_a_removed_key_stops_working_and_ends_its_sessions(make_client, keys, tmp_path):
    import shutil

    path = tmp_path / "keys.json"
    shutil.copy(keys.path, path)
    ks = KeyStore(path)
    extra = ks.add("temp", "viewer")
    c = make_client()
    c.app.state.auth.keys = ks
    assert c.get("/api/v1/status", headers={"X-API-Key": extra}).status_code == 200
    r = c.post("/login", data={"name": "temp", "key": extra}, follow_redirects=False)
    assert r.status_code == 303
    ks.remove("temp")
    assert c.get("/api/v1/status", headers={"X-API-Key": extra}).status_code == 401
    assert c.get("/api/v1/status").status_code == 401  # the cookie's key is gone


def test_login_redirects_only_to_local_paths(shared_client, keys):
    r = shared_client.post("/login", data={"name": "vera", "key": keys.key["viewer"], "next": "//evil.example/x"},
                           follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    shared_client.cookies.clear()
