"""The dashboard: server-rendered pages (Jinja2, autoescaped) behind the session login.

Pages (GET): `/` overview (equity against the benchmark, P&L, exposure), `/positions`, `/orders`
(open, recent, fills), `/review` (the review queue), `/risk` (state, limits, recent risk events),
`/models` (active and backup, latency, rolling IC, switches); `/login`, `/logout`.

Actions (POST forms, each with the session's CSRF token): approve / reject a held order (reviewer or
admin), pause / resume / kill (admin). A POST without a valid CSRF token, or from a session whose role
may not do it, is refused with 403 and changes nothing. Every action calls the same `LiveService`
method as the API route, with the logged-in user's name as the actor, so it is journaled the same way.

Nothing here touches the journal or the engine from the request thread: the page data are gathered by
`dashboard_data` functions that the service runs on its worker thread.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from quantlm.live.journal import JournalError
from quantlm.service import auth
from quantlm.service import dashboard_data as data
from quantlm.service import operations as ops
from quantlm.service.schemas import CLIENT_ID_PATTERN, PauseRequest, ReasonRequest, ResumeRequest
from quantlm.service.state import ServiceError

HERE = FilePath(__file__).resolve().parent
NAV = [("overview", "Overview"), ("positions", "Positions"), ("orders", "Orders"), ("review", "Review queue"),
       ("risk", "Risk"), ("models", "Models")]
CAN_REVIEW = {"reviewer", "admin"}
CAN_RISK = {"admin"}
MESSAGES = {"approved": "Order {id} approved: it is sent with the next bar.", "rejected": "Order {id} rejected.",
            "paused": "Paused{id}: only orders that shrink a position pass.", "resumed": "Resumed{id}.",
            "killed": "Kill switch: trading halted, {id} open orders cancelled."}
_PLAIN_ID = re.compile(r"^[A-Za-z0-9._:-]{0,64}$")

router = APIRouter(include_in_schema=False)


# ---------------------------------------------------------------------- templates and formatting
def _num(x: Any) -> str:
    v = _float(x)
    return "-" if math.isnan(v) else (f"{v:,.0f}" if v == round(v) else f"{v:,.2f}")


def _money(x: Any) -> str:
    v = _float(x)
    return "-" if math.isnan(v) or v == 0 else f"{v:,.0f}"


def _price(x: Any) -> str:
    v = _float(x)
    return "-" if math.isnan(v) or v <= 0 else f"{v:,.3f}".rstrip("0").rstrip(".")


def _pct(x: Any) -> str:
    v = _float(x)
    return "-" if math.isnan(v) else f"{v * 100:.2f}%"


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


# autoescape for every template (not only *.html): everything user-controlled (symbols, reasons, names) is escaped
templates = Jinja2Templates(env=jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                                                   autoescape=True, undefined=jinja2.ChainableUndefined))
templates.env.filters.update(num=_num, money=_money, price=_price, pct=_pct)


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


STATIC_TYPES = {".css": "text/css", ".js": "application/javascript"}


@router.get("/dashboard/static/{path}", name="dashboard_static")
def static_file(path: str) -> Response:
    """The dashboard's own CSS and JS (a route, not a mount: `include_router` does not carry mounts)."""
    names = {p.name: p for p in (HERE / "static").iterdir() if p.suffix in STATIC_TYPES}
    if path not in names:
        raise HTTPException(404, "not found")
    return Response(names[path].read_text(encoding="utf-8"), media_type=STATIC_TYPES[names[path].suffix],
                    headers={"Cache-Control": "private, max-age=300"})


@router.get("/dashboard/plotly.js", name="dashboard_plotly")
def plotly_js() -> Response:
    """plotly.js from the installed plotly package (works offline; cached by the browser for a day)."""
    return Response(_plotly_js(), media_type="application/javascript",
                    headers={"Cache-Control": "private, max-age=86400"})


# ---------------------------------------------------------------------- auth glue
def _session_user(request: Request) -> auth.Principal | None:
    """The dashboard user of the session cookie (None: not logged in, expired, or the key was revoked)."""
    body = auth.get_auth(request).read_session(request.cookies.get(auth.SESSION_COOKIE))
    if body is None:
        return None
    request.state.session = body  # csrf_token(request) reads it
    return auth.Principal(body["n"], body["r"], via="session")


