"""Live monitoring and automatic model fallback.

`LiveMonitor` keeps rolling live metrics, all in plain floats (`snapshot()`):

- decision latency: p50 / p99 / mean / max (ms) of the last `window_decisions` decisions
  (`record_latency(ms)`; other stages, e.g. "score.primary", get `<stage>_latency_p50_ms` / `_p99_ms`);
- realised quality over the last `window_sessions` labelled sessions, per model stream ("live" = the
  scores acted on; FallbackScorer adds "primary" and "backup"): IC and rank IC (mean over sessions of
  the cross-sectional Pearson / Spearman correlation; a session needs >= 3 finite pairs and neither
  side constant, as `backtest.metrics.ic_series`) and directional accuracy (pooled share of pairs
  whose score is above the session's median score exactly when the label is above the median label,
  ties left out: `backtest.metrics.directional_accuracy`, direction="relative");
- the label of a score at session t is the backtest's: open(t+2) / open(t+1) - 1 with t+1, t+2 the
  next two sessions with recorded prices after t (adjusted by adj_factor when given; NaN for a symbol
  without an open in either). It is computed when the prices of t+2 are recorded
  (`record_prices`, one call per session, in time order): nothing later is ever read;
- orders over the last `window_sessions` order sessions: fill rate (orders with a fill / orders
  sent, by the session they were sent in), rejections by rule, and slippage against the
  decision-time reference price in bp (positive = worse than the reference: paid more on buys and
  covers, got less on sells and shorts), value-weighted (shares x reference price).

`FallbackScorer` wraps a primary and a backup scorer (the `LiveScorer` interface) and serves the
primary's scores unless it fails for the decision at hand; see its docstring for the exact rules.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MIN_CROSS_SECTION = 3  # as quantlm.backtest.metrics
BUY_SIDES = ("buy", "cover")
SELL_SIDES = ("sell", "short")


@dataclass
class SessionQuality:
    """Realised quality of one model's scores at one session (ic / rank_ic NaN when undefined)."""

    ts: pd.Timestamp
    ic: float
    rank_ic: float
    n: int  # finite (score, label) pairs
    correct: int  # pairs whose relative direction was right
    decided: int  # pairs with neither score nor label on its session median


