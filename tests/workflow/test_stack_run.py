"""`quantlm run` with evaluate.stack: the stack run sits in the same table as the models and baselines."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from rich.console import Console

from quantlm.data.store import Store
from quantlm.workflow.config import RunConfigError, parse_run_config
from quantlm.workflow.pipeline import run_workflow
from tests.workflow.tiny import tiny_pretrain

SYNTH = {"n_symbols": 12, "start": "2019-01-02", "end": "2021-06-30"}
WINDOW = {"window_bars": 32, "warm": 8, "valid_sessions": 20, "eval_every": 2}
RAW = {
    "run_dir": "unused",
    "seeds": [0],
    "data": {"synth": SYNTH, "embed_texts": False},
    "pretrain": tiny_pretrain(eval_batches=0),
    "sft": {"steps": 2, "batch_size": 4, "text": False, **WINDOW},
    "evaluate": {"train_years": 1, "test_months": 6, "topk": 4, "n_drop": 1, "num_boost_round": 3, "latency": False,
                 "baselines": ["lightgbm", "reversal", "momentum"], "stack": True},
}


def test_stack_run_in_the_same_table(tmp_path):
    store = Store(tmp_path / "store")
    from quantlm.data.synth import SynthConfig, write_market

    write_market(store, SynthConfig(**SYNTH))
    out = io.StringIO()
    summary = run_workflow(parse_run_config(RAW, "t.yaml"), store, run_dir=tmp_path / "run",
                           console=Console(file=out, width=200))
    assert {"teacher", "stack", "lightgbm", "reversal-5", "momentum-20"} <= set(summary["runs"])
    assert summary["primary"] == "teacher"  # the stack leads only when named (it needs LightGBM live)
    assert "stack/s0" in summary["stages"] and "stack" in summary["runs_by_seed"]
    st = summary["stack"]
    assert st["inputs"] == ["teacher", "lightgbm", "reversal-5", "momentum-20"]
    assert set(st["rank_ic_alone"]) == set(st["adds"]) == set(st["inputs"])
    folds = st["weights_by_fold"]
    assert len(folds) == len(summary["folds"]) == 3
    assert not folds[0]["fitted"] and folds[0]["teacher"] == 1.0 and folds[1]["fitted"] and folds[2]["fitted"]
    assert folds[2]["fit_sessions"] > folds[1]["fit_sessions"] > 50
    stage = next((tmp_path / "run" / "stages").glob("stack.s0-*"))
    scores = pd.read_parquet(stage / "scores.parquet")
    assert scores["ts"].min() == pd.Timestamp(summary["folds"][0]["test_start"])
    assert scores["ts"].max() == pd.Timestamp(summary["folds"][-1]["test_end"])
    metrics = json.loads((tmp_path / "run" / "summary.json").read_text())["runs"]["stack"]
    assert metrics["rank_ic"] == pytest.approx(summary["runs"]["stack"]["rank_ic"])
    assert "stack: what each part adds" in out.getvalue()
    # refit "once": SFT trains up to the first fold's train end (pretraining stops earlier, before its validation block)
    sft = json.loads((next((tmp_path / "run" / "stages").glob("sft.s0.f0-*")) / "run" / "config.json").read_text())
    assert pd.Timestamp(sft["train_end"]) == pd.Timestamp(summary["folds"][0]["train_end"])


def test_stack_can_be_named_primary_only_when_on():
    raw = {**RAW, "evaluate": {**RAW["evaluate"], "primary": "stack", "stack": False}}
    with pytest.raises(RunConfigError, match="evaluate.primary: 'stack' is not a run"):
        parse_run_config(raw, "t.yaml")
    parse_run_config({**raw, "evaluate": {**raw["evaluate"], "stack": True}}, "t.yaml")