def _to_login(request: Request) -> RedirectResponse:
    """No valid session: a page redirects to the login form (and comes back after it)."""
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{request.url_for('dashboard_login')}?next={quote(path, safe='/')}", status_code=303)


def _service(request: Request) -> Any:
    return request.app.state.service


async def _gather(request: Request, fn) -> Any:
    """Run `fn(service)` on the service's worker thread (never here: the journal is the worker's)."""
    service = _service(request)
    return await service.call(fn, service)


def _page(request: Request, name: str, page: str, title: str, user: Any, status: dict, **ctx: Any) -> HTMLResponse:
    flash = _flash(request)
    return templates.TemplateResponse(request, name, {
        "page": page, "title": title, "nav": NAV, "user": {"name": user.name, "role": user.role},
        "csrf": auth.csrf_token(request), "status": status, "flash": flash, "can_review": user.role in CAN_REVIEW,
        "is_admin": user.role in CAN_RISK, **ctx})


def _flash(request: Request) -> dict | None:
    """The message of an action: a refusal is rendered at once (request.state.flash, never from the URL);
    after a successful action's redirect only a known code with a plain id (order id, symbol, count)."""
    refused = getattr(request.state, "flash", None)
    if refused:
        return refused
    done, ident = request.query_params.get("done"), request.query_params.get("id", "")
    if done in MESSAGES and _PLAIN_ID.match(ident):
        return {"kind": "ok", "text": MESSAGES[done].format(id=f" for {ident}" if ident and done in ("paused", "resumed")
                                                                else ident)}
    return None


def _back(request: Request, route: str, **query: str) -> RedirectResponse:
    url = str(request.url_for(route))
    if query:
        url += "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in query.items())
    return RedirectResponse(url, status_code=303)


# ---------------------------------------------------------------------- login
@router.get("/login", name="dashboard_login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/") -> Response:  # noqa: A002
    """The login form; it posts `name`, `key` and `next` to `auth.router`'s POST /login (rate-limited)."""
    return templates.TemplateResponse(request, "login.html", {"next_url": _safe_next(next)})


def _safe_next(url: str) -> str:
    """Only a local path (no scheme, no host, no '//'): no open redirect after the login."""
    return url if url.startswith("/") and not url.startswith("//") and "\\" not in url else "/"


# ---------------------------------------------------------------------- pages
def _cards(items: list[tuple[str, float, str]]) -> list[dict]:
    out = []
    for label, value, kind in items:
        fmt = {"money": _money, "pct": _pct, "num": _num}[kind]
        cls = "" if kind == "num" or math.isnan(_float(value)) else ("pos" if value > 0 else "neg" if value < 0 else "")
        out.append({"label": label, "text": fmt(value) if value != 0 or kind != "money" else "0", "cls": cls})
    return out


def _account_cards(acc: dict) -> list[dict]:
    cards = _cards([("P&L today", acc["pnl_today"], "money"), ("P&L total", acc["pnl_total"], "money"),
                    ("Return", acc["return_total"], "pct")])
    plain = [("Equity", _money(acc["equity"])), ("Gross exposure", _pct(acc["exposure"]))]
    return [{"label": k, "text": v, "cls": ""} for k, v in plain] + cards


@router.get("/", name="dashboard_overview", response_class=HTMLResponse)
async def overview(request: Request) -> Response:
    user = _session_user(request)
    if user is None:
        return _to_login(request)
    st, d = await _gather(request, lambda sv: (data.status(sv.session), data.overview(sv.session)))
    cards = _account_cards(d["account"]) + [
        {"label": "Cash", "text": _money(d["account"]["cash"]), "cls": ""},
        {"label": "Positions", "text": _num(d["account"]["positions"]), "cls": ""},
        {"label": "Open orders", "text": _num(d["open_orders"]), "cls": ""},
        {"label": "Held for review", "text": _num(d["held"]), "cls": "neg" if d["held"] else ""},
        {"label": "Traded today", "text": _money(d["account"]["traded_today"]) or "0", "cls": ""}]
    charts = await run_in_threadpool(data.equity_charts, d)
    return _page(request, "overview.html", "overview", "Overview", user, st, cards=cards, charts=charts)


