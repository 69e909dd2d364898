"""LoRA SFT on the training core: exact resume, trainable-only checkpoints, refused mismatched resume."""

from __future__ import annotations

import json

import pytest

from quantlm.llm.serialize import PromptConfig

CFG = PromptConfig(window_bars=8, max_prompt_tokens=512, max_text_chars=120)


def _settings(**kw):
    from quantlm.llm.sft import SFTSettings

    return SFTSettings(**{"steps": 4, "batch_size": 3, "lr": 1e-2, "grad_accum": 2, "checkpoint_every": 2,
                          "keep_checkpoints": 2, "freeze_bottom": 1, **kw})


def _adapter(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def test_llm_sft_resume_is_bit_identical(tiny_qwen, synth_store, tmp_path):
    import torch

    from quantlm.llm.sft import run_sft

    args = (tiny_qwen, synth_store, "2020-06-30")
    full = run_sft(*args, tmp_path / "full", _settings(), CFG, start="2020-06-24")
    part = run_sft(*args, tmp_path / "part", _settings(), CFG, start="2020-06-24", stop_after=2)
    assert part == {"finished": False, "step": 2} and not (tmp_path / "part" / "adapter").exists()
    ckpt = tmp_path / "part" / "checkpoints" / "step_00000002"
    saved = json.loads((ckpt / "trainer.json").read_text())
    assert saved["step"] == 2 and saved["sampler"]["next_micro_batch"] == 4  # 2 steps x 2 micro-batches
    from safetensors.torch import load_file

    keys = list(load_file(str(ckpt / "trainable.safetensors")))
    assert keys and all("lora_" in k and ".layers.0." not in k for k in keys)  # no frozen base in checkpoints
    assert not list(ckpt.glob("model*.safetensors"))
    with pytest.raises(ValueError, match="other settings"):
        run_sft(*args, tmp_path / "part", _settings(lr=2e-2), CFG, start="2020-06-24", resume=True)
    resumed = run_sft(*args, tmp_path / "part", _settings(), CFG, start="2020-06-24", resume=True)
    a, b = _adapter(tmp_path / "full"), _adapter(tmp_path / "part")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["first_loss"] == full["first_loss"] and resumed["last_loss"] == full["last_loss"]
    rows = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_llm_dpo_resume_is_bit_identical_and_cli_errors_are_clean(tiny_qwen, synth_store, tmp_path):
    import torch
    from typer.testing import CliRunner

    from quantlm.cli import app
    from quantlm.llm.dpo import DPOSettings, run_dpo
    from quantlm.llm.sft import run_sft

    run_sft(tiny_qwen, synth_store, "2020-06-30", tmp_path / "sft", _settings(steps=1, checkpoint_every=0), CFG,
            start="2020-06-24")
    dpo = DPOSettings(steps=3, batch_size=3, lr=1e-2, grad_accum=2, checkpoint_every=1, seed=5)
    args = (tmp_path / "sft", synth_store, "2020-06-30")
    full = run_dpo(*args, tmp_path / "full", dpo, start="2020-06-24")["dpo"]
    assert run_dpo(*args, tmp_path / "part", dpo, start="2020-06-24", stop_after=1) == {"finished": False, "step": 1}
    res = CliRunner().invoke(app, ["llm", "dpo", "--model", str(tmp_path / "sft"), "--store", str(synth_store.root),
                                   "--train-end", "2020-06-30", "--start", "2020-06-24", "--out", str(tmp_path / "part"),
                                   "--steps", "3", "--batch-size", "3", "--lr", "0.01", "--grad-accum", "2",
                                   "--checkpoint-every", "1", "--seed", "5", "--resume"])
    assert res.exit_code == 0, res.output
    part = json.loads((tmp_path / "part" / "llm.json").read_text())["dpo"]
    a, b = _adapter(tmp_path / "full"), _adapter(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a) and part["resumed"] and not full["resumed"]
    assert part["last_loss"] == full["last_loss"] and part["chosen_preferred_after"] == full["chosen_preferred_after"]
    # clean refusals, nothing written: --resume without a checkpoint, QLoRA without CUDA
    base = ["llm", "sft", "--base", str(tiny_qwen), "--store", str(synth_store.root), "--train-end", "2020-06-30",
            "--start", "2020-06-24", "--steps", "1"]
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "none"), "--resume"])
    assert res.exit_code == 2 and "no checkpoint" in res.output and not (tmp_path / "none" / "adapter").exists()
    if not torch.cuda.is_available():
        res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "q"), "--qlora"])
        assert res.exit_code == 2 and "needs a CUDA GPU" in res.output and not (tmp_path / "q").exists()
