"""Supervised fine-tuning: a pretrained market GPT becomes a trader (direction, quantile and rank heads).

    train_sft(cfg, store, out, init, train_end) -> run_dir

- Reads bars (and texts) up to `train_end` only. The last `valid_sessions` sessions are held out:
  training windows end before them and use targets known by their start; the held-out bars are
  scored every `eval_every` steps (with their past as context) and the step with the best
  validation RankIC is kept.
- `init` is a pretrained model folder (pretrain run_dir/model) or a trader folder (warm start, e.g.
  the previous walk-forward fold; its feature normalisation is kept).
- Full fine-tuning, `freeze_bottom` N layers, or peft LoRA on the layers above them (merged on save).
- Runs on the training core (`quantlm.train.core`): gradient accumulation, mixed precision on CUDA,
  DDP under `accelerate launch`, checkpoints every `checkpoint_every` steps and exact resume
  (`train_sft(..., resume=True)`), best state by validation RankIC kept by the core.
- A pretrained init must not have been trained on the validation block: its last training bar (the
  tokenizer's fit_end) must lie label_horizon sessions before it (`quantlm.finetune.common.split_rows`).
- Run folder: config.json, metrics.jsonl (one row per `log_every` steps and per evaluation),
  metrics.json (summary), checkpoints/ (with checkpoint_every), model/ (a trader folder:
  `TraderModel.load`, `score_model`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from quantlm.finetune.common import pretrained_through, save_trader, split_rows, start_run
from quantlm.finetune.config import SFTConfig
from quantlm.finetune.data import FinetuneDataError, TraderData, build_trader_data, row_window_sampler
from quantlm.finetune.lora import apply_lora, freeze_bottom, merge_lora, trainable_parameters
from quantlm.finetune.model import (
    LossWeights,
    TraderModel,
    TraderSpec,
    candle_features,
    is_trader_folder,
    trader_losses,
)
from quantlm.finetune.score import predict_rows, rank_ic


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
        if init_model.spec.factors != cfg.factors:
            raise FinetuneDataError(f"warm start: the init trader has factors: {init_model.spec.factors}, this config "
                                    f"sft.factors: {cfg.factors}")
        return init_model
    if cfg.factors != "none" and data.factors is None:
        raise FinetuneDataError(f"sft.factors: {cfg.factors} needs the factor inputs of a store's bars (JSON Lines "
                                "examples carry none): set sft.factors: none")
    train_rows = data.session <= last_train
    feats = candle_features(torch.from_numpy(data.features[train_rows])).double().numpy()
    mean, std = feats.mean(0), feats.std(0)
    std = np.where(std > 1e-6, std, 1.0)
    spec = TraderSpec(horizons=list(data.horizons), d_text=0 if data.text is None else int(data.text.shape[1]),
                      factors=cfg.factors, d_factors=0 if data.factors is None else int(data.factors.shape[1]),
                      feature_mean=[float(x) for x in mean], feature_std=[float(x) for x in std], score=cfg.score,
                      window_bars=cfg.window_bars, text_half_life=cfg.text_half_life,
                      train_end=str(pd.Timestamp(train_end).date()), market=market)
    return TraderModel(init_model, spec)


def train_sft(cfg: SFTConfig, store, out: str | Path, init: str | Path, train_end, seed: int = 0,
              progress: bool = False, resume: bool = False, stop_after: int | None = None) -> Path:
    """Fine-tune `init` on targets known by `train_end`; returns the run folder (model in run/model).

    resume continues from the newest checkpoint in out/checkpoints (bit-identical on CPU);
    stop_after ends the run at that step with a checkpoint and no model (schedule unchanged).
    """

    t0 = time.time()
    store, out = start_run(store, out, cfg.threads, seed)
    init_model, tok = load_init(init, cfg.from_scratch, seed)
    market = store.meta().get("market") or "cn"
    data = build_trader_data(store, tok, cfg.targets, text=cfg.text, text_half_life=cfg.text_half_life,
                             market=market, end=train_end, rank_target=cfg.rank_target, factors=cfg.factors)
    pretrained_until = None if is_trader_folder(Path(init)) else pretrained_through(init)
    last_train, _, valid_rows = split_rows(data, train_end, cfg.valid_sessions, pretrained_until)
    model = build_trader(init_model, data, cfg, last_train, train_end, market)
    if model.trunk.max_bars < cfg.window_bars:
        raise FinetuneDataError(f"window_bars {cfg.window_bars} exceeds the trunk's context of {model.trunk.max_bars} bars")
    freeze_bottom(model, cfg.freeze_bottom)
    peft_model = apply_lora(model, cfg.lora, cfg.freeze_bottom) if cfg.lora.enabled else None
    n_trainable, n_total = trainable_parameters(model)

    train_targets = data.targets_known(data.calendar[last_train])
    valid_targets = data.targets_known(train_end)
    next_batch, n_train_windows = training_batches(data, cfg, last_train, seed, model.trunk.special_ids["bos"],
                                                   train_targets)

    def evaluate() -> dict[str, float]:
        return evaluate_rows(model, data, valid_rows, valid_targets, cfg.warm)

    best = fit(model, cfg, next_batch, evaluate, out, progress=progress, resume=resume, stop_after=stop_after)
    if best is None:
        return out  # stopped early: a checkpoint to resume from, no model yet
    if peft_model is not None and cfg.lora.merge:  # merge: false keeps a peft adapter folder (model/adapter/)
        merge_lora(model, peft_model)
    save_trader(model, tok, out)
    summary = {"best_step": best["step"], "valid_rank_ic": best.get("valid_rank_ic"),
               "valid_direction_accuracy": best.get("valid_direction_accuracy"), "steps": cfg.steps,
               "train_end": str(pd.Timestamp(train_end).date()), "last_train_session": str(data.calendar[last_train].date()),
               "trainable_params": n_trainable, "total_params": n_total, "seconds": round(time.time() - t0, 1),
               "train_windows": n_train_windows, "valid_bars": int(len(valid_rows)), "seed": seed}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "config.json").write_text(json.dumps({"sft": cfg.model_dump(), "init": str(init), "train_end": str(train_end),
                                                 "seed": seed}, indent=2, default=str))
    from quantlm.model.card import refresh_run_card

    refresh_run_card(out, "sft")  # the model card records this stage's config and metrics
    return out


def training_batches(data: TraderData, cfg: SFTConfig, last_train: int, seed: int, bos: int, targets: dict):
    """(next_batch(i) -> numpy micro-batch i, number of training windows to draw from) for cfg.batches.

    "windows": batch_size random windows (last bar session <= last_train). "cross_section": batch_size //
    cross_section_symbols sessions (at least 1), each with up to cross_section_symbols symbols' windows
    ending on it (`CrossSectionSampler`); the batch carries "group" [B, n] = cross-section id of every
    bar (one per (drawn session, bar session)) for the listwise loss. Both are pure functions of i.
    """
    if cfg.batches == "windows":
        sampler = row_window_sampler(data, cfg.window_bars, last_train, seed)
        return (lambda i: data.gather(sampler.batch_starts(i, cfg.batch_size), cfg.window_bars, bos, targets),
                int(len(sampler.starts)))
    from quantlm.finetune.crosssection import CrossSectionSampler

    xs = CrossSectionSampler(data, cfg.window_bars, last_train, cfg.cross_section_symbols, seed)
    n_sessions = max(1, cfg.batch_size // cfg.cross_section_symbols)

    def next_batch(index: int) -> dict[str, np.ndarray]:
        starts, block = xs.sample(index, n_sessions)
        batch = data.gather(starts, cfg.window_bars, bos, targets)
        rows = starts[:, None] + np.arange(cfg.window_bars)
        batch["group"] = block[:, None] * len(data.calendar) + data.session[rows]
        return batch

    return next_batch, int(len(xs.rows))


def fit(model: TraderModel, cfg: SFTConfig, next_batch, evaluate, out: Path, progress: bool = False,
        select: str = "valid_rank_ic", resume: bool = False, stop_after: int | None = None) -> dict | None:
    """The SFT stage on the training core, shared by store and JSON Lines fine-tuning.

    next_batch(i) -> numpy micro-batch i (inputs + targets, see `trader_losses`; a pure function of
    i); evaluate() -> validation metrics (un-prefixed), called every cfg.eval_every steps and at the
    end; the weights of the evaluation with the highest valid_<select> are restored at the end.
    Writes out/metrics.jsonl (and out/checkpoints with cfg.checkpoint_every); returns the best
    evaluation (its "valid_*" metrics and "step"), or None when stop_after ended the run first.
    """
    from quantlm.model.fpa import FPA
    from quantlm.train.core import Trainer, TrainStage

    fpa = FPA(model.trunk, cfg.fpa.lambda0, cfg.fpa.gamma)
    weights = LossWeights(**cfg.loss.model_dump())

    def loss_fn(m, batch: dict[str, torch.Tensor], step: int):
        loss, parts = trader_losses(m, batch, weights)
        pen = fpa.penalty(step)
        if pen is not None:
            loss = loss + pen
            parts["fpa"] = pen.detach()
        return loss, parts

    stage = TrainStage(
        name="sft", model=model, loss_fn=loss_fn, batch_at=next_batch, optim=cfg.optim(),
        evaluate=lambda m: {f"valid_{k}": v for k, v in evaluate().items()}, select=select,
        eval_every=cfg.eval_every, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
        checkpoint_at_end=False, keep_checkpoints=cfg.keep_checkpoints)
    trainer = Trainer(stage, out, progress=progress)
    try:
        result = trainer.fit(resume=resume, stop_after=stop_after)
    finally:
        fpa.remove()
        trainer.close()
    model.eval()
    model.to("cpu")
    return result.best if result.finished else None
