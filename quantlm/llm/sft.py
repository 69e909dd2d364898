"""LoRA fine-tuning of any local Hugging Face causal LM on buy / hold / sell prompts.

- Adapters (peft LoRA) go on every linear layer inside the decoder blocks (found generically by
  `quantlm.llm.blocks`, so Qwen2, Llama, Mistral, Gemma, Phi, GPT-2 style ... need no list), in the
  blocks above the bottom `freeze_bottom` only; the base weights are frozen, so the bottom layers do
  not change at all.
- Loss on the answer tokens only: a sequence is prompt ids + answer ids (the answer word tokenised on
  its own, no special tokens, then " +35bp" when answers carry a return), labels are -100 on the
  prompt and padding.
- Training data: the store's point-in-time prompts up to `train_end` (`run_sft`), or `quantlm finetune
  export` JSON Lines (`run_sft(data=FILE)`).
- A plain torch loop (AdamW, seeded shuffling, right padding); fp32 on CPU, bf16 autocast on CUDA.
- Output: `adapter/` (adapter and tokenizer), `llm.json` (base folder, prompt settings, steps,
  losses) and, with merge=True, `merged/` (base + adapter as one plain model folder).
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantlm.llm.serialize import ANSWERS, Examples, PromptConfig

BAR_LINE = re.compile(r"r[+-]\d+ g[+-]\d+ h-?\d+ v\d+")  # one encoded bar (quantlm.llm.serialize)


@dataclass
class SFTSettings:
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    freeze_bottom: int = 0
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0


def answer_ids(tokenizer) -> dict[str, list[int]]:
    """Token ids of each answer, tokenised on its own."""
    return {a: tokenizer(a, add_special_tokens=False)["input_ids"] for a in ANSWERS}


def encode(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels): labels -100 everywhere but the answer's tokens.

    The answer's first word is tokenised on its own (as the scorer does), the rest (" +35bp") after it.
    """
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    word, _, rest = answer.partition(" ")
    a = tokenizer(word, add_special_tokens=False)["input_ids"]
    if rest:
        a = a + tokenizer(" " + rest, add_special_tokens=False)["input_ids"]
    return p + a, [-100] * len(p) + a


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int):
    import torch

    n = max(len(x) for x, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    return ids, mask, labels


def lora_targets(model) -> list[str]:
    """Leaf names of the linear layers inside the decoder blocks (e.g. q_proj, ..., down_proj)."""
    from quantlm.llm.blocks import block_linears

    return sorted({n.rsplit(".", 1)[-1] for n in block_linears(model)[0]})


def load_base(base, device: str = "cpu", qlora: bool = False):
    """(tokenizer, model) of a local folder through the Auto classes; a missing pad token becomes eos.

    fp32 weights; with qlora, the linear weights in 4-bit NF4 (bitsandbytes, bf16 compute) on a CUDA
    device, prepared for k-bit training by peft. QLoRA needs a CUDA GPU and bitsandbytes: elsewhere it
    raises ValueError before loading anything. (Not exercised by the CPU test suite.)
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = Path(base)
    if not (base / "config.json").exists():
        raise FileNotFoundError(f"{base}: not a Hugging Face model folder (no config.json)")
    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    if qlora:
        import importlib.util

        if not str(device).startswith("cuda") or not torch.cuda.is_available():
            raise ValueError("QLoRA (4-bit) needs a CUDA GPU: pass device='cuda' on a machine with one")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError("QLoRA (4-bit) needs bitsandbytes: pip install bitsandbytes")
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                               bnb_4bit_use_double_quant=True)
        index = torch.device(device).index or 0
        model = AutoModelForCausalLM.from_pretrained(base, quantization_config=q, device_map={"": index})
        return tok, prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    return tok, model


def add_lora(model, s: SFTSettings):
    """peft LoRA on every linear layer of the decoder blocks >= s.freeze_bottom (full module names, so no
    family-specific layer pattern is needed); everything else frozen."""
    from peft import LoraConfig, get_peft_model

    from quantlm.llm.blocks import block_linears

    names, transposed = block_linears(model, s.freeze_bottom)
    cfg = LoraConfig(r=s.lora_rank, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout, target_modules=names,
                     task_type="CAUSAL_LM", fan_in_fan_out=transposed)
    return get_peft_model(model, cfg)


def train(model, tokenizer, ex: Examples, s: SFTSettings, log=None) -> list[float]:
    """Train `model` (a peft model) for s.steps steps on the labelled examples; returns the losses."""
    import torch

    from quantlm.llm.blocks import pad_id

    data = [encode(tokenizer, p, a) for p, a in zip(ex.prompt, ex.answer) if a is not None]
    if not data:
        raise ValueError("no labelled example to train on")
    random.seed(s.seed)
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    model.train()
    order, pos, losses = rng.permutation(len(data)), 0, []
    for step in range(s.steps):
        if pos + s.batch_size > len(order):
            order, pos = rng.permutation(len(data)), 0
        batch = [data[i] for i in order[pos:pos + s.batch_size]]
        pos += s.batch_size
        ids, mask, labels = (t.to(device) for t in collate(batch, pad))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log and (step % 10 == 0 or step == s.steps - 1):
            log(f"step {step + 1}/{s.steps} loss {losses[-1]:.4f}")
    model.eval()
    return losses


def prompt_stats(tokenizer, ex: Examples, sample: int = 200) -> dict:
    """Token costs measured with `tokenizer` on up to `sample` prompts (spread evenly): tokens_per_bar
    (mean tokens of one encoded bar line with its newline), prompt_tokens_mean / _max, bars_mean."""
    from quantlm.llm.serialize import n_tokens, tokens_per_bar

    if len(ex) == 0:
        return {"tokens_per_bar": 0.0, "prompt_tokens_mean": 0.0, "prompt_tokens_max": 0, "bars_mean": 0.0}
    idx = np.unique(np.linspace(0, len(ex) - 1, min(sample, len(ex))).astype(int))
    lines = [[x for x in ex.prompt[i].splitlines() if BAR_LINE.fullmatch(x)] for i in idx]
    sizes = [n_tokens(tokenizer, ex.prompt[i]) for i in idx]
    return {"tokens_per_bar": round(float(np.mean([tokens_per_bar(tokenizer, x) for x in lines if x])), 3),
            "prompt_tokens_mean": round(float(np.mean(sizes)), 1), "prompt_tokens_max": int(max(sizes)),
            "bars_mean": round(float(np.mean([len(x) for x in lines])), 2)}


def run_sft(base, store, train_end, out, settings: SFTSettings | None = None, prompt: PromptConfig | None = None,
            start=None, merge: bool = False, device: str = "cpu", log=None, data=None, qlora: bool = False) -> dict:
    """Fine-tune `base` on labelled prompts and write `out` (see the module doc); returns llm.json's content.

    Examples: the store's point-in-time prompts of decision sessions start..train_end whose labels are
    known by train_end, or, with `data` (a `quantlm finetune export` JSON Lines file), that file's
    lines (store and train_end then unused). llm.json records the measured token costs
    (`prompt_stats`) under "tokens".
    """
    from quantlm.llm.serialize import examples_from_jsonl, store_examples

    s, cfg = settings or SFTSettings(), prompt or PromptConfig()
    out = Path(out)
    t0 = time.time()
    tok, model = load_base(base, device, qlora=qlora)
    if data is not None:
        ex = examples_from_jsonl(data, tok, cfg)
    else:
        if store is None or train_end is None:
            raise ValueError("give a store and train_end, or a JSON Lines file (data=)")
        ex = store_examples(store, tok, start=start, cfg=cfg, train_end=train_end)
    stats = prompt_stats(tok, ex)
    if log:
        log(f"{len(ex)} examples; {stats['tokens_per_bar']:.2f} tokens per bar, prompts "
            f"{stats['prompt_tokens_mean']:.0f} tokens on average (max {stats['prompt_tokens_max']}, "
            f"limit {cfg.max_prompt_tokens}), {stats['bars_mean']:.1f} bars")
    model = add_lora(model, s)
    losses = train(model, tok, ex, s, log=log)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "adapter")
    tok.save_pretrained(out / "adapter")
    if merge and qlora:
        raise ValueError("merge a QLoRA adapter into the full-precision base: load it without qlora and merge")
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        tok.save_pretrained(out / "merged")
    counts = {a: sum((x or "").split(" ")[0] == a for x in ex.answer) for a in ANSWERS}
    info = {"base": str(Path(base).resolve()), "train_end": None if data is not None else str(train_end),
            "data": None if data is None else str(Path(data).resolve()), "prompt": cfg.to_dict(),
            "settings": s.__dict__, "examples": len(ex), "answers": counts, "tokens": stats,
            "first_loss": losses[0], "last_loss": float(np.mean(losses[-10:])),
            "seconds": round(time.time() - t0, 2), "merged": merge, "qlora": qlora, "device": str(device)}
    (out / "llm.json").write_text(json.dumps(info, indent=2, default=str))
    return info
