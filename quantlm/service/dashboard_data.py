"""What the dashboard pages show, read from a live `Session` ON THE SERVICE'S WORKER THREAD.

Every function here takes the live `quantlm.live.replay.Session` and returns plain Python data
(dicts, lists, strings, floats, pandas objects that no longer reference the journal). The dashboard
runs them through the service (`LiveService`), so the journal's SQLite connection and the engine are
only ever touched from the worker thread. The plotly figures are built later, on the request thread,
from the returned data (`equity_charts`, `ic_chart`), in the backtest report's style.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from quantlm.live.types import Order, OrderStatus

RECENT_ORDERS = 100
RECENT_FILLS = 100
RECENT_EVENTS = 50
USER_ACTORS_EXCLUDED = {"engine", "risk", "broker", "replay"}


def _f(x: Any) -> float:
    """A float (NaN for None / non-numbers)."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def order_row(o: Order, last_price: float = math.nan) -> dict:
    """An order as a template row: its fields plus the estimated value at `last_price`."""
    d = o.to_dict()
    d["est_value"] = o.value if o.value > 0 else o.shares * (o.limit_price if _f(o.limit_price) > 0 else last_price)
    return d


def status(session) -> dict:
    """Trading state, last bar, serving model and market (the header of every page)."""
    scorer = session.scorer
    active = getattr(scorer, "active", None)
    names = getattr(scorer, "names", None)
    model = names.get(active, active) if isinstance(names, dict) and active else getattr(scorer, "name", "")
    last = session.journal.get_state("last_bar") or session.engine.last_ts
    return {"state": str(getattr(session.risk.state, "value", session.risk.state)), "last_bar": str(last or ""),
            "model": str(model or ""), "market": str(session.market)}


def account(session) -> dict:
    """Cash, equity, gross exposure and the session's P&L (currency) from the engine's portfolio."""
    pf = session.engine.portfolio
    gross, equity = pf.gross_and_equity()
    start = _f(getattr(session.engine, "day_start_equity", math.nan))
    cash0 = _f(session.cfg.cash)
    return {"equity": equity, "cash": pf.cash, "gross": gross, "exposure": gross / equity if equity else math.nan,
            "pnl_today": equity - start, "pnl_total": equity - cash0, "return_total": equity / cash0 - 1.0,
            "positions": sum(1 for v in pf.shares.values() if v), "traded_today": session.engine.traded_today}


def overview(session) -> dict:
    """Account numbers, open / held order counts, the equity table and the benchmark's closes."""
    j = session.journal
    eq = j.equity()
    bench = None
    if len(eq):
        eq = eq.assign(ts=pd.to_datetime(eq["ts"])).set_index("ts")
        if session.benchmark:
            b = session.store.bars([session.benchmark], start=eq.index[0], end=eq.index[-1])
            if len(b):
                bench = pd.Series(b["close"].to_numpy(float), index=pd.DatetimeIndex(b["ts"]))
    opened = j.open_orders()
    return {"account": account(session), "equity": eq[[c for c in ("equity", "cash", "gross", "costs") if c in eq]],
            "benchmark": bench, "open_orders": len(opened),
            "held": sum(1 for o in opened if o.status == OrderStatus.HELD), "cash0": float(session.cfg.cash)}


def positions(session) -> dict:
    """Positions with sellable shares, last price, market value and weight of equity."""
    pf = session.engine.portfolio
    acc = account(session)
    rows = []
    for sym, shares in sorted(pf.shares.items()):
        if not shares:
            continue
        price = _f(pf.last_price.get(sym))
        value = shares * price
        rows.append({"symbol": sym, "shares": shares, "sellable": _f(pf.sellable.get(sym, 0.0)), "price": price,
                     "value": value, "weight": value / acc["equity"] if acc["equity"] else math.nan})
    rows.sort(key=lambda r: -abs(r["value"]) if math.isfinite(r["value"]) else 0.0)
    return {"account": acc, "positions": rows}


def orders(session) -> dict:
    """Open orders, the most recent orders (newest first) and the most recent fills."""
    j = session.journal
    last = session.engine.portfolio.last_price
    opened = [order_row(o, _f(last.get(o.symbol))) for o in j.open_orders()]
    recent = [order_row(o, _f(last.get(o.symbol))) for o in j.orders()[-RECENT_ORDERS:]][::-1]
    reasons = _last_reasons(j)
    for row in opened + recent:
        row["reason"] = reasons.get(row["client_id"], row["reason"])
    fills = j.fills()
    rows = []
    if len(fills):
        for f in fills.tail(RECENT_FILLS).iloc[::-1].to_dict("records"):
            f["value"] = _f(f.get("shares")) * _f(f.get("price"))
            rows.append(f)
    return {"open_orders": opened, "recent": recent, "fills": rows}


def _last_reasons(j) -> dict[str, str]:
    """client id -> the reason of its latest order event (why it is where it is), when not empty."""
    ev = j.events()
    if not len(ev):
        return {}
    ev = ev[ev["reason"].fillna("").astype(str) != ""]
    return dict(zip(ev["client_id"], ev["reason"].astype(str)))


