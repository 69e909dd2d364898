"""The order manager: submit / mark / fills, recovery from the journal, session expiry, reconciliation."""

from __future__ import annotations

import pandas as pd
import pytest

from quantlm.live.journal import InvalidTransition, Journal
from quantlm.live.oms import InvalidOrder, OrderManager, ReconcileError
from quantlm.live.types import Fill, Order, OrderStatus

S = OrderStatus
T0 = pd.Timestamp("2024-01-02 09:30")


def order(cid: str, symbol: str = "600000.SH", **kw) -> Order:
    kw.setdefault("shares", 1000.0)
    return Order(client_id=cid, symbol=symbol, side=kw.pop("side", "buy"), created=T0, **kw)


def fill(fid: str, cid: str, shares: float, price: float = 10.0) -> Fill:
    return Fill(fill_id=fid, client_id=cid, symbol="600000.SH", side="buy", shares=shares, price=price, ts=T0)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "journal.sqlite"


@pytest.fixture
def oms(path):
    with Journal(path) as j:
        yield OrderManager(j)


def sent(oms: OrderManager, cid: str, **kw) -> Order:
    oms.submit(order(cid, **kw))
    oms.mark(cid, S.RISK_CHECKED)
    return oms.mark(cid, S.SENT, "sent", ts=T0)


def test_submit_is_idempotent_and_journaled_first(oms):
    o, new = oms.submit(order("A1"))
    assert new and o.status == S.NEW and oms.journal.order("A1") == o
    again, new = oms.submit(order("A1", shares=5.0, symbol="000001.SZ"))
    assert not new and again == o
    oms.mark("A1", S.RISK_CHECKED)
    oms.mark("A1", S.REJECTED, "max_value")
    assert oms.open_orders() == []
    again, new = oms.submit(order("A1"))  # a closed order is still known: no second order
    assert not new and again.status == S.REJECTED
    assert len(oms.journal.orders()) == 1


@pytest.mark.parametrize("bad", [dict(side="hold"), dict(shares=-100.0), dict(shares=0.0),
                                 dict(shares=float("nan")), dict(symbol=""), dict(limit_price=-1.0),
                                 dict(status=S.SENT)])
def test_malformed_orders_are_refused_before_the_journal(oms, bad):
    with pytest.raises(InvalidOrder, match="refused"):
        oms.submit(order("B1", **bad))
    assert oms.journal.orders() == []


def test_book_views_and_rebuild_after_restart(path):
    with Journal(path) as j:
        oms = OrderManager(j)
        sent(oms, "C1")
        sent(oms, "C2", symbol="000001.SZ")
        oms.submit(order("C3"))
        oms.mark("C3", S.RISK_CHECKED)
        oms.mark("C3", S.HELD, "review")
        oms.mark("C2", S.UNKNOWN, "timeout")
        with pytest.raises(InvalidTransition):
            oms.mark("C1", S.HELD)
        assert oms.apply_fill(fill("f1", "C1", 400)) and not oms.apply_fill(fill("f1", "C1", 400))
        views = (oms.active_count(), [o.client_id for o in oms.held()], [o.client_id for o in oms.in_flight()],
                 [o.client_id for o in oms.open_orders("600000.SH")], oms.order("C1"))
    assert views[:4] == (2, ["C3"], ["C2"], ["C1", "C3"]) and views[4].filled_shares == 400
    with Journal(path) as j:  # start-up after a crash is the same path
        again = OrderManager(j)
        assert (again.active_count(), [o.client_id for o in again.held()], [o.client_id for o in again.in_flight()],
                [o.client_id for o in again.open_orders("600000.SH")], again.order("C1")) == views


def test_rolled_back_batch_leaves_no_trace_in_memory(oms):
    with pytest.raises(RuntimeError), oms.journal.batch():
        oms.submit(order("D1"))
        sent(oms, "D2")
        raise RuntimeError("crash inside the decision")
    assert oms.open_orders() == [] and oms.order("D1") is None


