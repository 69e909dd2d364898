"""What the service's routes do to the engine. Every function here runs on the engine's worker thread
(`LiveService.call(fn, service, ...)`), the only thread that touches the Session and its journal.

Each change is one journal transaction (`journal.batch()`), committed before the route answers, and
carries its actor (order events' `actor`, risk events' reason "... by NAME", model events' detail). A
journal that cannot be written raises `JournalError`: the route answers 503 and nothing is acknowledged.
Refusals raise `ServiceError(status, message)` before anything changes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from quantlm.live.journal import JournalError
from quantlm.live.types import TERMINAL, Order, OrderStatus, TradingState
from quantlm.service.state import PUSHED_FILE, LiveService, ServiceError


def clean(x):
    """JSON-safe: NaN / inf -> None, numpy scalars -> Python, timestamps -> ISO strings."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set):
        return [clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, pd.Timestamp):
        return None if pd.isna(x) else x.isoformat()
    return x


def order_dict(o: Order) -> dict:
    return clean(o.to_dict())


def _stamp(svc: LiveService) -> pd.Timestamp:
    """Time of a manual action: the engine's clock in replay, the wall clock (not before the last bar) in push."""
    t = svc.now()
    if svc.mode == "push":
        t = max(t, pd.Timestamp.now())
    return t


def _known(svc: LiveService, symbol: str) -> None:
    if symbol not in svc.session.engine.index:
        raise ServiceError(422, f"unknown symbol {symbol!r}: not traded in this session")


def _journal_drained(svc: LiveService, ts) -> None:
    """Journal the risk manager's pause / resume / state events now (as the engine does after a bar)."""
    s = svc.session
    for e in s.risk.drain_events():
        s.journal.add_risk_event(ts=ts, client_id="", symbol=e.get("symbol", ""), rule=e.get("kind", ""),
                                 action=e.get("kind", ""), reason=e.get("detail", ""))


# ---------------------------------------------------------------------------------------------- orders
def submit(svc: LiveService, req: dict, actor: str) -> tuple[dict, bool]:
    """A manual order through the engine's risk manager; (order, created). Idempotent by client_id:
    the same id with the same content returns the stored order; with other content, 409. Buys and
    shorts also carry `value` = shares x (limit or last price), what the risk manager judges (review
    threshold, position); the paper exchange fills the shares asked, in whole lots."""
    from quantlm.live.oms import InvalidOrder, validate_order

    s = svc.session
    _known(svc, req["symbol"])
    cid = req.get("client_id") or s.journal.next_client_id("M")
    limit = req.get("limit_price")
    existing = s.journal.order(cid)
    if existing is not None:
        same = (existing.symbol == req["symbol"] and existing.side == req["side"]
                and math.isclose(existing.shares, float(req["shares"]))
                and ((limit is None and math.isnan(existing.limit_price)) or
                     (limit is not None and math.isclose(existing.limit_price, float(limit)))))
        if not same:
            raise ServiceError(409, f"client_id {cid} is already used by a different order")
        return order_dict(existing), False
    ts = _stamp(svc)
    reason = req.get("reason") or ""
    value = 0.0
    if req["side"] in ("buy", "short"):
        # the order's value for the risk rules: the requested shares at the limit, else the last price
        ref = float(limit) if limit is not None else float(s.engine.portfolio.last_price.get(req["symbol"], math.nan))
        if not (math.isfinite(ref) and ref > 0):
            raise ServiceError(409, f"no price for {req['symbol']} yet: a {req['side']} cannot be sized")
        value = float(req["shares"]) * ref
    order = Order(client_id=cid, symbol=req["symbol"], side=req["side"], shares=float(req["shares"]), value=value,
                  limit_price=float(limit) if limit is not None else math.nan, created=ts,
                  reason=f"manual: {reason}" if reason else "manual", model="", actor=actor)
    try:
        validate_order(order)
    except InvalidOrder as e:
        raise ServiceError(422, str(e)) from None
    try:
        with s.journal.batch():
            # the order and its states are journalled here; the risk manager's state is journalled at
            # each bar and admin action (a restart re-registers the journal's open orders with it), so
            # a submit does not rewrite the whole active-order list
            out = s.engine.submit(order, ts)
    except JournalError:
        _undo_submit(svc, order)
        raise
    svc.notify("submit", {"order": order_dict(out), "actor": actor})
    return order_dict(out), True


