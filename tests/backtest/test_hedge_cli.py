"""Hedged books end to end: `quantlm backtest --hedge`, `quantlm evaluate --hedge`, run config, summary."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from quantlm.cli import app


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("hedge")
    res = CliRunner().invoke(app, ["data", "synth", "--store", str(root / "store"), "--symbols", "16", "--start",
                                   "2021-01-04", "--end", "2022-06-30", "--no-news"])
    assert res.exit_code == 0, res.output
    from quantlm.baselines.simple import oracle
    from quantlm.data.store import Store

    sig = oracle(Store(root / "store"))
    sig = sig[sig["ts"] >= "2021-07-01"]
    sig.assign(ts=pd.DatetimeIndex(sig["ts"]).strftime("%Y-%m-%d")).to_csv(root / "oracle.csv", index=False)
    return root


def _backtest(root, out, *extra):
    return CliRunner().invoke(app, ["backtest", "--signals", str(root / "oracle.csv"), "--store", str(root / "store"),
                                    "--out", str(out), "--topk", "5", "--n-drop", "1", "--start", "2021-07-01", *extra])


def test_backtest_hedge_benchmark_end_to_end(synth_store, tmp_path):
    res = _backtest(synth_store, tmp_path / "out", "--hedge", "benchmark")
    assert res.exit_code == 0, res.output
    assert "hedged book (gated)" in res.output
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["book"] == "hedged" and set(m["books"]) == {"long_only", "hedged"}
    long_only, hedged = m["books"]["long_only"], m["books"]["hedged"]
    assert m["metrics"] == hedged and m["gates"]["sharpe"]["value"] == pytest.approx(hedged["sharpe"])
    assert hedged["rank_ic"] == long_only["rank_ic"] and 0 <= hedged["pick_hit_rate"] <= 1
    assert hedged["benchmark_return"] == 0.0  # a hedged book is measured against cash
    assert hedged["annual_volatility"] < long_only["annual_volatility"]  # the short takes the market out
    assert m["config"]["hedge"] == "benchmark" and m["config"]["hedge_settings"]["margin_rate"] == 0.12
    eq = pd.read_csv(tmp_path / "out" / "equity.csv")
    assert {"hedged_equity", "hedged_drawdown", "futures_notional", "margin"} <= set(eq.columns)
    invested = eq[eq["futures_notional"] > 0]
    assert len(invested) and (invested["margin"] >= 0.119 * invested["futures_notional"]).all()
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Books: long-only and hedged" in page and "judged on the hedged book" in page


def test_backtest_hedge_errors_write_nothing(synth_store, tmp_path):
    res = _backtest(synth_store, tmp_path / "ls", "--hedge", "long_short")
    assert res.exit_code != 0 and "'cn' does not" in " ".join(res.output.split())
    assert not (tmp_path / "ls").exists()
    bad = tmp_path / "hedge.yaml"
    bad.write_text("hedge:\n  margin: 0.1\n")
    res = _backtest(synth_store, tmp_path / "bad", "--hedge", "benchmark", "--hedge-config", str(bad))
    assert res.exit_code != 0 and "margin: unknown setting" in " ".join(res.output.split())
    assert "hedge.yaml" in res.output
    assert not (tmp_path / "bad").exists()


def test_evaluate_hedge_reports_both_books_and_gates_the_hedged_one(synth_store, tmp_path):
    res = CliRunner().invoke(app, ["evaluate", "--store", str(synth_store / "store"), "--out", str(tmp_path / "ev"),
                                   "--baselines", "benchmark,reversal,oracle", "--train-years", "0.5",
                                   "--test-months", "6", "--topk", "5", "--n-drop", "1", "--hedge", "benchmark"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    oracle = m["runs"]["oracle"]
    assert oracle["book"] == "hedged" and set(oracle["books"]) == {"long_only", "hedged"}
    assert oracle["gates"]["max_drawdown"]["value"] == pytest.approx(oracle["books"]["hedged"]["max_drawdown"])
    assert m["runs"]["benchmark"]["book"] == "long_only"  # buy and hold of the index has no hedged book


RUN = {
    "pretrain": {"model": {"size": "mini"}},
    "evaluate": {"hedge": "benchmark", "hedge_settings": {"margin_rate": 0.1, "basis": 0.08}},
}


def test_run_config_hedge_options():
    from quantlm.workflow.config import RunConfigError, parse_run_config
    from quantlm.workflow.pipeline import evaluate_options

    opts = evaluate_options(parse_run_config(copy.deepcopy(RUN), "run.yaml"))
    assert opts.hedge == "benchmark" and opts.hedge_settings == {"margin_rate": 0.1, "basis": 0.08}
    bad = copy.deepcopy(RUN)
    bad["evaluate"]["hedge_settings"] = {"margn_rate": 0.1}
    with pytest.raises(RunConfigError, match="evaluate.hedge_settings: margn_rate: unknown setting"):
        parse_run_config(bad, "run.yaml")
    ls = copy.deepcopy(RUN)
    ls["evaluate"] = {"hedge": "long_short", "market": "cn"}
    with pytest.raises(RunConfigError, match="long_short needs a market that allows shorting"):
        parse_run_config(ls, "run.yaml")


def test_summary_carries_both_books_and_names_the_gated_one(tmp_path):
    from quantlm.backtest.gates import Gates
    from quantlm.workflow.summary import build_summary, print_summary

    def metrics(sharpe, dd):
        return {"sharpe": sharpe, "max_drawdown": dd, "annual_excess_return": 0.2, "rank_ic": 0.05,
                "max_consecutive_losing_days": 2.0, "directional_accuracy": 0.7, "pick_hit_rate": 0.6}

    books = {s: {"long_only": metrics(1.0 + s, -0.3), "hedged": metrics(3.0 + s, -0.05)} for s in (0, 1)}
    evaluation = {"primary": "teacher", "period": "2021-01-04..2021-12-31", "book": "hedged",
                  "runs": {"teacher": {"metrics": books[0]["hedged"], "books": books[0]},
                           "oracle": {"metrics": metrics(5.0, -0.02),
                                      "books": {"long_only": metrics(2, -0.2), "hedged": metrics(5.0, -0.02)}}},
                  "seed_metrics": {"teacher": {s: b["hedged"] for s, b in books.items()}},
                  "seed_books": {"teacher": books}}
    cfg = SimpleNamespace(evaluate=SimpleNamespace(refit="once"), seeds=[0, 1], source="run.yaml")
    store = SimpleNamespace(meta=lambda: {}, root=tmp_path)
    s = build_summary(cfg, store, evaluation, {"p99": 1.0, "p50": 0.5, "run": "teacher"}, Gates(), {}, [], tmp_path)
    assert s["book"] == "hedged" and "hedged book of teacher" in s["gates_judged"]
    assert s["books"]["teacher"]["long_only"]["sharpe"] == pytest.approx(1.5)
    assert s["books"]["teacher"]["hedged"]["sharpe"] == pytest.approx(3.5)
    assert s["gates"]["sharpe"]["value"] == pytest.approx(3.5) and s["gates"]["sharpe"]["passed"]
    assert s["books"]["oracle"]["hedged"]["sharpe"] == 5.0
    out = Console(file=open(tmp_path / "o.txt", "w"), width=200)
    print_summary(s, out)
    out.file.close()
    text = (tmp_path / "o.txt").read_text()
    assert "gates judge the hedged book" in text and "gates (hedged book) passed" in text
