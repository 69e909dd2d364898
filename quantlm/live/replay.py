"""`quantlm live replay` and `quantlm orders`: the live engine over stored bars on a simulated clock.

`run_replay(config, store, start, end, out)` writes journal.sqlite, orders.csv, fills.csv,
equity.csv, risk_events.csv, model_events.csv and metrics.json to `out`. Re-running it with the same
`out` after a crash resumes from the journal (every bar is one journal transaction) and ends in the
same positions, cash and equity as an uninterrupted run. `QUANTLM_LIVE_CRASH_AFTER` (a number of
bars) makes the process kill itself with SIGKILL inside that bar's transaction, for crash tests.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.live.config import LiveConfig, LiveConfigError
from quantlm.live.engine import LiveEngine, backtest_config

CRASH_ENV = "QUANTLM_LIVE_CRASH_AFTER"


def tradable_symbols(store, market: str, benchmark: str | None, freq: str = "1d") -> list[str]:
    """Stored symbols of `market` without the benchmark and index symbols."""
    from quantlm.backtest.rules import symbol_boards

    syms = store.symbols(freq, market=market)
    boards = symbol_boards(syms, store.instruments())
    return [s for s, b in zip(syms, boards) if b != "index" and s != benchmark]


def build_scorer(cfg: LiveConfig, monitor, on_event):
    """The primary scorer, wrapped with automatic fallback when a backup is configured."""
    primary = _one_scorer(cfg.primary)
    if cfg.backup is None:
        return primary
    from quantlm.live.monitor import FallbackScorer

    backup = _one_scorer(cfg.backup)
    m = cfg.monitor
    return FallbackScorer(primary, backup, monitor, latency_budget_ms=m.latency_budget_ms,
                          latency_strikes=m.latency_strikes, min_ic=m.min_ic, ic_window=m.ic_window,
                          recover_sessions=m.recover_sessions, on_event=on_event)


def _one_scorer(section):
    from quantlm.live.scorers import FrameScorer, ModelScorer

    if section.signals:
        from quantlm.backtest.signals import read_signals

        return FrameScorer(read_signals(section.signals), name=section.name or Path(section.signals).stem)
    if section.path:
        return ModelScorer(section.path, backend=section.backend, name=section.name)
    raise LiveConfigError("a model section needs 'path' (a model folder) or 'signals' (a Scores file)")


class Session:
    """Everything a replay (or the service) holds: engine, journal, OMS, risk manager, monitor."""

    def __init__(self, cfg: LiveConfig, store, out: str | Path, scorer=None) -> None:
        from quantlm.live.journal import Journal
        from quantlm.live.monitor import LiveMonitor
        from quantlm.live.oms import OrderManager
        from quantlm.live.risk import RiskManager

        self.cfg, self.store, self.out = cfg, store, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        meta = store.meta()
        self.market = cfg.market or meta.get("market") or "cn"
        self.benchmark = cfg.benchmark or meta.get("benchmark")
        self.journal = Journal(Path(cfg.journal) if cfg.journal else self.out / "journal.sqlite")
        self.oms = OrderManager(self.journal)
        risk_cfg = cfg.risk_config()
        self.risk = RiskManager(risk_cfg)
        saved = self.journal.get_state("risk")
        if saved:
            self.risk.load_state_dict(saved)
        self._reregister_open_orders()
        self.monitor = LiveMonitor(window_sessions=cfg.monitor.window_sessions)
        self.scorer = scorer if scorer is not None else build_scorer(cfg, self.monitor, self._model_event)
        self.bt = backtest_config(cfg, self.market)
        self.symbols = tradable_symbols(store, self.market, self.benchmark)
        if not self.symbols:
            raise LiveConfigError(f"the store at {store.root} has no tradable {self.market} symbols")
        self.engine = LiveEngine(self.bt, self.symbols, self.scorer, self.oms, self.journal, self.risk,
                                 instruments=_or_none(store.instruments()), flags=_or_none(store.flags()),
                                 first_bar=self._first_bars(), benchmark=self.benchmark, monitor=self.monitor,
                                 review_mode=getattr(risk_cfg, "review_mode", "hold"))

    def _reregister_open_orders(self) -> None:
        """Orders at the broker that the saved risk state does not list (submitted after its last save)
        count toward the risk manager's active-order and exposure limits again."""
        from quantlm.live.types import OrderStatus

        for o in self.oms.open_orders():
            if o.status in (OrderStatus.SENT, OrderStatus.PARTIAL, OrderStatus.UNKNOWN) and o.client_id not in self.risk.active:
                self.risk.on_submitted(o, pd.Timestamp(o.created) if o.created is not None else pd.Timestamp.now())

    def process_bar(self, ts: pd.Timestamp, bars: pd.DataFrame, day_end: bool = True, crash: bool = False) -> list[dict]:
        """One bar through the engine as ONE journal transaction that ends with the portfolio snapshot,
        the risk state and the bar's time (what a restart resumes from). `crash` kills the process
        inside the transaction (crash tests)."""
        with self.journal.batch():
            records = self.engine.on_bar(ts, bars, day_end=day_end)
            self.journal.set_state("portfolio", self.engine.snapshot())
            self.journal.set_state("risk", self.risk.state_dict())
            self.journal.set_state("last_bar", str(ts))
            if crash:
                os.kill(os.getpid(), signal.SIGKILL)
        return records

    def _first_bars(self) -> dict:
        listing = self.store.listing()
        listing = listing[listing["freq"] == "1d"]
        return dict(zip(listing["symbol"], pd.to_datetime(listing["first_ts"])))

    def _model_event(self, event) -> None:
        e = event if isinstance(event, dict) else getattr(event, "__dict__", {"event": str(event)})
        self.journal.add_model_event(ts=e.get("ts"), event=e.get("event", "switch"), model_from=e.get("from", ""),
                                     model_to=e.get("to", ""), reason=e.get("reason", ""), detail=e.get("detail"))


