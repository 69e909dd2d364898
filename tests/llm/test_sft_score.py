from __future__ import annotations

import numpy as np
import pytest

from quantlm.llm.serialize import Examples, PromptConfig, store_examples

CFG = PromptConfig(window_bars=8, max_prompt_tokens=512, max_text_chars=120)


@pytest.fixture(scope="module")
def examples(tiny_qwen, synth_store):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    ex = store_examples(synth_store, tok, start="2020-06-01", cfg=CFG, train_end="2020-06-30")
    return tok, ex


def test_loss_mask_covers_only_answer_tokens(examples):
    from quantlm.llm.sft import collate, encode

    tok, ex = examples
    ids, labels = encode(tok, ex.prompt[0], "sell")
    ans = tok("sell", add_special_tokens=False)["input_ids"]
    kept = [(i, y) for i, y in enumerate(labels) if y != -100]
    assert [y for _, y in kept] == ans and [i for i, _ in kept] == list(range(len(ids) - len(ans), len(ids)))
    ids2, mask, lab = collate([(ids, labels), encode(tok, ex.prompt[1][:50], "buy")], tok.pad_token_id)
    assert (lab[mask == 0] == -100).all() and int((lab != -100).sum()) == len(ans) + len(
        tok("buy", add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("fixture", ["tiny_qwen", "tiny_llama"])
def test_frozen_bottom_layers_unchanged_after_a_step(fixture, request, examples):
    from quantlm.llm.sft import SFTSettings, add_lora, load_base, train

    _, ex = examples
    tok, model = load_base(request.getfixturevalue(fixture))
    s = SFTSettings(freeze_bottom=1, steps=2, batch_size=4, lr=1e-2)
    model = add_lora(model, s)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert not any(".layers.0." in k for k, v in model.named_parameters() if v.requires_grad)
    assert any(".layers.1." in k and "lora_B" in k for k, v in model.named_parameters() if v.requires_grad)
    train(model, tok, Examples(ex.symbol[:8], ex.ts[:8], ex.prompt[:8], ex.answer[:8]), s)
    after = dict(model.named_parameters())
    for k, v in before.items():
        if ".layers.0." in k or "lora" not in k:
            assert torch_equal(v, after[k]), k
    assert any(not torch_equal(v, after[k]) for k, v in before.items() if ".layers.1." in k and "lora" in k)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_adapter_saved_and_reloaded_gives_identical_scores(tiny_qwen, synth_store, tmp_path):
    from quantlm.llm.score import score_store
    from quantlm.llm.sft import SFTSettings, run_sft

    info = run_sft(tiny_qwen, synth_store, "2020-06-30", tmp_path / "run", SFTSettings(steps=2, batch_size=4),
                   CFG, start="2020-06-22", merge=True)
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists() and info["examples"] > 0
    a = score_store(tmp_path / "run", synth_store, start="2020-07-01", end="2020-07-01", batch_size=5)
    b = score_store(tmp_path / "run" / "adapter", synth_store, start="2020-07-01", end="2020-07-01", base=tiny_qwen,
                    batch_size=3)
    m = score_store(tmp_path / "run" / "merged", synth_store, start="2020-07-01", end="2020-07-01", batch_size=5)
    assert len(a) > 0 and list(a.columns) == ["symbol", "ts", "score"]
    np.testing.assert_allclose(a["score"], b["score"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(a["score"], m["score"], rtol=0, atol=1e-4)
    assert a["score"].std() > 0


def test_multi_token_answers_match_full_forward(tiny_llama, examples):
    import torch
    from transformers import AutoModelForCausalLM

    from quantlm.llm.score import answer_logprobs

    tok, ex = examples
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    prompts = [ex.prompt[0], ex.prompt[1][:200]]
    lp = answer_logprobs(model, tok, prompts, batch_size=2)
    for i, p in enumerate(prompts):
        for j, a in enumerate(("sell", "hold", "buy")):
            pi = tok(p, add_special_tokens=False)["input_ids"]
            ai = tok(a, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([pi + ai])).logits[0].log_softmax(-1)
            ref = sum(float(logits[len(pi) - 1 + k, t]) for k, t in enumerate(ai))
            assert abs(lp[i, j] - ref) < 1e-4


def test_dpo_prefers_the_realised_outcome_and_scores(tiny_qwen, synth_store, tmp_path):
    import json

    from typer.testing import CliRunner

    from quantlm.cli import app
    from quantlm.llm.dpo import preference_pairs
    from quantlm.llm.score import score_store
    from quantlm.llm.sft import SFTSettings, run_sft

    run_sft(tiny_qwen, synth_store, "2020-06-30", tmp_path / "sft", SFTSettings(steps=2, batch_size=4), CFG,
            start="2020-06-15")
    res = CliRunner().invoke(app, ["llm", "dpo", "--model", str(tmp_path / "sft"), "--store", str(synth_store.root),
                                   "--train-end", "2020-06-30", "--start", "2020-06-15", "--out", str(tmp_path / "dpo"),
                                   "--steps", "15", "--batch-size", "8", "--lr", "5e-3"])
    assert res.exit_code == 0, (res.output, res.exception)
    d = json.loads((tmp_path / "dpo" / "llm.json").read_text())["dpo"]
    assert d["pairs"] > 20 and d["last_loss"] < d["first_loss"]
    assert d["mean_margin_after"] > d["mean_margin_before"] + 0.05  # what DPO optimises, on its pairs
    a = score_store(tmp_path / "sft", synth_store, start="2020-07-01", end="2020-07-01")
    b = score_store(tmp_path / "dpo", synth_store, start="2020-07-01", end="2020-07-01")
    assert len(a) == len(b) > 0 and not np.allclose(a["score"], b["score"])
    assert not list((tmp_path / "dpo" / "adapter").glob("model.safetensors"))
    ex = Examples(["A", "B", "C", "D"], [0, 0, 0, 0], ["p"] * 4, ["buy", "sell", "hold", "hold +5bp"],
                  [0.01, -0.01, -0.002, 0.001])
    assert [r for _, _, r in preference_pairs(ex)] == ["sell", "buy", "buy", "sell"]


def test_qlora_refused_without_a_cuda_gpu(tiny_qwen):
    from quantlm.llm.sft import load_base

    with pytest.raises(ValueError, match="QLoRA \\(4-bit\\) needs a CUDA GPU"):
        load_base(tiny_qwen, "cpu", qlora=True)
