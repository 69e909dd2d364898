"""Executors: input order, errors, config / CLI selection, and a tiny `quantlm run` whose results are
bit-identical under the process executor and a local Ray (2 CPUs, one task per unit)."""

from __future__ import annotations

import io
import json
import math
import operator
import sys
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from quantlm.workflow.config import RunConfigError, parse_run_config
from quantlm.workflow.executor import ExecutorError, ProcessExecutor, RaySection, make_executor, task_threads
from tests.workflow.tiny import tiny_pretrain

SYNTH = {"n_symbols": 10, "start": "2019-01-02", "end": "2020-12-31"}
WINDOW = {"window_bars": 32, "warm": 8, "valid_sessions": 20, "eval_every": 2}
TINY = {
    "run_dir": "unused",
    "seeds": [0, 1],
    "data": {"synth": SYNTH, "embed_texts": False},
    "pretrain": tiny_pretrain(checkpoint_every=2),
    "sft": {"steps": 2, "batch_size": 4, "text": False, **WINDOW},
    "evaluate": {"train_years": 1, "test_months": 6, "topk": 4, "n_drop": 1, "num_boost_round": 3,
                 "baselines": ["lightgbm", "momentum"], "latency": False},
    "ablations": {"lora": {"sft": {"lora": {"enabled": True, "rank": 2}}}},
    "report": {"title": "tiny"},
}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


# ------------------------------------------------------------------------------------------ process
def test_process_executor_keeps_input_order_inline_and_in_workers():
    items = [3, -1, 4, -1, 5]
    assert ProcessExecutor().map(operator.neg, items) == [-3, 1, -4, 1, -5]
    assert ProcessExecutor(2).map(operator.neg, items) == [-3, 1, -4, 1, -5]
    assert ProcessExecutor(2).map(operator.neg, []) == []
    with pytest.raises(ValueError, match="math domain error"):  # a failing unit raises its own error
        ProcessExecutor(2).map(math.log, [1.0, 0.0])
    with pytest.raises(ExecutorError, match="jobs must be >= 1"):
        ProcessExecutor(0)
    assert task_threads(0.5) == 1 and task_threads(4) == 4


def test_executor_config_and_cli_errors(monkeypatch, tmp_path):
    cfg = parse_run_config({**TINY, "evaluate": {**TINY["evaluate"], "executor": "ray",
                                                 "ray": {"num_cpus": 2, "num_gpus": 0.5}}}, "t.yaml")
    assert cfg.evaluate.executor == "ray" and cfg.evaluate.ray == RaySection(num_cpus=2, num_gpus=0.5)
    with pytest.raises(RunConfigError, match="t.yaml: evaluate.executor: input should be 'process' or 'ray'"):
        parse_run_config({**TINY, "evaluate": {"executor": "dask"}}, "t.yaml")
    with pytest.raises(RunConfigError, match="t.yaml: evaluate.ray.num_cpu: extra inputs are not permitted"):
        parse_run_config({**TINY, "evaluate": {"ray": {"num_cpu": 1}}}, "t.yaml")
    with pytest.raises(ExecutorError, match="unknown executor 'dask'"):
        make_executor("dask")
    # Ray missing: a clear message naming the extra, not an ImportError traceback
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ExecutorError, match=r"pip install 'quantlm\[ray\]'"):
        make_executor("ray")

    from typer.testing import CliRunner

    from quantlm.cli import app

    path = tmp_path / "t.yaml"
    path.write_text(json.dumps(TINY))  # JSON is YAML
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["run", str(path), "--executor", "dask", "--out", str(out)])
    assert res.exit_code == 2 and "--executor: unknown executor 'dask'" in res.output
    res = CliRunner().invoke(app, ["run", str(path), "--ray-address", "auto", "--out", str(out)])
    assert res.exit_code == 2 and "--ray-address needs --executor ray" in res.output
    assert not out.exists()


# ------------------------------------------------------------------------------------------ ray
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield ray
    ray.shutdown()