def models_from_run(run_dir: str | Path) -> tuple[Path, Path | None]:
    """(deployed student, backup teacher) model folders of a `quantlm run` folder: the main chain's
    last distill and SFT stages (seed order, last fold), read from summary.json's stage list."""
    from quantlm.workflow.stages import dir_name

    run_dir = Path(run_dir)
    summary = run_dir / "summary.json"
    if not summary.exists():
        raise LiveConfigError(f"{run_dir}: no summary.json (run `quantlm run CONFIG --out {run_dir}` first)")
    stages = json.loads(summary.read_text()).get("stages", {})

    def last(kind: str) -> Path | None:
        ids = [sid for sid in stages if sid.split("/")[0].split("[")[0] == kind and "ablation" not in sid]
        for sid in reversed(ids):
            folder = run_dir / "stages" / f"{dir_name(sid)}-{stages[sid]['key'][:12]}" / "run" / "model"
            if folder.exists():
                return folder
        return None

    student = last("distill") or last("rl") or last("sft")
    if student is None:
        raise LiveConfigError(f"{run_dir}: no trained model folder found among its stages")
    teacher = last("sft")
    if teacher is not None and _uses_factors(teacher):
        # a teacher fed cross-sectional factor ranks cannot be scored bar by bar (finetune.latency refuses it):
        # the backup is then another distilled student size of the same run, token-only and always warm
        sizes = sorted(p for p in student.parent.glob("sizes/*/model") if p.is_dir()) if student.name == "model" else []
        others = [p for p in sizes if not _same_weights(p, student)]
        teacher = others[0] if others else None
    return student, (teacher if teacher != student else None)


def _uses_factors(model_dir: Path) -> bool:
    cfg = model_dir / "config.json"
    return cfg.exists() and json.loads(cfg.read_text()).get("factors", "none") not in (None, "none")


def _same_weights(a: Path, b: Path) -> bool:
    fa, fb = sorted(a.glob("*.safetensors")), sorted(b.glob("*.safetensors"))
    return bool(fa) and [f.name for f in fa] == [f.name for f in fb] and \
        all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb))


