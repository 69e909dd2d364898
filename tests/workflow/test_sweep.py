"""`quantlm sweep`: grid errors name the grid file and the key; a 2-variant sweep through the CLI writes
the comparison table and builds the stages the variants share once."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from quantlm.workflow.sweep import SweepError, grid_points, sweep_variants
from tests.workflow.tiny import tiny_pretrain

SYNTH = {"n_symbols": 10, "start": "2019-01-02", "end": "2020-12-31"}
BASE = {
    "run_dir": "unused",
    "seeds": [0],
    "data": {"synth": SYNTH, "embed_texts": False},
    "pretrain": tiny_pretrain(checkpoint_every=2),
    "sft": {"steps": 1, "batch_size": 4, "text": False, "window_bars": 32, "warm": 8, "valid_sessions": 20,
            "eval_every": 2},
    "evaluate": {"train_years": 1, "test_months": 6, "topk": 4, "n_drop": 1, "baselines": ["momentum"],
                 "latency": False},
    "report": {"title": "tiny"},
}


def write(path, data) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_grid_points_product_and_zip():
    grid = {"sft.lr": [1, 2], "sft.steps": [10, 20]}
    assert grid_points(grid) == [{"sft.lr": 1, "sft.steps": 10}, {"sft.lr": 1, "sft.steps": 20},
                                 {"sft.lr": 2, "sft.steps": 10}, {"sft.lr": 2, "sft.steps": 20}]
    assert grid_points(grid, "zip") == [{"sft.lr": 1, "sft.steps": 10}, {"sft.lr": 2, "sft.steps": 20}]


@pytest.mark.parametrize(("grid", "expected"), [
    ({"sft.lrr": [1e-3]}, "{grid}: sft.lrr: unknown key of the run config {config}"),
    ({"sftt.lr": [1e-3]}, "{grid}: sftt.lr: unknown key of the run config {config}"),
    ({"evaluate.topk": 4}, "{grid}: evaluate.topk: expected a non-empty list of values, got 4"),
    ({"evaluate.topk": []}, "{grid}: evaluate.topk: expected a non-empty list of values"),
    ({"sft.steps": [1, "many"]}, "{grid}: sft.steps = 'many': sft.steps: input should be a valid integer"),
    ({"mode": "zip", "sft.steps": [1, 2], "sft.lr": [1e-3]}, "{grid}: mode zip needs lists of one length, got "
                                                              "sft.steps (2), sft.lr (1)"),
    ({"mode": "random", "sft.steps": [1]}, "{grid}: mode: expected one of product, zip"),
    ({"sft.steps.x": [1]}, "{grid}: sft.steps.x: sft.steps is 1 in the config, not a section"),
    ({}, "{grid}: the grid is empty"),
])
def test_grid_errors_name_the_grid_file_and_the_key(tmp_path, grid, expected):
    config = write(tmp_path / "run.yaml", BASE)
    path = write(tmp_path / "grid.yaml", grid)
    with pytest.raises(SweepError) as e:
        sweep_variants(config, path)
    assert expected.format(grid=path, config=config) in str(e.value)


def test_two_variant_sweep_via_cli_shares_unchanged_stages(tmp_path):
    from quantlm.cli import app

    config = write(tmp_path / "run.yaml", BASE)
    grid = write(tmp_path / "grid.yaml", {"sft.steps": [1, 2]})
    out = tmp_path / "sweep"
    bad = write(tmp_path / "bad.yaml", {"sft.stepz": [1, 2]})
    res = CliRunner().invoke(app, ["sweep", config, "--grid", bad, "--store", str(tmp_path / "store"),
                                   "--out", str(out)])
    assert res.exit_code == 2 and f"{bad}: sft.stepz: unknown key" in res.output
    assert not out.exists() and not (tmp_path / "store").exists()  # nothing written

    res = CliRunner().invoke(app, ["sweep", config, "--grid", grid, "--store", str(tmp_path / "store"),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "sweep.csv")
    assert list(table["variant"]) == ["v00", "v01"] and list(table["sft.steps"]) == [1, 2]
    assert list(table["status"]) == ["ok", "ok"] and list(table["primary"]) == ["teacher", "teacher"]
    assert {"rank_ic", "rank_ic_std", "sharpe", "annual_excess_return", "gates_passed", "all_gates_passed"} <= set(table)
    payload = json.loads((out / "sweep.json").read_text())
    assert payload["keys"] == ["sft.steps"] and payload["best"] in {"v00", "v01"}
    summaries = [json.loads((out / "variants" / v / "summary.json").read_text()) for v in ("v00", "v01")]
    for row, summary in zip(payload["variants"], summaries, strict=True):
        assert row["rank_ic"] == summary["runs"]["teacher"]["rank_ic"]
        assert row["sharpe"] == summary["runs"]["teacher"]["sharpe"]
    # one stage cache: data and pretraining built once (v01 finds them cached), sft and scoring per variant
    stages = sorted(p.name.split("-")[0] for p in (out / "stages").iterdir() if not p.name.startswith("."))
    assert stages.count("pretrain") == 1 and stages.count("data") == 1 and stages.count("sft.s0.f0") == 2
    assert summaries[1]["stages"]["pretrain"]["cached"] and not summaries[1]["stages"]["sft/s0/f0"]["cached"]
    assert summaries[0]["runs"]["teacher"] != summaries[1]["runs"]["teacher"]
    html = (out / "sweep.html").read_text()
    assert "v01" in html and "sft.steps" in html and "RankIC" in html
    assert "best RankIC" in res.output and "sweep finished" in res.output


def test_concurrent_runs_sharing_a_stage_cache_build_a_stage_once(tmp_path):
    """Two caches on one stages folder (as two sweep variants on Ray): the stage lock makes the second wait
    and find the first one's stage done instead of building it again."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from quantlm.workflow.stages import StageCache, stage_key

    builds: list[int] = []
    started = threading.Event()

    def build(tmp):
        started.set()
        time.sleep(0.3)
        builds.append(1)
        (tmp / "out.txt").write_text("x")

    key = stage_key("pretrain", {"x": 1})
    caches = [StageCache(tmp_path / f"run{i}", stages_dir=tmp_path / "stages") for i in range(2)]

    def second():
        started.wait(5)
        return caches[1].run("pretrain", key, build)

    with ThreadPoolExecutor(2) as pool:
        first, other = pool.submit(caches[0].run, "pretrain", key, build), pool.submit(second)
        results = [first.result(), other.result()]
    assert len(builds) == 1 and [r.cached for r in results] == [False, True]
    assert results[0].path == results[1].path and (results[1].path / "out.txt").read_text() == "x"
