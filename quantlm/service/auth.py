"""Authentication and roles for the trading service: API keys, dashboard sessions, CSRF, login rate limits.

Roles (`ROLES`) and what each may do (`GRANTS`; `require_role(r)` admits every role that grants `r`):

=========  =====================================================================================
viewer     read everything (status, positions, account, orders, fills, review queue, models ...)
trader     read + submit and cancel orders
reviewer   read + approve / reject held orders (never their own: four eyes)
admin      everything: the above plus risk pause / resume / kill, model switch, push bars, clock
=========  =====================================================================================

Trader and reviewer are deliberately separate (no role both submits and approves, except admin, and
nobody approves an order they submitted themselves).

API keys: `qlm_<kid>_<secret>`; the keys file (JSON, or YAML by extension, mode 0600) stores per key its
name, role, kid, salt and scrypt hash only (`KeyStore`). A request carries `Authorization: Bearer <key>`
or `X-API-Key: <key>`. Verified keys are cached in memory under an HMAC of the key with the server
secret (so scrypt runs once per key, not per request). Failed key checks and failed logins are counted
per client IP (`RateLimiter`): past the limit the answer is 429 with Retry-After.

Dashboard sessions: `POST /login` (form fields `name`, `key`, optional `next`) checks the key, then
sets a signed cookie (`SESSION_COOKIE`: HMAC-SHA256 with the server secret, HttpOnly, SameSite=Strict)
holding name, role, key id, expiry and a CSRF token. The server secret comes from $QUANTLM_SECRET, else
it is random per process (sessions then end with the process); it never comes from the config file.
A request authenticated by the cookie that changes something (POST, PUT, PATCH, DELETE) must carry the
session's CSRF token in the `X-CSRF-Token` header or a `csrf_token` form field (`verify_csrf`; templates
get it from `csrf_token(request)`). Revoking a key (`quantlm keys remove`) ends its sessions.

Nothing here logs a header, key, cookie or hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

ROLES = ("viewer", "trader", "reviewer", "admin")
GRANTS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"viewer"}),
    "trader": frozenset({"viewer", "trader"}),
    "reviewer": frozenset({"viewer", "reviewer"}),
    "admin": frozenset(ROLES),
}
SESSION_COOKIE = "quantlm_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SECRET_ENV = "QUANTLM_SECRET"
SESSION_TTL_S = 8 * 3600
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_KEY = re.compile(r"^qlm_([0-9a-f]{8})_([A-Za-z0-9_-]{20,100})$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


class KeysError(ValueError):
    """A bad keys file or key request (shown to CLI users without a traceback)."""

    user_facing = True


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name and role; `via` is "key" (API key header) or "session" (cookie)."""

    name: str
    role: str
    via: str = "key"

    def can(self, role: str) -> bool:
        """Whether this principal's role grants what `role` may do."""
        return role in GRANTS.get(self.role, frozenset())


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, maxmem=64 * 1024 * 1024, **_SCRYPT)


