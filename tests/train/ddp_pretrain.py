"""Run by tests/train/test_core.py under `accelerate launch`: a tiny pretraining run, losses logged every step.

usage: python ddp_pretrain.py STORE OUT BATCH GRAD_ACCUM
"""

from __future__ import annotations

import sys

import torch

from quantlm.train.config import parse_config
from quantlm.train.loop import pretrain

TINY_MODEL = {"size": "mini", "n_layer": 2, "hidden": 32, "n_head": 2, "ffn": 64, "max_bars": 32}


def main(store: str, out: str, batch: int, grad_accum: int) -> None:
    torch.set_num_threads(1)
    cfg = parse_config({"run_dir": out, "model": TINY_MODEL, "tokenizer": {"n_coarse": 64, "n_fine": 64},
                        "data": {"store": store, "window_bars": 16, "valid_fraction": 0.25},
                        "train": {"max_steps": 5, "batch_size": batch, "grad_accum": grad_accum, "warmup_steps": 1,
                                  "log_every": 1, "eval_batches": 0, "checkpoint_every": 0, "lr": 3e-3}})
    pretrain(cfg, progress=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
