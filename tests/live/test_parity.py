"""Parity is the contract: a live replay with the paper broker and the extra risk rules off gives the
same orders, fills and equity as `quantlm backtest` on the same scores (synthetic market, and a store
with dividends, bonus issues, ST spans and a new listing)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlm.backtest.engine import BacktestConfig, backtest_from_store
from quantlm.data.store import Store
from quantlm.live.config import LiveConfig
from quantlm.live.replay import run_replay
from quantlm.live.scorers import FrameScorer
from tests.vendor_folder import make_vendor_folder


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory) -> Store:
    from quantlm.data.synth import SynthConfig, write_market

    s = Store(tmp_path_factory.mktemp("synth") / "store")
    write_market(s, SynthConfig(n_symbols=25, start="2022-01-04", end="2022-12-30"))
    return s


@pytest.fixture(scope="module")
def vendor_store(tmp_path_factory) -> Store:
    from quantlm.data.importers import import_paths
    from quantlm.data.metadata import set_benchmark

    root = tmp_path_factory.mktemp("vendor")
    make_vendor_folder(root / "files", start="2019-01-02", end="2020-12-31")
    s = Store(root / "store")
    import_paths([root / "files"], s, market="cn", bare_codes="infer")
    set_benchmark(s, "000300.SH")
    return s


def scores_for(store: Store, seed: int = 0) -> pd.DataFrame:
    from quantlm.live.replay import tradable_symbols

    meta = store.meta()
    syms = tradable_symbols(store, meta.get("market", "cn"), meta.get("benchmark"))
    bars = store.bars(syms)
    rng = np.random.default_rng(seed)
    return bars[["symbol", "ts"]].assign(score=rng.normal(size=len(bars)))


def live_config(**strategy) -> LiveConfig:
    from quantlm.live.risk import RiskConfig

    off = RiskConfig.off().model_dump()
    return LiveConfig(cash=1_000_000.0, history_days=60, strategy=strategy, risk=off)


@pytest.mark.parametrize("store_name,start,end,strategy", [
    ("synth_store", "2022-06-01", "2022-09-30", {"topk": 5, "n_drop": 2}),
    ("vendor_store", "2019-11-01", "2020-08-31", {"topk": 4, "n_drop": 1}),
    ("vendor_store", "2019-06-03", "2019-12-31", {"strategy": "weights"}),
])
def test_replay_equals_backtest(request, tmp_path, store_name, start, end, strategy):
    store = request.getfixturevalue(store_name)
    scores = scores_for(store)
    if strategy.get("strategy") == "weights":
        scores = scores.assign(score=np.abs(scores["score"]) / 20)
    cfg = live_config(**strategy)
    live = run_replay(cfg, store, start, end, tmp_path / "live", scorer=FrameScorer(scores))
    bt_cfg = BacktestConfig(market="cn", start=start, end=end, **strategy)
    sig = scores.rename(columns={"score": "weight"}) if strategy.get("strategy") == "weights" else scores
    bt = backtest_from_store(sig, store, bt_cfg)
    eq = pd.read_csv(tmp_path / "live" / "equity.csv", parse_dates=["ts"]).set_index("ts")["equity"]
    np.testing.assert_allclose(eq.to_numpy(), bt.equity.to_numpy(), rtol=1e-9)
    fills = pd.read_csv(tmp_path / "live" / "fills.csv", parse_dates=["ts"])
    bt_fills = bt.trades[bt.trades["shares_filled"] > 0].reset_index(drop=True)
    assert len(fills) == len(bt_fills) > 10
    assert fills["symbol"].tolist() == bt_fills["symbol"].tolist()
    assert fills["side"].tolist() == bt_fills["side"].tolist()
    assert (pd.DatetimeIndex(fills["ts"]) == pd.DatetimeIndex(bt_fills["ts"])).all()
    np.testing.assert_allclose(fills["shares"], bt_fills["shares_filled"], rtol=1e-12)
    np.testing.assert_allclose(fills["price"], bt_fills["price"], rtol=1e-12)
    np.testing.assert_allclose(fills["total_cost"], bt_fills["total_cost"], rtol=1e-9, atol=1e-9)
    orders = pd.read_csv(tmp_path / "live" / "orders.csv")
    assert len(orders) >= len(bt.trades)  # + the orders decided at the last bar, never executed
    assert live["metrics"]["final_equity"] == pytest.approx(bt.equity.iloc[-1], rel=1e-9)
