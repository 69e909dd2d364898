"""The run configs shipped in configs/ parse, and the demo's chain is what the README says it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantlm.workflow.config import load_run_config

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.mark.parametrize("name", ["demo", "ablations", "user", "sp500", "gpu", "llm"])
def test_shipped_run_configs_parse(name):
    cfg = load_run_config(CONFIGS / f"{name}.yaml")
    assert cfg.seeds == [0, 1, 2] or name in ("gpu", "llm")


def test_demo_runs_rl_on_the_book_without_a_reward_model():
    cfg = load_run_config(CONFIGS / "demo.yaml")
    stages = cfg.main.stages
    assert "reward" not in stages and stages["rl"].reward == "portfolio"
    assert stages["sft"].factors == "alpha158" and cfg.evaluate.hedge == "benchmark"
