"""Pretraining: config validation, time split, exact resume, run-dir contents."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from quantlm.train.config import ConfigError, load_config, parse_config  # noqa: E402
from tests.conftest import make_bars  # noqa: E402

TINY_MODEL = {"size": "mini", "n_layer": 2, "hidden": 32, "n_head": 2, "ffn": 64, "max_bars": 32}


@pytest.fixture(scope="module")
def train_store(tmp_path_factory):
    from quantlm.data.store import Store

    root = tmp_path_factory.mktemp("train") / "store"
    Store(root).write_bars(make_bars(symbols=[f"S{i}" for i in range(6)], periods=160, seed=1), market="cn", freq="1d")
    return root


def tiny_cfg(store, run_dir, **train):
    t = {"max_steps": 6, "batch_size": 4, "eval_every": 3, "eval_batches": 2, "checkpoint_every": 3,
         "log_every": 2, "warmup_steps": 2}
    t.update(train)
    return parse_config({"run_dir": str(run_dir), "model": TINY_MODEL, "tokenizer": {"n_coarse": 64, "n_fine": 64},
                         "data": {"store": str(store), "window_bars": 16, "valid_fraction": 0.25}, "train": t})


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="lr_typo"):
        parse_config({"train": {"lr_typo": 1}})
    with pytest.raises(ConfigError, match="window_bars"):
        parse_config({"model": {"size": "mini", "max_bars": 8}, "data": {"window_bars": 16}})
    with pytest.raises(ConfigError, match="unknown frequency"):
        parse_config({"data": {"sources": [{"freq": "2d"}]}})
    with pytest.raises(ConfigError, match="min_lr"):
        parse_config({"train": {"lr": 1e-4, "min_lr": 1e-3}})
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: {size: giant}\n")
    with pytest.raises(ConfigError, match="model.size"):
        load_config(tmp_path / "bad.yaml")


def test_shipped_configs_validate():
    from pathlib import Path

    for name in ("mini", "small", "base"):
        cfg = load_config(Path(__file__).parents[2] / "configs" / "pretrain" / f"{name}.yaml")
        assert cfg.model.size == name


def test_time_split_has_no_overlap(train_store):
    from quantlm.data.store import Store
    from quantlm.train.datasets import build_data

    cfg = tiny_cfg(train_store, "unused")
    tok, sampler, split = build_data(Store(train_store), cfg.data, cfg.tokenizer, seed=0)
    assert pd.Timestamp(tok.fit_end) == split
    (src,) = sampler.sources
    T = cfg.data.window_bars
    assert len(src.train_starts) and len(src.valid_starts)
    last_train = src.ts[src.train_starts + T - 1]
    first_valid = src.ts[src.valid_starts]
    assert last_train.max() <= split.value < first_valid.min()
    # A window never spans two symbols: its bars are strictly increasing in time.
    for starts in (src.train_starts, src.valid_starts):
        idx = starts[:, None] + np.arange(T)
        assert (np.diff(src.ts[idx], axis=1) > 0).all()
    # Batches are a pure function of (seed, step): the basis of exact resume.
    a, b = sampler.train_batch(5, 4), sampler.train_batch(5, 4)
    assert torch.equal(a["input_ids"], b["input_ids"]) and a["input_ids"].shape == (4, 1 + 2 * T)
    assert (a["input_ids"][:, 0] == tok.bos_id).all()


def test_resume_is_bit_identical(train_store, tmp_path):
    from safetensors.torch import load_file

    from quantlm.train.loop import pretrain

    straight = pretrain(tiny_cfg(train_store, tmp_path / "a"), progress=False)
    cfg_b = tiny_cfg(train_store, tmp_path / "b")
    pretrain(cfg_b, stop_after=3, progress=False)
    assert not (tmp_path / "b" / "model").exists()
    with pytest.raises(ConfigError, match="resume"):
        pretrain(cfg_b, progress=False)
    pretrain(cfg_b, resume=True, progress=False)
    files = sorted(p.name for p in (straight / "model").glob("*.safetensors"))
    assert "model.safetensors" in files
    for name in files:
        wa, wb = load_file(str(straight / "model" / name)), load_file(str(tmp_path / "b" / "model" / name))
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)
    # Run directory contents and metrics.
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert any("valid_loss" in r for r in rows) and any("tokens_per_s" in r for r in rows)
    assert (straight / "tb").exists() and (straight / "config.yaml").exists()
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]
    assert (straight / "model" / "tokenizer" / "tokenizer.json").exists()


def test_fpa_and_accum_run(train_store, tmp_path):
    from quantlm.train.loop import pretrain

    cfg = tiny_cfg(train_store, tmp_path / "f", max_steps=2, grad_accum=2, eval_every=0, checkpoint_every=0)
    cfg = cfg.model_copy(update={"fpa": cfg.fpa.model_copy(update={"lambda0": 0.01})})
    run = pretrain(cfg, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("fpa_penalty" in r for r in rows)


def test_sources_mixed_by_weight(tmp_path):
    from quantlm.data.store import Store
    from quantlm.train.config import parse_config
    from quantlm.train.datasets import build_data

    st = Store(tmp_path / "store")
    st.write_bars(make_bars(symbols=["A1", "A2"], periods=80, seed=3), market="cn", freq="1d")
    st.write_bars(make_bars(symbols=["U1"], periods=80, seed=4), market="us", freq="1d")
    cfg = parse_config({"model": TINY_MODEL, "data": {"window_bars": 8, "valid_fraction": 0.25, "sources": [
        {"market": "cn", "weight": 3.0}, {"market": "us", "weight": 1.0}]}})
    _, sampler, _ = build_data(st, cfg.data, {"n_coarse": 64, "n_fine": 64}, seed=0)
    assert [s.name for s in sampler.sources] == ["cn/1d", "us/1d"]
    np.testing.assert_allclose(sampler.weights, [0.75, 0.25])
    b = sampler.train_batch(0, 64)
    assert b["input_ids"].shape == (64, 17)
    cfg_bad = parse_config({"model": TINY_MODEL, "data": {"window_bars": 8, "sources": [{"market": "crypto"}]}})
    with pytest.raises(ConfigError, match="no bars"):
        build_data(st, cfg_bad.data, {}, seed=0)
