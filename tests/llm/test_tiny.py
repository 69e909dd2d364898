from __future__ import annotations

import pytest


@pytest.mark.parametrize("fixture", ["tiny_qwen", "tiny_llama"])
def test_tiny_folder_loads_through_auto_classes(fixture, request):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = request.getfixturevalue(fixture)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == 2
    assert model.config.model_type == ("qwen2" if fixture == "tiny_qwen" else "llama")
    text = tok.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "r+12 v118"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nr+12 v118<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte-level: lossless
    assert tok.convert_tokens_to_ids("<|im_start|>") in ids
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    assert out.logits.shape == (1, len(ids), len(tok))