def use_run_models(cfg: LiveConfig, run_dir: str | Path) -> LiveConfig:
    """`cfg` with the primary (the distilled student, the configured backend) and the backup (the SFT
    teacher, torch) taken from a `quantlm run` folder (`--from-run`)."""
    from quantlm.live.config import ModelSection

    student, teacher = models_from_run(run_dir)
    cfg.primary = ModelSection(path=str(student), backend=cfg.primary.backend, name="student")
    backup_name = "teacher" if teacher is not None and "distill" not in str(teacher) else "student-alt"
    cfg.backup = ModelSection(path=str(teacher), backend="torch", name=backup_name) if teacher else None
    return cfg


def _or_none(df: pd.DataFrame) -> pd.DataFrame | None:
    return df if len(df) else None


class ReplayClock:
    """Stored bars from `start` to `end` (inclusive) driven through a Session one bar at a time.

    `warm_up()` starts the scorer on the history before `start` (`cfg.history_days`), advances the
    market over the history and over the bars a previous run already committed (the journal's
    `last_bar`), then recovers (portfolio, open orders, broker reconciliation): the crash-only start-up
    of `run_replay`. `step()` then trades the next bar through `Session.process_bar` (one journal
    transaction). Used by `run_replay` and by the service's replayed clock (`quantlm serve`).
    `require_bars=False` allows an empty trading range (a service that only warms up from the store).
    """

    def __init__(self, s: Session, start, end, require_bars: bool = True) -> None:
        self.s = s
        self.start, self.end = pd.Timestamp(start), pd.Timestamp(end)
        history_start = self.start - pd.Timedelta(days=s.cfg.history_days)
        wanted = s.symbols + ([s.benchmark] if s.benchmark else [])
        bars = s.store.bars(wanted, start=history_start, end=self.end)
        if require_bars and not len(bars[bars["ts"] >= self.start]):
            raise LiveConfigError(f"no bars between {self.start.date()} and {self.end.date()} in the store at "
                                  f"{s.store.root}")
        self.history = bars[(bars["ts"] < self.start) & bars["symbol"].isin(s.symbols)]
        self.stamps = pd.DatetimeIndex(np.sort(bars["ts"].unique()))
        self.groups = dict(tuple(bars.groupby("ts", sort=True)))
        days = self.stamps.normalize()
        self.day_end = np.r_[days[1:] != days[:-1], True] if len(days) else np.zeros(0, dtype=bool)
        self.pos = 0  # index of the next stamp

    def warm_up(self) -> None:
        """Start the scorer, warm over the history and the committed bars, recover (see the class docstring)."""
        s = self.s
        s.scorer.start(self.history, s.symbols)
        last_done = s.journal.get_state("last_bar")
        last_done = pd.Timestamp(last_done) if last_done else None
        while self.pos < len(self.stamps):
            ts = self.stamps[self.pos]
            if not (ts < self.start or (last_done is not None and ts <= last_done)):
                break
            s.engine.warm(ts, self.groups[ts])
            self.pos += 1
        _recover(s)

    @property
    def done(self) -> bool:
        """No stored bar is left to trade."""
        return self.pos >= len(self.stamps)

    @property
    def next_ts(self) -> pd.Timestamp | None:
        """The time of the next bar to trade (None when done)."""
        return None if self.done else self.stamps[self.pos]

    def step(self, crash: bool = False) -> pd.Timestamp | None:
        """Trade the next stored bar (one journal transaction); its time, or None when done."""
        if self.done:
            return None
        k, ts = self.pos, self.stamps[self.pos]
        self.s.process_bar(ts, self.groups[ts], bool(self.day_end[k]), crash=crash)
        self.pos += 1
        return ts


