"""`quantlm run`: config validation, stage caching, resume, no look-ahead into the test period, summary.json.

One tiny synthetic market and one full run are shared by the module; tests that run again work on a
copy of that run folder, so each sees the first run's stages as done.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from quantlm.data.store import Store
from quantlm.workflow.config import RunConfigError, load_run_config, parse_run_config
from quantlm.workflow.pipeline import run_workflow
from tests.workflow.tiny import tiny_pretrain

SYNTH = {"n_symbols": 12, "start": "2019-01-02", "end": "2021-06-30"}
WINDOW = {"window_bars": 32, "warm": 8, "valid_sessions": 20, "eval_every": 2}
TINY = {
    "run_dir": "unused",
    "seeds": [0],
    "data": {"synth": SYNTH, "embed_texts": False},
    "pretrain": tiny_pretrain(max_steps=3),
    "sft": {"steps": 2, "batch_size": 4, "text": False, **WINDOW},
    "reward": {"steps": 2, "batch_size": 2, "max_symbols": 8, **WINDOW},
    "rl": {"steps": 2, "batch_size": 2, "max_symbols": 8, "reward": "model", **WINDOW},
    "distill": {"steps": 2, "batch_size": 4, "window_bars": 8, "warm": 8, "valid_sessions": 20, "eval_every": 2,
                "latency_symbols": 0},
    "evaluate": {"train_years": 1, "test_months": 6, "topk": 4, "n_drop": 1, "num_boost_round": 3,
                 "latency_symbols": 20, "latency_updates": 5},
    "ablations": {"lora": {"sft": {"lora": {"enabled": True, "rank": 2}}}},
    "report": {"title": "tiny"},
}
TRAINERS = {"sft": ("quantlm.finetune.sft", "train_sft"), "reward": ("quantlm.finetune.reward", "train_reward"),
            "rl": ("quantlm.finetune.rl", "train_rl"), "distill": ("quantlm.finetune.distill", "train_distill"),
            "pretrain": ("quantlm.train.loop", "pretrain")}


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def count_calls(monkeypatch) -> dict[str, int]:
    """Wrap every trainer so that calls are counted (and still run)."""
    import importlib

    calls = dict.fromkeys(TRAINERS, 0)
    for stage, (mod_name, fn_name) in TRAINERS.items():
        mod = importlib.import_module(mod_name)
        original = getattr(mod, fn_name)

        def wrapped(*args, _stage=stage, _fn=original, **kwargs):
            calls[_stage] += 1
            return _fn(*args, **kwargs)

        monkeypatch.setattr(mod, fn_name, wrapped)
    return calls


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    from quantlm.data.synth import SynthConfig, write_market

    s = Store(tmp_path_factory.mktemp("wf") / "store")
    write_market(s, SynthConfig(**SYNTH))
    return s


@pytest.fixture(scope="module")
def first_run(store, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("wf") / "run"
    cfg = parse_run_config(TINY, "tiny.yaml")
    summary = run_workflow(cfg, store, run_dir=run_dir, console=quiet())
    return run_dir, summary


def copy_run(first_run, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(first_run[0], dst)
    return dst


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(("patch", "expected"), [
    ({"sft": {"lora": {"rnak": 4}}}, "sft.lora.rnak: extra inputs are not permitted"),
    ({"evaluate": {"topk": "many"}}, "evaluate.topk: input should be a valid integer"),
    ({"evaluate": {"refit": "weekly"}}, "evaluate.refit: input should be 'once' or 'per_fold'"),
    ({"seeds": [0, 0]}, "seeds: seeds must be distinct"),
    ({"colour": "red"}, "colour: extra inputs are not permitted"),
    ({"pretrain": {"train": {"max_stepz": 3}}}, "pretrain.train.max_stepz: extra inputs are not permitted"),
    ({"pretrain": {"init": "x", "seed": 1}}, "pretrain: with init, no other key is allowed"),
    ({"data": {"synth": {"n_symbol": 3}}}, "data.synth.n_symbol: extra inputs are not permitted"),
    ({"data": {"import": {"paths": ["a.csv"], "market": "cn"}}}, "data: give either synth or import"),
    ({"ablations": {"x": {"rl": {"kl_coeff": 1}}}}, "ablations.x.rl.kl_coeff: extra inputs are not permitted"),
    ({"reward": None}, "rl.reward: 'model' needs a reward section"),
    ({"evaluate": {"primary": "nobody"}}, "evaluate.primary: 'nobody' is not a run"),
    ({"evaluate": {"gates": {"sharp": 1.0}}}, "evaluate.gates: sharp: unknown gate"),
])
def test_config_errors_name_the_file_and_the_key_path(tmp_path, patch, expected):
    from quantlm.workflow.config import deep_merge

    raw = deep_merge(TINY, patch)
    if patch.get("reward", 1) is None:
        raw["reward"] = None
    if "pretrain" in patch and "init" in patch["pretrain"]:
        raw["pretrain"] = patch["pretrain"]
    path = write_config(tmp_path / "x.yaml", raw)
    with pytest.raises(RunConfigError) as e:
        load_run_config(path)
    assert f"{path}: {expected}" in str(e.value)


def test_ablation_reports_a_main_section_error_once(tmp_path):
    from quantlm.workflow.config import deep_merge

    # the main sft section is wrong; the lora ablation merges it: one problem, at its real place
    path = write_config(tmp_path / "x.yaml", deep_merge(TINY, {"sft": {"lora": {"rnak": 4}}}))
    with pytest.raises(RunConfigError) as e:
        load_run_config(path)
    assert str(e.value).splitlines() == [f"{path}: sft.lora.rnak: extra inputs are not permitted"]
    # a key the ablation sets itself is its own problem, reported under ablations.NAME
    raw = deep_merge(TINY, {"ablations": {"lora": {"sft": {"lora": {"rnak": 4}}}}})
    with pytest.raises(RunConfigError) as e:
        load_run_config(write_config(tmp_path / "y.yaml", raw))
    assert str(e.value).splitlines() == [f"{tmp_path / 'y.yaml'}: ablations.lora.sft.lora.rnak: extra inputs are not permitted"]
    # both wrong: both places named
    raw = deep_merge(TINY, {"sft": {"lora": {"rnak": 4}}, "ablations": {"lora": {"sft": {"lora": {"rnak": 2}}}}})
    with pytest.raises(RunConfigError) as e:
        load_run_config(write_config(tmp_path / "z.yaml", raw))
    assert [line.split(": ", 1)[1] for line in str(e.value).splitlines()] == [
        "sft.lora.rnak: extra inputs are not permitted", "ablations.lora.sft.lora.rnak: extra inputs are not permitted"]


def test_cli_config_error_exits_2_and_writes_nothing(tmp_path):
    from quantlm.cli import app

    path = write_config(tmp_path / "bad.yaml", {**TINY, "sft": {"lora": {"rnak": 4}}})
    out, store_dir = tmp_path / "out", tmp_path / "store"
    res = CliRunner().invoke(app, ["run", str(path), "--store", str(store_dir), "--out", str(out)])
    assert res.exit_code == 2
    # errors are printed unwrapped (quantlm.cli.common.fail): the path and key are never split
    assert f"{path}: sft.lora.rnak: extra inputs are not permitted" in res.output
    assert res.output.count("rnak") == 1  # said once, not again under ablations.lora.sft
    assert not out.exists() and not store_dir.exists()
    res = CliRunner().invoke(app, ["run", str(tmp_path / "missing.yaml"), "--out", str(out)])
    assert res.exit_code == 2 and "not found" in res.output and not out.exists()
    no_data = write_config(tmp_path / "nodata.yaml", {**TINY, "data": {}})  # use the store as is: it must exist
    res = CliRunner().invoke(app, ["run", str(no_data), "--store", str(store_dir), "--out", str(out)])
    assert res.exit_code == 2 and "no quantlm store" in res.output
    res = CliRunner().invoke(app, ["run", str(path), "--force", "sfft", "--out", str(out)])
    assert res.exit_code == 2 and "--force: unknown stage sfft" in res.output
    assert not out.exists() and not store_dir.exists()


# ------------------------------------------------------------------------------------------ summary
def test_summary_schema_and_outputs(first_run, store):
    run_dir, summary = first_run
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert {"runs", "runs_std", "runs_by_seed", "oracle", "gates", "latency_ms", "ratios", "period",
            "stages", "primary"} <= set(on_disk)
    runs = on_disk["runs"]
    assert {"teacher", "rl", "student", "teacher[lora]", "lightgbm", "momentum-20", "reversal-5", "benchmark"} == set(runs)
    assert on_disk["primary"] in {"teacher", "rl", "student", "teacher[lora]"}
    # the model runs went through the same evaluation as the baselines: same metric names as metrics.json
    metrics_json = json.loads((Path(on_disk["evaluate_dir"]) / "metrics.json").read_text())
    assert set(runs["teacher"]) == set(metrics_json["runs"]["lightgbm"]["metrics"]) == set(runs["lightgbm"])
    assert set(metrics_json["runs"]) == set(runs) | {"oracle"}
    assert on_disk["runs_by_seed"]["student"]["0"]["rank_ic"] == pytest.approx(runs["student"]["rank_ic"])
    assert on_disk["oracle"]["synth_oracle_rank_ic"] == pytest.approx(float(store.meta()["synth_oracle_rank_ic"]))
    assert on_disk["oracle"]["rank_ic"] > 0
    assert set(on_disk["latency_ms"]) >= {"p50", "p99", "run"} and on_disk["latency_ms"]["p99"] > 0
    assert on_disk["gates"]["latency_p99_ms"]["value"] == on_disk["latency_ms"]["p99"]
    for gate in on_disk["gates"].values():
        assert {"value", "threshold", "passed"} <= set(gate)
    ratio = on_disk["ratios"]["rank_ic_vs_oracle"]
    assert ratio == pytest.approx(runs[on_disk["primary"]]["rank_ic"] / on_disk["oracle"]["rank_ic"])
    assert on_disk["period"] == "2020-01-02..2021-06-30"
    stages = on_disk["stages"]
    assert {"data", "pretrain", "sft/s0/f0", "reward/s0/f0", "rl/s0/f0", "distill/s0/f0", "sft[lora]/s0/f0",
            "score/teacher/s0", "baselines", "latency", "evaluate"} <= set(stages)
    assert all(len(s["key"]) == 64 and not s["cached"] for k, s in stages.items() if k != "data")
    assert (run_dir / "report.html").stat().st_size > 10_000
    assert not list((run_dir / "stages").glob(".tmp-*"))


# ------------------------------------------------------------------------------------------ caching
def test_second_run_is_all_cached_without_training(first_run, store, tmp_path, monkeypatch):
    from quantlm.cli import app

    run_dir = copy_run(first_run, tmp_path)
    calls = count_calls(monkeypatch)
    markers = {p: p.stat().st_mtime_ns for p in (run_dir / "stages").glob("*/done.json")}
    path = write_config(tmp_path / "tiny.yaml", TINY)
    res = CliRunner().invoke(app, ["run", str(path), "--store", str(store.root), "--out", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert sum(calls.values()) == 0
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "stages").glob("*/done.json")} == markers
    summary = json.loads((run_dir / "summary.json").read_text())
    assert all(s["cached"] for s in summary["stages"].values())
    assert "cached" in res.output
    assert summary["runs"] == first_run[1]["runs"]


def test_changing_sft_reruns_sft_and_downstream_only(first_run, store, tmp_path, monkeypatch):
    run_dir = copy_run(first_run, tmp_path)
    calls = count_calls(monkeypatch)
    cfg = parse_run_config({**TINY, "sft": {**TINY["sft"], "steps": 3}}, "tiny.yaml")
    summary = run_workflow(cfg, store, run_dir=run_dir, console=quiet())
    st = summary["stages"]
    assert st["data"]["cached"] and st["pretrain"]["cached"] and st["baselines"]["cached"]
    for sid in ("sft/s0/f0", "reward/s0/f0", "rl/s0/f0", "distill/s0/f0", "sft[lora]/s0/f0", "score/student/s0",
                "latency", "evaluate"):
        assert not st[sid]["cached"], sid
    assert calls == {"sft": 2, "reward": 1, "rl": 1, "distill": 1, "pretrain": 0}


def test_force_reruns_a_stage_kind_and_downstream(first_run, store, tmp_path, monkeypatch):
    run_dir = copy_run(first_run, tmp_path)
    calls = count_calls(monkeypatch)
    cfg = parse_run_config(TINY, "tiny.yaml")
    summary = run_workflow(cfg, store, run_dir=run_dir, console=quiet(), force=["distill"])
    st = summary["stages"]
    assert st["rl/s0/f0"]["cached"] and not st["distill/s0/f0"]["cached"] and not st["score/student/s0"]["cached"]
    assert st["score/teacher/s0"]["cached"] and not st["evaluate"]["cached"]
    assert calls["distill"] == 1 and calls["sft"] == calls["rl"] == 0


def test_resume_after_a_crash(store, tmp_path, monkeypatch):
    """Crash in pretraining (after a checkpoint) and later in RL: done stages are kept, the partial RL stage is
    discarded, pretraining resumes from its checkpoint."""
    import quantlm.finetune.rl as rl_mod
    import quantlm.train.loop as loop

    raw = {**TINY, "ablations": {}, "pretrain": {**TINY["pretrain"], "seed": 7}}
    cfg = parse_run_config(raw, "tiny.yaml")
    run_dir = tmp_path / "run"
    original = loop.pretrain
    resumes = []

    def crash_after_step_2(*args, resume=False, **kwargs):
        original(*args, resume=resume, stop_after=2, **kwargs)
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(loop, "pretrain", crash_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        run_workflow(cfg, store, run_dir=run_dir, console=quiet())
    partial = list((run_dir / "stages").glob(".tmp-pretrain-*"))
    assert len(partial) == 1 and list((partial[0] / "run" / "checkpoints").glob("step_*"))

    def record_resume(*args, resume=False, **kwargs):
        resumes.append(resume)
        return original(*args, resume=resume, **kwargs)

    def broken_rl(*args, **kwargs):
        (Path(args[2]) / "half-written").parent.mkdir(parents=True, exist_ok=True)
        (Path(args[2]) / "half-written").write_text("x")
        raise RuntimeError("rl crashed")

    monkeypatch.setattr(loop, "pretrain", record_resume)
    monkeypatch.setattr(rl_mod, "train_rl", broken_rl)
    with pytest.raises(RuntimeError, match="rl crashed"):
        run_workflow(cfg, store, run_dir=run_dir, console=quiet())
    assert resumes == [True]
    assert list((run_dir / "stages").glob(".tmp-rl.s0.f0-*/run/half-written"))

    monkeypatch.undo()
    calls = count_calls(monkeypatch)
    summary = run_workflow(cfg, store, run_dir=run_dir, console=quiet())
    st = summary["stages"]
    assert st["pretrain"]["cached"] and st["sft/s0/f0"]["cached"] and st["reward/s0/f0"]["cached"]
    assert not st["rl/s0/f0"]["cached"] and not st["distill/s0/f0"]["cached"]
    assert calls == {"sft": 0, "reward": 0, "rl": 1, "distill": 1, "pretrain": 0}
    assert not list((run_dir / "stages").glob(".tmp-*"))


# ------------------------------------------------------------------------------------------ look-ahead
def test_pretraining_never_reads_a_bar_of_the_test_period(store, tmp_path, monkeypatch):
    """The pretrain stage reads bars up to the first fold's train end only: its reads stop there, its
    tokenizer is fitted before it, and perturbing every later bar leaves the weights bit-identical
    (while perturbing bars before it does change them)."""
    from quantlm.baselines.compare import evaluation_setup
    from quantlm.workflow.pipeline import evaluate_options, pretrain_stage
    from quantlm.workflow.stages import StageCache, store_fingerprint

    cfg = parse_run_config({**TINY, "pretrain": {**TINY["pretrain"], "data": {"window_bars": 32, "end": "2021-06-30",
                                                                              "split": "2021-01-04"}}}, "t.yaml")
    setup = evaluation_setup(store, evaluate_options(cfg))
    cap, first_test = setup.folds[0].train_end, setup.folds[0].test_start
    sessions = pd.DatetimeIndex(sorted(setup.bars["ts"].unique()))
    assert sessions.get_loc(first_test) - sessions.get_loc(cap) == 3  # 2 embargo sessions between them

    seen: list[pd.Timestamp] = []
    original_bars = Store.bars

    def spy(self, *args, **kwargs):
        out = original_bars(self, *args, **kwargs)
        if len(out):
            seen.append(out["ts"].max())
        return out

    def pretrain_on(s: Store, name: str) -> Path:
        stage, model = pretrain_stage(cfg, s, StageCache(tmp_path / name), store_fingerprint(s), cap)
        return model

    monkeypatch.setattr(Store, "bars", spy)
    model = pretrain_on(store, "base")
    monkeypatch.setattr(Store, "bars", original_bars)
    assert seen and max(seen) <= cap
    assert pd.Timestamp(json.loads((model / "tokenizer" / "tokenizer.json").read_text())["fit_end"]) <= cap
    used = yaml.safe_load((model / "train_config.yaml").read_text())["data"]
    assert pd.Timestamp(used["end"]) == cap and used["split"] is None

    bars = store.bars()

    def perturbed(name: str, mask) -> Path:
        b = bars.copy()
        for c in ("open", "high", "low", "close"):
            b.loc[mask, c] *= 1.37
        b.loc[mask, "volume"] *= 0.5
        s = Store(tmp_path / f"store-{name}")
        s.write_bars(b, market="cn")
        return pretrain_on(s, name)

    after = perturbed("after", bars["ts"] > cap)
    before = perturbed("before", bars["ts"] < bars["ts"].min() + pd.Timedelta(days=90))  # training bars
    weights = (model / "model.safetensors").read_bytes()
    assert (after / "model.safetensors").read_bytes() == weights
    assert (before / "model.safetensors").read_bytes() != weights


def test_per_fold_refit_warm_starts_sft_with_each_folds_train_end(store, tmp_path):
    raw = {k: v for k, v in TINY.items() if k not in ("reward", "rl", "distill", "ablations")}
    raw["evaluate"] = {**TINY["evaluate"], "refit": "per_fold", "baselines": ["momentum"], "latency": False}
    summary = run_workflow(parse_run_config(raw, "t.yaml"), store, run_dir=tmp_path / "run", console=quiet())
    folds = summary["folds"]
    assert len(folds) == 3 and summary["latency_ms"] is None and "latency_p99_ms" in summary["gates"]
    inits = []
    for k, fold in enumerate(folds):
        stage = next((tmp_path / "run" / "stages").glob(f"sft.s0.f{k}-*"))
        used = json.loads((stage / "run" / "config.json").read_text())
        assert pd.Timestamp(used["train_end"]) == pd.Timestamp(fold["train_end"])
        inits.append(Path(used["init"]))
    assert inits[0].parent.parent.name.startswith("pretrain-")
    assert [p.parent.parent.name[:9] for p in inits[1:]] == ["sft.s0.f0", "sft.s0.f1"]
    scores = pd.read_parquet(next((tmp_path / "run" / "stages").glob("score.teacher.s0-*")) / "scores.parquet")
    assert scores["ts"].min() == pd.Timestamp(folds[0]["test_start"])
    assert scores["ts"].max() == pd.Timestamp(folds[-1]["test_end"])
    assert set(summary["runs"]) == {"teacher", "momentum-20"}
