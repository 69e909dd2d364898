"""Reward, RL and distillation on the training core: exact resume per stage, and RL's portfolio reward
reads outcomes known by the last training session only."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from quantlm.finetune.distill import DistillConfig, train_distill  # noqa: E402
from quantlm.finetune.reward import RewardConfig, RewardModel, train_reward  # noqa: E402
from quantlm.finetune.rl import RLConfig, train_rl  # noqa: E402

TRAIN_END = "2020-09-30"
TINY = {"n_layer": 1, "hidden": 32, "n_head": 2, "ffn": 64, "max_bars": 32}
CROSS = {"batch_size": 2, "max_symbols": 12, "window_bars": 24, "warm": 8, "valid_sessions": 40, "lr": 1e-3,
         "warmup_steps": 1}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Synthetic store (12 stocks, 2019-2020), a tiny trunk and a 4-step SFT trader."""
    from quantlm.data.store import Store
    from quantlm.data.synth import SynthConfig, write_market
    from quantlm.finetune import SFTConfig, train_sft
    from quantlm.finetune.data import market_bars
    from quantlm.model.build import model_for_tokenizer
    from quantlm.tokenize import KlineTokenizer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("resume")
    store = Store(root / "store")
    write_market(store, SynthConfig(n_symbols=12, start="2019-01-02", end="2020-12-31", news=False))
    bars, _ = market_bars(store)
    tok = KlineTokenizer(n_coarse=64, n_fine=64).fit(bars, end="2020-03-31")
    model_for_tokenizer("mini", tok, seed=0, **TINY).save(root / "pre")
    tok.save(root / "pre" / "tokenizer")
    sft = train_sft(SFTConfig(steps=4, batch_size=8, window_bars=24, warm=8, text=False, valid_sessions=40,
                              eval_every=4, warmup_steps=1), store, root / "sft", root / "pre", TRAIN_END)
    return {"root": root, "store": store, "policy": sft / "model"}


def _weights(path, kind: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if kind == "reward":
        return RewardModel.load(path).state_dict()
    d = path / "model"
    return {f"{f.name}:{k}": v for f in sorted(d.rglob("*.safetensors")) for k, v in load_file(str(f)).items()}


def _straight_and_resumed(train, tmp_path, kind: str):
    a = train(tmp_path / "a", resume=False, stop_after=None)
    b = train(tmp_path / "b", resume=False, stop_after=2)
    assert not (b / "model").exists() and (b / "checkpoints").exists()
    with pytest.raises(ValueError, match="resume"):
        train(tmp_path / "b", resume=False, stop_after=None)
    train(tmp_path / "b", resume=True, stop_after=None)
    wa, wb = _weights(a, kind), _weights(b, kind)
    assert wa.keys() == wb.keys() and len(wa) > 0
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    return a, b


def test_reward_resume_is_bit_identical(env, tmp_path):
    cfg = RewardConfig(**CROSS, steps=4, pairs_per_session=16, eval_every=2, checkpoint_every=2)
    a, b = _straight_and_resumed(lambda out, **kw: train_reward(cfg, env["store"], out, env["policy"], TRAIN_END,
                                                                seed=1, **kw), tmp_path, "reward")
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert ma["pairwise_accuracy"] == mb["pairwise_accuracy"] and ma["pairs_train"] == mb["pairs_train"] > 0
    assert "baseline_cost_only_accuracy" in ma


@pytest.mark.parametrize("reward", ["portfolio", "realized"])
def test_rl_resume_is_bit_identical(env, tmp_path, reward):
    cfg = RLConfig(**CROSS, steps=4, eval_every=2, checkpoint_every=2, reward=reward, samples_per_state=3)
    a, _ = _straight_and_resumed(lambda out, **kw: train_rl(cfg, env["store"], out, env["policy"], None, TRAIN_END,
                                                            seed=2, **kw), tmp_path, "rl")
    m = json.loads((a / "metrics.json").read_text())
    assert isinstance(m["promoted"], bool) and m["promotion_reason"].startswith("RL ")
    for k in ("book_return", "book_turnover", "rank_ic"):
        assert np.isfinite(m["after"][k]), k
    assert np.isfinite(m["before"]["book_return_sft_score"]) and m["after"]["kl_ref"] > 0


@pytest.mark.parametrize("batches", ["cross_sections", "rows"])
def test_distill_resume_is_bit_identical(env, tmp_path, batches):
    cfg = DistillConfig(window_bars=12, mlp={"token_dim": 4, "bar_dim": 4, "hidden": 16, "layers": 1, "text_bars": 1},
                        warm=8, steps=4, batch_size=8, lr=1e-2, warmup_steps=1, valid_sessions=40, eval_every=2,
                        checkpoint_every=2, latency_symbols=0, batches=batches, max_symbols=4,
                        loss={"match_cross_section": 1.0})
    a, _ = _straight_and_resumed(lambda out, **kw: train_distill(cfg, env["store"], out, env["policy"], TRAIN_END,
                                                                 seed=3, **kw), tmp_path, "distill")
    rows = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["match_cross_section"]) for r in rows if "match_cross_section" in r)
    assert any("match_cross_section" in r for r in rows)


def test_portfolio_rl_ignores_outcomes_after_the_last_training_session(env, tmp_path):
    """Prices after the last training session perturbed: bit-identical RL weights (the validation sees it)."""
    from quantlm.data.store import Store

    cfg = RLConfig(**CROSS, steps=3, eval_every=3, reward="portfolio", samples_per_state=3)
    a = train_rl(cfg, env["store"], tmp_path / "a", env["policy"], None, TRAIN_END, seed=4)
    last = pd.Timestamp(json.loads((a / "metrics.json").read_text())["last_train_session"])
    shutil.copytree(env["store"].root, tmp_path / "store2")
    store2 = Store(tmp_path / "store2")
    bars = store2.bars(freq="1d")
    late = bars[bars["ts"] > last].copy()
    f = np.exp(np.random.default_rng(0).normal(0, 0.05, len(late)))
    for col in ("open", "high", "low", "close"):
        late[col] = late[col] * f
    store2.write_bars(late, market="cn", freq="1d", replace=True)
    b = train_rl(cfg, store2, tmp_path / "b", env["policy"], None, TRAIN_END, seed=4)
    wa, wb = _weights(a, "rl"), _weights(b, "rl")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert ma["after"]["book_return"] != mb["after"]["book_return"]  # validation did see the change