@router.get("/positions", name="dashboard_positions", response_class=HTMLResponse)
async def positions_page(request: Request) -> Response:
    user = _session_user(request)
    if user is None:
        return _to_login(request)
    st, d = await _gather(request, lambda sv: (data.status(sv.session), data.positions(sv.session)))
    return _page(request, "positions.html", "positions", "Positions", user, st,
                 cards=_account_cards(d["account"]), positions=d["positions"])


@router.get("/orders", name="dashboard_orders", response_class=HTMLResponse)
async def orders_page(request: Request) -> Response:
    user = _session_user(request)
    if user is None:
        return _to_login(request)
    st, d = await _gather(request, lambda sv: (data.status(sv.session), data.orders(sv.session)))
    return _page(request, "orders.html", "orders", "Orders and fills", user, st, refresh=10, **d)


@router.get("/review", name="dashboard_review", response_class=HTMLResponse)
async def review_page(request: Request) -> Response:
    user = _session_user(request)
    if user is None:
        return _to_login(request)
    st, d = await _gather(request, lambda sv: (data.status(sv.session), data.review(sv.session)))
    return _page(request, "review.html", "review", "Review queue", user, st, **d)


@router.get("/risk", name="dashboard_risk", response_class=HTMLResponse)
async def risk_page(request: Request) -> Response:
    user = _session_user(request)
    if user is None:
        return _to_login(request)
    st, d = await _gather(request, lambda sv: (data.status(sv.session), data.risk(sv.session, _manual(sv))))
    cards = [{"label": "Trading state", "text": d["state"], "cls": "neg" if d["state"] != "active" else "pos"},
             {"label": "Paused", "text": ", ".join(p.replace("__market__", "market") for p in d["paused"]) or "none",
              "cls": "neg" if d["paused"] else ""},
             {"label": "Active orders", "text": _num(d["active"]), "cls": ""},
             {"label": "Orders today", "text": _num(d["daily_orders"]), "cls": ""},
             {"label": "Risk events shown", "text": _num(len(d["events"])), "cls": ""}]
    return _page(request, "risk.html", "risk", "Risk", user, st, cards=cards, limits=d["limits"], events=d["events"])


@router.get("/models", name="dashboard_models", response_class=HTMLResponse)
async def models_page(request: Request) -> Response:
    user = _session_user(request)
    if user is None:
        return _to_login(request)
    st, d = await _gather(request, lambda sv: (data.status(sv.session), data.models(sv.session)))
    m = d["monitor"]
    cards = [{"label": "Serving", "text": f"{d['names'].get(d['active'], d['active'])} ({d['active']})", "cls": ""},
             {"label": "Backup", "text": d["names"].get("backup", "none"), "cls": ""},
             {"label": "Latency p50 / p99", "text": f"{_ms(m.get('latency_p50_ms'))} / {_ms(m.get('latency_p99_ms'))}",
              "cls": ""},
             {"label": "Rolling IC", "text": _ic(m.get("ic")), "cls": ""},
             {"label": "Switches", "text": _num(d["switches"]), "cls": "neg" if d["switches"] else ""}]
    monitor = [(k, _ic(v) if isinstance(v, float) else str(v)) for k, v in sorted(m.items())]
    chart = await run_in_threadpool(data.ic_chart, d["ic"])
    return _page(request, "models.html", "models", "Models", user, st, cards=cards, monitor=monitor,
                 events=d["events"], charts={"ic": chart} if chart else None)


def _manual(service: Any) -> set[str]:
    """Symbols paused by hand through the service (its ManualPauses wrapper), if any."""
    return set(getattr(getattr(service, "pauses", None), "symbols", ()) or ())


def _ms(x: Any) -> str:
    v = _float(x)
    return "-" if math.isnan(v) else f"{v:.2f} ms"


def _ic(x: Any) -> str:
    v = _float(x)
    return "-" if math.isnan(v) else f"{v:.4f}"


# ---------------------------------------------------------------------- actions (POST, CSRF, roles)
# `auth.require_role` checks the session (or an API key), the role and, for the cookie, the CSRF token of
# the form: 401 without a session, 403 with the wrong role or a missing / wrong token; nothing runs then.
REVIEWER = Depends(auth.require_role("reviewer"))
ADMIN = Depends(auth.require_role("admin"))
OrderId = Annotated[str, PathParam(pattern=CLIENT_ID_PATTERN, max_length=64)]


