"""`quantlm live replay --from-run`: which folders become the primary and the backup."""

from __future__ import annotations

import json
from pathlib import Path

from quantlm.live.replay import models_from_run


def _run(tmp_path: Path, factors: str) -> Path:
    run = tmp_path / "run"
    stages = {"sft/s0/f0": {"key": "a" * 64}, "distill/s0/f0": {"key": "b" * 64}}
    (run).mkdir()
    (run / "summary.json").write_text(json.dumps({"stages": stages}))
    sft = run / "stages" / f"sft.s0.f0-{'a' * 12}" / "run" / "model"
    sft.mkdir(parents=True)
    (sft / "config.json").write_text(json.dumps({"model_type": "quantlm_trader", "factors": factors}))
    dist = run / "stages" / f"distill.s0.f0-{'b' * 12}" / "run"
    for folder, payload in ((dist / "model", b"small"), (dist / "sizes" / "0" / "model", b"small"),
                            (dist / "sizes" / "1" / "model", b"wide")):
        folder.mkdir(parents=True)
        (folder / "student.safetensors").write_bytes(payload)
    return run


def test_token_teacher_is_the_backup(tmp_path):
    student, backup = models_from_run(_run(tmp_path, "none"))
    assert student.parent.parent.name.startswith("distill") and backup.parent.parent.name.startswith("sft")


def test_factor_teacher_is_replaced_by_the_other_student_size(tmp_path):
    """A teacher fed factor ranks cannot be scored bar by bar: the backup is the run's other student size."""
    student, backup = models_from_run(_run(tmp_path, "alpha158"))
    assert student.name == "model" and backup == student.parent / "sizes" / "1" / "model"