def _undo_submit(svc: LiveService, order: Order) -> None:
    """The journal refused the order: take it back out of the broker's queue and the risk manager."""
    s = svc.session
    s.engine.broker.cancel_order(order.client_id)
    s.risk.on_order_done(order)
    s.oms.reload()


def cancel(svc: LiveService, cid: str, actor: str, reason: str) -> dict:
    """Cancel an open order (held, checked or at the broker)."""
    s = svc.session
    order = s.journal.order(cid)
    if order is None:
        raise ServiceError(404, f"no order {cid}")
    if order.status in TERMINAL or order.status == OrderStatus.NEW:
        raise ServiceError(409, f"order {cid} is {order.status.value}: it cannot be cancelled")
    ts = _stamp(svc)
    with s.journal.batch():
        if order.status.active:
            s.engine.broker.cancel_order(cid)
        s.oms.mark(cid, OrderStatus.CANCELLED, f"cancelled by {actor}" + (f": {reason}" if reason else ""), actor, ts)
        s.risk.on_cancel(order, ts)
        s.risk.on_order_done(order)
        s.journal.set_state("risk", s.risk.state_dict())
    out = s.journal.order(cid)
    svc.notify("cancel", {"order": order_dict(out), "actor": actor})
    return order_dict(out)


def review(svc: LiveService, cid: str, actor: str, approve: bool, reason: str) -> dict:
    """Approve (send) or reject a held order; nobody reviews an order they submitted (four eyes)."""
    s = svc.session
    order = s.journal.order(cid)
    if order is None:
        raise ServiceError(404, f"no order {cid}")
    if order.status != OrderStatus.HELD:
        raise ServiceError(409, f"order {cid} is {order.status.value}, not held for review")
    if order.actor == actor:
        raise ServiceError(403, f"{actor} submitted order {cid}: another person must review it")
    if approve and s.risk.state == TradingState.HALTED:
        raise ServiceError(409, "trading is HALTED (kill switch): held orders cannot be sent")
    ts = _stamp(svc)
    verb = "approve" if approve else "reject"
    with s.journal.batch():
        out = s.engine.approve(cid, actor, ts) if approve else s.engine.reject(cid, actor, ts)
        s.journal.add_risk_event(ts=ts, client_id=cid, symbol=order.symbol, rule="review", action=verb,
                                 reason=f"{verb}d by {actor}" + (f": {reason}" if reason else ""))
        s.journal.set_state("risk", s.risk.state_dict())
    svc.notify(verb, {"order": order_dict(out), "actor": actor})
    return order_dict(out)


# ---------------------------------------------------------------------------------------------- risk
def pause(svc: LiveService, symbol: str | None, actor: str, reason: str) -> dict:
    """Pause one symbol (manual pause: only reducing orders) or the market (state REDUCING)."""
    s = svc.session
    ts = _stamp(svc)
    if s.risk.state == TradingState.HALTED:
        raise ServiceError(409, "trading is HALTED (kill switch): nothing to pause")
    with s.journal.batch():
        if symbol is None:
            s.risk.set_state(TradingState.REDUCING, ts)
        else:
            _known(svc, symbol)
            svc.pauses.symbols.add(symbol)
            s.journal.set_state("manual_pauses", sorted(svc.pauses.symbols))
        _journal_drained(svc, ts)
        s.journal.add_risk_event(ts=ts, client_id="", symbol=symbol or "", rule="manual_pause", action="pause",
                                 reason=f"paused by {actor}" + (f": {reason}" if reason else ""))
        s.journal.set_state("risk", s.risk.state_dict())
    svc.notify("pause", {"symbol": symbol, "actor": actor})
    return risk_view(svc)


