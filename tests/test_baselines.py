"""Baselines (momentum, reversal, LightGBM, oracle, benchmark) and the `quantlm evaluate` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from quantlm.baselines import benchmark, lightgbm_model, lightgbm_scores, momentum, oracle, reversal, training_frame
from quantlm.testing import assert_causal
from tests.conftest import make_bars

SYMBOLS = [f"{600000 + i}.SH" for i in range(12)]


def test_momentum_and_reversal_definitions():
    bars = make_bars(symbols=("A",), periods=30)
    close = bars["close"].to_numpy()
    mom = momentum(bars, window=20)
    assert len(mom) == 10 and mom["score"].iloc[0] == pytest.approx(close[20] / close[0] - 1)
    rev = reversal(bars, window=5)
    assert rev["score"].iloc[0] == pytest.approx(-(close[5] / close[0] - 1))
    with pytest.raises(ValueError, match="window"):
        momentum(bars, window=0)


@pytest.mark.parametrize("fn", [momentum, reversal])
def test_rule_baselines_are_causal(fn):
    assert_causal(fn, make_bars(symbols=("A", "B"), periods=40))


def test_lightgbm_trains_only_on_known_labels_and_is_deterministic():
    bars = make_bars(symbols=SYMBOLS, periods=160, seed=2)
    cal = pd.DatetimeIndex(sorted(bars["ts"].unique()))
    train_end = cal[99]
    X, y = training_frame(bars, train_end)
    # the last label fully known by train_end is the one for cal[97]: open(cal[99]) / open(cal[98]) - 1
    assert y.index.get_level_values("ts").max() == cal[97]
    # the future after train_end does not change the training set
    later = bars["ts"] > train_end
    perturbed = bars.copy()
    perturbed.loc[later, ["open", "high", "low", "close"]] *= 1.7
    X2, y2 = training_frame(perturbed, train_end)
    pd.testing.assert_frame_equal(X, X2)
    pd.testing.assert_series_equal(y, y2)
    a = lightgbm_scores(bars, train_end, num_boost_round=15, seed=1)
    b = lightgbm_scores(bars, train_end, num_boost_round=15, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert a["ts"].min() == cal[100] and a["ts"].max() == cal[-1] and set(a["symbol"]) == set(SYMBOLS)
    # same model as one trained on the truncated bars only (walk-forward's model_fn)
    scorer = lightgbm_model(bars[bars["ts"] <= train_end], seed=1, num_boost_round=15)
    c = scorer(bars)
    c = c[c["ts"] > train_end].reset_index(drop=True)
    np.testing.assert_array_equal(a["score"].to_numpy(), c["score"].to_numpy())


def test_lightgbm_scores_are_causal_out_of_sample():
    bars = make_bars(symbols=SYMBOLS[:6], periods=120, seed=4)
    train_end = pd.DatetimeIndex(sorted(bars["ts"].unique()))[79]
    assert_causal(lambda b: lightgbm_scores(b, train_end, num_boost_round=5), bars, cutoffs=2)


def test_lightgbm_no_training_rows():
    bars = make_bars(symbols=SYMBOLS[:3], periods=40)
    with pytest.raises(ValueError, match="no training rows"):
        lightgbm_scores(bars, train_end=bars["ts"].min(), num_boost_round=2)


def test_oracle(store):
    with store.transaction() as tx:
        tx.put_bars(make_bars(symbols=("A",), periods=5), market="cn", freq="1d")
    with pytest.raises(FileNotFoundError, match="oracle"):
        oracle(store)
    table = pd.DataFrame({"symbol": ["A", "A"], "ts": pd.to_datetime(["2023-01-02", "2023-01-03"]),
                          "expected_return": [0.01, -0.02], "momentum_part": [0.0, 0.0]})
    store.write_table("oracle", table)
    out = oracle(store)
    assert list(out.columns) == ["symbol", "ts", "score"] and out["score"].tolist() == [0.01, -0.02]


def test_benchmark_buy_and_hold():
    bench = make_bars(symbols=("000300.SH",), periods=50, seed=7)
    res = benchmark(bench, cash=1000.0, start=bench["ts"].iloc[10])
    close = bench["close"].to_numpy()[10:]
    np.testing.assert_allclose(res.equity.to_numpy(), 1000.0 * close / close[0])
    assert res.returns().iloc[0] == 0.0 and res.costs.sum() == 0
    with pytest.raises(ValueError, match="one symbol"):
        benchmark(make_bars(periods=5))


# ------------------------------------------------------------------ the evaluate command
def _make_store(root, with_oracle=True):
    from quantlm.data.store import Store

    bars = make_bars(symbols=SYMBOLS, periods=300, seed=11, start="2022-01-03")
    bench = make_bars(symbols=("000300.SH",), periods=300, seed=12, start="2022-01-03")
    store = Store(root)
    with store.transaction() as tx:
        tx.put_bars(pd.concat([bars, bench]), market="cn", freq="1d")
        tx.set_meta("market", "cn")
        tx.set_meta("benchmark", "000300.SH")
        if with_oracle:
            from quantlm.features import forward_returns

            lab = forward_returns(bars)
            rng = np.random.default_rng(0)
            lab["expected_return"] = lab["label"].fillna(0.0) * 0.3 + rng.normal(0, 0.002, len(lab))
            tx.put("oracle", "", lab[["symbol", "ts", "expected_return"]])
    return bars


def _run(*args):
    from quantlm.cli import app

    return CliRunner().invoke(app, ["evaluate", *map(str, args)])


def test_evaluate_cli_end_to_end(tmp_path):
    bars = _make_store(tmp_path / "store")
    signals = momentum(bars, 10)
    signals.to_csv(tmp_path / "signals.csv", index=False)
    out = tmp_path / "out"
    res = _run("--store", tmp_path / "store", "--signals", tmp_path / "signals.csv", "--out", out,
               "--train-years", 0.5, "--test-months", 3, "--seeds", "0,1", "--topk", 4, "--n-drop", 1,
               "--num-boost-round", 10)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "metrics.json").read_text())
    assert data["primary"] == "signals"
    assert set(data["runs"]) == {"signals", "lightgbm", "momentum-20", "reversal-5", "oracle", "benchmark"}
    wf = data["walk_forward"]
    assert wf["seeds"] == [0, 1] and len(wf["runs"]) == 2 * len(wf["folds"]) and "sharpe" in wf["summary"]
    assert data["runs"]["oracle"]["metrics"]["rank_ic"] > data["runs"]["momentum-20"]["metrics"]["rank_ic"]
    assert data["runs"]["benchmark"]["metrics"]["annual_excess_return"] == pytest.approx(0.0, abs=1e-12)
    page = (out / "report.html").read_text()
    assert "Against the baselines" in page and "lightgbm" in page and "Walk-forward spread" in page
    assert {"equity.csv", "trades.csv"} <= {p.name for p in out.iterdir()}
    assert "evaluation" in res.output


def test_evaluate_cli_errors(tmp_path):
    _make_store(tmp_path / "store", with_oracle=False)
    common = ("--store", tmp_path / "store", "--out", tmp_path / "out")
    res = _run(*common, "--seeds", "a,b")
    assert res.exit_code == 2 and "--seeds" in res.output
    res = _run(*common, "--baselines", "momentum,magic")
    assert res.exit_code == 2 and "magic" in res.output
    res = _run(*common, "--signals", tmp_path / "nope.csv")
    assert res.exit_code == 2 and "not found" in res.output
    (tmp_path / "g.yaml").write_text("sharpie: 1\n")
    res = _run(*common, "--gates", tmp_path / "g.yaml")
    assert res.exit_code == 2 and "unknown gate" in res.output
    res = _run(*common, "--train-years", 5)
    assert res.exit_code == 2 and "no walk-forward fold" in res.output
    assert not (tmp_path / "out").exists()


def test_lightgbm_seeds_share_one_dataset_but_differ():
    bars = make_bars(symbols=SYMBOLS, periods=140, seed=8)
    train = bars[bars["ts"] <= bars["ts"].unique()[99]]
    a0 = lightgbm_model(train, seed=0, num_boost_round=10)(bars)
    a1 = lightgbm_model(train, seed=1, num_boost_round=10)(bars)
    again = lightgbm_model(train.copy(), seed=0, num_boost_round=10)(bars)
    pd.testing.assert_frame_equal(a0, again)
    assert not np.array_equal(a0["score"].to_numpy(), a1["score"].to_numpy())