def session_quality(ts, scores: np.ndarray, labels: np.ndarray) -> SessionQuality:
    """IC, rank IC and directional counts of one session's scores against their labels (fractions)."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    ok = np.isfinite(s) & np.isfinite(y)
    s, y = s[ok], y[ok]
    ic = rank_ic = math.nan
    if len(s) >= MIN_CROSS_SECTION:
        ic = _pearson(s, y)
        rank_ic = _pearson(pd.Series(s).rank().to_numpy(), pd.Series(y).rank().to_numpy())
    correct = decided = 0
    if len(s):
        pred, real = s - np.median(s), y - np.median(y)
        d = (pred != 0) & (real != 0)
        decided = int(d.sum())
        correct = int((np.sign(pred[d]) == np.sign(real[d])).sum())
    return SessionQuality(pd.Timestamp(ts), ic, rank_ic, int(len(s)), correct, decided)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    den = math.sqrt(float((xc * xc).sum()) * float((yc * yc).sum()))
    return float((xc * yc).sum() / den) if den > 1e-300 else math.nan


@dataclass
class _OrderBucket:
    sent: set = field(default_factory=set)
    filled: set = field(default_factory=set)
    slip_value: float = 0.0  # sum of bp x value
    value: float = 0.0
    fills: int = 0
    rejections: Counter = field(default_factory=Counter)


class LiveMonitor:
    """Rolling live metrics (see the module docstring). `reference`: the backtest's metrics
    (ic, rank_ic, directional_accuracy) shown beside the live ones as `backtest_*` and `*_vs_backtest`."""

    def __init__(self, window_sessions: int = 20, window_decisions: int = 1000, reference: dict | None = None) -> None:
        if window_sessions < 1 or window_decisions < 1:
            raise ValueError("window_sessions and window_decisions must be >= 1")
        self.window_sessions, self.window_decisions = window_sessions, window_decisions
        self.reference = dict(reference or {})
        self._keep = window_sessions
        self._latency: dict[str, deque] = {}
        self._calendar: list[pd.Timestamp] = []  # price sessions still needed, increasing
        self._opens: dict[pd.Timestamp, dict[str, float]] = {}
        self._trimmed: pd.Timestamp | None = None  # the latest price session dropped from _calendar
        self._pending: dict[str, dict[pd.Timestamp, tuple[np.ndarray, np.ndarray]]] = {}
        self._quality: dict[str, deque] = {}
        self.unlabelled = 0  # score sessions recorded too late to be labelled
        self._buckets: OrderedDict[pd.Timestamp, _OrderBucket] = OrderedDict()
        self._sent_in: dict[str, pd.Timestamp] = {}

    # ------------------------------------------------------------------ latency
    def record_latency(self, ms: float, stage: str = "decision") -> None:
        """One decision's latency in ms (stage "decision" = score -> strategy -> risk -> orders)."""
        self._latency.setdefault(stage, deque(maxlen=self.window_decisions)).append(float(ms))

    def latency(self, stage: str = "decision") -> dict[str, float]:
        """p50 / p99 / mean / max (ms) and n over the last window_decisions (NaN when none)."""
        x = np.asarray(self._latency.get(stage, ()), np.float64)
        if not len(x):
            return {"p50": math.nan, "p99": math.nan, "mean": math.nan, "max": math.nan, "n": 0.0}
        return {"p50": float(np.percentile(x, 50)), "p99": float(np.percentile(x, 99)), "mean": float(x.mean()),
                "max": float(x.max()), "n": float(len(x))}

    # ------------------------------------------------------------------ scores and labels
    def keep_sessions(self, n: int) -> None:
        """Keep at least n labelled sessions per model (a FallbackScorer's ic_window)."""
        self._keep = max(self._keep, int(n))
        for model, q in self._quality.items():
            if q.maxlen < self._keep:
                self._quality[model] = deque(q, maxlen=self._keep)

    def record_scores(self, ts, symbols, scores, model: str = "live") -> None:
        """Scores decided at session `ts` (one per symbol; a repeated symbol: the last wins)."""
        ts = pd.Timestamp(ts)
        if self._trimmed is not None and ts < self._trimmed:
            self.unlabelled += 1  # its t+1 may already be forgotten: no label without look-up of old prices
            return
        self._pending.setdefault(model, {})[ts] = (np.asarray(symbols).astype(str),
                                                   np.array(scores, dtype=np.float64, copy=True))
        self._settle()

    def record_prices(self, ts, symbols, open_prices, adj_factor=None) -> None:
        """The opens (currency) of session `ts`, one call per session in time order; with adj_factor the
        label uses open x adj_factor (a NaN factor: the raw open), as the backtest's labels."""
        ts = pd.Timestamp(ts)
        if self._calendar and ts < self._calendar[-1]:
            raise ValueError(f"prices for {ts} arrive after those for {self._calendar[-1]}: record them in time order")
        p = np.asarray(open_prices, np.float64)
        if adj_factor is not None:
            a = np.asarray(adj_factor, np.float64)
            p = np.where(np.isfinite(a), p * a, p)
        opens = self._opens.setdefault(ts, {})
        if not self._calendar or self._calendar[-1] != ts:
            self._calendar.append(ts)
        opens.update(zip(np.asarray(symbols).astype(str), p, strict=True))
        self._settle()

    def _settle(self) -> None:
        """Label every pending score session whose next two price sessions are known; forget old prices."""
        cal = self._calendar
        for model, pend in self._pending.items():
            for ts in [t for t in pend if len(cal) - bisect.bisect_right(cal, t) >= 2]:
                syms, scores = pend.pop(ts)
                i = bisect.bisect_right(cal, ts)
                o1, o2 = self._opens[cal[i]], self._opens[cal[i + 1]]
                with np.errstate(divide="ignore", invalid="ignore"):
                    labels = np.array([o2.get(s, np.nan) for s in syms]) / np.array([o1.get(s, np.nan) for s in syms]) - 1
                last = {s: j for j, s in enumerate(syms)}  # a repeated symbol: its last score
                idx = np.fromiter(last.values(), np.int64, len(last))
                q = self._quality.setdefault(model, deque(maxlen=self._keep))
                q.append(session_quality(ts, scores[idx], labels[idx]))
        first_needed = min((t for pend in self._pending.values() for t in pend), default=None)
        cut = len(cal) - 2 if first_needed is None else bisect.bisect_right(cal, first_needed)
        if cut > 0:
            for t in cal[:cut]:
                del self._opens[t]
            self._trimmed = cal[cut - 1]
            del cal[:cut]

    def sessions(self, model: str = "live") -> list[SessionQuality]:
        """The labelled sessions kept for `model`, oldest first."""
        return list(self._quality.get(model, ()))

    def quality(self, model: str = "live", last: int | None = None) -> dict[str, float]:
        """ic, rank_ic (means over sessions where defined), accuracy (pooled) and sessions over the last
        `last` labelled sessions (default window_sessions); NaN when there are none."""
        q = self.sessions(model)[-(last or self.window_sessions):]
        ic = [x.ic for x in q if math.isfinite(x.ic)]
        ric = [x.rank_ic for x in q if math.isfinite(x.rank_ic)]
        decided = sum(x.decided for x in q)
        return {"ic": float(np.mean(ic)) if ic else math.nan, "rank_ic": float(np.mean(ric)) if ric else math.nan,
                "accuracy": sum(x.correct for x in q) / decided if decided else math.nan,
                "sessions": float(len(q)), "ic_sessions": float(len(ic))}

    def ic(self, model: str = "live", last: int | None = None) -> float | None:
        """Mean IC over the last `last` sessions with a defined IC; None until there are that many."""
        n = last or self.window_sessions
        ic = [x.ic for x in self.sessions(model) if math.isfinite(x.ic)][-n:]
        return float(np.mean(ic)) if len(ic) >= n else None

    # ------------------------------------------------------------------ orders
    def _bucket(self, ts) -> _OrderBucket:
        ts = pd.Timestamp(ts)
        b = self._buckets.get(ts)
        if b is None:
            b = self._buckets[ts] = _OrderBucket()
            while len(self._buckets) > self.window_sessions:
                _, old = self._buckets.popitem(last=False)
                for cid in old.sent:
                    self._sent_in.pop(cid, None)
        return b

    def record_sent(self, ts, client_id: str) -> None:
        """An order sent to the broker at session `ts`."""
        self._bucket(ts).sent.add(client_id)
        self._sent_in[client_id] = pd.Timestamp(ts)

    def record_fill(self, ts, client_id: str, side: str, shares: float, price: float, reference_price: float) -> None:
        """A (partial) fill: `price` vs the decision-time `reference_price` (currency per share). It counts
        toward the fill rate of the session its order was sent in (if that is still in the window)."""
        sent = self._sent_in.get(client_id)
        b = self._buckets.get(sent) if sent is not None else None
        if b is not None:
            b.filled.add(client_id)
        b = b or self._bucket(ts)
        if side not in BUY_SIDES + SELL_SIDES:
            raise ValueError(f"side must be one of {', '.join(BUY_SIDES + SELL_SIDES)}, got '{side}'")
        if reference_price > 0 and math.isfinite(price) and shares > 0:
            sign = 1.0 if side in BUY_SIDES else -1.0
            value = shares * reference_price
            b.slip_value += sign * (price / reference_price - 1.0) * 1e4 * value
            b.value += value
        b.fills += 1

    def record_rejection(self, ts, rule: str) -> None:
        """An order rejected (or held) by a risk rule at session `ts`."""
        self._bucket(ts).rejections[rule] += 1

    def orders(self) -> dict[str, float]:
        """orders_sent, orders_filled, fill_rate, fills, slippage_bp, rejections and rejections_<rule> over the window."""
        bs = list(self._buckets.values())
        sent = sum(len(b.sent) for b in bs)
        filled = sum(len(b.filled) for b in bs)
        value = sum(b.value for b in bs)
        rej: Counter = sum((b.rejections for b in bs), Counter())
        out = {"orders_sent": float(sent), "orders_filled": float(filled),
               "fill_rate": filled / sent if sent else math.nan, "fills": float(sum(b.fills for b in bs)),
               "slippage_bp": sum(b.slip_value for b in bs) / value if value > 0 else math.nan,
               "rejections": float(sum(rej.values()))}
        return out | {f"rejections_{rule}": float(n) for rule, n in sorted(rej.items())}

    # ------------------------------------------------------------------ all of it
    def snapshot(self) -> dict[str, float]:
        """All metrics as plain floats (NaN when undefined): latency_*_ms, ic, rank_ic, accuracy,
        sessions_labelled (the "live" stream), <model>_ic / _rank_ic / _accuracy for the other streams,
        backtest_* and *_vs_backtest when a reference was given, and the order metrics."""
        out: dict[str, float] = {}
        for stage in sorted(self._latency, key=lambda s: s != "decision"):
            lat = self.latency(stage)
            pre = "" if stage == "decision" else f"{stage}_"
            out |= {f"{pre}latency_p50_ms": lat["p50"], f"{pre}latency_p99_ms": lat["p99"]}
            if stage == "decision":
                out |= {"latency_mean_ms": lat["mean"], "latency_max_ms": lat["max"], "decisions": lat["n"]}
        for model in ["live", *sorted(m for m in self._quality if m != "live")]:
            q = self.quality(model)
            pre = "" if model == "live" else f"{model}_"
            out |= {f"{pre}ic": q["ic"], f"{pre}rank_ic": q["rank_ic"], f"{pre}accuracy": q["accuracy"],
                    f"{pre}sessions_labelled": q["sessions"]}
        for key, ref in (("ic", "ic"), ("rank_ic", "rank_ic"), ("accuracy", "directional_accuracy")):
            if ref in self.reference and self.reference[ref] is not None:
                out[f"backtest_{key}"] = float(self.reference[ref])
                out[f"{key}_vs_backtest"] = out.get(key, math.nan) - float(self.reference[ref])
        return out | self.orders() | {"scores_unlabelled": float(self.unlabelled)}


from quantlm.live.fallback import (  # noqa: E402  (re-exported: the fallback lives in its own module)
    BACKUP,
    PRIMARY,
    FallbackConfig,
    FallbackScorer,
    ModelEvent,
    ScoringError,
)

__all__ = ["LiveMonitor", "SessionQuality", "session_quality", "FallbackConfig", "FallbackScorer", "ModelEvent",
           "ScoringError", "PRIMARY", "BACKUP"]
