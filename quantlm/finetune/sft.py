"""Supervised fine-tuning: a pretrained market GPT becomes a trader (direction, quantile and rank heads).

    train_sft(cfg, store, out, init, train_end) -> run_dir

- Reads bars (and texts) up to `train_end` only. The last `valid_sessions` sessions are held out:
  training windows end before them and use targets known by their start; the held-out bars are
  scored every `eval_every` steps (with their past as context) and the step with the best
  validation RankIC is kept.
- `init` is a pretrained model folder (pretrain run_dir/model) or a trader folder (warm start, e.g.
  the previous walk-forward fold; its feature normalisation is kept).
- Full fine-tuning, `freeze_bottom` N layers, or peft LoRA on the layers above them (merged on save).
- Run folder: config.json, metrics.jsonl (one row per logged step), metrics.json (summary), model/
  (a trader folder: `TraderModel.load`, `score_model`).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from quantlm.finetune.config import SFTConfig
from quantlm.finetune.data import FinetuneDataError, TraderData, WindowSampler, build_trader_data
from quantlm.finetune.lora import apply_lora, freeze_bottom, merge_lora, trainable_parameters
from quantlm.finetune.model import (
    LossWeights,
    TraderModel,
    TraderSpec,
    candle_features,
    is_trader_folder,
    numpy_batch,
    trader_losses,
)
from quantlm.finetune.score import predict_rows, rank_ic


def lr_at(step: int, cfg) -> float:
    """Linear warmup then cosine decay from cfg.lr to cfg.min_lr over cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, frac)))


def load_init(init: str | Path, from_scratch: bool = False, seed: int = 0):
    """(trunk MarketGPT or TraderModel, tokenizer) from a pretrained or trader folder."""
    from quantlm.model.build import MarketGPT, build_model
    from quantlm.tokenize import KlineTokenizer

    init = Path(init)
    if not (init / "tokenizer").exists():
        raise FinetuneDataError(f"{init}: not a pretrained model or trader folder (no tokenizer/ inside)")
    tok = KlineTokenizer.load(init / "tokenizer")
    if is_trader_folder(init):
        return TraderModel.load(init), tok
    trunk = MarketGPT.load(init)
    if from_scratch:
        trunk = build_model(trunk.size, trunk.vocab_size, trunk.n_weekdays, trunk.n_slots,
                            special_ids=trunk.special_ids, seed=seed)
    return trunk, tok


def split_rows(data: TraderData, train_end, valid_sessions: int) -> tuple[int, int, np.ndarray]:
    """(last training session index, train_end session index, validation rows)."""
    end = data.session_index(train_end)
    last_train = end - valid_sessions
    if last_train < 1:
        raise FinetuneDataError(f"train_end {pd.Timestamp(train_end).date()} leaves no training sessions before "
                                f"the {valid_sessions} validation sessions")
    # Validation bars need their h=1 target known by train_end: session <= end - 2.
    valid = np.flatnonzero((data.session > last_train) & (data.session <= end - 2))
    return last_train, end, valid


def evaluate_rows(model: TraderModel, data: TraderData, rows: np.ndarray, targets: dict, warm: int) -> dict:
    """Validation metrics on `rows`: RankIC of the score vs the 1-session return, direction accuracy."""
    res = predict_rows(model, data, rows, warm=warm, keep=("direction",))
    y = targets["ret"][rows, 0]
    d = targets["direction"][rows]
    ok = d >= 0
    acc = float((res["direction"][ok].argmax(-1) == d[ok]).mean()) if ok.any() else float("nan")
    return {"rank_ic": rank_ic(res["score"], y, data.session[rows]), "direction_accuracy": acc}


def build_trader(init_model, data: TraderData, cfg: SFTConfig, last_train: int, train_end, market: str,
                 ) -> TraderModel:
    """A TraderModel from a trunk (fresh heads, feature statistics of the training rows) or a trader."""
    if isinstance(init_model, TraderModel):
        init_model.spec.train_end = str(pd.Timestamp(train_end).date())
        if (init_model.spec.d_text > 0) != (data.text is not None):
            raise FinetuneDataError("warm start: the init trader and this config disagree on text inputs")
        return init_model
    train_rows = data.session <= last_train
    feats = candle_features(torch.from_numpy(data.features[train_rows])).double().numpy()
    mean, std = feats.mean(0), feats.std(0)
    std = np.where(std > 1e-6, std, 1.0)
    spec = TraderSpec(horizons=list(data.horizons), d_text=0 if data.text is None else int(data.text.shape[1]),
                      feature_mean=[float(x) for x in mean], feature_std=[float(x) for x in std], score=cfg.score,
                      window_bars=cfg.window_bars, text_half_life=cfg.text_half_life,
                      train_end=str(pd.Timestamp(train_end).date()), market=market)
    return TraderModel(init_model, spec)


def start_run(store, out: str | Path, threads: int | None, seed: int | None = None):
    """Common start of every post-training stage: torch threads, the Store, the run folder, the seed."""
    from quantlm.data.store import Store

    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if seed is not None:
        torch.manual_seed(seed)
    return (store if isinstance(store, Store) else Store(store)), out


