"""Live monitoring (rolling latency, realised IC / accuracy, orders) and the automatic model fallback."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from quantlm.live.monitor import FallbackConfig, FallbackScorer, LiveMonitor, ModelEvent, ScoringError

SYMS = ["A", "B", "C", "D", "E"]
DAYS = pd.bdate_range("2024-01-02", periods=30)


def _opens(n: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 10.0 * np.exp(np.cumsum(rng.normal(0, 0.02, (n, len(SYMS))), axis=0))


def _ranks(x):
    return pd.Series(x).rank().to_numpy()


# ---------------------------------------------------------------------- labels, IC, accuracy
def test_ic_rank_ic_and_accuracy_by_hand_once_two_later_opens_are_known():
    opens = _opens()
    scores = np.array([0.3, -0.1, 0.2, 0.5, -0.4])
    m = LiveMonitor(window_sessions=5)
    m.record_prices(DAYS[0], SYMS, opens[0])
    m.record_scores(DAYS[0], SYMS, scores)
    m.record_prices(DAYS[1], SYMS, opens[1])
    assert m.sessions() == []  # open(t+2) not known yet
    m.record_prices(DAYS[2], SYMS, opens[2])
    (q,) = m.sessions()
    label = opens[2] / opens[1] - 1
    assert q.ts == DAYS[0] and q.n == 5
    assert q.ic == pytest.approx(np.corrcoef(scores, label)[0, 1], abs=1e-12)
    assert q.rank_ic == pytest.approx(np.corrcoef(_ranks(scores), _ranks(label))[0, 1], abs=1e-12)
    pred, real = scores > np.median(scores), label > np.median(label)
    keep = (scores != np.median(scores)) & (label != np.median(label))  # the medians themselves are ties
    assert q.decided == keep.sum() == 3 and q.correct == (pred == real)[keep].sum()
    snap = m.snapshot()
    assert snap["ic"] == pytest.approx(q.ic) and snap["accuracy"] == pytest.approx(q.correct / 3)
    # the same numbers as the backtest's metrics on the same scores and labels
    from quantlm.backtest.metrics import directional_accuracy, ic_series

    sc = pd.DataFrame({"symbol": SYMS, "ts": DAYS[0], "score": scores})
    lb = pd.DataFrame({"symbol": SYMS, "ts": DAYS[0], "label": label})
    bt = ic_series(sc, lb)
    assert bt["ic"].iloc[0] == pytest.approx(q.ic) and bt["rank_ic"].iloc[0] == pytest.approx(q.rank_ic)
    assert directional_accuracy(sc, lb) == pytest.approx(snap["accuracy"])
    assert snap["sessions_labelled"] == 1.0 and all(isinstance(v, float) for v in snap.values())


def test_labels_use_only_the_next_two_opens():
    """Perturbing opens after t+2 (or at t and before) leaves the quality of scores at t unchanged."""
    base = _opens()
    scores = np.random.default_rng(3).normal(size=(30, len(SYMS)))

    def run(opens):
        m = LiveMonitor(window_sessions=30)
        for i in range(12):
            m.record_prices(DAYS[i], SYMS, opens[i])
            m.record_scores(DAYS[i], SYMS, scores[i])
        return {q.ts: (q.ic, q.rank_ic, q.correct, q.decided) for q in m.sessions()}

    ref = run(base)
    t = 5
    later, earlier, inside = base.copy(), base.copy(), base.copy()
    later[t + 3:] *= np.random.default_rng(1).uniform(0.5, 2.0, later[t + 3:].shape)
    earlier[: t + 1] *= 1.7
    inside[t + 2, 0] *= 1.3
    assert run(later)[DAYS[t]] == ref[DAYS[t]]
    assert run(earlier)[DAYS[t]] == ref[DAYS[t]]
    assert run(inside)[DAYS[t]] != ref[DAYS[t]]
    assert sorted(ref) == list(DAYS[:10])  # sessions 10 and 11 still wait for their labels


def test_adjusted_opens_missing_symbols_and_duplicates():
    m = LiveMonitor()
    m.record_scores(DAYS[0], ["A", "B", "C", "D", "A"], [9.0, 2.0, 3.0, 4.0, 1.0])  # A repeated: the last wins
    m.record_prices(DAYS[1], ["A", "B", "C", "D"], [10.0, 10.0, 10.0, 10.0], adj_factor=[1.0, 2.0, np.nan, 1.0])
    m.record_prices(DAYS[2], ["A", "B", "C"], [11.0, 21.0, 10.5])  # D suspended: no label
    (q,) = m.sessions()
    label = np.array([11 / 10, 21 / 20, 10.5 / 10]) - 1
    assert q.n == 3 and q.ic == pytest.approx(np.corrcoef([1.0, 2.0, 3.0], label)[0, 1])
    with pytest.raises(ValueError, match="time order"):
        m.record_prices(DAYS[0], ["A"], [1.0])


def test_rolling_window_and_mean_ic():
    opens = _opens()
    rng = np.random.default_rng(5)
    m = LiveMonitor(window_sessions=4)
    for i in range(12):
        m.record_prices(DAYS[i], SYMS, opens[i])
        m.record_scores(DAYS[i], SYMS, rng.normal(size=len(SYMS)))
    allq = m.sessions()
    assert len(allq) == 4 and allq[-1].ts == DAYS[9]
    assert m.quality()["ic"] == pytest.approx(np.mean([q.ic for q in allq]))
    assert m.ic(last=4) == pytest.approx(np.mean([q.ic for q in allq])) and m.ic(last=5) is None


# ---------------------------------------------------------------------- latency and orders
def test_latency_percentiles_of_the_last_decisions():
    m = LiveMonitor(window_decisions=100)
    for x in range(300):
        m.record_latency(float(x))
    last = np.arange(200, 300, dtype=float)
    snap = m.snapshot()
    assert snap["latency_p50_ms"] == np.percentile(last, 50) and snap["latency_p99_ms"] == np.percentile(last, 99)
    assert snap["latency_max_ms"] == 299.0 and snap["decisions"] == 100.0


def test_fill_rate_rejections_and_slippage_by_hand():
    m = LiveMonitor(window_sessions=2)
    for cid in ("o1", "o2", "o3", "o4"):
        m.record_sent(DAYS[0], cid)
    m.record_fill(DAYS[1], "o1", "buy", 100, 10.2, 10.0)  # +200 bp on 1000
    m.record_fill(DAYS[1], "o2", "sell", 50, 19.9, 20.0)  # +50 bp on 1000
    m.record_fill(DAYS[1], "o2", "sell", 50, 19.9, 20.0)  # +50 bp on 1000 (the same order, partly filled twice)
    m.record_rejection(DAYS[0], "collar")
    m.record_rejection(DAYS[0], "collar")
    m.record_rejection(DAYS[1], "review")
    o = m.orders()
    assert o["orders_sent"] == 4 and o["orders_filled"] == 2 and o["fill_rate"] == 0.5 and o["fills"] == 3
    assert o["slippage_bp"] == pytest.approx((200 * 1000 + 50 * 1000 + 50 * 1000) / 3000)
    assert o["rejections"] == 3 and o["rejections_collar"] == 2 and o["rejections_review"] == 1
    m.record_sent(DAYS[2], "o5")  # DAYS[0] leaves the 2-session window
    o = m.orders()
    assert o["orders_sent"] == 1 and o["orders_filled"] == 0 and o["rejections"] == 1
    assert m.snapshot()["fill_rate"] == 0.0


def test_backtest_reference_beside_live():
    m = LiveMonitor(reference={"ic": 0.05, "directional_accuracy": 0.55})
    snap = m.snapshot()
    assert snap["backtest_ic"] == 0.05 and math.isnan(snap["ic_vs_backtest"]) and snap["backtest_accuracy"] == 0.55


# ---------------------------------------------------------------------- fallback
class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Fake:
    """A scorer whose behaviour per call is scripted: 'ok', 'raise', 'nan', or a float (ms it takes)."""

    def __init__(self, name: str, clock: Clock, offset: float, script=None, fn=None) -> None:
        self.name, self.clock, self.offset, self.script, self.fn = name, clock, offset, script or {}, fn
        self.calls = 0
        self.starts: list[pd.DataFrame] = []

    def start(self, history, symbols):
        self.starts.append(history)
        self.symbols = list(symbols)

    def update(self, bars, ts):
        i, self.calls = self.calls, self.calls + 1
        act = self.script.get(i, "ok")
        self.clock.t += 0.001 * (act if isinstance(act, float) else 1.0)
        if act == "raise":
            raise RuntimeError("model exploded")
        out = self.fn(i) if self.fn else np.arange(len(self.symbols), dtype=np.float64) + self.offset + 10 * i
        if act == "nan":
            out = out.copy()
            out[1] = np.nan
        return out


def _bars(i: int, missing: tuple[int, ...] = ()):
    c = 10.0 + np.arange(len(SYMS)) + 0.1 * i
    c[list(missing)] = np.nan
    return {"open": c, "high": c, "low": c, "close": c, "volume": np.ones(len(SYMS))}


def _fallback(p_script=None, b_script=None, **cfg):
    clock, seen = Clock(), []
    p, b = Fake("student", clock, 0.0, p_script), Fake("teacher", clock, 0.5, b_script)
    fs = FallbackScorer(p, b, LiveMonitor(), FallbackConfig(**cfg), on_event=seen.append, clock=clock)
    hist = pd.DataFrame({"symbol": SYMS, "ts": DAYS[0] - pd.Timedelta(days=1), **_bars(-1)})
    fs.start(hist, SYMS)
    return fs, p, b, seen


def test_primary_raising_switches_within_the_decision_and_is_restarted():
    fs, p, b, seen = _fallback({2: "raise"}, recover_sessions=100)
    assert fs.active == "primary"
    np.testing.assert_array_equal(fs.update(_bars(0), DAYS[0]), np.arange(5.0))
    fs.update(_bars(1), DAYS[1])
    out = fs.update(_bars(2), DAYS[2])
    np.testing.assert_array_equal(out, np.arange(5.0) + 0.5 + 20)  # the backup's scores of that decision
    assert fs.active == "backup" and seen == fs.events and len(seen) == 1
    ev = seen[0]
    assert isinstance(ev, ModelEvent) and (ev.ts, ev.from_model, ev.to_model, ev.reason) == (
        DAYS[2], "student", "teacher", "error") and "model exploded" in ev.detail
    assert ev.to_dict()["from"] == "student"
    fs.update(_bars(3), DAYS[3])
    assert len(p.starts) == 2 and len(b.starts) == 1  # restarted from history + the 3 streamed sessions
    assert len(p.starts[1]) == 5 * 4 and p.starts[1]["ts"].max() == DAYS[2]
    assert b.calls == 4  # the backup was updated on every bar: warm when needed


def test_nan_for_a_symbol_with_a_bar_switches_but_not_for_one_without():
    fs, *_ , seen = _fallback({0: "nan", 1: "nan"})
    fs.update(_bars(0, missing=(1,)), DAYS[0])  # symbol 1 has no bar: its NaN is expected
    assert fs.active == "primary" and not seen
    out = fs.update(_bars(1), DAYS[1])
    assert fs.active == "backup" and seen[0].reason == "non_finite" and np.isfinite(out).all()


def test_latency_budget_after_consecutive_slow_decisions():
    fs, *_ , seen = _fallback({0: 6.0, 1: 6.0, 2: 1.0, 3: 6.0, 4: 6.0, 5: 7.5}, latency_budget_ms=5.0,
                              latency_strikes=3)
    served = [fs.update(_bars(i), DAYS[i]) for i in range(5)]
    assert fs.active == "primary" and not seen  # 2 slow, 1 fast, 2 slow: never 3 in a row
    out = fs.update(_bars(5), DAYS[5])
    assert fs.active == "backup" and seen[0].reason == "latency" and "7.500 ms" in seen[0].detail
    np.testing.assert_array_equal(out, np.arange(5.0) + 0.5 + 50)
    np.testing.assert_array_equal(served[4], np.arange(5.0) + 40)
    assert fs.last_ms["primary"] == pytest.approx(7.5)


def test_switch_back_after_recover_sessions_healthy_sessions():
    fs, *_ , seen = _fallback({1: "raise", 3: "nan"}, recover_sessions=3)
    active = []
    for i in range(9):
        out = fs.update(_bars(i), DAYS[i])
        active.append((fs.active, out[0] % 1))
    # 1: error -> backup; 2 healthy; 3 NaN resets; 4, 5, 6 healthy -> back on the primary at 6
    assert [a for a, _ in active] == ["primary"] + ["backup"] * 5 + ["primary"] * 3
    assert [a[1] for a in active] == [0.0] + [0.5] * 5 + [0.0] * 3
    assert [e.reason for e in seen] == ["error", "recovered"] and seen[1].ts == DAYS[6]
    assert (seen[1].from_model, seen[1].to_model) == ("teacher", "student")


def test_recovery_counts_sessions_not_decisions():
    fs, *_ , seen = _fallback({0: "raise", 4: "nan"}, recover_sessions=2)
    stamps = [DAYS[0] + pd.Timedelta(hours=h) for h in (10, 14)] + [DAYS[1] + pd.Timedelta(hours=h) for h in (10, 14)]
    stamps += [DAYS[2] + pd.Timedelta(hours=h) for h in (10, 14)] + [DAYS[3] + pd.Timedelta(hours=h) for h in (10, 14)]
    act = []
    for i, ts in enumerate(stamps):
        fs.update(_bars(i), ts)
        act.append(fs.active)
    # day 0 spoiled (error), day 1 healthy (1 session), day 2 spoiled at 10:00 (NaN): reset, day 3 -> 1 session
    assert act == ["backup"] * 8 and [e.reason for e in seen] == ["error"]


def test_backup_raising_while_serving_and_both_raising():
    fs, p, b, seen = _fallback({0: "raise", 2: "raise"}, {1: "raise", 2: "raise"}, recover_sessions=50)
    fs.update(_bars(0), DAYS[0])
    out = fs.update(_bars(1), DAYS[1])
    assert fs.active == "primary" and [e.reason for e in seen] == ["error", "backup_error"]
    np.testing.assert_array_equal(out, np.arange(5.0) + 10)
    with pytest.raises(ScoringError, match="model exploded"):
        fs.update(_bars(2), DAYS[2])


def test_ic_drift_switches_and_recovers_by_the_rule():
    opens = _opens(seed=2)
    label = np.vstack([opens[2:] / opens[1:-1] - 1, np.zeros((2, len(SYMS)))])  # label of a score at t

    clock = Clock()
    p = Fake("student", clock, 0.0, fn=lambda i: label[i] * (-1.0 if i < 5 else 1.0))  # wrong until session 5
    b = Fake("lgbm", clock, 0.0, fn=lambda i: label[i])
    mon = LiveMonitor(window_sessions=10)
    fs = FallbackScorer(p, b, mon, {"min_ic": 0.0, "ic_window": 3, "recover_sessions": 2, "window_sessions": 10},
                        clock=clock)
    fs.start(pd.DataFrame(columns=["symbol", "ts", "open", "high", "low", "close", "volume"]), SYMS)
    act = []
    for i in range(14):
        mon.record_prices(DAYS[i], SYMS, opens[i])  # opens known before the decision at the close
        fs.update(_bars(i), DAYS[i])
        act.append(fs.active)
    # sessions 0-2 labelled by decision 4: IC -1 -> switch at 4; shadow IC over the last 3 >= 0 from decision 8
    # (sessions 4-6: -1, 1, 1), healthy at 8 and 9 -> back at 9
    assert act == ["primary"] * 4 + ["backup"] * 5 + ["primary"] * 5
    assert [(e.reason, e.ts) for e in fs.events] == [("ic_drift", DAYS[4]), ("recovered", DAYS[9])]
    snap = mon.snapshot()
    assert snap["backup_ic"] == pytest.approx(1.0) and snap["primary_sessions_labelled"] == 10.0
    assert snap["score.primary_latency_p50_ms"] == pytest.approx(1.0)


def test_config_from_a_mapping_ignores_other_keys_and_keywords_win():
    c = FallbackConfig.from_any({"latency_budget_ms": 2.0, "window_sessions": 20})
    assert c.latency_budget_ms == 2.0 and c.latency_strikes == 3 and c.min_ic is None
    fs = FallbackScorer(object(), object(), None, c, latency_strikes=7)
    assert fs.config.latency_budget_ms == 2.0 and fs.config.latency_strikes == 7
    with pytest.raises(TypeError):
        FallbackScorer(object(), object(), latency_strike=7)
    ev = ModelEvent(DAYS[0], "a", "b", "error", "boom")
    assert ev["from"] == ev.from_model == "a" and ev.get("to") == "b" and ev.to_dict()["ts"] == str(DAYS[0])
