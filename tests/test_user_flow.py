"""The new user's path on a folder of vendor files, with no edits to the files:
`quantlm data import FOLDER --market cn` -> `quantlm data set-benchmark` -> `quantlm data check` ->
`quantlm backtest` / `quantlm run`. Dividends and bonus issues must be honoured end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from quantlm.cli import app
from quantlm.data.store import Store
from tests.vendor_folder import make_vendor_folder


def invoke(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    written = make_vendor_folder(root / "files")
    store = root / "store"
    out = invoke("data", "import", str(root / "files"), "--market", "cn", "--store", str(store), "--bare-codes", "infer")
    return root, store, written, out


def test_import_derives_factors_flags_and_listing(imported):
    _, store, written, out = imported
    st = Store(store)
    assert sorted(st.symbols()) == sorted([*written, "000300.SH"])
    for symbol, s in written.items():
        bars = st.bars(symbol)
        live = s.bars[s.bars["status"] == 1]
        assert len(bars) == len(live), symbol
        np.testing.assert_allclose(bars["close"].to_numpy(), live["close"].to_numpy())
        implied = pd.Series(s.adj_factor, index=s.bars["ts"]).reindex(bars["ts"]).to_numpy()
        np.testing.assert_allclose(bars["adj_factor"].to_numpy(), implied, rtol=1e-3)  # prices rounded to 0.01
        np.testing.assert_allclose(bars["volume"].to_numpy(), live["volume"].to_numpy())  # lots -> shares
    flags = st.flags("st")
    assert flags["symbol"].tolist() == ["000001.SZ"]
    inst = st.instruments().set_index("symbol")
    assert inst.loc["000300.SH", "board"] == "index" and inst.loc["688981.SH", "board"] == "star"
    assert pd.Timestamp(inst.loc["601318.SH", "list_date"]) == written["601318.SH"].bars["ts"].iloc[0]


def test_benchmark_check_and_backtest_honour_dividends(imported, tmp_path):
    root, store, written, _ = imported
    out = invoke("data", "check", "--store", str(store))
    assert "no_benchmark" in out
    invoke("data", "set-benchmark", "000300.SH", "--store", str(store))
    out = invoke("data", "check", "--store", str(store))
    assert "no_benchmark" not in out
    assert Store(store).meta()["benchmark"] == "000300.SH"
    # equal weights, rebalanced daily, on the three stocks with bonus issues and dividends
    syms = ["600519.SH", "002594.SZ", "600036.SH"]
    bars = Store(store).bars(syms)
    sig = bars[["symbol", "ts"]].assign(weight=1 / 3)
    sig.to_csv(tmp_path / "w.csv", index=False)
    invoke("backtest", "--signals", str(tmp_path / "w.csv"), "--store", str(store), "--strategy", "weights",
           "--no-costs", "--participation", "0", "--out", str(tmp_path / "bt"))
    eq = pd.read_csv(tmp_path / "bt" / "equity.csv", index_col=0)["equity"]
    adj = (bars["close"] * bars["adj_factor"]).groupby([bars["symbol"], bars["ts"]]).first().unstack(0)
    daily = adj.pct_change().mean(axis=1).iloc[2:]  # fills from the second session's open, marked at closes
    want = float(np.prod(1 + daily))
    got = float(eq.iloc[-1] / eq.iloc[1])
    assert abs(got / want - 1) < 0.01, (got, want)
    metrics = json.loads((tmp_path / "bt" / "metrics.json").read_text())["metrics"]
    assert np.isfinite(metrics["annual_excess_return"])  # the benchmark was found


def test_quantlm_run_on_the_imported_store(imported, tmp_path):
    _, store, _, _ = imported
    invoke("data", "set-benchmark", "000300.SH", "--store", str(store))
    window = {"window_bars": 32, "warm": 8, "valid_sessions": 20, "eval_every": 2}
    cfg = {"run_dir": str(tmp_path / "run"), "seeds": [0], "data": {"embed_texts": False},
           "pretrain": {"model": {"size": "mini", "n_layer": 1, "hidden": 32, "n_head": 2, "ffn": 64, "max_bars": 32},
                        "data": {"window_bars": 32}, "tokenizer": {"n_coarse": 32, "n_fine": 32},
                        "train": {"max_steps": 3, "batch_size": 4, "warmup_steps": 1, "eval_batches": 1}},
           "sft": {"steps": 2, "batch_size": 4, "text": False, **window},
           "distill": {"steps": 2, "batch_size": 4, "window_bars": 8, "warm": 8, "valid_sessions": 20, "eval_every": 2,
                       "latency_symbols": 0},
           "evaluate": {"train_years": 1, "test_months": 6, "topk": 4, "n_drop": 1, "num_boost_round": 3,
                        "baselines": ["benchmark", "momentum", "reversal", "lightgbm"], "latency_symbols": 20,
                        "latency_updates": 5},
           "report": {"title": "user flow"}}
    (tmp_path / "user.yaml").write_text(yaml.safe_dump(cfg))
    invoke("run", str(tmp_path / "user.yaml"), "--store", str(store), "--out", str(tmp_path / "run"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "benchmark" in json.dumps(summary) and (tmp_path / "run" / "report.html").exists()
