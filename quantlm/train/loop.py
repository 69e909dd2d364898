"""Pretraining on the training core (`quantlm.train.core`): CPU, one GPU, or many (DDP / FSDP / DeepSpeed
via `accelerate launch`).

Run directory:

    config.yaml             the validated config this run uses
    tokenizer/              the KlineTokenizer fitted on the training period
    metrics.jsonl           one JSON object per log / validation event
    tb/                     TensorBoard event files
    checkpoints/step_N/     accelerate state (model, optimizer, RNG states) + trainer.json
    model/                  the final model folder (MarketGPT.save + tokenizer/ + train_config.yaml)

The tokenizer's `fit_end` is the split date, the last bar of any training window: fine-tuning
checks it against its validation block (`quantlm.finetune.common.pretrained_through`,
`split_rows`). Checkpoints are atomic and resume is exact (see the core).

The loss: the forward runs on the first 2T tokens of a [BOS, c_1, f_1, .., c_T, f_T] window and
predicts tokens 1..2T; the logits of the last position are never needed, so dropping that token
changes nothing in the loss and makes the sequence length 2T, a multiple of 8 when T is a multiple
of 4 (tensor-core friendly shapes on GPU).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from quantlm.model.build import MarketGPT, lm_loss, model_for_tokenizer
from quantlm.model.fpa import FPA
from quantlm.train.config import ConfigError, PretrainConfig, dump_config


def flops_per_token(model: MarketGPT, seq_len: int) -> float:
    """Training FLOPs per token: 6 N (N = all weights in matmuls) + 12 n_layer hidden T (attention)."""
    s = model.size
    n = model.num_params(non_embedding=True) + model.lm.lm_head.weight.numel()
    return 6.0 * n + 12.0 * s.n_layer * s.hidden * seq_len


def save_model_folder(model: MarketGPT, tok, cfg: PretrainConfig, path: Path) -> Path:
    """MarketGPT.save + tokenizer/ + train_config.yaml, written to a temp folder then swapped in."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    from quantlm.model.card import pretrain_card_info

    tok.save_pretrained(tmp / "tokenizer")  # before the model: its card describes the tokenizer
    dump_config(cfg, tmp / "train_config.yaml")
    model.save(tmp, card=pretrain_card_info(cfg))
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


@torch.no_grad()
def evaluate_windows(model, batches: list[dict], accelerator) -> dict[str, float]:
    """Validation loss (nats/token) and next-token accuracy over a fixed set of windows, all processes."""
    tot = torch.zeros(3, device=accelerator.device)  # loss sum, correct sum, target count
    for b in batches:
        ids = b["input_ids"].to(accelerator.device)
        loss, acc = lm_loss(model(ids, b["calendar_ids"].to(accelerator.device)).logits, ids)
        n = ids[:, 1:].numel()
        tot += torch.stack([loss.float() * n, acc.float() * n, torch.tensor(float(n), device=tot.device)])
    tot = accelerator.reduce(tot, reduction="sum")
    return {"valid_loss": float(tot[0] / tot[2].clamp(min=1)), "valid_acc": float(tot[1] / tot[2].clamp(min=1))}


def next_token_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy in nats/token, accuracy) of predicting tokens 1..L-1 from tokens 0..L-2."""
    ids, cal = batch["input_ids"], batch["calendar_ids"]
    logits = model(ids[:, :-1], cal[:, :-1]).logits  # [B, L-1, V]
    targets = ids[:, 1:]
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
    with torch.no_grad():
        acc = (logits.argmax(-1) == targets).float().mean()
    return loss, acc


def pretrain(cfg: PretrainConfig, store: str | Path | None = None, out: str | Path | None = None,
             max_steps: int | None = None, resume: bool = False, stop_after: int | None = None,
             progress: bool = True) -> Path:
    """Train a MarketGPT from the store; returns the run directory (final model in run_dir/model).

    max_steps overrides train.max_steps (schedule included); stop_after ends the run early at that
    step (schedule unchanged), leaving a checkpoint to resume from.
    """
    from accelerate.utils import set_seed

    from quantlm.data.store import Store
    from quantlm.tokenize import KlineTokenizer
    from quantlm.train.core import Trainer, TrainStage, list_checkpoints, process_state
    from quantlm.train.datasets import build_data

    if max_steps is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": max_steps})})
    if store is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"store": str(store)})})
    if out is not None:
        cfg = cfg.model_copy(update={"run_dir": str(out)})
    tc, run_dir = cfg.train, Path(cfg.run_dir)
    state = process_state()
    if resume and not list_checkpoints(run_dir):
        raise ConfigError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
    if not resume and list_checkpoints(run_dir):
        raise ConfigError(f"{run_dir} already holds checkpoints: pass --resume or choose another --out")
    set_seed(cfg.seed)

    # ---- data: split by time, tokenizer fitted on the training period (reused as saved on resume)
    st = Store(cfg.data.store) if cfg.data.store is not None else Store()
    tok = KlineTokenizer.load(run_dir / "tokenizer") if resume else None
    tok, windows, split = build_data(st, cfg.data, cfg.tokenizer, cfg.seed, tokenizer=tok)
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
        if not resume:
            tok.save(run_dir / "tokenizer")
    valid = windows.valid_batches(tc.eval_batches, tc.batch_size, state.process_index, state.num_processes)
    if tc.eval_batches and not valid:
        raise ConfigError(f"no validation window of {cfg.data.window_bars} bars after the split date "
                          f"{split.date()}: lower data.window_bars, move data.split earlier or set train.eval_batches: 0")

    def build(seed: int | None) -> MarketGPT:
        return model_for_tokenizer(cfg.model.size, tok, d_prefix=cfg.model.d_prefix, max_prefix=cfg.model.max_prefix,
                                   dropout=cfg.model.dropout, seed=seed, **cfg.model.overrides())

    model = build(cfg.seed)
    fpa = FPA(model, cfg.fpa.lambda0, cfg.fpa.gamma)

    def loss_fn(m, batch: dict[str, torch.Tensor], step: int):
        loss, acc = next_token_loss(m, batch)
        pen = fpa.penalty(step)
        if pen is None:
            return loss, {"acc": acc}
        return loss + pen, {"acc": acc, "lm_loss": loss.detach(), "fpa_penalty": pen.detach()}

    def evaluate(m) -> dict[str, float]:
        return evaluate_windows(m, valid, trainer.accelerator)

    seq_len = 1 + 2 * cfg.data.window_bars
    stage = TrainStage(
        name="pretrain", model=model, loss_fn=loss_fn,
        batch_at=lambda i: windows.train_batch(i, tc.batch_size), optim=tc.optim(),
        evaluate=evaluate if valid else None, eval_every=tc.eval_every, log_every=tc.log_every,
        checkpoint_every=tc.checkpoint_every, keep_checkpoints=tc.keep_checkpoints,
        tokens_per_batch=tc.batch_size * seq_len, flops_per_token=flops_per_token(model, seq_len),
        extra_state={"seed": cfg.seed},
        start_info={"params": model.num_params(False), "split": str(split.date()),
                    **{f"windows_{k}": v for k, v in windows.n_windows().items()}})
    trainer = Trainer(stage, run_dir, progress=progress)
    result = trainer.fit(resume=resume, stop_after=stop_after)
    if result.finished:
        full = trainer.full_state_dict()  # collective: gathers shards under FSDP / ZeRO-3
        if trainer.main:
            export = build(seed=None)
            export.load_state_dict(full)
            save_model_folder(export, tok, cfg, run_dir / "model")
    fpa.remove()
    trainer.close()
    return run_dir
