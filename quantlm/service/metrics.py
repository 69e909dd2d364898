"""Prometheus metrics of the trading service (`GET /metrics`), in a registry owned by the service.

Nothing here touches the live `Session` from a request thread: the engine, its journal (one SQLite
connection, usable only from the thread that opened it) and the monitor belong to the service's worker
thread. A scrape therefore runs `session_snapshot(session)` ON THE WORKER (through the service), which
returns a plain dict, and the custom collector turns that dict into metric families (`collect_from`).
The decision latency histogram is fed on the worker too, from the engine's per-decision timings
(`ServiceMetrics.sync_decisions`, called by the snapshot and by the listener `attach` registers).

Use from the app: `attach(service)` once after building the LiveService (registers the listener), and
in the route `body, ctype = await render(service)` -> `Response(body, media_type=ctype)`.

Metrics (all prefixed `quantlm_`; currency = the account currency):

- `decision_latency_seconds` (histogram, seconds; buckets 0.1 ms .. 50 ms): one observation per engine
  decision (score -> strategy -> risk -> orders), from `engine.timing.history`.
- `orders{status}` (gauge): orders in the journal in each state (every `OrderStatus`, 0 included).
- `risk_events_total{action,rule}` (counter): the journal's risk events (action reject | hold | halt |
  pause ...; rule e.g. review, order_value, kill_switch), since the journal was created.
- `risk_rejections_total{rule}` / `risk_holds_total{rule}` (counters): the reject / hold subsets of it.
- `model_active{model,role}` (gauge): 1 for the model serving scores, 0 for the other (role primary |
  backup; a single model without fallback has role primary).
- `model_switches_total{from_model,to_model,reason}` (counter): model events in the journal (fallback
  switches: error | non_finite | latency | ic_drift | recovered | backup_error).
- `model_ic{stream}`, `model_rank_ic{stream}`, `model_accuracy{stream}` (gauges, fractions; NaN until
  labelled), `model_sessions_labelled{stream}`: LiveMonitor's rolling quality; stream live (the scores
  acted on), primary, backup.
- `equity`, `cash`, `gross_exposure` (gauges, currency), `gross_exposure_ratio` (gauge, gross / equity),
  `positions` (gauge, symbols held).
- `trading_state{state}` (gauge, 1 for the current of active | reducing | halted).
- `last_bar_timestamp_seconds` (gauge, Unix seconds of the last processed bar's time stamp, read as UTC).
- `snapshot_errors_total` (counter): scrapes whose snapshot failed (the error is logged, the rest served).

The snapshot (`session_snapshot`, also usable for a status route; JSON-safe: NaN becomes None)::

    {"orders_by_status": {"new": 0, "risk_checked": 0, "held": 1, "sent": 3, ..., "expired": 0},
     "risk_events": [{"action": "hold", "rule": "review", "count": 2}, ...],
     "model_events": [{"from": "primary", "to": "backup", "reason": "error", "count": 1}, ...],
     "models": {"active": "backup", "active_role": "backup", "roles": {"primary": "p", "backup": "b"}},
     "quality": {"live": {"ic": 0.03, "rank_ic": 0.04, "accuracy": 0.52, "sessions_labelled": 18}, ...},
     "account": {"equity": 1.01e6, "cash": 2.3e5, "gross": 7.8e5, "gross_ratio": 0.77, "positions": 5},
     "trading_state": "active", "last_bar": "2022-05-06 00:00:00", "decisions": 42}
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from quantlm.live.types import OrderStatus, TradingState

log = logging.getLogger(__name__)

PREFIX = "quantlm"
# seconds: 0.1 ms .. 50 ms (a decision takes ~1-10 ms), and the +Inf bucket prometheus_client adds
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05)
QUALITY_KEYS = ("ic", "rank_ic", "accuracy", "sessions_labelled")


def _finite(x: Any) -> float | None:
    """A float, or None for NaN / inf / missing (JSON-safe)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


