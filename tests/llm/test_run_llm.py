"""The `llm:` stage of `quantlm run`: a tiny local Qwen2 fine-tuned with LoRA per fold, scored on the test
periods and judged in the same evaluation table as the teacher and the baselines."""

from __future__ import annotations

import copy
import io
import json

import pandas as pd
import pytest
from rich.console import Console

from quantlm.workflow.config import RunConfigError, parse_run_config
from quantlm.workflow.pipeline import run_workflow

RUN = {
    "run_dir": "unused",
    "seeds": [0],
    "data": {"synth": {"n_symbols": 12, "start": "2019-01-02", "end": "2020-06-30"}, "embed_texts": False},
    "pretrain": {
        "model": {"size": "mini", "n_layer": 1, "hidden": 32, "n_head": 2, "ffn": 64, "max_bars": 32},
        "data": {"window_bars": 32},
        "tokenizer": {"n_coarse": 32, "n_fine": 32},
        "train": {"max_steps": 2, "batch_size": 4, "warmup_steps": 1, "eval_batches": 0, "log_every": 1,
                  "checkpoint_every": 1},
    },
    "sft": {"steps": 2, "batch_size": 4, "text": False, "window_bars": 32, "warm": 8, "valid_sessions": 20,
            "eval_every": 2},
    "llm": {"tiny": {"family": "qwen2", "hidden": 32, "intermediate": 64}, "steps": 3, "batch_size": 4,
            "train_sessions": 20, "window_bars": 6, "max_prompt_tokens": 400, "max_text_chars": 100,
            "freeze_bottom": 1, "lora_rank": 2, "score_batch_size": 64, "latency_symbols": 4, "latency_updates": 3},
    "evaluate": {"train_years": 1, "test_months": 3, "topk": 3, "n_drop": 1, "num_boost_round": 3,
                 "baselines": ["benchmark", "momentum", "oracle"], "latency": False, "refit": "per_fold"},
    "report": {"title": "llm"},
}


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory):
    from quantlm.data.store import Store
    from quantlm.data.synth import SynthConfig, write_market

    root = tmp_path_factory.mktemp("llm_run")
    store = Store(root / "store")
    write_market(store, SynthConfig(**RUN["data"]["synth"]))
    calls = []
    import quantlm.llm.sft as sft

    original = sft.run_sft

    def spy(base, st, train_end, out, *a, start=None, **kw):
        calls.append((pd.Timestamp(train_end), pd.Timestamp(start)))
        return original(base, st, train_end, out, *a, start=start, **kw)

    sft.run_sft = spy
    try:
        summary = run_workflow(parse_run_config(RUN, "llm.yaml"), store, run_dir=root / "run",
                               console=Console(file=io.StringIO(), width=200))
    finally:
        sft.run_sft = original
    return root / "run", summary, calls, store


def test_llm_row_beside_teacher_and_baselines(llm_run):
    run_dir, summary, calls, store = llm_run
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert {"llm", "teacher", "momentum-20", "benchmark"} <= set(on_disk["runs"])
    metrics = json.loads((run_dir / "stages").glob("evaluate-*").__next__().joinpath("report", "metrics.json")
                         .read_text())
    assert set(on_disk["runs"]["llm"]) == set(metrics["runs"]["momentum-20"]["metrics"])  # the same backtest
    assert "llm" in on_disk["runs_by_seed"]
    entry = on_disk["llm"]
    assert entry["tokens"]["tokens_per_bar"] > 1 and entry["tokens"]["prompt_tokens_max"] <= 400
    assert entry["latency_ms"]["p50"] > 0 and entry["latency_ms"]["n_symbols"] == 4
    if on_disk["primary"] == "llm":  # gated on its own latency, not the deployed market model's
        assert on_disk["latency_ms"]["run"] == "llm" and on_disk["gates"]["latency_p99_ms"]["value"] == entry[
            "latency_ms"]["p99"]
    stages = on_disk["stages"]
    folds = on_disk["folds"]
    assert {"llm/base", "score/llm/s0", "llm/latency"} <= set(stages)
    assert {f"llm/s0/f{k}" for k in range(len(folds))} <= set(stages)
    # point in time: one fine-tune per fold, each on the train_sessions sessions up to its own train end
    assert [te for te, _ in calls] == [pd.Timestamp(f["train_end"]) for f in folds]
    cal = store.calendar()
    for te, start in calls:
        assert ((cal >= start) & (cal <= te)).sum() == RUN["llm"]["train_sessions"]
    scores = pd.read_parquet(next((run_dir / "stages").glob("score.llm.s0-*")) / "scores.parquet")
    assert scores["ts"].min() == pd.Timestamp(folds[0]["test_start"])
    assert scores["ts"].max() <= pd.Timestamp(folds[-1]["test_end"]) and scores["score"].std() > 0


