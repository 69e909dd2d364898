"""The sft + score path on families: Qwen2, Llama (built by quantlm.llm.tiny) and a GPT-2 style model
with no chat template and no pad token (a family the code was not written for)."""

from __future__ import annotations

import numpy as np
import pytest

from quantlm.llm.serialize import FALLBACK_TEMPLATE, PromptConfig, render

CFG = PromptConfig(window_bars=6, max_prompt_tokens=300, max_text_chars=80)


@pytest.mark.parametrize("fixture", ["tiny_qwen", "tiny_llama", "tiny_gpt2"])
def test_sft_and_score_on_each_family(fixture, request, synth_store, tmp_path):
    from transformers import AutoTokenizer

    from quantlm.llm.score import score_store
    from quantlm.llm.sft import SFTSettings, run_sft

    base = request.getfixturevalue(fixture)
    info = run_sft(base, synth_store, "2020-06-30", tmp_path / "run", SFTSettings(steps=2, batch_size=4, freeze_bottom=1,
                                                                                 lora_rank=2), CFG, start="2020-06-24")
    assert info["examples"] > 0 and info["tokens"]["prompt_tokens_max"] <= CFG.max_prompt_tokens
    a = score_store(tmp_path / "run", synth_store, start="2020-07-01", end="2020-07-02", batch_size=7)
    b = score_store(tmp_path / "run" / "adapter", synth_store, start="2020-07-01", end="2020-07-02", base=base,
                    batch_size=3)
    assert len(a) >= 8 and np.isfinite(a["score"]).all() and a["score"].std() > 0
    np.testing.assert_allclose(a["score"], b["score"], rtol=0, atol=1e-5)  # left padding does not change a score
    tok = AutoTokenizer.from_pretrained(base)
    if fixture == "tiny_gpt2":  # no chat template: the documented fallback
        assert tok.chat_template is None and render(tok, "S", "U") == FALLBACK_TEMPLATE.format(system="S", user="U")


def test_decoder_blocks_found_by_structure(tiny_qwen, tiny_gpt2):
    import torch
    from transformers import AutoModelForCausalLM

    from quantlm.llm.blocks import block_linears, decoder_layers

    path, blocks = decoder_layers(AutoModelForCausalLM.from_pretrained(tiny_qwen))
    assert path == "model.layers" and len(blocks) == 2
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    names, transposed = block_linears(gpt2, 1)
    assert decoder_layers(gpt2)[0] == "transformer.h" and transposed
    assert names and all(n.startswith("transformer.h.1.") for n in names)
    with pytest.raises(ValueError, match="freeze_bottom must be in \\[0, 1\\]"):
        block_linears(gpt2, 2)
    with pytest.raises(ValueError, match="cannot find the decoder layers of Sequential"):
        decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_template_without_system_turn_gets_system_text_in_the_user_turn(tiny_qwen):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}"
                         "<turn>{{ m['role'] }}\n{{ m['content'] }}</turn>\n{% endfor %}"
                         "{% if add_generation_prompt %}<turn>model\n{% endif %}")
    assert render(tok, "SYS", "bars") == "<turn>user\nSYS\n\nbars</turn>\n<turn>model\n"