# ---------------------------------------------------------------------- snapshot (worker thread only)
def session_snapshot(session) -> dict:
    """A plain, JSON-safe dict of what the metrics show (shape in the module docstring).

    Must run on the thread that owns `session` (its journal connection is bound to that thread)."""
    journal = session.journal
    counts = {s.value: 0 for s in OrderStatus}
    for status, n in journal._query("SELECT status, COUNT(*) FROM orders GROUP BY status"):
        counts[str(status)] = int(n)
    risk = [{"action": a or "", "rule": r or "", "count": int(n)} for a, r, n in journal._query(
        "SELECT action, rule, COUNT(*) FROM risk_events GROUP BY action, rule ORDER BY action, rule")]
    model_events = [{"from": f or "", "to": t or "", "reason": r or "", "count": int(n)} for f, t, r, n in journal._query(
        "SELECT model_from, model_to, reason, COUNT(*) FROM model_events GROUP BY model_from, model_to, reason "
        "ORDER BY model_from, model_to, reason")]
    engine = session.engine
    pf = engine.portfolio
    gross, equity = pf.gross_and_equity()
    monitor = session.monitor.snapshot() if session.monitor is not None else {}
    streams = ["live", *sorted({k[: -len("_rank_ic")] for k in monitor if k.endswith("_rank_ic")})]
    quality = {}
    for stream in streams:
        pre = "" if stream == "live" else f"{stream}_"
        if f"{pre}ic" in monitor:
            quality[stream] = {k: _finite(monitor.get(f"{pre}{k}")) for k in QUALITY_KEYS}
    last_bar = journal.get_state("last_bar")
    return {
        "orders_by_status": counts,
        "risk_events": risk,
        "model_events": model_events,
        "models": model_info(session.scorer),
        "quality": quality,
        "account": {"equity": _finite(equity), "cash": _finite(pf.cash), "gross": _finite(gross),
                    "gross_ratio": _finite(gross / equity) if equity else None,
                    "positions": sum(1 for q in pf.shares.values() if q != 0)},
        "trading_state": _trading_state(session.risk),
        "last_bar": None if last_bar is None else str(last_bar),
        "decisions": len(engine.timing.history),
    }


def model_info(scorer) -> dict:
    """{"active": name, "active_role": role, "roles": {role: name}} of a scorer or a FallbackScorer."""
    names = getattr(scorer, "names", None)
    if isinstance(names, dict) and hasattr(scorer, "active"):
        role = str(scorer.active)
        return {"active": str(names.get(role, role)), "active_role": role, "roles": {str(k): str(v) for k, v in names.items()}}
    name = str(getattr(scorer, "name", "") or type(scorer).__name__)
    return {"active": name, "active_role": "primary", "roles": {"primary": name}}


def _trading_state(risk) -> str:
    state = getattr(risk, "state", None)
    return str(getattr(state, "value", state) or TradingState.ACTIVE.value)


# ---------------------------------------------------------------------- collector
class SnapshotCollector:
    """A prometheus_client collector that renders the snapshot it is given (`current`) at collect time."""

    def __init__(self) -> None:
        self.current: dict | None = None

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: series depend on the snapshot

    def collect(self) -> Iterable[Metric]:
        if self.current is not None:
            yield from collect_from(self.current)


def _gauge(name: str, doc: str, labels: list[str] | None = None, unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels, unit=unit)


def collect_from(snap: dict) -> list[Metric]:
    """Metric families (all but the latency histogram) from a `session_snapshot` dict."""
    out: list[Metric] = []
    g = _gauge("orders", "Orders in the journal by current status.", ["status"])
    for status, n in sorted(snap.get("orders_by_status", {}).items()):
        g.add_metric([status], float(n))
    out.append(g)

    risk = snap.get("risk_events", [])
    c = CounterMetricFamily(f"{PREFIX}_risk_events", "Risk events in the journal by action and rule.",
                            labels=["action", "rule"])
    for e in risk:
        c.add_metric([e["action"], e["rule"]], float(e["count"]))
    out.append(c)
    for action, name, doc in (("reject", "risk_rejections", "Orders rejected by a risk rule."),
                              ("hold", "risk_holds", "Orders held for manual review by a risk rule.")):
        c = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=["rule"])
        for e in risk:
            if e["action"] == action:
                c.add_metric([e["rule"]], float(e["count"]))
        out.append(c)

    models = snap.get("models", {})
    g = _gauge("model_active", "1 for the model serving the scores, 0 for the other.", ["model", "role"])
    for role, name in sorted(models.get("roles", {}).items()):
        g.add_metric([name, role], 1.0 if role == models.get("active_role") else 0.0)
    out.append(g)
    c = CounterMetricFamily(f"{PREFIX}_model_switches", "Model switches (automatic fallback and recovery).",
                            labels=["from_model", "to_model", "reason"])
    for e in snap.get("model_events", []):
        c.add_metric([e["from"], e["to"], e["reason"]], float(e["count"]))
    out.append(c)

    quality = snap.get("quality", {})
    for key, doc in (("ic", "Rolling mean IC (Pearson) of the scores against realised next-open returns."),
                     ("rank_ic", "Rolling mean rank IC (Spearman)."),
                     ("accuracy", "Rolling directional accuracy (fraction of pairs on the right side of the median)."),
                     ("sessions_labelled", "Labelled sessions in the rolling window.")):
        g = _gauge(f"model_{key}", doc, ["stream"])
        for stream, q in sorted(quality.items()):
            g.add_metric([stream], _nan(q.get(key)))
        out.append(g)

    acct = snap.get("account", {})
    for key, name, doc in (("equity", "equity", "Account equity at the last marks (currency)."),
                           ("cash", "cash", "Cash (currency)."),
                           ("gross", "gross_exposure", "Gross exposure: sum of |position x last price| (currency)."),
                           ("gross_ratio", "gross_exposure_ratio", "Gross exposure / equity."),
                           ("positions", "positions", "Symbols with a non-zero position.")):
        g = _gauge(name, doc)
        g.add_metric([], _nan(acct.get(key)))
        out.append(g)

    g = _gauge("trading_state", "1 for the current trading state (active, reducing, halted).", ["state"])
    current = snap.get("trading_state")
    for s in TradingState:
        g.add_metric([s.value], 1.0 if s.value == current else 0.0)
    out.append(g)
    g = _gauge("last_bar_timestamp_seconds", "Time stamp of the last processed bar (Unix seconds, read as UTC).")
    g.add_metric([], _bar_seconds(snap.get("last_bar")))
    out.append(g)
    g = _gauge("decisions", "Engine decisions since the service started.")
    g.add_metric([], float(snap.get("decisions", 0)))
    out.append(g)
    return out