def review(session) -> dict:
    """The review queue (held orders, with why they were held) and the recent review decisions."""
    j = session.journal
    last = session.engine.portfolio.last_price
    ev = j.events()
    held_reason: dict[str, str] = {}
    decided: list[dict] = []
    if len(ev):
        held = ev[ev["status"] == OrderStatus.HELD.value]
        held_reason = dict(zip(held["client_id"], held["reason"].fillna("").astype(str)))
        after = ev[ev["client_id"].isin(set(held["client_id"])) & ev["status"].isin(
            [OrderStatus.SENT.value, OrderStatus.REJECTED.value, OrderStatus.EXPIRED.value])]
        first = after.drop_duplicates("client_id", keep="first").tail(20).iloc[::-1]
        for cid, actor in zip(first["client_id"], first["actor"].fillna("").astype(str)):
            o = j.order(cid)
            if o is not None:
                row = order_row(o, _f(last.get(o.symbol)))
                row["decided_by"] = actor
                decided.append(row)
    queue = []
    for o in j.orders(OrderStatus.HELD):
        row = order_row(o, _f(last.get(o.symbol)))
        row["review_reason"] = held_reason.get(o.client_id, "")
        queue.append(row)
    return {"held": queue, "decided": decided, "threshold": _f(getattr(session.risk.config, "review_threshold", None))}


def risk(session, manual: set[str] | None = None) -> dict:
    """Trading state, paused symbols (by the rules, and `manual`: by hand), the risk limits and the recent
    risk events (newest first)."""
    rm = session.risk
    paused = sorted({k for k, v in getattr(rm, "_paused", {}).items() if v} | set(manual or ()))
    cfg = rm.config
    limits = [(k, _show(v)) for k, v in (cfg.model_dump() if hasattr(cfg, "model_dump") else vars(cfg)).items()]
    ev = session.journal.risk_events()
    events = ev.tail(RECENT_EVENTS).iloc[::-1].to_dict("records") if len(ev) else []
    return {"state": str(getattr(rm.state, "value", rm.state)), "paused": paused, "limits": limits,
            "events": events, "daily_orders": rm.daily_orders, "active": len(rm.active)}


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def models(session) -> dict:
    """Primary / backup names, the serving one, monitoring numbers, rolling IC and the switches."""
    scorer = session.scorer
    names = dict(getattr(scorer, "names", {}) or {})
    if not names:
        names = {"primary": str(getattr(scorer, "name", "primary"))}
    active = getattr(scorer, "active", "primary")
    snap = session.monitor.snapshot() if hasattr(session.monitor, "snapshot") else {}
    ic = [(str(q.ts), q.ic, q.rank_ic) for q in session.monitor.sessions("live")]
    ev = session.journal.model_events()
    events = ev.tail(RECENT_EVENTS).iloc[::-1].to_dict("records") if len(ev) else []
    return {"names": names, "active": active, "monitor": snap, "ic": ic, "events": events,
            "switches": int(len(ev)), "last_ms": dict(getattr(scorer, "last_ms", {}) or {})}


# ---------------------------------------------------------------------- charts (request thread)
def _result(equity: pd.Series, benchmark: pd.Series | None, cash0: float) -> SimpleNamespace:
    """What `quantlm.backtest.report`'s figures read: equity, benchmark closes, returns()."""
    ns = SimpleNamespace(equity=equity, benchmark=None if benchmark is None else benchmark.reindex(equity.index).ffill())

    def returns() -> pd.Series:
        prev = equity.shift(1)
        prev.iloc[:1] = cash0
        return (equity / prev - 1.0).rename("returns")

    ns.returns = returns
    return ns


def equity_charts(data: dict) -> dict[str, str] | None:
    """HTML divs (no plotly.js: the page loads it once): growth of 1 against the benchmark with the
    excess, P&L per session, gross exposure. None before the first bar."""
    import plotly.graph_objects as go

    from quantlm.backtest.report import BLUE, GREEN, RED, _figure_html, equity_figure

    eq = data["equity"]
    if eq is None or not len(eq):
        return None
    equity = eq["equity"].astype(float)
    res = _result(equity, data.get("benchmark"), data["cash0"])
    fig_eq = equity_figure(res)
    fig_eq.update_layout(height=440)
    daily = equity.groupby(pd.DatetimeIndex(equity.index).normalize()).last()
    pnl = daily.diff()
    pnl.iloc[:1] = daily.iloc[:1] - data["cash0"]
    fig_pnl = go.Figure(go.Bar(x=pnl.index, y=pnl, marker_color=np.where(pnl >= 0, GREEN, RED), name="P&L"))
    fig_pnl.update_layout(height=300, title="P&L per session", showlegend=False, bargap=0.1)
    expo = (eq["gross"].astype(float) / equity * 100) if "gross" in eq else equity * np.nan
    fig_ex = go.Figure(go.Scatter(x=expo.index, y=expo, fill="tozeroy", line=dict(color=BLUE), name="exposure",
                                  fillcolor="rgba(44,127,184,0.12)"))
    fig_ex.update_layout(height=300, title="Gross exposure (% of equity)", yaxis_ticksuffix="%", showlegend=False)
    return {"equity": _figure_html(fig_eq, "fig-equity"), "pnl": _figure_html(fig_pnl, "fig-pnl"),
            "exposure": _figure_html(fig_ex, "fig-exposure")}


def ic_chart(ic: list[tuple[str, float, float]]) -> str | None:
    """Rank IC per labelled session with a rolling mean (the report's IC chart); None without sessions."""
    if not ic:
        return None
    from quantlm.backtest.report import _figure_html, ic_figures

    frame = pd.DataFrame(ic, columns=["ts", "ic", "rank_ic"]).assign(ts=lambda d: pd.to_datetime(d["ts"]))
    series, _ = ic_figures(frame.set_index("ts"))
    series.update_layout(height=300, title="Rolling IC of the served scores")
    return _figure_html(series, "fig-ic")
