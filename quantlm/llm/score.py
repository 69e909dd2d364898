"""Scores of a (fine-tuned) causal LM: score = log P("buy") - log P("sell") as the answer after the prompt.

The answer is constrained to buy / hold / sell (each tokenised on its own, as in training); the
score is the log-probability difference of the two, so it is the same under the three-way
normalisation. Prompts are batched, left-padded with explicit position ids; one forward pass over
the prompts (KV cache kept) gives every answer's first token, and answers of several tokens are
continued from a copy of the cache. Output: the Scores table (symbol, ts, score) that
`quantlm backtest --signals` reads.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.llm.serialize import ANSWERS, PromptConfig


def load_model(model_dir, base=None, device: str = "cpu"):
    """(tokenizer, model, prompt config) from a run folder (`llm sft --out`), an adapter or a model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = Path(model_dir)
    if (d / "adapter").is_dir():
        d = d / "adapter"
    found = [p / "llm.json" for p in (d, d.parent) if (p / "llm.json").exists()]  # the run's prompt settings
    info = json.loads(found[0].read_text()) if found else {}
    cfg = PromptConfig(**info["prompt"]) if "prompt" in info else PromptConfig()
    if (d / "adapter_config.json").exists():
        from peft import PeftModel

        base = base or info.get("base") or json.loads((d / "adapter_config.json").read_text())["base_model_name_or_path"]
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, d)
        tok = AutoTokenizer.from_pretrained(d)
    else:
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(d)
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok, model.to(device).eval(), cfg


def answer_logprobs(model, tokenizer, prompts: list[str], batch_size: int = 16) -> np.ndarray:
    """float64 [n, 3]: log P(answer | prompt) of sell, hold, buy."""
    import torch

    from quantlm.llm.blocks import pad_id

    pad = pad_id(tokenizer)
    ans = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in ANSWERS]
    device = next(model.parameters()).device
    out = np.zeros((len(prompts), len(ANSWERS)))
    for b0 in range(0, len(prompts), batch_size):
        enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[b0:b0 + batch_size]]
        n = max(len(x) for x in enc)
        ids = torch.full((len(enc), n), pad, dtype=torch.long)
        mask = torch.zeros((len(enc), n), dtype=torch.long)
        for i, x in enumerate(enc):
            ids[i, n - len(x):] = torch.tensor(x)
            mask[i, n - len(x):] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        with torch.no_grad():
            res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
            first = torch.log_softmax(res.logits[:, -1].float(), -1)
            for j, a in enumerate(ans):
                lp = first[:, a[0]].clone()
                if len(a) > 1:
                    k = len(a) - 1
                    cont = torch.tensor([a[:-1]], device=device).expand(len(enc), k)
                    m2 = torch.cat([mask, torch.ones((len(enc), k), dtype=mask.dtype, device=device)], 1)
                    p2 = pos[:, -1:] + 1 + torch.arange(k, device=device)
                    r2 = model(input_ids=cont, attention_mask=m2, position_ids=p2,
                               cache=copy.deepcopy(res.cache), use_cache=True)
                    logp = torch.log_softmax(r2.logits.float(), -1)
                    lp = lp + logp.gather(-1, torch.tensor([a[1:]], device=device).expand(len(enc), k)[..., None]
                                          )[..., 0].sum(1)
                out[b0 + np.arange(len(enc)), j] = lp.double().cpu().numpy()
    return out


def score_store(model_dir, store, start=None, end=None, base=None, batch_size: int = 16,
                device: str = "cpu") -> pd.DataFrame:
    """The Scores table (symbol, ts, score) for every (symbol, ts) with start <= ts <= end."""
    from quantlm.llm.serialize import store_examples

    tok, model, cfg = load_model(model_dir, base=base, device=device)
    ex = store_examples(store, tok, start=start, end=end, cfg=cfg)
    lp = answer_logprobs(model, tok, ex.prompt, batch_size=batch_size) if len(ex) else np.zeros((0, 3))
    return pd.DataFrame({"symbol": np.asarray(ex.symbol, dtype=object), "ts": pd.DatetimeIndex(ex.ts),
                         "score": lp[:, ANSWERS.index("buy")] - lp[:, ANSWERS.index("sell")]})
