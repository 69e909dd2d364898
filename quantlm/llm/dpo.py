"""Preference stage after LoRA SFT: DPO over realised outcomes, on the same LoRA adapter.

Pairs: every decision session up to `train_end` whose outcome is known by then (the cost-aware
direction of `quantlm.features.targets` at horizon 1, as in SFT). The chosen answer is the realised
direction; the rejected one is the trade that lost: `sell` when the outcome was `buy`, `buy` when it
was `sell`, and for `hold` the side the realised return went against (ret_1 >= 0: `sell`, else `buy`).

Loss (Rafailov et al. 2023): -log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r)))),
log-probabilities of the answer tokens after the prompt. The reference is the SFT model itself: its
answer log-probabilities are computed once before the first step (the policy starts equal to it),
so no second model is kept in memory. Only the LoRA parameters train; the base stays frozen.

Why not TRL's DPOTrainer: it is not a dependency here (it brings `datasets` and a Trainer loop for
generated multi-token completions), while our answers are one constrained word, so the loss above is
a few lines on the batches `sft.collate` already builds, and runs on CPU in seconds for tiny models.

Output: `out/adapter/` (the updated adapter + tokenizer) and `out/llm.json` (the SFT run's settings,
so `quantlm llm score --model out` works, plus a "dpo" entry: pairs, beta, steps, losses, and on the
training pairs before / after: the share where the chosen answer is the more likely one and the mean
of log P(chosen) - log P(rejected)).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from quantlm.llm.serialize import ANSWERS, Examples


@dataclass
class DPOSettings:
    steps: int = 50
    batch_size: int = 8
    lr: float = 5e-4
    beta: float = 0.1
    seed: int = 0


def preference_pairs(ex: Examples) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) per labelled example; see the module docstring for the rule."""
    out = []
    for p, a, r in zip(ex.prompt, ex.answer, ex.ret or [None] * len(ex)):
        if a is None:
            continue
        word = a.split(" ")[0]
        if word == "buy":
            rej = "sell"
        elif word == "sell":
            rej = "buy"
        else:
            rej = "sell" if r is None or not r < 0 else "buy"
        out.append((p, word, rej))
    return out


def answer_sequence_logprob(model, ids, mask, labels):
    """Sum over each row of log P(token) at the positions whose label is not -100 (differentiable)."""
    import torch

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = labels[:, 1:]
    keep = target != -100
    lp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
    return (lp * keep).sum(1)


def _load_trainable(run_dir: Path, device: str):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = json.loads((run_dir / "llm.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(info["base"], dtype=torch.float32).to(device)
    model = PeftModel.from_pretrained(base, run_dir / "adapter", is_trainable=True)
    tok = AutoTokenizer.from_pretrained(run_dir / "adapter")
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return info, tok, model


def run_dpo(sft_run, store, train_end, out, settings: DPOSettings | None = None, start=None, device: str = "cpu",
            log=None) -> dict:
    """DPO on an `llm sft` run folder's adapter over the store's realised outcomes up to train_end."""
    import torch

    from quantlm.llm.blocks import pad_id
    from quantlm.llm.score import answer_logprobs
    from quantlm.llm.serialize import PromptConfig, store_examples
    from quantlm.llm.sft import collate, encode

    s = settings or DPOSettings()
    sft_run, out = Path(sft_run), Path(out)
    if not (sft_run / "adapter").is_dir() or not (sft_run / "llm.json").exists():
        raise FileNotFoundError(f"{sft_run}: not an `llm sft` run folder (needs adapter/ and llm.json)")
    t0 = time.time()
    info, tok, model = _load_trainable(sft_run, device)
    cfg = PromptConfig(**info["prompt"])
    ex = store_examples(store, tok, start=start, cfg=cfg, train_end=train_end)
    pairs = preference_pairs(ex)
    if not pairs:
        raise ValueError(f"no decision with a realised outcome known by {train_end} from {start}")
    model.eval()
    ref = answer_logprobs(model, tok, [p for p, _, _ in pairs])  # [n, 3]: the reference = the SFT policy
    col = {a: i for i, a in enumerate(ANSWERS)}
    ref_c = torch.tensor([ref[i, col[c]] for i, (_, c, _) in enumerate(pairs)], dtype=torch.float32)
    ref_r = torch.tensor([ref[i, col[r]] for i, (_, _, r) in enumerate(pairs)], dtype=torch.float32)
    chosen = [encode(tok, p, c) for p, c, _ in pairs]
    rejected = [encode(tok, p, r) for p, _, r in pairs]
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    pad = pad_id(tok)
    model.train()
    losses = []
    for step in range(s.steps):
        idx = rng.choice(len(pairs), size=min(s.batch_size, len(pairs)), replace=False)
        ids, mask, labels = (t.to(model.device) for t in collate([chosen[i] for i in idx] + [rejected[i] for i in idx], pad))
        lp = answer_sequence_logprob(model, ids, mask, labels)
        n = len(idx)
        margin = (lp[:n] - ref_c[idx].to(lp.device)) - (lp[n:] - ref_r[idx].to(lp.device))
        loss = -torch.nn.functional.logsigmoid(s.beta * margin).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log and (step % 10 == 0 or step == s.steps - 1):
            log(f"dpo step {step + 1}/{s.steps} loss {losses[-1]:.4f}")
    model.eval()
    after = answer_logprobs(model, tok, [p for p, _, _ in pairs])
    gap = {k: np.array([lp[i, col[c]] - lp[i, col[r]] for i, (_, c, r) in enumerate(pairs)])
           for k, lp in (("before", ref), ("after", after))}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "adapter")
    tok.save_pretrained(out / "adapter")
    dpo = {**asdict(s), "sft_run": str(sft_run.resolve()), "train_end": str(train_end), "pairs": len(pairs),
           "first_loss": losses[0], "last_loss": float(np.mean(losses[-10:])),
           "chosen_preferred_before": float((gap["before"] > 0).mean()),
           "chosen_preferred_after": float((gap["after"] > 0).mean()),
           "mean_margin_before": float(gap["before"].mean()), "mean_margin_after": float(gap["after"].mean()),
           "seconds": round(time.time() - t0, 2)}
    new_info = {**info, "dpo": dpo, "merged": False}
    (out / "llm.json").write_text(json.dumps(new_info, indent=2, default=str))
    return new_info


__all__ = ["DPOSettings", "answer_sequence_logprob", "preference_pairs", "run_dpo"]
