"""The tiny run-config pieces the workflow tests share (a 1-layer market GPT over 32-bar windows)."""

from __future__ import annotations

from typing import Any

TINY_MODEL = {"size": "mini", "n_layer": 1, "hidden": 32, "n_head": 2, "ffn": 64, "max_bars": 32}


def tiny_pretrain(**train: Any) -> dict[str, Any]:
    """A `pretrain` section for TINY_MODEL; `train` overrides the few-step train section."""
    return {"model": dict(TINY_MODEL), "data": {"window_bars": 32}, "tokenizer": {"n_coarse": 32, "n_fine": 32},
            "train": {"max_steps": 2, "batch_size": 4, "warmup_steps": 1, "eval_batches": 1, "log_every": 1,
                      "checkpoint_every": 1, **train}}
