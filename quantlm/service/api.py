"""The service's routes under /api/v1 (see `ROLE_OF` for who may call what).

Every route but `health` needs an API key or a dashboard session; mutating routes need the role in
`ROLE_OF` and are journaled with the caller's name. Each handler runs its engine operation on the
engine's worker thread (`LiveService.call`) and answers only after the journal committed it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from quantlm.service import operations as ops
from quantlm.service.auth import Principal, require_role
from quantlm.service.schemas import (
    CLIENT_ID_PATTERN,
    BarsRequest,
    OrderRequest,
    PauseRequest,
    ReasonRequest,
    ResumeRequest,
    StepRequest,
    SwitchRequest,
)
from quantlm.service.state import LiveService

router = APIRouter(prefix="/api/v1")

Viewer = Annotated[Principal, Depends(require_role("viewer"))]
Trader = Annotated[Principal, Depends(require_role("trader"))]
Reviewer = Annotated[Principal, Depends(require_role("reviewer"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]
OrderId = Annotated[str, Path(pattern=CLIENT_ID_PATTERN, max_length=64, description="The order's client id")]
Limit = Annotated[int, Query(ge=1, le=10_000)]
STATUSES = Literal["new", "risk_checked", "held", "sent", "partial", "unknown", "filled", "cancelled", "rejected",
                   "expired"]


def service(request: Request) -> LiveService:
    return request.app.state.service


async def run(request: Request, fn, *args: Any) -> Any:
    """`fn(service, *args)` on the engine's worker thread."""
    svc = service(request)
    return await svc.call(fn, svc, *args)


async def read(request: Request, who, fn, *args: Any) -> Any:
    """A read through the service's cache (see `LiveService.read`), as `who` (for read-your-writes)."""
    return await service(request).read(fn, *args, reader=getattr(who, "name", ""))


@router.get("/health", tags=["status"], summary="Liveness (no auth)")
async def health(request: Request) -> dict:
    svc = service(request)
    return {"ok": True, "ready": svc.ready, "mode": svc.mode}


@router.get("/status", tags=["status"], summary="Clock, mode, last bar, trading state, model in use")
async def status(request: Request, who: Viewer) -> dict:
    return await read(request, who, ops.status)


@router.get("/account", tags=["portfolio"], summary="Cash, equity, exposure, P&L")
async def account(request: Request, who: Viewer) -> dict:
    return await read(request, who, ops.account)


@router.get("/positions", tags=["portfolio"], summary="Positions (shares, sellable, value, weight)")
async def positions(request: Request, who: Viewer) -> list[dict]:
    return await read(request, who, ops.positions)


@router.get("/equity", tags=["portfolio"], summary="Equity per bar, with the benchmark's close")
async def equity(request: Request, who: Viewer, limit: Limit = 2000) -> list[dict]:
    return await read(request, who, ops.equity, limit)


@router.get("/orders", tags=["orders"], summary="Orders, newest first (optionally one status)")
async def orders(request: Request, who: Viewer, status: STATUSES | None = None, limit: Limit = 500) -> list[dict]:
    return await read(request, who, ops.orders, status, limit)


@router.get("/fills", tags=["orders"], summary="Fills, newest first")
async def fills(request: Request, who: Viewer, limit: Limit = 500) -> list[dict]:
    return await read(request, who, ops.fills, limit)


@router.post("/orders", tags=["orders"], status_code=201, summary="Submit a manual order (through the risk manager)")
async def submit(request: Request, body: OrderRequest, who: Trader) -> dict:
    """The order is journaled (with its risk decision: sent, held for review or rejected) before the answer.
    Resending the same client_id returns the stored order (`created: false`)."""
    order, created = await run(request, ops.submit, body.model_dump(), who.name)
    return {"order": order, "created": created}


@router.post("/orders/{client_id}/cancel", tags=["orders"], summary="Cancel an open order")
async def cancel(request: Request, client_id: OrderId, who: Trader, body: ReasonRequest | None = None) -> dict:
    return await run(request, ops.cancel, client_id, who.name, body.reason if body else "")


@router.get("/review", tags=["review"], summary="Orders held for manual review")
async def review_queue(request: Request, who: Viewer) -> list[dict]:
    return await read(request, who, ops.held)


@router.post("/review/{client_id}/approve", tags=["review"], summary="Approve a held order (it is sent)")
async def approve(request: Request, client_id: OrderId, who: Reviewer, body: ReasonRequest | None = None) -> dict:
    return await run(request, ops.review, client_id, who.name, True, body.reason if body else "")


@router.post("/review/{client_id}/reject", tags=["review"], summary="Reject a held order")
async def reject(request: Request, client_id: OrderId, who: Reviewer, body: ReasonRequest | None = None) -> dict:
    return await run(request, ops.review, client_id, who.name, False, body.reason if body else "")


@router.get("/risk", tags=["risk"], summary="Trading state, pauses, risk config and recent risk events")
async def risk(request: Request, who: Viewer) -> dict:
    return await read(request, who, ops.risk_view)


@router.post("/risk/pause", tags=["risk"], summary="Pause a symbol, or the market (only reducing orders)")
async def pause(request: Request, body: PauseRequest, who: Admin) -> dict:
    return await run(request, ops.pause, body.symbol, who.name, body.reason)


@router.post("/risk/resume", tags=["risk"], summary="Resume a symbol, or the market")
async def resume(request: Request, body: ResumeRequest, who: Admin) -> dict:
    return await run(request, ops.resume, body.symbol, who.name, body.reason, body.lift_halt)


@router.post("/risk/kill", tags=["risk"], summary="Kill switch: halt trading and cancel every open order")
async def kill(request: Request, who: Admin, body: ReasonRequest | None = None) -> dict:
    return await run(request, ops.kill, who.name, body.reason if body else "")


@router.get("/models", tags=["models"], summary="Active and backup model, latency and monitoring numbers")
async def models(request: Request, who: Viewer) -> dict:
    return await read(request, who, ops.models_view)


@router.post("/models/switch", tags=["models"], summary="Serve the primary or the backup model")
async def switch(request: Request, body: SwitchRequest, who: Admin) -> dict:
    return await run(request, ops.switch_model, body.to, who.name, body.reason)


@router.get("/signals", tags=["models"], summary="The last decision's scores per symbol, best first")
async def signals(request: Request, who: Viewer, limit: Limit = 500) -> dict:
    return await read(request, who, ops.signals, limit)


@router.post("/bars", tags=["clock"], summary="Push mode: the bars of one timestamp (a feed)")
async def push_bars(request: Request, body: BarsRequest, who: Admin) -> dict:
    import pandas as pd

    rows = [b.model_dump(exclude_none=True) for b in body.bars]
    return await run(request, ops.push_bars, pd.Timestamp(body.ts), rows, body.day_end, who.name)


@router.post("/clock/step", tags=["clock"], summary="Replay mode: trade the next n stored bars")
async def clock_step(request: Request, who: Admin, body: StepRequest | None = None) -> dict:
    return await run(request, ops.step, body.n if body else 1, who.name)