async def _form(request: Request, model: type[BaseModel], fields: tuple[str, ...]) -> Any:
    """The form's `fields` validated by the API's request model (same limits: no markup or SQL in text);
    `_Refused` (422) with the first error."""
    form = await request.form()
    raw: dict[str, Any] = {}
    for f in fields:
        v = form.get(f)
        if isinstance(v, str) and v.strip() != "":
            raw[f] = v.strip() if f != "lift_halt" else v.strip().lower() in ("1", "on", "true", "yes")
    try:
        return model(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        raise _Refused(422, f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None


class _Refused(Exception):
    """An action the service refused (or a form that failed validation): shown on the page, status kept."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def _act(request: Request, fn, *args: Any) -> Any:
    """`fn(service, *args)` (a `quantlm.service.operations` function, as the API route calls it) on the
    engine's worker thread; `_Refused` with the service's status and message when it is refused."""
    service = _service(request)
    try:
        return await service.call(fn, service, *args)
    except ServiceError as e:
        raise _Refused(e.status, e.message) from None
    except JournalError as e:
        raise _Refused(503, f"journal unavailable, nothing was done: {e}") from None


async def _run(request: Request, page, route: str, action, **ok: Any) -> Response:
    """Run `action()`; on success 303 back to `route` with a done message, on refusal the page itself
    with the error and the refusal's status (nothing changed)."""
    try:
        extra = await action()
    except _Refused as e:
        request.state.flash = {"kind": "err", "text": e.message}
        resp = await page(request)
        resp.status_code = e.status
        return resp
    return _back(request, route, **{k: str(v) for k, v in (ok | (extra or {})).items()})


@router.post("/review/{client_id}/approve", name="dashboard_approve")
async def approve(request: Request, client_id: OrderId, user: auth.Principal = REVIEWER) -> Response:
    """Approve a held order (reviewer or admin, never the order's submitter): sent with the next bar."""
    async def action() -> None:
        body = await _form(request, ReasonRequest, ("reason",))
        await _act(request, ops.review, client_id, user.name, True, body.reason)

    return await _run(request, review_page, "dashboard_review", action, done="approved", id=client_id)


@router.post("/review/{client_id}/reject", name="dashboard_reject")
async def reject(request: Request, client_id: OrderId, user: auth.Principal = REVIEWER) -> Response:
    """Reject a held order (reviewer or admin)."""
    async def action() -> None:
        body = await _form(request, ReasonRequest, ("reason",))
        await _act(request, ops.review, client_id, user.name, False, body.reason)

    return await _run(request, review_page, "dashboard_review", action, done="rejected", id=client_id)


@router.post("/risk/pause", name="dashboard_risk_pause")
async def pause(request: Request, user: auth.Principal = ADMIN) -> Response:
    """Pause the market (only reducing orders pass) or one symbol (admin)."""
    async def action() -> dict:
        body = await _form(request, PauseRequest, ("symbol", "reason"))
        await _act(request, ops.pause, body.symbol, user.name, body.reason)
        return {"id": body.symbol or ""}

    return await _run(request, risk_page, "dashboard_risk", action, done="paused")


@router.post("/risk/resume", name="dashboard_risk_resume")
async def resume(request: Request, user: auth.Principal = ADMIN) -> Response:
    """Resume the market or one symbol; after the kill switch only with lift_halt (admin)."""
    async def action() -> dict:
        body = await _form(request, ResumeRequest, ("symbol", "reason", "lift_halt"))
        await _act(request, ops.resume, body.symbol, user.name, body.reason, body.lift_halt)
        return {"id": body.symbol or ""}

    return await _run(request, risk_page, "dashboard_risk", action, done="resumed")


@router.post("/risk/kill", name="dashboard_risk_kill")
async def kill(request: Request, user: auth.Principal = ADMIN) -> Response:
    """The kill switch (admin): halt trading and cancel every open order, held ones included."""
    async def action() -> dict:
        body = await _form(request, ReasonRequest, ("reason",))
        out = await _act(request, ops.kill, user.name, body.reason)
        return {"id": len(out.get("cancelled", []))}

    return await _run(request, risk_page, "dashboard_risk", action, done="killed")
