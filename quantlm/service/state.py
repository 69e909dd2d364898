"""The engine host of the trading service: one `Session` on one dedicated worker thread.

`LiveService` owns a `quantlm.live.replay.Session` (engine, journal, OMS, risk manager, monitor). The
SQLite journal is used from ONE thread only: the Session is constructed on a single worker thread
(`ThreadPoolExecutor(max_workers=1)`) and every engine operation runs there; request handlers
`await service.call(fn, ...)`, which wraps the worker's future (`asyncio.wrap_future`). Operations
are therefore serialised: no two touch the engine at once.

Clocks:
- `replay`: stored bars between `start` and `end` (`live.replay.ReplayClock`: warm-up over the history and
  the bars already committed, crash-only recovery, then one `Session.process_bar` per step). `speed` > 0
  steps that many bars per second in the background; the `clock/step` route steps by hand.
- `push`: the store warms the engine up to its last bar; then bars arrive through the push route
  (wall clock), each processed with `process_bar`. Pushed bars are appended to OUT/pushed_bars.csv
  before processing, and a restart warms the engine over those up to the journal's last committed bar.

The operations themselves (`ops_*` functions in `quantlm.service.operations`) run on the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("quantlm.service")
PUSHED_FILE = "pushed_bars.csv"


class ServiceError(Exception):
    """An operation refused with an HTTP status and a clear message (nothing changed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class ScoreRecorder:
    """Wraps the session's scorer and keeps the last scores it served (the `signals` route)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.last_ts: pd.Timestamp | None = None
        self.last_scores: np.ndarray | None = None

    def update(self, bars, ts, *args, **kw):
        scores = self.inner.update(bars, ts, *args, **kw)
        self.last_ts, self.last_scores = pd.Timestamp(ts), np.asarray(scores, dtype="float64").copy()
        return scores

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class ManualPauses:
    """Wraps the session's risk manager: symbols paused by hand reject new orders that do not shrink a
    position (rule `manual_pause`); everything else is the risk manager's. The set is kept in the
    journal's state (`manual_pauses`)."""

    def __init__(self, inner, symbols: set[str] | None = None) -> None:
        self.inner = inner
        self.symbols: set[str] = set(symbols or ())

    def check(self, order, market, account, now=None, benchmark=None):
        from quantlm.live.risk_rules import reference_price
        from quantlm.live.types import RiskDecision

        if order.symbol in self.symbols:
            pos = float(account.positions.get(order.symbol, 0.0))
            if not self.inner.reducing(order, pos, reference_price(order, market)):
                self.inner.on_market(order.symbol, market, now, benchmark)
                return RiskDecision("reject", "manual_pause", f"{order.symbol} is paused by hand: only orders that "
                                    "shrink a position pass until an admin resumes it")
        return self.inner.check(order, market, account, now, benchmark)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class LiveService:
    """One live session behind the API (see the module docstring). Build it, then `await start()`."""

    def __init__(self, cfg, store, out: str | Path, mode: str = "replay", start=None, end=None,
                 speed: float = 0.0, scorer=None, read_staleness_ms: float = 0.0) -> None:
        if mode not in ("replay", "push"):
            raise ValueError(f"mode {mode!r} is not replay or push")
        self.cfg, self.store, self.out = cfg, store, Path(out)
        self.mode, self.speed, self.scorer_override = mode, float(speed), scorer
        self.start_ts = None if start is None else pd.Timestamp(start)
        self.end_ts = None if end is None else pd.Timestamp(end)
        self.session = None  # quantlm.live.replay.Session, built on the worker
        self.clock = None  # ReplayClock in replay mode
        self.recorder: ScoreRecorder | None = None
        self.pauses: ManualPauses | None = None
        self.started_at: pd.Timestamp | None = None
        self.bars_processed = 0
        self.ready = False
        self._executor: ThreadPoolExecutor | None = None
        self._worker_thread: int | None = None
        self._runner: asyncio.Task | None = None
        self.listeners: list[Callable[[str, dict], None]] = []  # (event, detail) after each operation
        self.version = 0  # bumped by every state-changing operation (`notify`)
        self._read_cache: dict[tuple, tuple[float, int, Any]] = {}
        # reads may lag other users' changes by at most this long (0 = always current); a user's own
        # changes are always visible to that user's next read (read-your-writes)
        self.read_staleness_s = max(float(read_staleness_ms), 0.0) / 1e3
        self._last_write: dict[str, int] = {}

    # -- life cycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the worker thread, build the Session on it and warm it up (may take a while)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantlm-engine")
        await self.call(self._build)
        self.started_at = pd.Timestamp.now()
        self.ready = True
        if self.mode == "replay" and self.speed > 0:
            self._runner = asyncio.create_task(self._run_clock())

    async def stop(self) -> None:
        """Stop the clock, close the journal on its thread and end the worker."""
        self.ready = False
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        if self._executor is not None:
            if self.session is not None:
                with contextlib.suppress(Exception):
                    await self.call(self.session.journal.close)
            self._executor.shutdown(wait=True)
            self._executor = None

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` on the engine's worker thread and await its result."""
        if self._executor is None:
            raise ServiceError(503, "the engine is not running")
        return await asyncio.wrap_future(self._executor.submit(fn, *args, **kwargs))

    def on_worker(self) -> bool:
        """Whether the caller runs on the engine's worker thread (the only one that may touch the journal)."""
        return threading.get_ident() == self._worker_thread

    async def read(self, fn: Callable[..., Any], *args: Any, reader: str = "") -> Any:
        """`fn(self, *args)` for a read route, cached until the state changes.

        Reads would otherwise queue behind orders on the single engine thread. A cached result is
        reused while no operation changed the state since it was computed (the version is taken BEFORE
        the call, so a result computed while an operation ran is never reused after it), or, with
        `read_staleness_s` > 0, while it is younger than that and `reader` (the caller's name) has not
        changed anything since (read-your-writes)."""
        key = (getattr(fn, "__qualname__", repr(fn)), args)
        hit = self._read_cache.get(key)
        version, now = self.version, time.monotonic()
        if hit is not None:
            made_at, made, result = hit
            if made == version or (now - made_at < self.read_staleness_s
                                   and made >= self._last_write.get(reader, -1)):
                return result
        result = await self.call(fn, self, *args)
        if len(self._read_cache) > 256:
            self._read_cache.clear()
        self._read_cache[key] = (now, version, result)
        return result

    def notify(self, event: str, detail: dict) -> None:
        """Tell the listeners (e.g. metrics) that an operation happened (runs on the worker)."""
        self.version += 1  # invalidates cached reads
        actor = str(detail.get("actor", "")) if isinstance(detail, dict) else ""
        if actor:
            self._last_write[actor] = self.version
        for fn in list(self.listeners):
            try:
                fn(event, detail)
            except Exception:  # noqa: BLE001 - a listener never breaks the engine
                log.exception("service listener failed on %s", event)

    def _build(self) -> None:
        from quantlm.live.replay import ReplayClock, Session

        self._worker_thread = threading.get_ident()
        s = Session(self.cfg, self.store, self.out, self.scorer_override)
        self.recorder = ScoreRecorder(s.engine.scorer)
        s.engine.scorer = self.recorder
        self.pauses = ManualPauses(s.risk, set(s.journal.get_state("manual_pauses", []) or []))
        s.engine.risk = self.pauses
        self.session = s
        if self.mode == "replay":
            last = self.store.listing()
            last_ts = pd.Timestamp(last["last_ts"].max()) if len(last) else None
            first_ts = pd.Timestamp(last["first_ts"].min()) if len(last) else None
            start = self.start_ts or (first_ts + pd.Timedelta(days=self.cfg.history_days) if first_ts is not None
                                      else pd.Timestamp.now())
            end = self.end_ts or last_ts or start
            self.clock = ReplayClock(s, start, end)
            self.clock.warm_up()
        else:
            self._warm_push()

    def _warm_push(self) -> None:
        """Push mode: warm over the stored bars (up to the store's end) and the bars pushed before a restart."""
        from quantlm.live.replay import ReplayClock

        s = self.session
        listing = self.store.listing()
        store_end = pd.Timestamp(listing["last_ts"].max()) if len(listing) else pd.Timestamp.now().normalize()
        start = store_end + pd.Timedelta(days=1)
        clock = ReplayClock(s, start, start, require_bars=False)
        s.scorer.start(clock.history, s.symbols)
        last_done = s.journal.get_state("last_bar")
        last_done = pd.Timestamp(last_done) if last_done else None
        for ts in clock.stamps:
            s.engine.warm(ts, clock.groups[ts])
        pushed = self.out / PUSHED_FILE
        if pushed.exists() and last_done is not None:
            old = pd.read_csv(pushed, parse_dates=["ts"])
            old = old[(old["ts"] <= last_done) & (old["ts"] > store_end)].drop_duplicates(["symbol", "ts"], keep="last")
            for ts, group in old.groupby("ts", sort=True):
                if s.engine.last_ts is None or ts > s.engine.last_ts:
                    s.engine.warm(pd.Timestamp(ts), group)
        from quantlm.live.replay import _recover

        _recover(s)

    async def _run_clock(self) -> None:
        """Replay mode with speed > 0: step one bar every 1/speed seconds until the end."""
        from quantlm.service.operations import step

        while self.clock is not None and not self.clock.done:
            try:
                await self.call(step, self, 1, "clock")
            except Exception:  # noqa: BLE001 - keep the service up; the error is in the log
                log.exception("replay clock step failed; the clock stops")
                return
            await asyncio.sleep(1.0 / self.speed)

    # -- helpers for the operations (worker thread) ------------------------------------------------
    def now(self) -> pd.Timestamp:
        """The engine's clock: the last bar's time (a manual action is stamped with it)."""
        s = self.session
        return pd.Timestamp(s.engine.last_ts) if s.engine.last_ts is not None else pd.Timestamp.now()

    def model_in_use(self) -> str:
        sc = self.session.scorer
        active = getattr(sc, "active", None)
        names = getattr(sc, "names", None)
        if active and names:
            return str(names.get(active, active))
        return str(getattr(sc, "name", "") or "")