def resume(svc: LiveService, symbol: str | None, actor: str, reason: str, lift_halt: bool) -> dict:
    """Lift a symbol's pauses, or (no symbol) the market: REDUCING -> ACTIVE and every pause in force;
    HALTED (kill switch) only with `lift_halt`."""
    s = svc.session
    ts = _stamp(svc)
    if symbol is None and s.risk.state == TradingState.HALTED and not lift_halt:
        raise ServiceError(409, "trading is HALTED by the kill switch: resume with lift_halt=true to trade again")
    with s.journal.batch():
        if symbol is not None:
            _known(svc, symbol)
            svc.pauses.symbols.discard(symbol)
            s.risk.resume(symbol, ts)
        else:
            s.risk.set_state(TradingState.ACTIVE, ts)
            s.risk.resume(None, ts)
            svc.pauses.symbols.clear()
        s.journal.set_state("manual_pauses", sorted(svc.pauses.symbols))
        _journal_drained(svc, ts)
        s.journal.add_risk_event(ts=ts, client_id="", symbol=symbol or "", rule="manual_pause", action="resume",
                                 reason=f"resumed by {actor}" + (f": {reason}" if reason else ""))
        s.journal.set_state("risk", s.risk.state_dict())
    svc.notify("resume", {"symbol": symbol, "actor": actor})
    return risk_view(svc)


def kill(svc: LiveService, actor: str, reason: str) -> dict:
    """Kill switch: HALT (persisted) and cancel every open order, held ones included."""
    s = svc.session
    ts = _stamp(svc)
    with s.journal.batch():
        ids = s.engine.kill(actor + (f": {reason}" if reason else ""), ts)
        _journal_drained(svc, ts)
    svc.notify("kill", {"cancelled": ids, "actor": actor})
    return {"state": s.risk.state.value, "cancelled": ids}


def risk_view(svc: LiveService, last: int = 50) -> dict:
    s = svc.session
    auto = [sym for sym in s.symbols if s.risk.paused(sym)]
    events = s.journal.risk_events().tail(last)
    return clean({"state": s.risk.state.value, "manual_pauses": sorted(svc.pauses.symbols), "auto_pauses": auto,
                  "config": s.risk.config.model_dump(), "events": events.to_dict("records")})


# ---------------------------------------------------------------------------------------------- models
def switch_model(svc: LiveService, to: str, actor: str, reason: str) -> dict:
    sc = svc.session.scorer
    if not hasattr(sc, "_switch") or not hasattr(sc, "active"):
        raise ServiceError(409, "no backup model is configured: nothing to switch to")
    if sc.active == to:
        raise ServiceError(409, f"the {to} model is already in use")
    ts = _stamp(svc)
    with svc.session.journal.batch():
        sc._switch(ts, to, "manual", f"by {actor}" + (f": {reason}" if reason else ""))
    svc.notify("switch", {"to": to, "actor": actor})
    return models_view(svc)


def models_view(svc: LiveService, last: int = 20) -> dict:
    s = svc.session
    sc = s.scorer
    names = getattr(sc, "names", None) or {"primary": getattr(sc, "name", "")}
    hist = s.engine.timing.history[-1000:]
    return clean({"active": svc.model_in_use(), "active_role": getattr(sc, "active", "primary"),
                  "primary": names.get("primary"), "backup": names.get("backup"),
                  "decision_ms_p50": float(np.percentile(hist, 50)) if hist else None,
                  "decision_ms_p99": float(np.percentile(hist, 99)) if hist else None,
                  "monitor": s.monitor.snapshot(), "events": s.journal.model_events().tail(last).to_dict("records")})


# ---------------------------------------------------------------------------------------------- clock
def step(svc: LiveService, n: int, actor: str) -> dict:
    """Replay mode: trade the next `n` stored bars."""
    if svc.mode != "replay" or svc.clock is None:
        raise ServiceError(409, "the clock steps only in replay mode (push mode takes bars from POST /api/v1/bars)")
    done = []
    for _ in range(n):
        ts = svc.clock.step()
        if ts is None:
            break
        svc.bars_processed += 1
        done.append(ts)
        svc.notify("bar", {"ts": str(ts), "actor": actor})
    return clean({"steps": len(done), "last_bar": done[-1] if done else svc.session.engine.last_ts,
                  "done": svc.clock.done})


