"""After a restart, orders still open at the broker count toward the risk limits again, even when the
risk manager's state was last saved before they were submitted."""

from __future__ import annotations

import pandas as pd

from quantlm.data.store import Store
from quantlm.live.config import LiveConfig
from quantlm.live.replay import Session, run_replay
from quantlm.live.types import Order


def test_open_orders_are_reregistered_with_the_risk_manager(tmp_path):
    from quantlm.data.synth import SynthConfig, write_market

    store = Store(tmp_path / "store")
    write_market(store, SynthConfig(n_symbols=12, start="2022-01-04", end="2022-06-30"))
    bars = store.bars()
    scores = bars[["symbol", "ts"]].assign(score=0.0)
    scores.to_csv(tmp_path / "scores.csv", index=False)
    cfg = LiveConfig(history_days=30, primary={"signals": str(tmp_path / "scores.csv")},
                     risk={"review_threshold": None, "max_position_fraction": None})
    run_replay(cfg, store, "2022-03-01", "2022-03-10", tmp_path / "s")
    s = Session(cfg, store, tmp_path / "s")
    s.engine.restore(s.journal.get_state("portfolio"))  # last prices, as a resumed session has them
    sym = s.symbols[0]
    ts = pd.Timestamp("2022-03-10")
    with s.journal.batch():  # a manual order, journalled without saving the risk state (as the service does)
        o = s.engine.submit(Order(client_id=s.journal.next_client_id("M"), symbol=sym, side="buy", shares=100,
                                  value=1_000.0, created=ts, reason="manual"), ts)
    assert o.client_id in s.risk.active, s.journal.events(o.client_id)["reason"].tolist()
    again = Session(cfg, store, tmp_path / "s")
    assert o.client_id in again.risk.active


def test_reconcile_tells_the_risk_manager(tmp_path):
    from quantlm.data.synth import SynthConfig, write_market
    from quantlm.live.types import Fill, OrderStatus

    store = Store(tmp_path / "store")
    write_market(store, SynthConfig(n_symbols=12, start="2022-01-04", end="2022-06-30"))
    bars = store.bars()
    bars[["symbol", "ts"]].assign(score=range(len(bars))).to_csv(tmp_path / "scores.csv", index=False)
    cfg = LiveConfig(history_days=30, primary={"signals": str(tmp_path / "scores.csv")},
                     risk={"review_threshold": None, "max_position_fraction": None})
    run_replay(cfg, store, "2022-03-01", "2022-03-10", tmp_path / "s")
    s = Session(cfg, store, tmp_path / "s")
    sent = [o for o in s.oms.open_orders() if o.status == OrderStatus.SENT]
    assert sent and all(o.client_id in s.risk.active for o in sent)
    o = sent[0]
    fill = Fill(fill_id=f"{o.client_id}@broker", client_id=o.client_id, symbol=o.symbol, side=o.side,
                shares=o.shares or 100.0, price=10.0, ts=pd.Timestamp("2022-03-11"))
    # the broker filled it while we were away (the fill never reached us): its query says so
    s.engine.broker.query_orders = lambda: {o.client_id: (OrderStatus.FILLED, fill.shares)}
    s.engine.broker.query_fills = lambda: [fill]
    report = s.engine.reconcile(pd.Timestamp("2022-03-11"))
    assert report.applied_fills == [fill.fill_id]
    assert s.oms.order(o.client_id).status == OrderStatus.FILLED
    assert o.client_id not in s.risk.active  # no longer counts toward the active-order limit
