"""`quantlm live replay` and `quantlm orders` from the CLI: outputs, review queue, risk events, order files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from quantlm.cli import app
from quantlm.data.store import Store


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from quantlm.data.synth import SynthConfig, write_market

    root = tmp_path_factory.mktemp("livecli")
    store = Store(root / "store")
    write_market(store, SynthConfig(n_symbols=20, start="2022-01-04", end="2022-06-30"))
    bars = store.bars()
    rng = np.random.default_rng(0)
    bars[["symbol", "ts"]].assign(score=rng.normal(size=len(bars))).to_csv(root / "scores.csv", index=False)
    return root


def write_cfg(root, **overrides) -> str:
    cfg = {"history_days": 40, "primary": {"signals": str(root / "scores.csv"), "name": "signals"},
           "strategy": {"topk": 4, "n_drop": 1}, "risk": {"review_threshold": 200_000.0, "review_mode": "hold", "max_position_fraction": 0.5}}
    cfg.update(overrides)
    path = root / f"live-{len(list(root.glob('live-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def invoke(*args) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def test_replay_writes_the_session_and_holds_large_orders(root, tmp_path):
    out = invoke("live", "replay", "--config", write_cfg(root), "--store", root / "store", "--start", "2022-03-01",
                 "--end", "2022-04-29", "--out", tmp_path / "s")
    for name in ("journal.sqlite", "orders.csv", "fills.csv", "equity.csv", "risk_events.csv", "model_events.csv",
                 "metrics.json"):
        assert (tmp_path / "s" / name).exists(), name
    assert "risk events: hold:review" in out
    orders = pd.read_csv(tmp_path / "s" / "orders.csv")
    held = orders[orders["status"] == "expired"]
    assert len(held) > 0  # 1/4 of a 1M book is >= the 200k review threshold: held, nobody approved, expired
    assert (orders.loc[orders["status"] == "filled", "side"] == "buy").sum() == 0  # no buy got past review
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert metrics["risk_events"]["hold:review"] == len(held) + int((orders["status"] == "held").sum())
    assert metrics["metrics"]["decision_ms_p99"] is not None


def test_replay_with_review_approved_trades(root, tmp_path):
    cfg = write_cfg(root, risk={"review_threshold": 200_000.0, "review_mode": "approve", "max_position_fraction": 0.5})
    invoke("live", "replay", "--config", cfg, "--store", root / "store", "--start", "2022-03-01", "--end",
           "2022-04-29", "--out", tmp_path / "s")
    orders = pd.read_csv(tmp_path / "s" / "orders.csv")
    assert (orders["status"] == "filled").sum() > 0
    events = pd.read_csv(tmp_path / "s" / "risk_events.csv")
    assert (events["rule"] == "review").sum() > 0


def test_orders_file_for_the_next_session(root, tmp_path):
    cfg = write_cfg(root, risk={"review_threshold": None, "max_position_fraction": 0.5})
    out = invoke("orders", "--config", cfg, "--store", root / "store", "--date", "2022-04-29", "--start", "2022-03-01",
                 "--out", tmp_path / "next.csv")
    rows = pd.read_csv(tmp_path / "next.csv")
    assert len(rows) > 0 and "order(s) for the session after 2022-04-29" in out
    assert list(rows.columns[:5]) == ["client_id", "symbol", "side", "shares", "limit_price"]
    main = rows[~rows["symbol"].str.startswith("688")]
    assert (main.loc[main["side"] == "buy", "shares"] % 100 == 0).all() and (rows["shares"] > 0).all()
    bars = Store(root / "store").bars(list(rows["symbol"]), start="2022-04-29", end="2022-04-29").set_index("symbol")
    close = bars.loc[rows["symbol"], "close"].to_numpy()
    buys = rows["side"].to_numpy() == "buy"
    assert (rows["limit_price"].to_numpy()[buys] <= np.round(close[buys] * 1.1, 2) + 1e-9).all()
    assert (rows["limit_price"].to_numpy()[buys] >= close[buys]).all()
    data = json.loads((tmp_path / "next.json").read_text())
    assert data["session"] == "2022-04-29" and len(data["orders"]) == len(rows)


def test_config_errors_name_the_key(root, tmp_path):
    bad = root / "bad.yaml"
    bad.write_text(yaml.safe_dump({"risk": {"reveiw_threshold": 1.0}}))
    res = CliRunner().invoke(app, ["live", "replay", "--config", str(bad), "--store", str(root / "store"), "--start",
                                   "2022-03-01", "--end", "2022-03-10", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "risk.reveiw_threshold" in " ".join(res.output.split())
    assert not (tmp_path / "x").exists()


def test_kill_switch_cancels_open_orders_and_halts_across_restarts(root, tmp_path):
    from quantlm.live.config import load_live_config
    from quantlm.live.replay import Session, run_replay
    from quantlm.live.types import OrderStatus, TradingState

    cfg = load_live_config(write_cfg(root, risk={"review_threshold": None, "max_position_fraction": 0.5}))
    store = Store(root / "store")
    run_replay(cfg, store, "2022-03-01", "2022-03-15", tmp_path / "s")
    s = Session(cfg, store, tmp_path / "s")
    open_before = [o.client_id for o in s.oms.open_orders()]
    assert open_before  # the last bar's decisions wait for the next bar
    cancelled = s.engine.kill("admin", pd.Timestamp("2022-03-15"))
    assert set(open_before) <= set(cancelled)
    assert all(s.oms.order(c).status == OrderStatus.CANCELLED for c in open_before)
    again = Session(cfg, store, tmp_path / "s")  # a restart: still halted, so no new order is accepted
    assert again.risk.state == TradingState.HALTED
    run_replay(cfg, store, "2022-03-01", "2022-03-31", tmp_path / "s")
    orders = pd.read_csv(tmp_path / "s" / "orders.csv", parse_dates=["created"])
    later = orders[orders["created"] > pd.Timestamp("2022-03-15")]
    assert len(later) and (later["status"] == "rejected").all()
