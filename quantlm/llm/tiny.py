"""Tiny local causal LMs (Qwen2 or Llama architecture) with a locally trained tokenizer: no model hub.

`make_tiny_model(folder)` trains a byte-level BPE (every byte is in the alphabet, so any text
encodes) on the serialisation alphabet, the answers, chat markup and some English finance words,
wraps it as a `PreTrainedTokenizerFast` with a Qwen-style chat template
(``<|im_start|>role\\n...<|im_end|>\\n``), builds a randomly initialised Qwen2ForCausalLM or
LlamaForCausalLM from a config and saves both with `save_pretrained`, so the ordinary
`AutoTokenizer.from_pretrained` / `AutoModelForCausalLM.from_pretrained` load the folder.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
FAMILIES = ("qwen2", "llama")

_CORPUS = [
    "buy hold sell buy hold sell answer: buy, hold or sell",
    "system user assistant You are a trader. bars oldest first news",
    "r+12 g-3 h25 v118 r-40 g+7 h130 v87 r+0 g+0 h0 v100",
    "0 1 2 3 4 5 6 7 8 9 10 25 50 75 100 125 150 200 + - ",
    "Market watch: exports slip shares rise fall profit loss guidance company said operations normal",
    "The company reported quarterly results above expectations; revenue grew and margins widened.",
    "Regulator opens investigation; management declined to comment. Output roughly flat month on month.",
]
# The serialisation's own words (the system prompt) and the integers 0..999 with their signs, so a bar
# line costs about 11 tokens (r + 12 Ġg - 3 Ġh 25 Ġv 118 newline) instead of ~17 with one token a digit.
# transformers loads a folder whose config says qwen2 with its Qwen2Tokenizer, whose pre-tokenizer
# splits digits one by one as the real Qwen2 models do: a tiny Qwen2 then costs ~17 tokens a bar (as a
# real Qwen2 would), a tiny Llama ~11. `llm sft` measures and reports it either way.
_NUMBERS = " ".join(f"r+{i} g-{i} h{i} v{i}" for i in range(1000))


def make_tokenizer(vocab_size: int = 1500):
    """A byte-level BPE `PreTrainedTokenizerFast` with the chat template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    from quantlm.llm.serialize import SYSTEM

    tok.train_from_iterator((_CORPUS + [SYSTEM]) * 20 + [_NUMBERS] * 5, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None,
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(folder, family: str = "qwen2", layers: int = 2, hidden: int = 48, heads: int = 4,
                    kv_heads: int = 2, intermediate: int = 96, vocab_size: int = 1500, max_positions: int = 2048,
                    seed: int = 0, embed_std: float = 0.2) -> Path:
    """Write a tiny `family` ("qwen2" or "llama") model and its tokenizer to `folder`; returns the folder.

    The (tied) embeddings are drawn with std `embed_std` instead of transformers' 0.02: a LoRA on the
    blocks cannot touch the tied output embeddings or the final norm, so the logits it can reach are
    bounded by |hidden| x |embedding|; at 0.02 the answer tokens stay below ~0.3% probability and the
    loss cannot fall (a pretrained model's embeddings are trained and larger). At 0.2 a LoRA learns.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} (expected {' or '.join(FAMILIES)})")
    folder = Path(folder)
    tok = make_tokenizer(vocab_size)
    common = dict(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, intermediate_size=intermediate,
                  max_position_embeddings=max_positions, tie_word_embeddings=True,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    with torch.no_grad():
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=embed_std)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