def push_bars(svc: LiveService, ts: pd.Timestamp, rows: list[dict], day_end: bool, actor: str) -> dict:
    """Push mode: one timestamp's bars through `process_bar` (appended to OUT/pushed_bars.csv first)."""
    s = svc.session
    if svc.mode != "push":
        raise ServiceError(409, "bars are pushed only in push mode (replay mode steps stored bars)")
    last = s.engine.last_ts
    if last is not None and ts <= pd.Timestamp(last):
        raise ServiceError(409, f"bar time {ts} is not after the last bar {last}")
    seen = set()
    for r in rows:
        _known(svc, r["symbol"])
        if r["symbol"] in seen:
            raise ServiceError(422, f"symbol {r['symbol']} appears twice in one push")
        seen.add(r["symbol"])
    bars = pd.DataFrame(rows).assign(ts=ts)
    path = svc.out / PUSHED_FILE
    bars.to_csv(path, mode="a", header=not path.exists(), index=False)
    records = s.process_bar(ts, bars, day_end=day_end)
    svc.bars_processed += 1
    svc.notify("bar", {"ts": str(ts), "actor": actor})
    return clean({"ts": ts, "bars": len(rows), "executions": len(records), "last_bar": s.engine.last_ts})


# ---------------------------------------------------------------------------------------------- reads
def status(svc: LiveService) -> dict:
    s = svc.session
    clock = svc.clock
    return clean({"mode": svc.mode, "clock": svc.now(), "last_bar": s.engine.last_ts,
                  "next_bar": clock.next_ts if clock is not None else None,
                  "done": clock.done if clock is not None else False, "trading_state": s.risk.state.value,
                  "model": svc.model_in_use(), "bars_processed": svc.bars_processed,
                  "open_orders": len(s.oms.open_orders()) if hasattr(s.oms, "open_orders") else None,
                  "held_orders": len(list(s.oms.held())), "manual_pauses": sorted(svc.pauses.symbols),
                  "started_at": svc.started_at, "market": s.market, "benchmark": s.benchmark})


def account(svc: LiveService) -> dict:
    e = svc.session.engine
    pf = e.portfolio
    gross, equity = pf.gross_and_equity()
    return clean({"cash": pf.cash, "equity": equity, "gross": gross, "exposure": gross / equity if equity else None,
                  "day_start_equity": e.day_start_equity, "pnl_today": equity - e.day_start_equity,
                  "pnl_total": equity - svc.cfg.cash, "traded_today": e.traded_today, "start_cash": svc.cfg.cash})


def positions(svc: LiveService) -> list[dict]:
    pf = svc.session.engine.portfolio
    _, equity = pf.gross_and_equity()
    out = []
    for sym, sh in sorted(pf.shares.items()):
        if abs(sh) < 1e-9:
            continue
        price = pf.last_price.get(sym, math.nan)
        out.append({"symbol": sym, "shares": sh, "sellable": pf.sellable.get(sym, 0.0), "last_price": price,
                    "value": sh * price, "weight": sh * price / equity if equity else None})
    return clean(out)


def orders(svc: LiveService, status_filter: str | None, limit: int) -> list[dict]:
    rows = svc.session.journal.orders(status_filter, last=limit)
    return [order_dict(o) for o in rows][::-1]


def held(svc: LiveService) -> list[dict]:
    return [order_dict(o) for o in svc.session.journal.orders(OrderStatus.HELD)]


def fills(svc: LiveService, limit: int) -> list[dict]:
    df = svc.session.journal.fills()
    return clean(df.tail(limit).iloc[::-1].to_dict("records"))


def signals(svc: LiveService, limit: int) -> dict:
    r = svc.recorder
    if r is None or r.last_scores is None:
        return {"ts": None, "model": svc.model_in_use(), "scores": []}
    syms = svc.session.engine.symbols
    order = np.argsort(-np.nan_to_num(r.last_scores, nan=-np.inf), kind="stable")
    rows = [{"symbol": syms[j], "score": float(r.last_scores[j]), "rank": k + 1} for k, j in enumerate(order[:limit])]
    return clean({"ts": r.last_ts, "model": svc.model_in_use(), "scores": rows})


def equity(svc: LiveService, limit: int) -> list[dict]:
    """Equity rows (ts, equity, cash, gross, costs) with the benchmark's close when there is one."""
    s = svc.session
    df = s.journal.equity().tail(limit)
    cols = [c for c in ("ts", "equity", "cash", "gross", "costs") if c in df]
    df = df[cols].copy()
    if s.benchmark and len(df):
        b = s.store.bars([s.benchmark], start=df["ts"].iloc[0], end=df["ts"].iloc[-1])
        if len(b):
            close = pd.Series(b["close"].to_numpy(), index=pd.DatetimeIndex(b["ts"]))
            df["benchmark"] = close.reindex(pd.DatetimeIndex(df["ts"])).ffill().to_numpy()
    return clean(df.to_dict("records"))
