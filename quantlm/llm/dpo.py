"""Preference stage after LoRA SFT: DPO over realised outcomes, on the same LoRA adapter.

Pairs: every decision session up to `train_end` whose outcome is known by then (the cost-aware
direction of `quantlm.features.targets` at horizon 1, as in SFT). The chosen answer is the realised
direction; the rejected one is the trade that lost: `sell` when the outcome was `buy`, `buy` when it
was `sell`, and for `hold` the side the realised return went against (ret_1 >= 0: `sell`, else `buy`).

Loss (Rafailov et al. 2023): -log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r)))),
log-probabilities of the answer tokens after the prompt. The reference is the SFT model itself: its
answer log-probabilities are computed once before the first step (the policy starts equal to it),
so no second model is kept in memory. Only the LoRA parameters train; the base stays frozen.

Training runs on the one training core (`quantlm.train.core`, through `sft.fit_lora`): this module
keeps the loss above and the batches (micro-batch i: `batch_size` pairs drawn without replacement by
np.random.default_rng([seed, i]), a pure function of i, carrying their reference log-probabilities);
the core does AdamW over the LoRA parameters, the lr schedule, gradient accumulation, clipping, bf16
on CUDA, metrics.jsonl and checkpoints (trainable weights only) for an exact `resume`.

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
from quantlm.llm.sft import CoreSettings


@dataclass
class DPOSettings(CoreSettings):
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


def dpo_batch_at(chosen: list, rejected: list, ref_c, ref_r, batch_size: int, seed: int, pad: int):
    """Micro-batch i (a pure function of (seed, i)): chosen rows then rejected rows of the drawn pairs,
    right padded, with the pairs' reference log-probabilities ref_chosen / ref_rejected."""
    from quantlm.llm.sft import collate

    n = len(chosen)

    def batch_at(i: int) -> dict:
        idx = np.random.default_rng([seed, i]).choice(n, size=min(batch_size, n), replace=False)
        ids, mask, labels = collate([chosen[k] for k in idx] + [rejected[k] for k in idx], pad)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "ref_chosen": ref_c[idx],
                "ref_rejected": ref_r[idx]}

    return batch_at


def dpo_loss(beta: float):
    """The core's loss_fn: mean DPO loss of a batch; logs the share of pairs whose margin is positive."""
    import torch

    def loss_fn(model, batch: dict, step: int):
        lp = answer_sequence_logprob(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        n = batch["ref_chosen"].shape[0]
        margin = (lp[:n] - batch["ref_chosen"]) - (lp[n:] - batch["ref_rejected"])
        loss = -torch.nn.functional.logsigmoid(beta * margin).mean()
        return loss, {"margin_positive": (margin.detach() > 0).float().mean()}

    return loss_fn


def run_dpo(sft_run, store, train_end, out, settings: DPOSettings | None = None, start=None, device: str = "cpu",
            log=None, resume: bool = False, stop_after: int | None = None) -> dict:
    """DPO on an `llm sft` run folder's adapter over the store's realised outcomes up to train_end.

    `out` is also the core's run folder (metrics.jsonl, tb/, checkpoints/); `device` is where the model
    is loaded, training runs on the core's device. resume / stop_after as in `sft.run_sft` (a stopped
    run returns {"finished": False, "step": N} and writes no adapter).
    """
    import torch

    from quantlm.llm.blocks import pad_id
    from quantlm.llm.score import answer_logprobs
    from quantlm.llm.serialize import PromptConfig, store_examples
    from quantlm.llm.sft import encode, fit_lora

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
    batch_at = dpo_batch_at(chosen, rejected, ref_c, ref_r, s.batch_size, s.seed, pad_id(tok))
    extra = {"settings": asdict(s), "pairs": len(pairs), "sft_run": str(sft_run.resolve())}
    losses, finished = fit_lora("llm-dpo", model, dpo_loss(s.beta), batch_at, s.optim(s.steps, s.lr), s, out, extra,
                                resume=resume, stop_after=stop_after, log=log)
    if not finished:
        return {"finished": False, "step": stop_after}
    after = answer_logprobs(model, tok, [p for p, _, _ in pairs])
    gap = {k: np.array([lp[i, col[c]] - lp[i, col[r]] for i, (_, c, r) in enumerate(pairs)])
           for k, lp in (("before", ref), ("after", after))}
    model.save_pretrained(out / "adapter")
    tok.save_pretrained(out / "adapter")
    dpo = {**asdict(s), "sft_run": str(sft_run.resolve()), "train_end": str(train_end), "pairs": len(pairs),
           "first_loss": losses[0], "last_loss": float(np.mean(losses[-10:])),
           "chosen_preferred_before": float((gap["before"] > 0).mean()),
           "chosen_preferred_after": float((gap["after"] > 0).mean()),
           "mean_margin_before": float(gap["before"].mean()), "mean_margin_after": float(gap["after"].mean()),
           "seconds": round(time.time() - t0, 2), "resumed": resume}
    new_info = {**info, "dpo": dpo, "merged": False}
    (out / "llm.json").write_text(json.dumps(new_info, indent=2, default=str))
    return new_info


__all__ = ["DPOSettings", "answer_sequence_logprob", "dpo_batch_at", "dpo_loss", "preference_pairs", "run_dpo"]
