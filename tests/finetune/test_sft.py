"""Supervised fine-tuning from the store: end to end, leakage, LoRA merge, freezing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from quantlm.finetune import SFTConfig, TraderModel, TraderSpec, score_model, train_sft  # noqa: E402
from quantlm.finetune.config import LoraConfig  # noqa: E402
from quantlm.finetune.lora import apply_lora, freeze_bottom, merge_lora  # noqa: E402
from quantlm.model.build import MarketGPT  # noqa: E402

BASE = {"steps": 4, "batch_size": 8, "window_bars": 24, "warm": 8, "valid_sessions": 40, "eval_every": 2,
        "warmup_steps": 1, "lr": 3e-3}
FROZEN_1 = ("lm.model.embed_tokens.", "weekday_emb.", "slot_emb.", "lm.model.layers.0.")


def _cfg(**kw) -> SFTConfig:
    return SFTConfig(**(BASE | kw))


@pytest.fixture(scope="module")
def runs(ft_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    return {text: train_sft(_cfg(text=text), ft_env.store, root / f"text{int(text)}", ft_env.pretrained,
                            ft_env.train_end, seed=0) for text in (True, False)}


def _state(model_dir) -> dict[str, torch.Tensor]:
    return TraderModel.load(model_dir).state_dict()


@pytest.mark.parametrize("text", [True, False])
def test_train_sft_end_to_end(runs, ft_env, text):
    run = runs[text]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_step"] in (2, 4) and "valid_rank_ic" in metrics
    assert np.isfinite(metrics["valid_rank_ic"]) and metrics["train_end"] == ft_env.train_end
    assert (run / "config.json").exists()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # log_every 10 > steps: one training row at the last step; evaluations at steps 2 and 4
    assert [r["step"] for r in rows] == [2, 4] and "loss" in rows[1] and "valid_rank_ic" in rows[0]
    model = TraderModel.load(run / "model")
    assert (model.spec.d_text > 0) == text and model.spec.train_end == ft_env.train_end
    scores = score_model(run / "model", ft_env.store, "2020-10-09", "2020-10-30")
    assert len(scores) > 0 and scores["score"].notna().all()
    assert scores["ts"].min() >= pd.Timestamp("2020-10-09")


def test_text_changes_the_model(runs):
    a, b = TraderModel.load(runs[True] / "model"), TraderModel.load(runs[False] / "model")
    assert a.text_proj is not None and b.text_proj is None


def test_no_leakage_from_bars_and_texts_after_train_end(runs, ft_env, tmp_path):
    """Bars and texts after train_end rewritten (and new texts added): bit-identical weights. Control: texts
    before train_end rewritten change the weights (the text channel is live)."""
    from tests.finetune.conftest import perturbed_copy

    st = perturbed_copy(ft_env.store, tmp_path / "late", ft_env.train_end)
    start = pd.Timestamp(ft_env.train_end) + pd.Timedelta(days=1)
    assert not np.allclose(st.bars(start=start)["close"], ft_env.store.bars(start=start)["close"])
    run = train_sft(_cfg(text=True), st, tmp_path / "run", ft_env.pretrained, ft_env.train_end, seed=0)
    a, b = _state(runs[True] / "model"), _state(run / "model")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    early = perturbed_copy(ft_env.store, tmp_path / "early", ft_env.train_end, texts_before=True)
    c = _state(train_sft(_cfg(text=True), early, tmp_path / "control", ft_env.pretrained, ft_env.train_end) / "model")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_freeze_bottom_freezes_exactly_embeddings_and_bottom_layers(ft_env):
    model = TraderModel(MarketGPT.load(ft_env.pretrained), TraderSpec())
    freeze_bottom(model, 1)
    names = [n for n, _ in model.named_parameters()]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n in names if n.startswith(tuple("trunk." + p for p in FROZEN_1))}
    assert any(n.startswith("trunk.lm.model.layers.1.") for n in names) and frozen
    with pytest.raises(ValueError, match="2 layers"):
        freeze_bottom(model, 3)


def test_freeze_bottom_run_keeps_bottom_weights(ft_env, tmp_path):
    run = train_sft(_cfg(text=False, freeze_bottom=1), ft_env.store, tmp_path / "run", ft_env.pretrained,
                    ft_env.train_end)
    init = MarketGPT.load(ft_env.pretrained).state_dict()
    trunk = TraderModel.load(run / "model").trunk.state_dict()
    for k, v in init.items():
        if k.startswith(FROZEN_1):
            assert torch.equal(trunk[k], v), k
    assert not torch.equal(trunk["lm.model.layers.1.mlp.up_proj.weight"], init["lm.model.layers.1.mlp.up_proj.weight"])


def test_lora_run_changes_only_adapted_weights_and_saves_plain_model(ft_env, tmp_path):
    cfg = _cfg(text=False, freeze_bottom=1, lora={"enabled": True, "rank": 4, "alpha": 8.0})
    run = train_sft(cfg, ft_env.store, tmp_path / "run", ft_env.pretrained, ft_env.train_end)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["trainable_params"] < metrics["total_params"]
    init = MarketGPT.load(ft_env.pretrained).state_dict()
    model = TraderModel.load(run / "model")
    trunk = model.trunk.state_dict()
    assert trunk.keys() == init.keys()  # merged: no lora_A / lora_B / base_layer keys
    assert not any(type(m).__module__.startswith("peft") for m in model.modules())
    targets = set(LoraConfig().target_modules)
    changed = {k for k in init if not torch.equal(trunk[k], init[k])}
    assert changed and all(k.startswith("lm.model.layers.1.") and k.split(".")[-2] in targets for k in changed)


def test_lora_merge_keeps_outputs(ft_env, tmp_path):
    from quantlm.finetune.data import build_trader_data
    from quantlm.tokenize import KlineTokenizer

    torch.manual_seed(0)
    tok = KlineTokenizer.load(ft_env.pretrained / "tokenizer")
    model = TraderModel(MarketGPT.load(ft_env.pretrained), TraderSpec(window_bars=24))
    freeze_bottom(model, 1)
    peft_model = apply_lora(model, LoraConfig(enabled=True, rank=4), 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05)
    data = build_trader_data(ft_env.store, tok, text=False, end=ft_env.train_end)
    batch = {k: torch.from_numpy(v) for k, v in data.gather(np.array([0, 100, 300]), 24, tok.bos_id).items()}
    model.eval()
    with torch.no_grad():
        before = model(batch)
        merge_lora(model, peft_model)
        after = model(batch)
    assert not any(type(m).__module__.startswith("peft") for m in model.modules())
    for k in ("direction", "quantiles", "rank"):
        torch.testing.assert_close(after[k], before[k], atol=1e-5, rtol=1e-4)
    model.save(tmp_path / "m", tokenizer=tok)
    with torch.no_grad():
        again = TraderModel.load(tmp_path / "m").eval()(batch)
    for k in ("direction", "quantiles", "rank"):
        torch.testing.assert_close(again[k], after[k], atol=0, rtol=0)


def test_edited_texts_are_re_embedded(ft_env, tmp_path):
    from quantlm.data.store import Store
    from quantlm.finetune.data import build_trader_data
    from quantlm.tokenize import KlineTokenizer

    shutil.copytree(ft_env.store.root, tmp_path / "store")
    st = Store(tmp_path / "store")
    texts = st.read_table("texts")
    texts.loc[texts["symbol"] != "", "body"] = "Guidance cut sharply."
    st.write_table("texts", texts)
    tok = KlineTokenizer.load(ft_env.pretrained / "tokenizer")
    a = build_trader_data(ft_env.store, tok, end=ft_env.train_end).text
    b = build_trader_data(st, tok, end=ft_env.train_end).text
    assert not np.array_equal(a, b)


def test_text_feature_cache_follows_edits_of_the_same_store(ft_env, tmp_path):
    """The in-process text-feature cache returns what a fresh computation gives, and a write to the texts
    of the same store (same root) is seen by the next build, not served from the cache."""
    from quantlm.data.store import Store
    from quantlm.finetune import data as fdata
    from quantlm.tokenize import KlineTokenizer

    shutil.copytree(ft_env.store.root, tmp_path / "store")
    st = Store(tmp_path / "store")
    tok = KlineTokenizer.load(ft_env.pretrained / "tokenizer")
    first = fdata.build_trader_data(st, tok, end=ft_env.train_end)
    cached = fdata.build_trader_data(st, tok, end=ft_env.train_end)
    fdata._TEXT_CACHE.clear()
    fresh = fdata.build_trader_data(st, tok, end=ft_env.train_end)
    assert np.array_equal(first.text, cached.text) and np.array_equal(first.text, fresh.text)
    cached.text[:] = 0  # callers get their own copy
    assert np.array_equal(fdata.build_trader_data(st, tok, end=ft_env.train_end).text, first.text)
    texts = st.read_table("texts")
    texts["body"] = "Guidance cut sharply."
    st.write_table("texts", texts)
    from tests.finetune.conftest import fake_embed

    fake_embed(st)
    edited = fdata.build_trader_data(st, tok, end=ft_env.train_end)
    assert not np.array_equal(edited.text, first.text)
    fdata._TEXT_CACHE.clear()
    assert np.array_equal(fdata.build_trader_data(st, tok, end=ft_env.train_end).text, edited.text)


def test_sft_resume_is_bit_identical(ft_env, tmp_path):
    """A run stopped after its step-2 checkpoint and resumed ends with the same weights, best step and metrics."""
    cfg = _cfg(text=False, checkpoint_every=2, steps=6, eval_every=3)
    straight = train_sft(cfg, ft_env.store, tmp_path / "a", ft_env.pretrained, ft_env.train_end, seed=3)
    part = train_sft(cfg, ft_env.store, tmp_path / "b", ft_env.pretrained, ft_env.train_end, seed=3, stop_after=2)
    assert not (part / "model").exists() and (part / "checkpoints" / "step_00000002" / "trainer.json").exists()
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train_sft(cfg, ft_env.store, tmp_path / "b", ft_env.pretrained, ft_env.train_end, seed=3)
    resumed = train_sft(cfg, ft_env.store, tmp_path / "b", ft_env.pretrained, ft_env.train_end, seed=3, resume=True)
    a, b = _state(straight / "model"), _state(resumed / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (straight, resumed))
    assert ma["best_step"] == mb["best_step"] and ma["valid_rank_ic"] == mb["valid_rank_ic"]


def test_pretraining_that_reaches_the_validation_block_is_refused(ft_env, tmp_path):
    """The init's tokenizer records where pretraining ended (fit_end = its split); SFT refuses one that saw its
    validation block (less the label horizon) and accepts the fixture's (split 2020-03-31)."""
    from quantlm.finetune.common import pretrained_through

    assert pretrained_through(ft_env.pretrained) == pd.Timestamp("2020-03-31")
    late = tmp_path / "late"
    shutil.copytree(ft_env.pretrained, late)
    tok = json.loads((late / "tokenizer" / "tokenizer.json").read_text())
    tok["fit_end"] = "2020-08-20"  # inside [validation start - 10 sessions, train_end]
    (late / "tokenizer" / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ValueError, match="reaches into this stage's validation block"):
        train_sft(_cfg(text=False), ft_env.store, tmp_path / "run", late, ft_env.train_end)
    assert not (tmp_path / "run" / "model").exists()