def train_sft(cfg: SFTConfig, store, out: str | Path, init: str | Path, train_end, seed: int = 0,
              progress: bool = False) -> Path:
    """Fine-tune `init` on targets known by `train_end`; returns the run folder (model in run/model)."""

    t0 = time.time()
    store, out = start_run(store, out, cfg.threads, seed)
    init_model, tok = load_init(init, cfg.from_scratch, seed)
    market = store.meta().get("market") or "cn"
    data = build_trader_data(store, tok, cfg.targets, text=cfg.text, text_half_life=cfg.text_half_life,
                             market=market, end=train_end, rank_target=cfg.rank_target)
    last_train, _, valid_rows = split_rows(data, train_end, cfg.valid_sessions)
    model = build_trader(init_model, data, cfg, last_train, train_end, market)
    if model.trunk.max_bars < cfg.window_bars:
        raise FinetuneDataError(f"window_bars {cfg.window_bars} exceeds the trunk's context of {model.trunk.max_bars} bars")
    freeze_bottom(model, cfg.freeze_bottom)
    peft_model = apply_lora(model, cfg.lora, cfg.freeze_bottom) if cfg.lora.enabled else None
    n_trainable, n_total = trainable_parameters(model)

    train_targets = data.targets_known(data.calendar[last_train])
    valid_targets = data.targets_known(train_end)
    sampler = WindowSampler(data, cfg.window_bars, last_train, seed)
    bos = model.trunk.special_ids["bos"]

    def next_batch(step: int) -> dict[str, np.ndarray]:
        return data.gather(sampler.batch_starts(step, cfg.batch_size), cfg.window_bars, bos, train_targets)

    def evaluate() -> dict[str, float]:
        return evaluate_rows(model, data, valid_rows, valid_targets, cfg.warm)

    best = fit(model, cfg, next_batch, evaluate, out, progress=progress)
    if peft_model is not None and cfg.lora.merge:  # merge: false keeps a peft adapter folder (model/adapter/)
        merge_lora(model, peft_model)
    save_trader(model, tok, out)
    summary = {"best_step": best["step"], "valid_rank_ic": best.get("valid_rank_ic"),
               "valid_direction_accuracy": best.get("valid_direction_accuracy"), "steps": cfg.steps,
               "train_end": str(pd.Timestamp(train_end).date()), "last_train_session": str(data.calendar[last_train].date()),
               "trainable_params": n_trainable, "total_params": n_total, "seconds": round(time.time() - t0, 1),
               "train_windows": int(len(sampler.starts)), "valid_bars": int(len(valid_rows)), "seed": seed}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "config.json").write_text(json.dumps({"sft": cfg.model_dump(), "init": str(init), "train_end": str(train_end),
                                                 "seed": seed}, indent=2, default=str))
    return out


def fit(model: TraderModel, cfg: SFTConfig, next_batch, evaluate, out: Path, progress: bool = False,
        select: str = "valid_rank_ic") -> dict:
    """The optimisation loop shared by store and JSON Lines fine-tuning.

    next_batch(step) -> numpy batch (inputs + targets, see `trader_losses`); evaluate() -> validation
    metrics, called every cfg.eval_every steps and at the end; the weights of the evaluation with the
    highest `select` are restored at the end. Writes out/metrics.jsonl; returns the best evaluation
    (with its "step").
    """
    from quantlm.model.fpa import FPA

    fpa = FPA(model.trunk, cfg.fpa.lambda0, cfg.fpa.gamma)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    weights = LossWeights(**cfg.loss.model_dump())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    autocast = cfg.mixed_precision != "no" and device == "cuda"
    dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float16
    model.to(device)
    best: dict = {"step": -1}
    best_state = None
    model.train()
    with (out / "metrics.jsonl").open("w") as log:
        for step in range(cfg.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            batch = numpy_batch(next_batch(step), device)
            with torch.autocast(device_type=device, dtype=dtype, enabled=autocast):
                loss, parts = trader_losses(model, batch, weights)
                pen = fpa.penalty(step)
                if pen is not None:
                    loss = loss + pen
                    parts["fpa"] = float(pen.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            row = {"step": step + 1, "loss": float(loss.detach()), "lr": opt.param_groups[0]["lr"], **parts}
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                row.update({f"valid_{k}": v for k, v in evaluate().items()})
                value = row.get(select, float("nan"))
                if best_state is None or (np.isfinite(value) and not value <= best.get(select, -np.inf)):
                    best = {k: v for k, v in row.items() if k.startswith("valid_")} | {"step": step + 1}
                    best_state = copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()})
                if progress:
                    print(json.dumps(row), flush=True)
            log.write(json.dumps(row) + "\n")
            log.flush()
    model.load_state_dict(best_state)
    fpa.remove()
    model.eval()
    model.to("cpu")
    return best


def save_trader(model: TraderModel, tok, out: Path) -> Path:
    """Write out/model atomically (temp folder, then rename)."""
    tmp = out / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp, tokenizer=tok)
    shutil.rmtree(out / "model", ignore_errors=True)
    tmp.rename(out / "model")
    return out / "model"