def run_replay(cfg: LiveConfig, store, start, end, out: str | Path, scorer=None) -> dict:
    """A paper session over stored bars between `start` and `end` (inclusive); returns metrics.json."""
    s = Session(cfg, store, out, scorer)
    clock = ReplayClock(s, start, end)
    clock.warm_up()
    crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
    n_traded = 0
    while not clock.done:
        n_traded += 1
        clock.step(crash=bool(crash_after) and n_traded >= crash_after)
    return write_outputs(s)


def _recover(s: Session) -> None:
    """Crash-only start-up: the portfolio from the journal, open orders back to the broker, reconciled."""
    snap = s.journal.get_state("portfolio")
    if snap:
        s.engine.restore(snap)
    s.engine.requeue_open_orders()
    report = s.engine.reconcile()
    mismatches = getattr(report, "mismatches", [])
    if mismatches:
        from quantlm.live.oms import ReconcileError

        raise ReconcileError(f"journal and broker disagree: {mismatches[:3]}")


def write_outputs(s: Session) -> dict:
    """orders.csv, fills.csv, equity.csv, risk_events.csv, model_events.csv and metrics.json in the out folder."""
    from quantlm.backtest.metrics import compute_metrics

    s.journal.export_csv(s.out)
    equity = pd.read_csv(s.out / "equity.csv", parse_dates=["ts"]).set_index("ts")
    fills = s.journal.fills()
    metrics: dict = {}
    if len(equity):
        result = _Result(s, equity, fills)
        metrics = compute_metrics(result, market=s.market)
    risk_events = s.journal.risk_events()
    hist = np.asarray(s.engine.timing.history)
    metrics.update({
        "decision_ms_p50": float(np.percentile(hist, 50)) if len(hist) else float("nan"),
        "decision_ms_p99": float(np.percentile(hist, 99)) if len(hist) else float("nan"),
        "decision_ms_max": float(hist.max()) if len(hist) else float("nan"),
        "n_orders": float(len(s.journal.orders())),
        "n_fills": float(len(fills)),
        "final_equity": float(equity["equity"].iloc[-1]) if len(equity) else float("nan"),
        "final_cash": float(equity["cash"].iloc[-1]) if len(equity) else float("nan"),
    })
    counts = risk_events.groupby(["action", "rule"]).size() if len(risk_events) else pd.Series(dtype=int)
    out = {"metrics": {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in metrics.items()},
           "risk_events": {f"{a}:{r}": int(n) for (a, r), n in counts.items()},
           "monitor": s.monitor.snapshot() if hasattr(s.monitor, "snapshot") else {},
           "positions": s.engine.portfolio.shares, "model": getattr(s.scorer, "active", getattr(s.scorer, "name", ""))}
    (s.out / "metrics.json").write_text(json.dumps(out, indent=1, default=str))
    return out


class _Result:
    """What backtest.metrics.compute_metrics reads, from the journal's equity and fills."""

    def __init__(self, s: Session, equity: pd.DataFrame, fills: pd.DataFrame) -> None:
        self.equity = equity["equity"].astype("float64")
        self.costs = equity["costs"].astype("float64") if "costs" in equity else self.equity * 0
        traded = (fills.assign(v=fills["shares"] * fills["price"]).groupby("ts")["v"].sum()
                  if len(fills) else pd.Series(dtype="float64"))
        traded.index = pd.DatetimeIndex(traded.index)
        prev = self.equity.shift(1).fillna(s.cfg.cash)
        self.turnover = traded.reindex(self.equity.index, fill_value=0.0) / prev
        self.trades = pd.DataFrame({"status": ["filled"] * len(fills)})
        self.benchmark = None
        if s.benchmark:
            b = s.store.bars([s.benchmark], start=self.equity.index[0], end=self.equity.index[-1])
            if len(b):
                self.benchmark = pd.Series(b["close"].to_numpy(), index=pd.DatetimeIndex(b["ts"])).reindex(
                    self.equity.index).ffill()
        self._cash = s.cfg.cash

    def returns(self) -> pd.Series:
        prev = self.equity.shift(1)
        prev.iloc[:1] = self._cash
        return (self.equity / prev - 1.0).rename("returns")
