"""Automatic fallback between a primary and a backup scorer (`FallbackScorer`), with its config and events.

See `FallbackScorer` for the switching rules; `quantlm.live.monitor.LiveMonitor` supplies the
rolling IC it can switch on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd

from quantlm.live.monitor import LiveMonitor

# ---------------------------------------------------------------------- fallback
PRIMARY, BACKUP = "primary", "backup"


@dataclass
class FallbackConfig:
    """When FallbackScorer leaves the primary and when it comes back (times in ms, IC a correlation)."""

    latency_budget_ms: float = 5.0  # the primary's own update time per decision
    latency_strikes: int = 3  # consecutive decisions over budget that switch
    min_ic: float | None = None  # rolling IC floor (None = rule off)
    ic_window: int = 20  # sessions (with a defined IC) in the rolling IC
    recover_sessions: int = 5  # consecutive healthy sessions of the shadow-scored primary to switch back

    @classmethod
    def from_any(cls, obj) -> FallbackConfig:
        """From a FallbackConfig, a mapping or an object with these attributes (e.g. the live config's
        monitor section; other keys are ignored)."""
        if obj is None or isinstance(obj, cls):
            return obj or cls()
        get = obj.get if isinstance(obj, dict) else (lambda k, d: getattr(obj, k, d))
        return cls(**{f.name: get(f.name, f.default) for f in fields(cls)})


class ModelEvent(dict):
    """A model switch: at decision `ts`, from one model to the other, why (error | non_finite | latency |
    ic_drift | recovered | backup_error) and the numbers. A dict (keys ts, from, to, reason, detail) with
    attribute access (ts, from_model, to_model, reason, detail)."""

    def __init__(self, ts, from_model: str, to_model: str, reason: str, detail: str = "") -> None:
        super().__init__(ts=pd.Timestamp(ts), reason=reason, detail=detail, **{"from": from_model, "to": to_model})

    ts = property(lambda self: self["ts"])
    from_model = property(lambda self: self["from"])
    to_model = property(lambda self: self["to"])
    reason = property(lambda self: self["reason"])
    detail = property(lambda self: self["detail"])

    def to_dict(self) -> dict:
        return dict(self) | {"ts": str(self["ts"])}


class ScoringError(RuntimeError):
    """Neither the primary nor the backup gave scores for a decision."""


@dataclass
class _Run:
    scores: np.ndarray | None
    error: str | None
    ms: float


class FallbackScorer:
    """A primary and a backup scorer (LiveScorer interface) behind one `start` / `update`.

    Both are updated on every bar (the backup is always warm; the primary is shadow-scored while the
    backup serves), both streams and the served one ("live") go to the monitor. The primary is
    *faulty* for a decision when its update raises, gives a NaN / inf score for a symbol that has a
    bar (finite close), took more than latency_budget_ms on latency_strikes consecutive decisions
    (its own update time by `clock`), or, with min_ic set, its mean realised IC over the last
    ic_window sessions (monitor, shadow streams included) is below min_ic. It is *healthy* when it
    does not raise, is finite, is within budget on this decision, and its rolling IC is not below
    min_ic (or not yet known).

    - On the primary, a faulty decision switches to the backup for that decision (its scores are
      served) and the backup stays in use.
    - On the backup, the primary is back once it has been healthy on every decision of
      recover_sessions consecutive sessions (calendar dates of ts), counting the current one: that
      decision is served by the primary. If the backup raises, the primary serves when it did not
      raise (reason backup_error); when both raise, ScoringError.
    - A scorer that raised is restarted from the start history plus the bars streamed since before
      its next update (its buffers may be half advanced).

    Every switch is a `ModelEvent`, appended to `events` and passed to `on_event`. `active` is
    "primary" or "backup"; `names` label the models in events (default: the scorers' `name`).
    FallbackConfig fields may also be given as keywords (they win over `config`); `clock` (seconds)
    times each model's update (tests inject a fake one).
    """

    def __init__(self, primary, backup, monitor: LiveMonitor | None = None, config=None,
                 on_event: Callable[[ModelEvent], None] | None = None, names: tuple[str, str] | None = None,
                 clock: Callable[[], float] = time.perf_counter, **overrides) -> None:
        self.scorers = {PRIMARY: primary, BACKUP: backup}
        self.monitor = monitor if monitor is not None else LiveMonitor()
        self.config = FallbackConfig.from_any(config)
        if overrides:  # FallbackConfig fields given as keywords win over `config`
            self.config = FallbackConfig(**(asdict(self.config) | overrides))
        self.monitor.keep_sessions(self.config.ic_window)
        self.on_event, self.clock = on_event, clock
        self.names = dict(zip((PRIMARY, BACKUP), names or (getattr(primary, "name", PRIMARY),
                                                           getattr(backup, "name", BACKUP)), strict=True))
        self.active = PRIMARY
        self.events: list[ModelEvent] = []
        self.last_ms: dict[str, float] = {}
        self._strikes = self._healthy = 0
        self._counted: pd.Timestamp | None = None  # the last session date counted (or spoiled) toward recovery
        self._broken: set[str] = set()
        self._pending: tuple | None = None

    def start(self, history: pd.DataFrame, symbols: list[str]) -> None:
        self.symbols = list(symbols)
        self._history, self._stream = history, []
        for s in self.scorers.values():
            s.start(history, self.symbols)

    def flush(self) -> None:
        """Run the backup's deferred update for the last bar (the engine calls this after a decision)."""
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is None:
            return
        bars, ts, kw = pending
        b = self._run(BACKUP, bars, ts, kw)
        if b.error is None:
            self.monitor.record_scores(ts, self.symbols, b.scores, model=BACKUP)
            self.monitor.record_latency(b.ms, stage=f"score.{BACKUP}")

    def _restart(self, role: str) -> None:
        rows = [pd.DataFrame({"symbol": self.symbols, "ts": pd.Timestamp(ts), **b}) for ts, b in self._stream]
        hist = pd.concat([self._history, *rows], ignore_index=True) if rows else self._history
        hist = hist[np.isfinite(hist["close"].to_numpy(np.float64))].drop_duplicates(["symbol", "ts"])
        self.scorers[role].start(hist, self.symbols)
        self._broken.discard(role)

    def _run(self, role: str, bars, ts, kw) -> _Run:
        t0 = self.clock()
        try:
            if role in self._broken:
                self._restart(role)
                t0 = self.clock()
            out = _Run(np.asarray(self.scorers[role].update(bars, ts, **kw)), None, 0.0)
        except Exception as e:  # noqa: BLE001 - any failure of a model is a fallback reason
            self._broken.add(role)
            out = _Run(None, f"{type(e).__name__}: {e}", 0.0)
        out.ms = self.last_ms[role] = (self.clock() - t0) * 1e3
        return out

    def _fault(self, p: _Run, has: np.ndarray) -> tuple[str, str] | None:
        """(reason, detail) when the primary is faulty on this decision; updates the latency strikes."""
        c = self.config
        self._strikes = self._strikes + 1 if p.ms > c.latency_budget_ms else 0
        if p.error is not None:
            return "error", p.error
        bad = int((~np.isfinite(p.scores) & has).sum())
        if bad:
            return "non_finite", f"{bad} of {int(has.sum())} symbols with a bar got a NaN / inf score"
        if self._strikes >= c.latency_strikes:
            return "latency", f"{p.ms:.3f} ms > {c.latency_budget_ms} ms on {self._strikes} consecutive decisions"
        if c.min_ic is not None:
            ic = self.monitor.ic(PRIMARY, c.ic_window)
            if ic is not None and ic < c.min_ic:
                return "ic_drift", f"mean IC {ic:.4f} over the last {c.ic_window} sessions < {c.min_ic}"
        return None

    def _switch(self, ts, to: str, reason: str, detail: str) -> None:
        ev = ModelEvent(pd.Timestamp(ts), self.names[self.active], self.names[to], reason, detail)
        self.active = to
        self.events.append(ev)
        if self.on_event is not None:
            self.on_event(ev)

    def update(self, bars: dict[str, np.ndarray], ts, text: np.ndarray | None = None,
               text_weight: np.ndarray | None = None) -> np.ndarray:
        """bars as LiveScorer.update -> the served scores [S] (the active model's; see the class docstring)."""
        kw = {} if text is None else {"text": text, "text_weight": text_weight}
        self.flush()
        has = np.isfinite(np.asarray(bars["close"], np.float64))
        p = self._run(PRIMARY, bars, ts, kw)
        self._stream.append((ts, {k: np.array(v, np.float64) for k, v in bars.items()}))
        fault = self._fault(p, has)
        if self.active == PRIMARY and fault is None:
            # the backup's update is off the decision's critical path: `flush` runs it after the orders
            # are out (or first thing at the next update), so it is warm should the primary fail later
            b = _Run(None, None, 0.0)
            self._pending = (bars, ts, kw)
        else:
            b = self._run(BACKUP, bars, ts, kw)
        # a decision slow only by itself (fewer than latency_strikes in a row) is not healthy for recovery
        healthy = fault is None and p.ms <= self.config.latency_budget_ms
        date = pd.Timestamp(ts).normalize()
        if not healthy:
            self._healthy, self._counted = 0, date
        elif date != self._counted:
            self._healthy, self._counted = self._healthy + 1, date
        if self.active == PRIMARY and fault is not None:
            if b.error is None:
                self._switch(ts, BACKUP, *fault)
            elif p.error is not None:
                raise ScoringError(f"primary: {p.error}; backup: {b.error}")
        elif self.active == BACKUP:
            if healthy and self._healthy >= self.config.recover_sessions:
                self._switch(ts, PRIMARY, "recovered",
                             f"primary healthy on {self._healthy} consecutive sessions (shadow-scored)")
            elif b.error is not None:
                if p.error is not None:
                    raise ScoringError(f"backup: {b.error}; primary: {p.error}")
                self._switch(ts, PRIMARY, "backup_error", b.error)
        served = p if self.active == PRIMARY and p.error is None else b
        for role, r in ((PRIMARY, p), (BACKUP, b)):
            if r.error is None and r.scores is not None:
                self.monitor.record_scores(ts, self.symbols, r.scores, model=role)
                self.monitor.record_latency(r.ms, stage=f"score.{role}")
        self.monitor.record_scores(ts, self.symbols, served.scores, model="live")
        return served.scores