def _scores(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {p.name.rsplit("-", 1)[0]: pd.read_parquet(p / "scores.parquet")
            for p in sorted((run_dir / "stages").glob("score.*"))}


@pytest.fixture(scope="module")
def two_runs(local_ray, tmp_path_factory):
    """The tiny run in this process and on the local Ray (counting the units sent to Ray)."""
    from quantlm.data.store import Store
    from quantlm.data.synth import SynthConfig, write_market
    from quantlm.workflow.executor import RayExecutor
    from quantlm.workflow.pipeline import run_workflow

    tmp = tmp_path_factory.mktemp("ray")
    store = Store(tmp / "store")
    write_market(store, SynthConfig(**SYNTH))
    by_process = run_workflow(parse_run_config(TINY, "tiny.yaml"), store, run_dir=tmp / "process", console=quiet())
    sent: list[str] = []
    original_map = RayExecutor.map

    def counting_map(self, fn, items):
        items = list(items)
        sent.extend([getattr(fn, "__name__", "?")] * len(items))
        return original_map(self, fn, items)

    ray_cfg = parse_run_config({**TINY, "evaluate": {**TINY["evaluate"], "executor": "ray"}}, "tiny.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RayExecutor, "map", counting_map)
        by_ray = run_workflow(ray_cfg, store, run_dir=tmp / "ray", console=quiet())
    return tmp, store, by_process, by_ray, sent


def test_ray_run_equals_process_run_bit_for_bit(local_ray, two_runs):
    """2 seeds x (main + LoRA ablation) chains, 4 scorings and 2 LightGBM folds as Ray tasks: the same
    scores and metrics as the in-process run; a borrowed Ray stays up; a failing unit raises its error."""
    from quantlm.workflow.executor import RayExecutor

    tmp_path, _, by_process, by_ray, sent = two_runs
    assert local_ray.is_initialized()  # not started by quantlm: not shut down by it
    # 2 main chains, 2 ablation chains, 2 runs x 2 seeds scorings, 2 LightGBM folds went to Ray
    assert sent.count("chain") == 4 and sent.count("score") == 4 and sent.count("_run_task") == 2
    assert by_ray["runs"] == by_process["runs"] and by_ray["runs_by_seed"] == by_process["runs_by_seed"]
    assert len(by_ray["runs_by_seed"]["teacher[lora]"]) == 2
    assert by_ray["runs"]["lightgbm"] == by_process["runs"]["lightgbm"]
    assert {k: v["key"] for k, v in by_ray["stages"].items()} == {k: v["key"] for k, v in by_process["stages"].items()}
    assert list(by_ray["stages"]) == list(by_process["stages"])  # same record order
    process_scores, ray_scores = _scores(tmp_path / "process"), _scores(tmp_path / "ray")
    assert len(ray_scores) == 4 and set(ray_scores) == set(process_scores)
    for name, df in ray_scores.items():
        pd.testing.assert_frame_equal(df, process_scores[name], check_exact=True)
    wf = [json.loads(next((d / "stages").glob("baselines-*")).joinpath("walk_forward.json").read_text())
          for d in (tmp_path / "process", tmp_path / "ray")]
    assert wf[0] == wf[1]

    with RayExecutor(num_cpus=1) as ex:
        assert ex.map(operator.neg, [1, 2, 3]) == [-1, -2, -3]
        with pytest.raises(ValueError, match="math domain error"):
            ex.map(math.log, [1.0, 0.0])
    assert local_ray.is_initialized()


def test_ray_sweep_shares_the_stage_cache(two_runs, tmp_path):
    """A 2-variant sweep on Ray, its stage cache seeded with the process run's stages: the variant equal to
    the run finds every stage cached and reports the run's metrics; the other re-runs SFT only."""
    import shutil

    import yaml

    from quantlm.workflow.sweep import run_sweep

    run_tmp, store, by_process, _, _ = two_runs
    config, grid = tmp_path / "tiny.yaml", tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump(TINY))
    grid.write_text(yaml.safe_dump({"sft.steps": [2, 3]}))  # v00 is TINY itself
    out = tmp_path / "sweep"
    shutil.copytree(run_tmp / "process" / "stages", out / "stages")
    res = run_sweep(config, grid, store, out=out, executor="ray", console=quiet(), quiet_variants=True)
    assert [r["status"] for r in res["variants"]] == ["ok", "ok"]
    v00, v01 = (json.loads((out / "variants" / v / "summary.json").read_text()) for v in ("v00", "v01"))
    assert v00["runs"] == by_process["runs"] and all(s["cached"] for s in v00["stages"].values())
    assert v01["stages"]["pretrain"]["cached"] and v01["stages"]["baselines"]["cached"]
    assert not v01["stages"]["sft/s1/f0"]["cached"] and not v01["stages"]["sft[lora]/s0/f0"]["cached"]
    assert res["variants"][0]["rank_ic"] == by_process["runs"][by_process["primary"]]["rank_ic"]
    assert (out / "sweep.csv").exists() and (out / "sweep.html").exists()
