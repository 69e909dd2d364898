"""Distillation: a fine-tuned trader (teacher) -> a small, fast student for deployment.

    train_distill(cfg, store, out, teacher, train_end, seed=0) -> run_dir   (run_dir/model: student folder)

Students (cfg.student):
- "mlp" (default): `student.StudentMLP` over the last window_bars bars (features, token embeddings,
  text of the last text_bars bars). Its live update for 300 symbols is a few small matmuls, well
  under the 5 ms / one CPU thread target; scores are a fixed function of the last k bars.
- "gpt": a `TraderModel` with a much smaller trunk (cfg.gpt shape, max_bars = window_bars) over the
  teacher's tokenizer; a saved trader folder like the teacher's. Its live update re-runs a
  window_bars transformer for every symbol (tens of ms for 300 symbols), hence not the default.

Loss on every distilled bar (teacher frozen, eval mode, run on the same bars in the same step):

    alpha * T^2 KL(softmax(d_teacher / T) || softmax(d_student / T))
    + (1 - alpha) * (direction CE + pinball + rank MSE on the hard targets, LossConfig-like weights)
    + match_direction * MSE(log_softmax(d_student), log_softmax(d_teacher))
    + match_rank * MSE(rank_student, rank_teacher) + match_quantile * MSE(quantiles_student, quantiles_teacher)

The matching MSEs are divided by the teacher's variance of each output over the batch by default
(loss.match_scale "var"): a trained rank head's outputs vary by a few hundredths, so a plain MSE
to them is ~1e-3 and drowned by the hard rank loss; scaled, it measures how well the student
reproduces the teacher's ordering (score_corr), which is what the deployed score needs. The same
holds for the direction head: the KL of a student that gets the teacher's average probabilities
right is already ~1e-3 nats, whatever it does with the teacher's small per-bar buy / sell edges;
the scaled log-probability MSE (match_direction) is what makes it follow them (on the test store
it lifts held-out argmax agreement from ~0.67 to ~0.82 at equal steps).

Point in time (as `sft`): the store is read up to train_end, the last valid_sessions sessions are
held out, training windows end on or before the last training session and hard targets are those
known by it. The teacher must have been trained no later than train_end. A step draws batch_size
teacher windows of the teacher's window_bars; the bars with at least `warm` bars of teacher context
(and, for a gpt student, of its own window) are distilled, and the student reads each of those bars'
own history (bars <= the bar, so it may start before the window).

Held-out metrics (the kept step is the best by cfg.select): direction_agreement (argmax agrees
with the teacher's), direction_corr (mean per-session Spearman of P(buy) - P(sell), student vs
teacher), score_corr (mean per-session Spearman of the student's vs the teacher's trading score;
score_corr_pooled over all held-out bars), kl (KL(teacher || student) of the direction heads at
T = 1, nats), rank_ic (vs ret_1) of both; metrics.json adds parameter counts and the live latency
(p50 / p99 ms, `latency.measure_latency`) of both.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from quantlm.features.targets import TargetConfig
from quantlm.finetune.config import _Strict
from quantlm.finetune.data import FinetuneDataError, TraderData
from quantlm.finetune.data import row_window_sampler as WindowSampler  # the shared quantlm.train.sampler
from quantlm.finetune.model import TraderModel, numpy_batch, pinball_loss
from quantlm.finetune.score import predict_rows, rank_ic
from quantlm.finetune.student import StudentMLP, num_params, student_inputs, student_spec_from_teacher


class MLPShape(_Strict):
    """StudentMLP widths (see quantlm/finetune/student.py)."""

    token_dim: int = Field(8, ge=1)
    bar_dim: int = Field(16, ge=1)
    hidden: int = Field(128, ge=1)
    layers: int = Field(2, ge=1)
    text_bars: int = Field(2, ge=1)
    text_dim: int = Field(16, ge=1)


class GPTShape(_Strict):
    """Trunk of a "gpt" student (a Llama decoder like the teacher's, much smaller)."""

    n_layer: int = Field(2, ge=1)
    hidden: int = Field(64, ge=8)
    n_head: int = Field(2, ge=1)
    ffn: int = Field(192, ge=8)


class DistillLoss(_Strict):
    """Weights of the hard-label trader losses (scaled by 1 - alpha) and of the head-matching MSEs."""

    direction: float = Field(1.0, ge=0)
    quantile: float = Field(1.0, ge=0)
    rank: float = Field(1.0, ge=0)
    match_direction: float = Field(1.0, ge=0)  # MSE of the direction log-probabilities (on top of the KL)
    match_rank: float = Field(1.0, ge=0)
    match_quantile: float = Field(1.0, ge=0)
    match_scale: Literal["var", "none"] = "var"  # "var": MSE / the teacher's batch variance (see match_mse)


class DistillConfig(_Strict):
    """Teacher -> student distillation (see the module docstring)."""

    student: Literal["mlp", "gpt"] = "mlp"
    window_bars: int = Field(32, ge=2)  # student context (bars)
    mlp: MLPShape = Field(default_factory=MLPShape)
    gpt: GPTShape = Field(default_factory=GPTShape)
    teacher_window: int | None = Field(None, ge=4)  # teacher window (bars); None: the teacher's window_bars
    warm: int = Field(16, ge=1)  # context bars every distilled bar has in the teacher's (and a gpt student's) window
    steps: int = Field(300, ge=1)
    batch_size: int = Field(32, ge=1)  # teacher windows per step
    lr: float = Field(2e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1)  # weight of the soft KL term vs the hard-label losses
    loss: DistillLoss = Field(default_factory=DistillLoss)
    targets: TargetConfig | None = None  # None: the teacher's SFT run targets (horizons must match)
    valid_sessions: int = Field(120, ge=10)
    eval_every: int = Field(100, ge=1)
    select: Literal["score_corr", "direction_agreement", "rank_ic", "last"] = "score_corr"
    latency_symbols: int = Field(300, ge=0)  # 0: skip the latency measurement
    latency_updates: int = Field(50, ge=1)
    threads: int | None = None

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.student == "gpt" and self.warm >= self.window_bars:
            raise ValueError(f"gpt student: warm ({self.warm}) must be < window_bars ({self.window_bars})")
        return self


# ---------------------------------------------------------------------- losses
def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over rows of KL(softmax(teacher / T) || softmax(student / T)), nats; logits [..., C]."""
    t = float(temperature)
    log_p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    return t * t * (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def hard_losses(out: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor], features: torch.Tensor,
                horizons: list[int], levels: torch.Tensor, w: DistillLoss) -> dict[str, torch.Tensor]:
    """Trader losses on flat rows (as `model.trader_losses`): direction CE, pinball on ret / (sigma sqrt h),
    rank MSE. out: direction [N, 3], quantiles [N, n_h, n_q], rank [N, n_h]; tgt: direction [N] (-1 none),
    ret / rank [N, n_h] (NaN none); features [N, 7]."""
    parts: dict[str, torch.Tensor] = {}
    d = tgt["direction"]
    if w.direction and (d >= 0).any():
        parts["direction"] = w.direction * F.cross_entropy(out["direction"].float(), d, ignore_index=-1)
    ret = tgt["ret"]
    if w.quantile:
        h = torch.tensor(horizons, dtype=torch.float32, device=ret.device)
        scale = torch.exp(features[:, 6].float()).unsqueeze(-1) * h.sqrt()
        mask = torch.isfinite(ret)
        target = torch.where(mask, ret / scale, 0.0).clamp(-10, 10)
        parts["quantile"] = w.quantile * pinball_loss(out["quantiles"].float(), target, levels, mask)
    if w.rank:
        mask = torch.isfinite(tgt["rank"])
        err = (out["rank"].float() - torch.where(mask, tgt["rank"], 0.0)) ** 2
        parts["rank"] = w.rank * (err * mask).sum() / mask.sum().clamp(min=1)
    return parts


def match_mse(student: torch.Tensor, teacher: torch.Tensor, scale: str = "var") -> torch.Tensor:
    """MSE of student to teacher head outputs [N, ...]; scale "var" divides each output column's MSE by the
    teacher's variance over the N rows (detached, floored at 1e-6): a scale-free match of the teacher's
    cross-sectional shape even where its outputs vary little, as a weak-signal rank head's do."""
    err = (student.float() - teacher.float()) ** 2
    if scale == "var" and len(teacher) > 1:
        return (err.mean(0) / teacher.detach().float().var(0).clamp(min=1e-6)).mean()
    return err.mean()


def distill_loss(s_out: dict[str, torch.Tensor], t_out: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor],
                 features: torch.Tensor, cfg: DistillConfig, horizons: list[int], levels: torch.Tensor,
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """The distillation objective on flat rows (see the module docstring) and its parts (floats)."""
    kl = distill_kl(s_out["direction"], t_out["direction"], cfg.temperature)
    hard = hard_losses(s_out, tgt, features, horizons, levels, cfg.loss)
    total = cfg.alpha * kl + (1 - cfg.alpha) * sum(hard.values(), kl.new_zeros(()))
    parts = {"kl": kl, **hard}
    if cfg.loss.match_direction:  # the log-probabilities, so a near-uniform teacher's small edges count too
        parts["match_direction"] = match_mse(F.log_softmax(s_out["direction"].float(), -1),
                                             F.log_softmax(t_out["direction"].float(), -1), cfg.loss.match_scale)
        total = total + cfg.loss.match_direction * parts["match_direction"]
    for head, w in (("rank", cfg.loss.match_rank), ("quantiles", cfg.loss.match_quantile)):
        if w:
            parts[f"match_{head}"] = match_mse(s_out[head], t_out[head], cfg.loss.match_scale)
            total = total + w * parts[f"match_{head}"]
    return total, {k: float(v.detach()) for k, v in parts.items()}


# ---------------------------------------------------------------------- students and batches
def build_student(cfg: DistillConfig, teacher: TraderModel, train_end, seed: int = 0) -> TraderModel | StudentMLP:
    """A freshly initialised student of cfg.student's kind sharing the teacher's tokenizer, heads and inputs."""
    torch.manual_seed(seed)
    if cfg.student == "mlp":
        m = cfg.mlp
        return StudentMLP(student_spec_from_teacher(teacher, cfg.window_bars, m.text_bars, m.token_dim, m.bar_dim,
                                                    m.hidden, m.layers, train_end, m.text_dim))
    from quantlm.model.build import build_model
    from quantlm.model.sizes import ModelSize

    g, tr = cfg.gpt, teacher.trunk
    trunk = build_model(ModelSize(g.n_layer, g.hidden, g.n_head, g.ffn, max_bars=cfg.window_bars), tr.vocab_size,
                        tr.n_weekdays, tr.n_slots, special_ids=tr.special_ids, seed=seed)
    spec = copy.deepcopy(teacher.spec)
    spec.window_bars = cfg.window_bars
    spec.train_end = None if train_end is None else str(pd.Timestamp(train_end).date())
    return TraderModel(trunk, spec)


def distilled_positions(cfg: DistillConfig, teacher_window: int) -> np.ndarray:
    """Positions of a teacher window whose bars are distilled (enough context for teacher and student)."""
    first = cfg.warm if cfg.student == "mlp" else teacher_window - cfg.window_bars + cfg.warm
    return np.arange(first, teacher_window)


def student_forward(student, data: TraderData, starts: np.ndarray, tw: int, pos: np.ndarray, device="cpu",
                    ) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Student outputs [N = B x len(pos), ...] for the bars at `pos` of the teacher windows at `starts`; and their rows."""
    rows = (starts[:, None] + pos[None, :]).reshape(-1)
    if isinstance(student, StudentMLP):
        s = student.spec
        out = student(numpy_batch(student_inputs(data, rows, s.window_bars, s.pad_id, s.text_bars), device))
        return out, rows
    w = student.spec.window_bars
    batch = numpy_batch(data.gather(starts + tw - w, w, student.trunk.special_ids["bos"]), device)
    out = student(batch)
    keep = pos - (tw - w)
    return {k: v[:, keep].flatten(0, 1) for k, v in out.items() if k != "bar_hidden"}, rows


def agreement(student, teacher_res: dict[str, np.ndarray], data: TraderData, rows: np.ndarray, label: np.ndarray,
              warm: int) -> dict[str, float]:
    """Held-out agreement of the student with the teacher (precomputed `teacher_res`) and the student's RankIC."""
    res = predict_rows(student, data, rows, warm=warm, keep=("direction",))
    sess = data.session[rows]
    t_logp = torch.log_softmax(torch.from_numpy(teacher_res["direction"]), -1)
    s_logp = torch.log_softmax(torch.from_numpy(res["direction"]), -1)
    kl = float((t_logp.exp() * (t_logp - s_logp)).sum(-1).mean())
    pooled = pd.Series(res["score"]).rank().corr(pd.Series(teacher_res["score"]).rank())
    edge_s = np.diff(torch.softmax(torch.from_numpy(res["direction"]), -1).numpy()[:, [0, 2]], axis=1)[:, 0]
    edge_t = np.diff(t_logp.exp().numpy()[:, [0, 2]], axis=1)[:, 0]
    return {"direction_agreement": float((res["direction"].argmax(-1) == teacher_res["direction"].argmax(-1)).mean()),
            "score_corr": rank_ic(res["score"], teacher_res["score"], sess),
            "score_corr_pooled": float(pooled), "direction_corr": rank_ic(edge_s, edge_t, sess), "kl": kl,
            "rank_ic": rank_ic(res["score"], label, sess)}


# ---------------------------------------------------------------------- training
def train_distill(cfg: DistillConfig, store, out: str | Path, teacher: str | Path, train_end, seed: int = 0,
                  progress: bool = False) -> Path:
    """Distil the trader folder (or SFT/RL run folder) `teacher` into a student; returns the run folder."""
    from quantlm.finetune.common import load_policy_data, resolve_model_dir, save_trader, split_rows, start_run
    from quantlm.finetune.latency import measure_latency
    from quantlm.train.optim import lr_at

    t0 = time.time()
    store, out = start_run(store, out, cfg.threads)
    teacher_dir = resolve_model_dir(teacher)
    t_model, tok, data, _ = load_policy_data(teacher_dir, store, train_end, targets=cfg.targets)
    if t_model.spec.train_end and pd.Timestamp(t_model.spec.train_end) > pd.Timestamp(train_end):
        raise FinetuneDataError(f"the teacher was trained to {t_model.spec.train_end}, after train_end "
                                f"{pd.Timestamp(train_end).date()}: its outputs would leak the held-out period")
    tw = cfg.teacher_window or t_model.spec.window_bars
    if not cfg.warm < tw <= t_model.trunk.max_bars or (cfg.student == "gpt" and cfg.window_bars > tw):
        raise FinetuneDataError(f"need warm {cfg.warm} < teacher window {tw} <= the teacher's context "
                                f"{t_model.trunk.max_bars} (and a gpt student's window_bars <= {tw})")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # teacher and student; the saved student is on the CPU
    t_model.eval().requires_grad_(False).to(device)
    last_train, _, valid_rows = split_rows(data, train_end, cfg.valid_sessions)
    student = build_student(cfg, t_model, train_end, seed).to(device)
    train_targets = data.targets_known(data.calendar[last_train])
    label = data.targets_known(train_end)["ret"][valid_rows, 0]
    sampler = WindowSampler(data, tw, last_train, seed)
    pos = distilled_positions(cfg, tw)
    bos = t_model.trunk.special_ids["bos"]
    levels = torch.tensor(t_model.spec.quantiles, dtype=torch.float32, device=device)
    horizons = list(t_model.spec.horizons)

    t_res = predict_rows(t_model, data, valid_rows, warm=cfg.warm, keep=("direction",))
    teacher_ic = rank_ic(t_res["score"], label, data.session[valid_rows])

    def evaluate() -> dict[str, float]:
        return agreement(student, t_res, data, valid_rows, label, cfg.warm)

    initial = evaluate()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.95))
    best: dict = {"step": 0, **{f"valid_{k}": v for k, v in initial.items()}}
    best_state = copy.deepcopy(student.state_dict())
    student.train()
    with (out / "metrics.jsonl").open("w") as log:
        for step in range(cfg.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            starts = sampler.batch_starts(step, cfg.batch_size)
            with torch.no_grad():
                t_out = t_model(numpy_batch(data.gather(starts, tw, bos), device))
                t_out = {k: t_out[k][:, pos].flatten(0, 1) for k in ("direction", "quantiles", "rank")}
            s_out, rows = student_forward(student, data, starts, tw, pos, device)
            tgt = numpy_batch({k: v[rows] for k, v in train_targets.items()} | {"features": data.features[rows]}, device)
            loss, parts = distill_loss(s_out, t_out, tgt, tgt["features"], cfg, horizons, levels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            row = {"step": step + 1, "loss": float(loss.detach()), "lr": opt.param_groups[0]["lr"], **parts}
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                row |= {f"valid_{k}": v for k, v in evaluate().items()}
                student.train()
                if cfg.select == "last" or _better(row.get(f"valid_{cfg.select}"), best.get(f"valid_{cfg.select}")):
                    best = {k: v for k, v in row.items() if k.startswith("valid_")} | {"step": step + 1}
                    best_state = copy.deepcopy(student.state_dict())
                if progress:
                    print(json.dumps(row), flush=True)
            log.write(json.dumps(row) + "\n")
    student.load_state_dict(best_state)
    student.eval().to("cpu")
    t_model.to("cpu")
    if isinstance(student, StudentMLP):
        tmp = out / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        student.save(tmp, tokenizer=tok)
        shutil.rmtree(out / "model", ignore_errors=True)
        tmp.rename(out / "model")
    else:
        save_trader(student, tok, out)
    n_t, n_s = num_params(t_model), num_params(student)
    summary = {"student": cfg.student, "teacher": str(teacher_dir), "best_step": best["step"],
               "valid": {k[len("valid_"):]: v for k, v in best.items() if k.startswith("valid_")},
               "initial": initial, "teacher_rank_ic": teacher_ic,
               "params": {"teacher": n_t, "student": n_s, "ratio": n_t / n_s},
               "train_end": str(pd.Timestamp(train_end).date()), "last_train_session": str(data.calendar[last_train].date()),
               "valid_bars": int(len(valid_rows)), "steps": cfg.steps, "seed": seed}
    if cfg.latency_symbols:
        lat = {name: measure_latency(d, store, cfg.latency_symbols, cfg.latency_updates, end=train_end)
               for name, d in (("teacher", teacher_dir), ("student", out / "model"))}
        lat["speedup_p50"] = lat["teacher"]["p50"] / lat["student"]["p50"]
        summary["latency_ms"] = lat
    summary["seconds"] = round(time.time() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "config.json").write_text(json.dumps({"distill": cfg.model_dump(), "teacher": str(teacher_dir),
                                                 "train_end": str(train_end), "seed": seed}, indent=2, default=str))
    return out


def _better(value, best) -> bool:
    return value is not None and np.isfinite(value) and (best is None or not np.isfinite(best) or value > best)
