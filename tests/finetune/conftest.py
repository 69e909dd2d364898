"""Shared fine-tuning fixtures: a small synthetic store with texts and a tiny pretrained market GPT."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

TRAIN_END = "2020-09-30"


class HashEmbedder:
    """A cheap deterministic stand-in for MiniLM: 384-d unit vectors seeded by the text (tests only)."""

    def __init__(self, name: str = "hash") -> None:
        self.name = name

    def encode(self, texts: list[str], batch_size: int = 64):
        import zlib

        import numpy as np

        v = np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=384) for t in texts])
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def fake_embed(store) -> None:
    """Fill the store's MiniLM embedding cache with HashEmbedder vectors (skips the slow CPU model)."""
    from quantlm.data.text import DEFAULT_MODEL, embed_texts

    embed_texts(store, embedder=HashEmbedder(DEFAULT_MODEL))


@dataclass
class FinetuneEnv:
    root: Path
    store: object  # quantlm.data.store.Store
    pretrained: Path  # pretrain run/model folder
    train_end: str = TRAIN_END


@pytest.fixture(scope="session")
def ft_env(tmp_path_factory) -> FinetuneEnv:
    """12 synthetic cn stocks 2019-2020 (with news texts, embedded by `HashEmbedder`) and a 2-layer market
    GPT pretrained for 5 steps."""
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
    fake_embed(store)
    return FinetuneEnv(root, store, run / "model")


def perturbed_copy(store, dest: Path, after: str, texts_before: bool = False):
    """A copy of `store` whose bars and texts after `after` are rewritten (prices x1.7, volume x3, other text
    bodies, 20 new texts); with texts_before the bodies of texts published before `after` change instead."""
    import shutil

    import pandas as pd

    from quantlm.data.store import Store

    shutil.copytree(store.root, dest)
    st = Store(dest)
    end = pd.Timestamp(after)
    texts = st.read_table("texts")
    if texts_before:
        texts.loc[texts["published_at"] < end - pd.Timedelta(days=30), "body"] = "Guidance cut sharply."
        st.write_table("texts", texts)
        fake_embed(st)
        return st
    bars = st.bars()
    late = bars["ts"] > end
    assert late.sum() > 100
    bars.loc[late, ["open", "high", "low", "close"]] *= 1.7
    bars.loc[late, "volume"] *= 3
    st.write_bars(bars, market="cn", replace=True)
    after_close = texts["published_at"] > end + pd.Timedelta(hours=15)
    assert after_close.sum() > 5
    texts.loc[after_close, "body"] = "Profit warning: the company expects a large loss."
    extra = texts[after_close].head(20).assign(text_id=lambda d: "X" + d["text_id"], title="Record orders")
    st.write_table("texts", pd.concat([texts, extra], ignore_index=True))
    fake_embed(st)
    return st