class KeyStore:
    """The API keys file: name, role, key id, salt and scrypt hash per key (never a key itself)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: list[dict] = []
        if self.path.exists():
            self.entries = self._read()

    def _yaml(self) -> bool:
        return self.path.suffix.lower() in (".yaml", ".yml")

    def _read(self) -> list[dict]:
        text = self.path.read_text()
        try:
            if self._yaml():
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text) if text.strip() else {}
        except Exception as e:  # noqa: BLE001 - any parse error is a bad file
            raise KeysError(f"keys file {self.path} cannot be read: {type(e).__name__}") from None
        keys = data.get("keys", []) if isinstance(data, dict) else None
        if not isinstance(keys, list):
            raise KeysError(f"keys file {self.path}: expected a mapping with a 'keys' list")
        for k in keys:
            if not (isinstance(k, dict) and {"name", "role", "kid", "salt", "hash"} <= set(k) and k["role"] in ROLES):
                raise KeysError(f"keys file {self.path}: an entry lacks name / role / kid / salt / hash or has an "
                                f"unknown role (roles: {', '.join(ROLES)})")
        return keys

    def save(self) -> None:
        """Write the file atomically with mode 0600."""
        data = {"keys": self.entries}
        if self._yaml():
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        else:
            text = json.dumps(data, indent=1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def add(self, name: str, role: str) -> str:
        """Add a key for `name` with `role`; returns the key (shown once, never stored)."""
        if not _NAME.match(name or ""):
            raise KeysError(f"name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-'")
        if role not in ROLES:
            raise KeysError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if any(e["name"] == name for e in self.entries):
            raise KeysError(f"{self.path} already has a key named {name!r} (remove it first)")
        kid = secrets.token_hex(4)
        while any(e["kid"] == kid for e in self.entries):
            kid = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        self.entries.append({"name": name, "role": role, "kid": kid, "salt": salt.hex(),
                             "hash": _hash(secret, salt).hex(), "algo": "scrypt-n14-r8-p1",
                             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        self.save()
        return f"qlm_{kid}_{secret}"

    def remove(self, name: str) -> bool:
        """Remove the key named `name` (its sessions end too); False when there is none."""
        n = len(self.entries)
        self.entries = [e for e in self.entries if e["name"] != name]
        if len(self.entries) < n:
            self.save()
            return True
        return False

    def listing(self) -> list[dict]:
        """Name, role and creation time of each key (nothing secret)."""
        return [{"name": e["name"], "role": e["role"], "created": e.get("created", "")} for e in self.entries]

    def by_kid(self, kid: str) -> dict | None:
        return next((e for e in self.entries if e["kid"] == kid), None)

    def verify(self, key: str) -> Principal | None:
        """The principal of `key`, or None (constant-time compare; unknown ids cost the same scrypt)."""
        m = _KEY.match(key or "")
        entry = self.by_kid(m.group(1)) if m else None
        salt = bytes.fromhex(entry["salt"]) if entry else b"\0" * 16
        digest = _hash(m.group(2) if m else "x" * 43, salt)
        expected = bytes.fromhex(entry["hash"]) if entry else b"\1" * 32
        if hmac.compare_digest(digest, expected) and entry is not None:
            return Principal(entry["name"], entry["role"])
        return None


class RateLimiter:
    """At most `limit` failures per `window_s` seconds per client (thread-safe sliding window)."""

    def __init__(self, limit: int = 5, window_s: float = 60.0) -> None:
        self.limit, self.window_s = int(limit), float(window_s)
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _trim(self, client: str, now: float) -> deque[float]:
        q = self._fails.setdefault(client, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, client: str) -> int:
        """Seconds until `client` may try again (0 = now)."""
        now = time.monotonic()
        with self._lock:
            q = self._trim(client, now)
            return 0 if len(q) < self.limit else max(1, int(q[0] + self.window_s - now + 1))

    def fail(self, client: str) -> None:
        with self._lock:
            self._trim(client, time.monotonic()).append(time.monotonic())

    def reset(self) -> None:
        with self._lock:
            self._fails.clear()


class Auth:
    """The app's authenticator: the key store, the server secret, the caches and the rate limiters."""

    def __init__(self, keys: KeyStore, secret: bytes | None = None, login_limit: int = 5,
                 key_fail_limit: int = 60, window_s: float = 60.0) -> None:
        self.keys = keys
        env = os.environ.get(SECRET_ENV)
        self.secret = secret or (env.encode() if env else secrets.token_bytes(32))
        self.login_limiter = RateLimiter(login_limit, window_s)
        self.key_limiter = RateLimiter(key_fail_limit, window_s)
        self._cache: dict[bytes, Principal] = {}
        self._lock = threading.Lock()

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self.secret, data, hashlib.sha256).digest()

    def check_key(self, key: str) -> Principal | None:
        """The principal of an API key (cached by an HMAC of the key once verified), or None."""
        tag = self._mac(key.encode())
        with self._lock:
            hit = self._cache.get(tag)
        if hit is not None:
            m = _KEY.match(key)
            if m and self.keys.by_kid(m.group(1)) is not None:
                return hit
        p = self.keys.verify(key)
        if p is not None:
            with self._lock:
                self._cache[tag] = p
        return p

    def revoke_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # -- sessions ----------------------------------------------------------------------------------
    def make_session(self, key: str, p: Principal) -> str:
        body = {"n": p.name, "r": p.role, "k": _KEY.match(key).group(1), "e": int(time.time()) + SESSION_TTL_S,
                "c": secrets.token_urlsafe(24)}
        raw = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")
        sig = base64.urlsafe_b64encode(self._mac(raw.encode())).decode().rstrip("=")
        return f"{raw}.{sig}"

    def read_session(self, cookie: str | None) -> dict | None:
        """The session body of a valid, unexpired cookie whose key still exists, else None."""
        if not cookie or cookie.count(".") != 1 or len(cookie) > 2048:
            return None
        raw, sig = cookie.split(".")
        good = base64.urlsafe_b64encode(self._mac(raw.encode())).decode().rstrip("=")
        if not hmac.compare_digest(sig.encode(), good.encode()):
            return None
        try:
            body = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        except ValueError:
            return None
        entry = self.keys.by_kid(str(body.get("k", "")))
        if body.get("e", 0) < time.time() or entry is None or entry["name"] != body.get("n"):
            return None
        body["r"] = entry["role"]  # a role changed in the keys file applies at once
        return body


def client_ip(request: Request) -> str:
    """The peer address (proxies' forwarded headers are not trusted: the service binds localhost)."""
    return request.client.host if request.client else "unknown"


def get_auth(request: Request) -> Auth:
    return request.app.state.auth


def _too_many(seconds: int) -> HTTPException:
    return HTTPException(429, f"too many failed authentications from this address; retry in {seconds} s",
                         headers={"Retry-After": str(seconds)})


def _presented_key(request: Request) -> str | None:
    h = request.headers.get("authorization")
    if h:
        scheme, _, value = h.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""
    return request.headers.get("x-api-key")


