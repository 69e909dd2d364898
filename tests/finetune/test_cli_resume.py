"""`quantlm finetune sft --resume` continues a stopped run from its newest checkpoint, bit for bit."""

from __future__ import annotations

import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from quantlm.cli import app
from quantlm.finetune.config import SFTConfig
from quantlm.finetune.sft import train_sft


def _weights(model_dir) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.rglob("*.safetensors")):
        out.update({f"{f.relative_to(model_dir)}:{k}": v for k, v in load_file(f).items()})
    return out


def test_sft_cli_resume_matches_an_uninterrupted_run(ft_env, tmp_path):
    section = {"steps": 6, "batch_size": 4, "window_bars": 24, "valid_sessions": 40, "eval_every": 3, "warm": 8, "warmup_steps": 1,
               "checkpoint_every": 2, "text": False}
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text(yaml.safe_dump({"sft": section}))
    cfg = SFTConfig(**section)
    straight = train_sft(cfg, ft_env.store, tmp_path / "a", ft_env.pretrained, ft_env.train_end, seed=1)
    train_sft(cfg, ft_env.store, tmp_path / "b", ft_env.pretrained, ft_env.train_end, seed=1, stop_after=2)
    args = ["finetune", "sft", "--init", str(ft_env.pretrained), "--out", str(tmp_path / "b"), "--store",
            str(ft_env.store.root), "--train-end", str(ft_env.train_end), "--config", str(cfg_file),
            "--seed", "1"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0 and "checkpoints" in refused.output
    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    a, b = _weights(straight / "model"), _weights(tmp_path / "b" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
