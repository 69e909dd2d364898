"""`/metrics`: after a short replay with fills, risk holds and rejections and a forced model fallback, the
Prometheus text parses and carries the expected series with the journal's numbers."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from quantlm.live.types import OrderStatus  # noqa: E402
from quantlm.service import metrics as M  # noqa: E402

FAIL_AT = 10  # the primary raises on its 10th update: the backup serves that decision


def samples(body: bytes) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(got: dict, name: str, **labels) -> float:
    return got[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """A paper session over 3 months of a 12-symbol synthetic market: orders filled, orders held for
    review (and approved by the replay), orders rejected by the pause rules, and the primary model
    raising once (fallback to the backup, then recovery)."""
    import quantlm.live.replay as R
    from quantlm.data.store import Store
    from quantlm.data.synth import SynthConfig, write_market
    from quantlm.live.config import LiveConfig

    root = tmp_path_factory.mktemp("metrics")
    store = Store(root / "store")
    write_market(store, SynthConfig(n_symbols=12, start="2022-01-04", end="2022-06-30", news=False))
    bars = store.bars()
    rng = np.random.default_rng(0)
    for name in ("p", "b"):
        bars[["symbol", "ts"]].assign(score=rng.normal(size=len(bars))).to_csv(root / f"{name}.csv", index=False)
    cfg = LiveConfig(history_days=30, primary={"signals": str(root / "p.csv"), "name": "student"},
                     backup={"signals": str(root / "b.csv"), "name": "teacher"},
                     strategy={"topk": 5, "n_drop": 1},
                     risk={"review_threshold": 150_000.0, "review_mode": "approve"},
                     monitor={"recover_sessions": 1000})  # stays on the backup once it switched
    held: dict = {}

    class Captured(R.Session):
        def __init__(self, *a, **k) -> None:
            super().__init__(*a, **k)
            held["s"] = self
            primary = self.scorer.scorers["primary"]
            inner, calls = primary.update, [0]

            def update(bars, ts, **kw):
                calls[0] += 1
                if calls[0] == FAIL_AT:
                    raise RuntimeError("primary model crashed")
                return inner(bars, ts, **kw)

            primary.update = update

    mp = pytest.MonkeyPatch()
    mp.setattr(R, "Session", Captured)
    try:
        R.run_replay(cfg, store, "2022-03-01", "2022-05-31", root / "out")
    finally:
        mp.undo()
    return held["s"]


def test_snapshot_shape_is_plain_json(replayed):
    import json

    snap = M.session_snapshot(replayed)
    json.dumps(snap, allow_nan=False)  # JSON-safe: no NaN, no timestamps
    assert set(snap) >= {"orders_by_status", "risk_events", "model_events", "models", "quality", "account",
                         "trading_state", "last_bar", "decisions"}
    assert set(snap["orders_by_status"]) == {s.value for s in OrderStatus}
    assert snap["models"] == {"active": "teacher", "active_role": "backup",
                              "roles": {"primary": "student", "backup": "teacher"}}


def test_metrics_carry_the_journal_numbers(replayed):
    s = replayed
    m = M.ServiceMetrics()
    body, ctype = m.render(m.snapshot(s))
    assert ctype.startswith("text/plain")
    got = samples(body)

    # orders by status = the journal's counts (every status present, 0 included)
    orders = s.journal.orders_frame()
    counts = orders["status"].value_counts()
    assert counts.get("filled", 0) > 0 and counts.get("rejected", 0) > 0
    for st in OrderStatus:
        assert value(got, "quantlm_orders", status=st.value) == counts.get(st.value, 0)

    # risk rejections and holds by rule = the journal's risk events
    ev = s.journal.risk_events()
    holds = ev[ev["action"] == "hold"].groupby("rule").size()
    rejects = ev[ev["action"] == "reject"].groupby("rule").size()
    assert len(holds) and len(rejects)
    for rule, n in holds.items():
        assert value(got, "quantlm_risk_holds_total", rule=rule) == n
        assert value(got, "quantlm_risk_events_total", action="hold", rule=rule) == n
    for rule, n in rejects.items():
        assert value(got, "quantlm_risk_rejections_total", rule=rule) == n
    assert sum(v for (name, _), v in got.items() if name == "quantlm_risk_events_total") == len(ev)

    # the model in use and the fallback switch
    assert value(got, "quantlm_model_active", model="teacher", role="backup") == 1.0
    assert value(got, "quantlm_model_active", model="student", role="primary") == 0.0
    assert value(got, "quantlm_model_switches_total", from_model="student", to_model="teacher", reason="error") == 1
    assert len(s.journal.model_events()) == 1

    # rolling quality = LiveMonitor.snapshot
    mon = s.monitor.snapshot()
    for stream, pre in (("live", ""), ("primary", "primary_"), ("backup", "backup_")):
        for key in ("ic", "rank_ic", "accuracy"):
            assert value(got, f"quantlm_model_{key}", stream=stream) == pytest.approx(mon[f"{pre}{key}"])
    assert math.isfinite(value(got, "quantlm_model_ic", stream="live"))

    # equity, cash and exposure = the portfolio's
    gross, equity = s.engine.portfolio.gross_and_equity()
    assert gross > 0
    assert value(got, "quantlm_equity") == pytest.approx(equity)
    assert value(got, "quantlm_cash") == pytest.approx(s.engine.portfolio.cash)
    assert value(got, "quantlm_gross_exposure") == pytest.approx(gross)
    assert value(got, "quantlm_gross_exposure_ratio") == pytest.approx(gross / equity)
    assert value(got, "quantlm_trading_state", state="active") == 1.0

    # the latency histogram: one observation per decision, in seconds
    hist = s.engine.timing.history
    assert value(got, "quantlm_decision_latency_seconds_count") == len(hist)
    assert value(got, "quantlm_decision_latency_seconds_sum") == pytest.approx(sum(hist) / 1e3)
    assert value(got, "quantlm_decision_latency_seconds_bucket", le="+Inf") == len(hist)
    assert value(got, "quantlm_decision_latency_seconds_bucket", le="0.05") == sum(x <= 50 for x in hist)


def test_histogram_observes_each_decision_once(replayed):
    m = M.ServiceMetrics()
    hist = list(replayed.engine.timing.history)
    assert m.sync_decisions(hist) == len(hist)
    assert m.sync_decisions(hist) == 0  # a second scrape adds nothing
    hist.append(1.5)
    assert m.sync_decisions(hist) == 1
    got = samples(m.render(None)[0])
    assert value(got, "quantlm_decision_latency_seconds_count") == len(hist)
    assert value(got, "quantlm_decision_latency_seconds_bucket", le="0.002") >= 1  # 1.5 ms


def test_registries_are_per_service():
    a, b = M.ServiceMetrics(), M.ServiceMetrics()
    a.sync_decisions([1.0, 2.0])
    assert value(samples(b.render(None)[0]), "quantlm_decision_latency_seconds_count") == 0
    assert a.registry is not b.registry


def test_a_failing_snapshot_still_serves_and_counts():
    class Broken:
        session = None

        async def call(self, fn, *args):
            raise RuntimeError("worker gone")

    svc = Broken()
    body, _ = asyncio.run(M.render(svc))
    assert value(samples(body), "quantlm_snapshot_errors_total") == 1
    assert M.metrics_for(svc) is M.metrics_for(svc)


# ---------------------------------------------------------------------- through the service's /metrics route
@pytest.fixture
def fallback_client(market, keys, tmp_path):
    from tests.service.fault_helpers import fallback_config, open_client

    c = open_client(market, fallback_config(market, tmp_path), keys.path, tmp_path / "out")
    yield c
    c.__exit__(None, None, None)


def test_metrics_route_after_orders_holds_rejections_and_a_fallback(fallback_client, keys):
    from tests.service.fault_helpers import Raising, on_worker, shares_worth

    c, svc = fallback_client, fallback_client.service
    admin, trader = keys.headers("admin"), keys.headers("trader")
    assert c.post("/api/v1/clock/step", json={"n": 8}, headers=admin).status_code == 200
    a, b = svc.session.symbols[:2]
    held = c.post("/api/v1/orders", json={"symbol": a, "side": "buy", "shares": shares_worth(c, a, 3_000_000)},
                  headers=trader)
    assert held.status_code == 201 and held.json()["order"]["status"] == "held", held.text
    big = c.post("/api/v1/orders", json={"symbol": b, "side": "buy", "shares": shares_worth(c, b, 6_000_000)},
                 headers=trader)
    assert big.status_code == 201 and big.json()["order"]["status"] == "rejected", big.text
    fb = svc.session.scorer
    on_worker(c, lambda: fb.scorers.__setitem__("primary", Raising(fb.scorers["primary"], fail_at=1)))
    assert c.post("/api/v1/clock/step", json={"n": 3}, headers=admin).status_code == 200

    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = samples(r.content)

    s = svc.session
    orders, events, hist = on_worker(c, lambda: (s.journal.orders_frame(), s.journal.risk_events(),
                                                 list(s.engine.timing.history)))
    counts = orders["status"].value_counts()
    assert counts.get("filled", 0) and counts.get("expired", 0) and counts.get("rejected", 0)  # held, then expired
    for st in OrderStatus:
        assert value(got, "quantlm_orders", status=st.value) == counts.get(st.value, 0)
    assert value(got, "quantlm_risk_holds_total", rule="review") == (events["action"] == "hold").sum() >= 1
    assert value(got, "quantlm_risk_rejections_total", rule="order_value") == 1
    assert value(got, "quantlm_model_active", model="teacher", role="backup") == 1.0
    assert value(got, "quantlm_model_active", model="student", role="primary") == 0.0
    assert value(got, "quantlm_model_switches_total", from_model="student", to_model="teacher", reason="error") == 1
    assert value(got, "quantlm_decision_latency_seconds_count") == len(hist) == 11
    account = c.get("/api/v1/account", headers=trader).json()
    assert value(got, "quantlm_equity") == pytest.approx(account["equity"])
    assert value(got, "quantlm_cash") == pytest.approx(account["cash"])
    assert value(got, "quantlm_gross_exposure_ratio") == pytest.approx(account["exposure"])
    assert account["exposure"] > 0