def test_second_run_is_cached(llm_run, monkeypatch):
    run_dir, _, _, store = llm_run
    import quantlm.llm.sft as sft

    monkeypatch.setattr(sft, "run_sft", lambda *a, **k: pytest.fail("llm retrained"))
    out = io.StringIO()
    run_workflow(parse_run_config(RUN, "llm.yaml"), store, run_dir=run_dir, console=Console(file=out, width=200))
    assert "stage llm/s0/f0: cached" in out.getvalue()


@pytest.mark.parametrize(("patch", "expected"), [
    ({"tiny": None}, "llm: value error, give exactly one of base"),
    ({"base": "x", "tiny": {"family": "qwen2"}}, "give exactly one of base"),
    ({"tiny": {"family": "gpt9"}}, "llm.tiny.family: input should be 'qwen2' or 'llama'"),
    ({"lora_rnak": 2}, "llm.lora_rnak: extra inputs are not permitted"),
])
def test_llm_section_errors_name_the_key(patch, expected):
    raw = copy.deepcopy(RUN)
    raw["llm"] = {**raw["llm"], **patch}
    with pytest.raises(RunConfigError) as e:
        parse_run_config(raw, "llm.yaml")
    assert "llm.yaml: " in str(e.value) and expected.split(", ")[-1] in str(e.value)


def test_planner_on_the_run_folder(llm_run):
    """`quantlm plan --run` lists the run's models; `--latency-budget` picks among its teacher and its LLM
    with each one's own RankIC from the run's summary.json."""
    from functools import partial

    from quantlm.plan.choose import choose, measure_folder
    from quantlm.plan.runs import plan_run

    run_dir, summary, _, store = llm_run
    rows = {r["model"]: r for r in plan_run(run_dir, gpu="cpu", gpu_mem_gb=16.0)}
    assert {"market GPT (pretrained)", "teacher (market GPT trunk)", "LLM (LoRA)"} <= set(rows)
    llm_json = json.loads(next((run_dir / "stages").glob("llm.s0.f0-*/run/llm.json")).read_text())
    assert rows["LLM (LoRA)"]["seq"] == llm_json["tokens"]["prompt_tokens_max"]
    assert all(r["params"] > 0 and r["infer_gib"] > 0 for r in rows.values())
    teacher = next((run_dir / "stages").glob("sft.s0.f0-*")) / "run" / "model"
    llm = next((run_dir / "stages").glob("llm.s0.f0-*")) / "run"
    found, best = choose([teacher, llm], 1e6, measure=partial(measure_folder, store=store, n_symbols=4))
    by = {r["candidate"]: r for r in found}
    assert by[str(teacher)]["rank_ic"] == pytest.approx(summary["runs"]["teacher"]["rank_ic"])
    assert by[str(llm)]["rank_ic"] == pytest.approx(summary["runs"]["llm"]["rank_ic"])
    assert by[str(llm)]["kind"] == "llm:qwen2" and by[str(llm)]["p50_ms"] > 0
    assert best["rank_ic"] == max(summary["runs"]["teacher"]["rank_ic"], summary["runs"]["llm"]["rank_ic"])


def test_plan_cli_prints_the_run_models_a_7b_plan_and_the_validation(llm_run, monkeypatch):
    from typer.testing import CliRunner

    from quantlm.cli import app
    from quantlm.cli.common import console

    monkeypatch.setattr(console, "width", 220)  # one line per table row
    run_dir = llm_run[0]
    res = CliRunner().invoke(app, ["plan", "--run", str(run_dir), "--model", "7B", "--method", "lora", "--gpus", "8",
                                   "--gpu-mem", "80", "--gpu", "h100"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "LLM (LoRA)" in res.output and "teacher (market GPT trunk)" in res.output
    assert "Qwen2.5-7B" in res.output and "8 x H100 80 GB" in res.output
    assert "memory model vs measured peak" in res.output
