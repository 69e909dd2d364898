"""The demo job end to end on a small synthetic market (the same code path as `make demo`)."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from quantlm.data.store import Store
from quantlm.workflow.demo import DemoError, run_demo


def test_demo_runs_every_stage_and_writes_outputs(tmp_path):
    store = Store(tmp_path / "store")
    out = tmp_path / "run"
    summary = run_demo(store, out, n_symbols=30, console=Console(quiet=True), pretrain_steps=4, forecast_origins=1,
                       jobs=1)

    listing = store.listing()
    assert set(listing["market"]) == {"cn", "us"}  # synthetic A-shares + the real S&P 500 sample
    assert "^GSPC" in set(listing["symbol"])
    runs = summary["evaluation"]
    assert {"lightgbm", "momentum-20", "reversal-5", "oracle", "benchmark"} <= set(runs)
    # the oracle knows the planted expected returns: it must rank better than the naive baselines
    assert runs["oracle"]["rank_ic"] > max(runs["momentum-20"]["rank_ic"], runs["reversal-5"]["rank_ic"])
    assert (out / "evaluate" / "report.html").stat().st_size > 100_000
    assert json.loads((out / "summary.json").read_text())["health"]["gap"] == 0
    forecast = json.loads((out / "forecast" / "forecast_metrics.json").read_text())
    assert forecast["n_forecasts"] > 0
    assert (out / "pretrain" / "model" / "config.json").exists()


def test_demo_refuses_a_store_holding_another_synthetic_market(tmp_path):
    from quantlm.data.synth import SynthConfig, write_market

    store = Store(tmp_path / "store")
    write_market(store, SynthConfig(n_symbols=20, start="2023-01-03", end="2023-06-30", seed=1))
    with pytest.raises(DemoError, match="another config"):
        run_demo(store, tmp_path / "run", n_symbols=20, console=Console(quiet=True))