def _bar_seconds(text: str | None) -> float:
    if not text:
        return math.nan
    import pandas as pd

    ts = pd.Timestamp(text)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
    return ts.value / 1e9


# ---------------------------------------------------------------------- the service's metrics
class ServiceMetrics:
    """The registry, the snapshot collector and the decision latency histogram of one service."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = SnapshotCollector()
        self.registry.register(self.collector)
        self.decision_latency = Histogram(f"{PREFIX}_decision_latency_seconds",
                                          "Engine decision latency: score -> strategy -> risk -> orders (seconds).",
                                          buckets=LATENCY_BUCKETS, registry=self.registry)
        self.snapshot_errors = _counter(self.registry, "snapshot_errors", "Scrapes whose session snapshot failed.")
        self._seen = 0  # decisions of engine.timing.history already observed
        self._history_id: int | None = None
        self._service: weakref.ref | None = None  # set by `attach`
        self._lock = threading.Lock()

    def sync_decisions(self, history: list[float]) -> int:
        """Observe the decisions (ms) of `history` not seen yet; returns how many. Call on the worker thread."""
        if id(history) != self._history_id or len(history) < self._seen:  # a new engine (restart)
            self._history_id, self._seen = id(history), 0
        new = history[self._seen:]
        for ms in new:
            self.decision_latency.observe(float(ms) / 1e3)
        self._seen += len(new)
        return len(new)

    def after_bar(self, session) -> None:
        """Hook for the service after each processed bar (worker thread): feed the latency histogram."""
        self.sync_decisions(session.engine.timing.history)

    def on_event(self, event: str, detail: dict) -> None:
        """A `LiveService.listeners` callback (worker thread): sync the histogram after any operation."""
        service = self._service() if self._service is not None else None
        session = getattr(service, "session", None)
        if session is not None:
            self.after_bar(session)

    def snapshot(self, session) -> dict:
        """Worker thread: sync the histogram and take the session snapshot."""
        self.after_bar(session)
        return session_snapshot(session)

    def render(self, snap: dict | None) -> tuple[bytes, str]:
        """Prometheus text of the registry with `snap` in the collector; (body, content type)."""
        with self._lock:
            self.collector.current = snap
            try:
                return generate_latest(self.registry), CONTENT_TYPE_LATEST
            finally:
                self.collector.current = None


def _counter(registry: CollectorRegistry, name: str, doc: str):
    from prometheus_client import Counter

    return Counter(f"{PREFIX}_{name}", doc, registry=registry)


_BY_SERVICE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def metrics_for(service) -> ServiceMetrics:
    """The service's ServiceMetrics: its `metrics` attribute when it has one, else one kept per service."""
    own = getattr(service, "metrics", None)
    if isinstance(own, ServiceMetrics):
        return own
    m = _BY_SERVICE.get(service)
    if m is None:
        m = _BY_SERVICE[service] = ServiceMetrics()
    return m


def attach(service) -> ServiceMetrics:
    """The service's ServiceMetrics, fed after every operation: a listener (run on the worker by
    `LiveService.notify`) observes the new decisions in the latency histogram."""
    m = metrics_for(service)
    listeners = getattr(service, "listeners", None)
    if isinstance(listeners, list) and not any(getattr(fn, "__self__", None) is m for fn in listeners):
        m._service = weakref.ref(service)
        listeners.append(m.on_event)
    return m


async def render(service) -> tuple[bytes, str]:
    """(body, content type) of `GET /metrics` for a LiveService: the snapshot is taken on its worker
    thread (`await service.call(...)`); a service without `call` (a bare Session in tests) is read here."""
    m = metrics_for(service)
    snap: dict | None = None
    try:
        session = getattr(service, "session", service)
        call = getattr(service, "call", None)
        if call is None:
            snap = m.snapshot(session)
        else:
            snap = call(m.snapshot, session)
            if inspect.isawaitable(snap):
                snap = await snap
    except Exception:  # noqa: BLE001 - a scrape must not fail because the engine is busy or broken
        log.exception("metrics snapshot failed")
        m.snapshot_errors.inc()
        snap = None
    return m.render(snap)