def current_principal(request: Request) -> Principal:
    """The caller, from an API key header or the session cookie; 401 when neither is valid, 429 when
    this address failed too often. Cookie-authenticated unsafe methods must pass `verify_csrf`."""
    auth = get_auth(request)
    ip = client_ip(request)
    key = _presented_key(request)
    if key is not None:
        wait = auth.key_limiter.retry_after(ip)
        if wait:
            raise _too_many(wait)
        p = auth.check_key(key) if key else None
        if p is None:
            auth.key_limiter.fail(ip)
            raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
        return p
    body = auth.read_session(request.cookies.get(SESSION_COOKIE))
    if body is None:
        raise HTTPException(401, "authentication required: send 'Authorization: Bearer <key>' or 'X-API-Key', "
                                 "or log in", headers={"WWW-Authenticate": "Bearer"})
    request.state.session = body
    p = Principal(body["n"], body["r"], via="session")
    if request.method in UNSAFE_METHODS:
        _check_csrf_header_or_form(request, body, form=None)
    return p


def _check_csrf_header_or_form(request: Request, body: dict, form) -> None:
    token = request.headers.get(CSRF_HEADER)
    if token is None and form is not None:
        token = form.get(CSRF_FIELD)
    if token is None:
        token = getattr(request.state, "csrf_form_token", None)
    if not token or not hmac.compare_digest(str(token).encode(), str(body["c"]).encode()):
        raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")


def csrf_token(request: Request) -> str:
    """The CSRF token of the request's session ('' when not logged in by cookie): put it in every form
    as `<input type="hidden" name="csrf_token" value="...">` or send it as the X-CSRF-Token header."""
    body = getattr(request.state, "session", None) or get_auth(request).read_session(
        request.cookies.get(SESSION_COOKIE))
    return body["c"] if body else ""


async def verify_csrf(request: Request) -> None:
    """Dependency for form routes: an unsafe request authenticated by the session cookie must carry the
    session's CSRF token (header X-CSRF-Token or form field csrf_token); 403 otherwise. Requests with an
    API key header need none (no ambient credential)."""
    if request.method not in UNSAFE_METHODS or _presented_key(request) is not None:
        return
    body = get_auth(request).read_session(request.cookies.get(SESSION_COOKIE))
    if body is None:
        raise HTTPException(401, "authentication required: log in")
    form = None
    if request.headers.get(CSRF_HEADER) is None and "form" in request.headers.get("content-type", ""):
        form = await request.form()
    _check_csrf_header_or_form(request, body, form)


async def _form_csrf(request: Request) -> None:
    """Read a form's csrf_token before `current_principal` checks it (forms carry it in the body)."""
    if (request.method in UNSAFE_METHODS and request.headers.get(CSRF_HEADER) is None
            and "form" in request.headers.get("content-type", "")):
        form = await request.form()
        request.state.csrf_form_token = form.get(CSRF_FIELD)


def require_role(role: str):
    """A FastAPI dependency admitting principals whose role grants `role` (see GRANTS); returns the
    `Principal`. 401 without valid credentials, 403 with the wrong role or a bad CSRF token (cookie)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    async def dependency(request: Request, _csrf: None = Depends(_form_csrf)) -> Principal:
        p = current_principal(request)
        if not p.can(role):
            raise HTTPException(403, f"role {p.role!r} may not do this (needs {role})")
        return p

    dependency.required_role = role  # type: ignore[attr-defined]  (read by the route tests)
    return dependency


def _safe_next(target: str | None) -> str:
    """A local path to go to after login (never another host)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


router = APIRouter(tags=["auth"])


@router.post("/login", summary="Log in to the dashboard with an API key (sets the session cookie)")
async def login(request: Request, name: str = Form(..., max_length=64), key: str = Form(..., max_length=200),
                next: str = Form("/", max_length=200)) -> Response:  # noqa: A002 - the form field's name
    """Form login: on success 303 to `next` with the session cookie; 401 on a wrong name / key; 429
    after too many failures from this address (5 a minute by default)."""
    auth = get_auth(request)
    ip = client_ip(request)
    wait = auth.login_limiter.retry_after(ip)
    if wait:
        raise _too_many(wait)
    p = auth.check_key(key)
    if p is None or p.name != name:
        auth.login_limiter.fail(ip)
        raise HTTPException(401, "wrong name or key")
    resp = RedirectResponse(_safe_next(next), status_code=303)
    resp.set_cookie(SESSION_COOKIE, auth.make_session(key, p), max_age=SESSION_TTL_S, httponly=True,
                    samesite="strict", secure=request.url.scheme == "https", path="/")
    return resp


@router.post("/logout", summary="End the dashboard session")
async def logout(request: Request) -> Response:
    """Clears the session cookie (no CSRF needed: logging out harms nobody)."""
    resp = JSONResponse({"ok": True}) if "json" in request.headers.get("accept", "") else RedirectResponse(
        "/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp
