"""Pretraining loop (accelerate): CPU, one GPU, or many (DDP / FSDP / DeepSpeed via `accelerate launch`).

Run directory:

    config.yaml             the validated config this run uses
    tokenizer/              the KlineTokenizer fitted on the training period
    metrics.jsonl           one JSON object per log / validation event
    tb/                     TensorBoard event files
    checkpoints/step_N/     accelerate state (model, optimizer, scheduler, RNG states) + trainer.json
    model/                  the final model folder (MarketGPT.save + tokenizer/ + train_config.yaml)

Checkpoints are atomic: written to checkpoints/.tmp-step_N, then renamed with os.replace. Resume
loads the newest complete one; the data sampler is stateless (batch = f(seed, step, rank)), so the
step is its position, and on CPU a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from quantlm.model.build import MarketGPT, lm_loss, model_for_tokenizer
from quantlm.model.fpa import FPA
from quantlm.train.config import ConfigError, PretrainConfig, TrainConfig, dump_config


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warmup over warmup_steps to lr, then cosine decay to min_lr at max_steps (per optimizer step)."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = min(1.0, (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps))
    return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tc.lr - tc.min_lr)


def make_optimizer(model: torch.nn.Module, tc: TrainConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (dim >= 2) only, as nanoGPT; fused kernel on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": tc.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), fused=fused)


def flops_per_token(model: MarketGPT, seq_len: int) -> float:
    """Training FLOPs per token: 6 N (N = all weights in matmuls) + 12 n_layer hidden T (attention)."""
    s = model.size
    n = model.num_params(non_embedding=True) + model.lm.lm_head.weight.numel()
    return 6.0 * n + 12.0 * s.n_layer * s.hidden * seq_len


class RunLog:
    """metrics.jsonl + TensorBoard (main process only)."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.path = run_dir / "metrics.jsonl"
            self.writer = SummaryWriter(str(run_dir / "tb"))

    def write(self, step: int, **values: float) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _checkpoints(run_dir: Path) -> list[Path]:
    d = run_dir / "checkpoints"
    return sorted(p for p in d.glob("step_*") if (p / "trainer.json").exists()) if d.exists() else []


def save_checkpoint(accelerator, run_dir: Path, step: int, keep: int, extra: dict) -> Path:
    """Atomic: accelerate state into checkpoints/.tmp-step_N, trainer.json last, then os.replace."""
    ckdir = run_dir / "checkpoints"
    final, tmp = ckdir / f"step_{step:08d}", ckdir / f".tmp-step_{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer.json").write_text(json.dumps({"step": step, **extra}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in _checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def save_model_folder(model: MarketGPT, tok, cfg: PretrainConfig, path: Path) -> Path:
    """MarketGPT.save + tokenizer/ + train_config.yaml, written to a temp folder then swapped in."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    tok.save(tmp / "tokenizer")
    dump_config(cfg, tmp / "train_config.yaml")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


@torch.no_grad()
def evaluate(model, batches: list[dict], accelerator) -> dict[str, float]:
    """Validation loss (nats/token) and next-token accuracy over a fixed set of windows, all processes."""
    model.eval()
    tot = torch.zeros(3, device=accelerator.device)  # loss sum, correct sum, target count
    for b in batches:
        ids = b["input_ids"].to(accelerator.device)
        loss, acc = lm_loss(model(ids, b["calendar_ids"].to(accelerator.device)).logits, ids)
        n = ids[:, 1:].numel()
        tot += torch.stack([loss.float() * n, acc.float() * n, torch.tensor(float(n), device=tot.device)])
    model.train()
    tot = accelerator.reduce(tot, reduction="sum")
    return {"valid_loss": float(tot[0] / tot[2].clamp(min=1)), "valid_acc": float(tot[1] / tot[2].clamp(min=1))}


def pretrain(cfg: PretrainConfig, store: str | Path | None = None, out: str | Path | None = None,
             max_steps: int | None = None, resume: bool = False, stop_after: int | None = None,
             progress: bool = True) -> Path:
    """Train a MarketGPT from the store; returns the run directory (final model in run_dir/model).

    max_steps overrides train.max_steps (schedule included); stop_after ends the run early at that
    step (schedule unchanged), leaving a checkpoint to resume from.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from quantlm.data.store import Store
    from quantlm.tokenize import KlineTokenizer
    from quantlm.train.datasets import build_data

    if max_steps is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": max_steps})})
    if store is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"store": str(store)})})
    if out is not None:
        cfg = cfg.model_copy(update={"run_dir": str(out)})
    tc, run_dir = cfg.train, Path(cfg.run_dir)
    last_step = min(tc.max_steps, stop_after) if stop_after is not None else tc.max_steps

    accelerator = Accelerator(mixed_precision=tc.mixed_precision, step_scheduler_with_optimizer=False)
    main = accelerator.is_main_process
    if accelerator.distributed_type.value == "DEEPSPEED" and tc.grad_accum > 1:
        # DeepSpeed steps its engine inside backward(); quantlm's micro-batch loop would step every micro-batch.
        raise ConfigError("with DeepSpeed set train.grad_accum: 1 (raise train.batch_size or add GPUs instead)")
    ckpts = _checkpoints(run_dir)
    if resume and not ckpts:
        raise ConfigError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
    if not resume and ckpts:
        raise ConfigError(f"{run_dir} already holds checkpoints: pass --resume or choose another --out")
    set_seed(cfg.seed)

    # ---- data: split by time, tokenizer fitted on the training period (reused as saved on resume)
    st = Store(cfg.data.store) if cfg.data.store is not None else Store()
    tok = KlineTokenizer.load(run_dir / "tokenizer") if resume else None
    tok, sampler, split = build_data(st, cfg.data, cfg.tokenizer, cfg.seed, tokenizer=tok)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
        if not resume:
            tok.save(run_dir / "tokenizer")
    valid = sampler.valid_batches(tc.eval_batches, tc.batch_size, accelerator.process_index,
                                  accelerator.num_processes)
    if tc.eval_batches and not valid:
        raise ConfigError(f"no validation window of {cfg.data.window_bars} bars after the split date "
                          f"{split.date()}: lower data.window_bars, move data.split earlier or set train.eval_batches: 0")

    # ---- model, optimizer, schedule
    def build(seed: int | None) -> MarketGPT:
        return model_for_tokenizer(cfg.model.size, tok, d_prefix=cfg.model.d_prefix, max_prefix=cfg.model.max_prefix,
                                   dropout=cfg.model.dropout, seed=seed, **cfg.model.overrides())

    model = build(cfg.seed)
    fpa = FPA(model, cfg.fpa.lambda0, cfg.fpa.gamma)
    optimizer = make_optimizer(model, tc, fused=accelerator.device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, tc) / tc.lr)
    if tc.compile:
        model.compile()
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    raw = accelerator.unwrap_model(model)
    step, tokens_seen = 0, 0
    if resume:
        accelerator.load_state(str(ckpts[-1]))
        state = json.loads((ckpts[-1] / "trainer.json").read_text())
        step, tokens_seen = int(state["step"]), int(state["tokens"])

    seq_len = 1 + 2 * cfg.data.window_bars
    tokens_per_step = tc.batch_size * tc.grad_accum * seq_len * accelerator.num_processes
    fpt = flops_per_token(raw, seq_len)
    runlog = RunLog(run_dir, main)
    if main and not resume:
        runlog.write(0, event="start", params=raw.num_params(False), split=str(split.date()),
                     **{f"windows_{k}": v for k, v in sampler.n_windows().items()})

    def checkpoint(s: int) -> None:
        save_checkpoint(accelerator, run_dir, s, tc.keep_checkpoints,
                        {"tokens": tokens_seen, "sampler": {"kind": "stateless", "seed": cfg.seed, "next_step": s}})

    bar = _progress(progress and main)
    task = bar.add_task("pretrain", total=last_step, completed=step, info="")
    model.train()
    t0, tok_window, loss_acc = time.perf_counter(), 0, torch.zeros(2)
    with bar:
        while step < last_step:
            for micro in range(tc.grad_accum):
                b = sampler.train_batch(step * tc.grad_accum + micro, tc.batch_size, accelerator.process_index)
                ids, cal = b["input_ids"].to(accelerator.device), b["calendar_ids"].to(accelerator.device)
                sync = nullcontext() if micro == tc.grad_accum - 1 else accelerator.no_sync(model)
                with sync:
                    loss, acc = lm_loss(model(ids, cal).logits, ids)
                    pen = fpa.penalty(step)
                    total = loss if pen is None else loss + pen
                    accelerator.backward(total / tc.grad_accum)
                loss_acc += torch.stack([loss.detach().float().cpu(), acc.float().cpu()]) / tc.grad_accum
            if tc.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            tok_window += tokens_per_step

            if step % tc.log_every == 0 or step == last_step:
                n_logged = tc.log_every if step % tc.log_every == 0 else (step % tc.log_every)
                dt = time.perf_counter() - t0
                mean = accelerator.reduce(loss_acc.to(accelerator.device), reduction="mean").cpu() / n_logged
                tps = tok_window / max(dt, 1e-9)
                row = {"loss": float(mean[0]), "acc": float(mean[1]), "lr": scheduler.get_last_lr()[0],
                       "tokens_per_s": tps, "tflops": tps * fpt / 1e12, "tokens": tokens_seen}
                if pen is not None:
                    row["fpa_penalty"] = float(pen.detach())
                runlog.write(step, **row)
                bar.update(task, completed=step, info=f"loss {row['loss']:.4f}  {tps:,.0f} tok/s")
                t0, tok_window, loss_acc = time.perf_counter(), 0, torch.zeros(2)
            if valid and ((tc.eval_every and step % tc.eval_every == 0) or step == tc.max_steps):
                runlog.write(step, **evaluate(model, valid, accelerator))
            if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or step == last_step:
                checkpoint(step)

    if step >= tc.max_steps:
        full = accelerator.get_state_dict(model)  # collective: gathers shards under FSDP / ZeRO-3
        if main:
            export = build(seed=None)
            export.load_state_dict({k: v.detach().cpu() for k, v in full.items()})
            save_model_folder(export, tok, cfg, run_dir / "model")
    accelerator.wait_for_everyone()
    runlog.close()
    accelerator.end_training()
    return run_dir


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=not enabled)