def test_expire_session(oms):
    sent(oms, "E1")
    sent(oms, "E2")
    oms.apply_fill(fill("e2", "E2", 100))
    oms.submit(order("E3"))
    oms.mark("E3", S.RISK_CHECKED)
    oms.mark("E3", S.HELD)
    sent(oms, "E4")
    oms.mark("E4", S.UNKNOWN)
    oms.submit(order("E5"))
    end = T0.replace(hour=15)
    changed = {o.client_id: o.status for o in oms.expire_session(end)}
    assert changed == {"E1": S.EXPIRED, "E2": S.EXPIRED, "E3": S.EXPIRED, "E5": S.REJECTED}
    assert [o.client_id for o in oms.open_orders()] == ["E4"]  # in flight: never guessed
    ev = oms.journal.events("E3").iloc[-1]
    assert (ev["reason"], ev["ts"]) == ("session end", end)


def test_reconcile_applies_a_missing_fill_once(oms):
    sent(oms, "F1", shares=1000.0)
    broker = {"F1": (S.FILLED, 1000.0)}
    fills = [fill("x1", "F1", 600, 10.0), fill("x2", "F1", 400, 10.5)]
    oms.apply_fill(fills[0])  # the journal has one of the two
    rep = oms.reconcile(broker, fills)
    assert rep.ok and rep.applied_fills == ["x2"]
    o = oms.order("F1")
    assert (o.status, o.filled_shares) == (S.FILLED, 1000.0) and o.avg_price == pytest.approx(10.2)
    again = oms.reconcile(broker, fills)  # reconciling twice changes nothing
    assert again.ok and again.applied_fills == [] and again.transitions == []
    assert len(oms.journal.fills("F1")) == 2


def test_reconcile_resolves_unknown_by_broker_status(oms):
    sent(oms, "G1")
    oms.mark("G1", S.UNKNOWN, "timeout")
    sent(oms, "G2")
    oms.mark("G2", S.UNKNOWN, "timeout")
    sent(oms, "G3")
    oms.mark("G3", S.UNKNOWN, "timeout")
    rep = oms.reconcile({"G1": ("partial", 300.0), "G2": ("rejected", 0.0)}, [fill("y1", "G1", 300)])
    assert rep.ok, rep.summary()
    assert oms.order("G1").status == S.PARTIAL and oms.order("G1").filled_shares == 300
    assert oms.order("G2").status == S.REJECTED
    assert oms.order("G3").status == S.UNKNOWN and rep.unresolved == ["G3"]  # no answer: stays unknown
    assert ("G2", "unknown", "rejected") in rep.transitions
    assert oms.journal.events("G2")["actor"].iloc[-1] == "reconcile"


def test_reconcile_recovers_a_send_the_journal_missed(oms):
    oms.submit(order("H1"))
    oms.mark("H1", S.RISK_CHECKED)  # crash after send_order, before SENT was journaled
    rep = oms.reconcile({"H1": (S.FILLED, 1000.0)}, [fill("z1", "H1", 1000)])
    assert rep.ok, rep.summary()
    assert oms.order("H1").status == S.FILLED and rep.transitions[0] == ("H1", "risk_checked", "sent")


def test_reconcile_reports_mismatches(oms):
    sent(oms, "K1")
    oms.apply_fill(fill("k1", "K1", 1000))  # journal: filled
    sent(oms, "K2")
    sent(oms, "K3")
    sent(oms, "K4")
    oms.mark("K4", S.CANCELLED)
    rep = oms.reconcile({"K1": (S.SENT, 0.0), "ZZ9": (S.SENT, 0.0), "K2": (S.FILLED, 1000.0),
                         "K4": (S.SENT, 0.0)}, [fill("k9", "ghost", 100)])
    text = "\n".join(rep.mismatches)
    assert "K1: broker says sent with 0 shares filled, the journal filled with 1000" in text
    assert "K2: broker says filled with 1000 shares filled, the journal sent with 0" in text
    assert oms.order("K2").status == S.SENT  # fills missing: the status is not moved either
    assert "K4: journal says cancelled, broker says sent" in text
    assert "ZZ9" in text and "ghost" in text and len(rep.mismatches) == 5
    assert rep.unresolved == ["K3"] and oms.order("K3").status == S.UNKNOWN  # the broker never saw it
    with pytest.raises(ReconcileError, match="refusing to start") as e:
        rep.raise_if_mismatched()
    assert e.value.user_facing
