"""Shared fine-tuning fixtures: a small synthetic store with texts and a tiny pretrained market GPT."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

TRAIN_END = "2020-09-30"


@dataclass
class FinetuneEnv:
    root: Path
    store: object  # quantlm.data.store.Store
    pretrained: Path  # pretrain run/model folder
    train_end: str = TRAIN_END


@pytest.fixture(scope="session")
def ft_env(tmp_path_factory) -> FinetuneEnv:
    """12 synthetic cn stocks 2019-2020 (with news texts) and a 2-layer market GPT pretrained for 5 steps."""
    import torch

    from quantlm.data.store import Store
    from quantlm.data.synth import SynthConfig, write_market
    from quantlm.train.config import parse_config
    from quantlm.train.loop import pretrain

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ft")
    store = Store(root / "store")
    write_market(store, SynthConfig(n_symbols=12, start="2019-01-02", end="2020-12-31"))
    cfg = parse_config({
        "model": {"size": "mini", "n_layer": 2, "hidden": 32, "n_head": 2, "ffn": 64, "max_bars": 32},
        "data": {"split": "2020-03-31", "window_bars": 32},
        "tokenizer": {"n_coarse": 64, "n_fine": 64},
        "train": {"max_steps": 5, "batch_size": 4, "warmup_steps": 1, "eval_batches": 1, "log_every": 5,
                  "checkpoint_every": 0},
    })
    run = pretrain(cfg, store=store.root, out=root / "pretrain", progress=False)
    return FinetuneEnv(root, store, run / "model")
