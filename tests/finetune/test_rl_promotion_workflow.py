"""`quantlm run` keeps the SFT model where RL is not promoted, and says why in the summary notes."""

from __future__ import annotations

import json
import math
from pathlib import Path

from quantlm.workflow.config import Variant
from quantlm.workflow.models import Chain, not_promoted_runs, post_training_notes, rl_promoted
from quantlm.workflow.stages import StageResult


def _stage(root: Path, name: str, metrics: dict) -> StageResult:
    d = root / name
    (d / "run").mkdir(parents=True)
    (d / "run" / "metrics.json").write_text(json.dumps(metrics))
    return StageResult(name, name * 3, d, False, 0.0)


def test_unpromoted_rl_steps_aside_and_the_notes_say_why(tmp_path):
    sft = _stage(tmp_path, "sft", {"valid_rank_ic": 0.05})
    reward = _stage(tmp_path, "reward", {"pairwise_accuracy": 0.531, "pairwise_accuracy_last": 0.52,
                                         "baseline_cost_only_accuracy": 0.507})
    rl = _stage(tmp_path, "rl", {"promoted": False, "promotion_reason": "RL not promoted (RankIC not higher): x"})
    chain = Chain(Variant(name="", stages={}), 0, {"sft": [sft], "reward": [reward], "rl": [rl]})
    assert not rl_promoted(rl)
    assert chain.deployed() == ("teacher", sft)
    info, notes = post_training_notes(chain)
    assert info["rl"] == [{"promoted": False, "reason": "RL not promoted (RankIC not higher): x"}]
    assert any("0.531" in n and "cost-only baseline 0.507" in n for n in notes)
    assert any(n.startswith("rl fold 0: RL not promoted") and "primary candidate" in n for n in notes)
    assert not_promoted_runs([chain]) == ["rl"]  # never the default primary

    promoted = _stage(tmp_path, "rl2", {"promoted": True, "promotion_reason": "RL promoted: y"})
    chain.stages["rl"] = [promoted]
    assert chain.deployed() == ("rl", promoted) and not_promoted_runs([chain]) == []
    student = _stage(tmp_path, "distill", {"teacher_rank_ic": 0.05, "valid": {"rank_ic": float("nan")},
                                           "sizes": [{"size": 0, "hidden": 64, "layers": 2, "window_bars": None,
                                                      "rank_ic": 0.046, "rank_ic_vs_teacher": 0.92, "p50_ms": 0.4,
                                                      "p99_ms": 0.9, "deployed": True}]})
    chain.stages["distill"] = [student]
    assert chain.deployed() == ("student", student)
    info, notes = post_training_notes(chain)
    assert info["distill"][0]["rank_ic"] is None  # NaN -> None: summary.json allows no NaN
    assert math.isclose(info["distill"][0]["sizes"][0]["rank_ic_vs_teacher"], 0.92)
    assert any("0.92x teacher" in n and "[deployed]" in n for n in notes)


def test_stepped_aside_runs_are_rl_runs_promoted_nowhere(tmp_path):
    from quantlm.workflow.models import stepped_aside_runs

    sft = _stage(tmp_path, "sft", {"valid_rank_ic": 0.05})
    no = [_stage(tmp_path, f"rl{i}", {"promoted": False, "promotion_reason": "RL not promoted"}) for i in range(3)]
    yes = _stage(tmp_path, "rly", {"promoted": True, "promotion_reason": "RL promoted"})
    main = Variant(name="", stages={})
    chains = [Chain(main, 0, {"sft": [sft], "rl": [no[0]]}), Chain(main, 1, {"sft": [sft], "rl": [no[1]]})]
    assert stepped_aside_runs(chains) == ["rl"]
    chains.append(Chain(main, 2, {"sft": [sft], "rl": [no[2], yes]}))  # promoted in one fold of one seed
    assert stepped_aside_runs(chains) == []
    other = Variant(name="rl-realized", stages={})
    assert stepped_aside_runs(chains + [Chain(other, 0, {"sft": [sft], "rl": [no[0]]})]) == ["rl[rl-realized]"]
