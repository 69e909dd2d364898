"""LoRA fine-tuning of any local Hugging Face causal LM on buy / hold / sell prompts.

- Adapters (peft LoRA) go on every linear layer inside the decoder layers (found from the model's
  module names, so Qwen2, Llama, Mistral, ... need no list), in the layers above the bottom
  `freeze_bottom` only; the base weights are frozen, so the bottom layers do not change at all.
- Loss on the answer tokens only: a sequence is prompt ids + answer ids (the answer tokenised on its
  own, no special tokens), labels are -100 on the prompt and padding.
- A plain torch loop (AdamW, seeded shuffling, right padding); fp32 on CPU, bf16 autocast on CUDA.
- Output: `adapter/` (adapter and tokenizer), `llm.json` (base folder, prompt settings, steps,
  losses) and, with merge=True, `merged/` (base + adapter as one plain model folder).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantlm.llm.serialize import ANSWERS, Examples, PromptConfig


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
    """(input_ids, labels): labels -100 everywhere but the answer's tokens."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"]
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
    """Leaf names of the linear layers inside the decoder layers (e.g. q_proj, ..., down_proj)."""
    import torch

    names = set()
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in f".{name}":
            names.add(name.rsplit(".", 1)[-1])
    if not names:
        raise ValueError("no linear layers found inside the model's decoder layers")
    return sorted(names)


def load_base(base, device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32).to(device)
    return tok, model


def add_lora(model, s: SFTSettings):
    from peft import LoraConfig, get_peft_model

    n_layers = int(model.config.num_hidden_layers)
    if not 0 <= s.freeze_bottom < n_layers:
        raise ValueError(f"freeze_bottom must be in [0, {n_layers - 1}] for a model of {n_layers} layers, "
                         f"got {s.freeze_bottom}")
    cfg = LoraConfig(r=s.lora_rank, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                     target_modules=lora_targets(model), task_type="CAUSAL_LM",
                     layers_to_transform=list(range(s.freeze_bottom, n_layers)), layers_pattern="layers")
    return get_peft_model(model, cfg)


def train(model, tokenizer, ex: Examples, s: SFTSettings, log=None) -> list[float]:
    """Train `model` (a peft model) for s.steps steps on the labelled examples; returns the losses."""
    import torch

    data = [encode(tokenizer, p, a) for p, a in zip(ex.prompt, ex.answer) if a is not None]
    if not data:
        raise ValueError("no labelled example to train on")
    random.seed(s.seed)
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    model.train()
    order, pos, losses = rng.permutation(len(data)), 0, []
    for step in range(s.steps):
        if pos + s.batch_size > len(order):
            order, pos = rng.permutation(len(data)), 0
        batch = [data[i] for i in order[pos:pos + s.batch_size]]
        pos += s.batch_size
        ids, mask, labels = (t.to(device) for t in collate(batch, tokenizer.pad_token_id))
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


def run_sft(base, store, train_end, out, settings: SFTSettings | None = None, prompt: PromptConfig | None = None,
            start=None, merge: bool = False, device: str = "cpu", log=None) -> dict:
    """Fine-tune `base` on the store's labelled prompts up to train_end; writes `out` (see module doc)."""
    from quantlm.llm.serialize import store_examples

    s, cfg = settings or SFTSettings(), prompt or PromptConfig()
    out = Path(out)
    t0 = time.time()
    tok, model = load_base(base, device)
    ex = store_examples(store, tok, start=start, cfg=cfg, train_end=train_end)
    model = add_lora(model, s)
    losses = train(model, tok, ex, s, log=log)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "adapter")
    tok.save_pretrained(out / "adapter")
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        tok.save_pretrained(out / "merged")
    counts = {a: sum(x == a for x in ex.answer) for a in ANSWERS}
    info = {"base": str(Path(base).resolve()), "train_end": str(train_end), "prompt": cfg.to_dict(),
            "settings": s.__dict__, "examples": len(ex), "answers": counts, "first_loss": losses[0],
            "last_loss": float(np.mean(losses[-10:])), "seconds": round(time.time() - t0, 2),
            "merged": merge}
    (out / "llm.json").write_text(json.dumps(info, indent=2, default=str))
    return info
