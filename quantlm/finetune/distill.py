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
known by it. The teacher must have been trained no later than train_end. The distilled bars are
those with at least `warm` bars of teacher context (and, for a gpt student, of its own window); the
student reads each bar's own history (bars <= the bar).

Training runs on the core (`finetune.stagecore`, batches and the cross-section match in
`finetune.distill_run`): checkpoint_every / resume / stop_after as in SFT, bit-identical on CPU.
Batches (`batches`): "rows" (the default for an mlp student) computes the teacher's outputs for every
training bar once and draws whole sessions of them, so a step is a student forward only; "windows"
(the default for a gpt student) draws batch_size teacher windows and runs the teacher every step;
"cross_sections" draws max_symbols windows ending on one session. With whole sessions in a batch
`loss.match_cross_section` matches the teacher's ordering of one session's stocks. On a reduced
synthetic store (60 stocks, teacher validation RankIC 0.051) the default student reached RankIC
0.052 (1.03x the teacher's, score_corr 0.96) with rows + 1000 steps + the cross-section match in
111 s, where 150 teacher-window steps (204 s) gave 0.021 (0.41x, score_corr 0.62).

Sizes (`sizes: [mlp shapes]`): one student per shape in out/sizes/<j>/, each timed with
`measure_latency` (latency_symbols or 300 symbols); out/model is the one with the best validation
RankIC whose p99 is within `latency_budget_ms` (none within: the fastest); metrics.json `sizes` is
the table {size, shape, params, rank_ic, score_corr, rank_ic_vs_teacher, p50_ms, p99_ms,
within_budget, deployed} and the rest of metrics.json is the deployed size's.

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
from quantlm.finetune.model import TraderModel, pinball_loss
from quantlm.finetune.score import predict_rows, rank_ic
from quantlm.finetune.stagecore import CoreFields, unprefix
from quantlm.finetune.student import StudentMLP, num_params, student_spec_from_teacher


class MLPShape(_Strict):
    """StudentMLP widths (see quantlm/finetune/student.py)."""

    token_dim: int = Field(8, ge=1)
    bar_dim: int = Field(16, ge=1)
    hidden: int = Field(128, ge=1)
    layers: int = Field(2, ge=1)
    text_bars: int = Field(2, ge=1)
    text_dim: int = Field(16, ge=1)
    window_bars: int | None = Field(None, ge=2)  # bars of context; None: the distill section's window_bars


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
    match_cross_section: float = Field(1.0, ge=0)  # 1 - corr of session-demeaned scores (distill_run; whole-session batches)


class DistillConfig(CoreFields):
    """Teacher -> student distillation (see the module docstring; core keys from `stagecore.CoreFields`)."""

    student: Literal["mlp", "gpt"] = "mlp"
    window_bars: int = Field(32, ge=2)  # student context (bars)
    mlp: MLPShape = Field(default_factory=MLPShape)
    gpt: GPTShape = Field(default_factory=GPTShape)
    teacher_window: int | None = Field(None, ge=4)  # teacher window (bars); None: the teacher's window_bars
    warm: int = Field(16, ge=1)  # context bars every distilled bar has in the teacher's (and a gpt student's) window
    steps: int = Field(1000, ge=1)
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
    batches: Literal["windows", "cross_sections", "rows"] | None = None  # None: rows (mlp), windows (gpt); distill_run.py
    max_symbols: int = Field(32, ge=2)  # batches "cross_sections": windows per session
    sizes: list[MLPShape] | None = None  # mlp students to train and compare; the deployed one: most accurate in budget
    latency_budget_ms: float = Field(5.0, gt=0)  # p99 per decision (latency_symbols or 300 symbols) for `sizes`
    latency_symbols: int = Field(300, ge=0)  # 0: skip the latency measurement
    latency_updates: int = Field(50, ge=1)
    threads: int | None = None

    @property
    def batch_mode(self) -> str:
        """batches, or its default: "rows" (cached teacher outputs) for an mlp student, "windows" for a gpt one."""
        return self.batches or ("rows" if self.student == "mlp" else "windows")

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.student == "gpt" and self.warm >= self.window_bars:
            raise ValueError(f"gpt student: warm ({self.warm}) must be < window_bars ({self.window_bars})")
        if self.batch_mode == "rows" and self.student != "mlp":
            raise ValueError("batches 'rows' (cached teacher outputs) is for mlp students")
        if self.sizes is not None and (self.student != "mlp" or not self.sizes):
            raise ValueError("sizes: a non-empty list of mlp shapes, with student: mlp")
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
    total, parts = distill_terms(s_out, t_out, tgt, features, cfg, horizons, levels)
    return total, {k: float(v.detach()) for k, v in parts.items()}


def distill_terms(s_out: dict[str, torch.Tensor], t_out: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor],
                  features: torch.Tensor, cfg: DistillConfig, horizons: list[int], levels: torch.Tensor,
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`distill_loss` with its parts as tensors (no host sync: the training step logs them)."""
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
    return total, parts


# ---------------------------------------------------------------------- students and batches
def build_student(cfg: DistillConfig, teacher: TraderModel, train_end, seed: int = 0,
                  shape: MLPShape | None = None) -> TraderModel | StudentMLP:
    """A freshly initialised student of cfg.student's kind sharing the teacher's tokenizer, heads and inputs
    (an mlp student of `shape`, default cfg.mlp)."""
    torch.manual_seed(seed)
    if cfg.student == "mlp":
        m = shape or cfg.mlp
        return StudentMLP(student_spec_from_teacher(teacher, m.window_bars or cfg.window_bars, m.text_bars,
                                                    m.token_dim, m.bar_dim, m.hidden, m.layers, train_end,
                                                    m.text_dim))
    from quantlm.model.build import build_model
    from quantlm.model.sizes import ModelSize

    g, tr = cfg.gpt, teacher.trunk
    trunk = build_model(ModelSize(g.n_layer, g.hidden, g.n_head, g.ffn, max_bars=cfg.window_bars), tr.vocab_size,
                        tr.n_weekdays, tr.n_slots, special_ids=tr.special_ids, seed=seed)
    spec = copy.deepcopy(teacher.spec)
    spec.window_bars = cfg.window_bars
    spec.factors, spec.d_factors = "none", 0  # the deployed student stays token-only (a factor teacher still gets its factors)
    spec.train_end = None if train_end is None else str(pd.Timestamp(train_end).date())
    return TraderModel(trunk, spec)


def distilled_positions(cfg: DistillConfig, teacher_window: int) -> np.ndarray:
    """Positions of a teacher window whose bars are distilled (enough context for teacher and student)."""
    first = cfg.warm if cfg.student == "mlp" else teacher_window - cfg.window_bars + cfg.warm
    return np.arange(first, teacher_window)


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
                  progress: bool = False, resume: bool = False, stop_after: int | None = None) -> Path:
    """Distil the trader folder (or SFT/RL run folder) `teacher` into a student; returns the run folder.

    One student (cfg.sizes None): trained in `out` on the training core (resume / stop_after as in
    `train_sft`). cfg.sizes: one mlp student per shape in out/sizes/<j>/ (a finished one is reused on
    resume), each timed with `measure_latency`; out/model is the one with the best validation RankIC
    whose p99 is within cfg.latency_budget_ms (none within: the fastest), and metrics.json's `sizes`
    holds the accuracy / latency table.
    """
    from quantlm.finetune.common import load_policy_data, resolve_model_dir, split_rows, start_run

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
    if cfg.sizes is not None and stop_after is not None:
        raise ValueError("stop_after is for one student; with sizes, resume reuses the finished sizes")
    t_model.eval().requires_grad_(False)
    last_train, _, valid_rows = split_rows(data, train_end, cfg.valid_sessions)
    train_targets = data.targets_known(data.calendar[last_train])
    label = data.targets_known(train_end)["ret"][valid_rows, 0]
    t_res = predict_rows(t_model, data, valid_rows, warm=cfg.warm, keep=("direction",))
    teacher_ic = rank_ic(t_res["score"], label, data.session[valid_rows])
    common = {"teacher": str(teacher_dir), "teacher_rank_ic": teacher_ic, "train_end": str(pd.Timestamp(train_end).date()),
              "last_train_session": str(data.calendar[last_train].date()), "valid_bars": int(len(valid_rows)),
              "steps": cfg.steps, "seed": seed}

    cache: dict = {}

    def one(run_dir: Path, shape: MLPShape | None, resume_one: bool, stop: int | None) -> dict | None:
        from quantlm.finetune.distill_run import fit_student, teacher_rows

        if cfg.batch_mode == "rows" and not cache:  # the teacher's outputs once for every size
            cache.update(teacher_rows(t_model, data, last_train, cfg.warm))

        student = build_student(cfg, t_model, train_end, seed, shape)
        pos = distilled_positions(cfg, tw)

        def evaluate() -> dict[str, float]:
            return agreement(student, t_res, data, valid_rows, label, cfg.warm)

        initial = evaluate()
        result = fit_student(cfg, student, t_model, data, tw, pos, last_train, train_targets, evaluate, run_dir, seed,
                             progress=progress, resume=resume_one, stop_after=stop, teacher_out=cache or None)
        if not result.finished:
            return None
        _save_student(student, tok, run_dir)
        best = result.best or result.last
        res = {"student": cfg.student, **common, "best_step": best["step"], "valid": unprefix(best),
               "initial": initial, "params": {"teacher": num_params(t_model), "student": num_params(student),
                                              "ratio": num_params(t_model) / num_params(student)}}
        if shape is not None:
            res["shape"] = shape.model_dump()
        return res

    if cfg.sizes is None:
        summary = one(out, None, resume, stop_after)
        if summary is None:
            return out  # stopped early: a checkpoint to resume from, no model yet
        if cfg.latency_symbols:
            summary["latency_ms"] = _latencies(cfg, store, teacher_dir, out / "model", train_end)
    else:
        from quantlm.finetune.distill_run import train_sizes

        summary = train_sizes(cfg, out, one, store, teacher_dir, train_end, resume)
    summary["seconds"] = round(time.time() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "config.json").write_text(json.dumps({"distill": cfg.model_dump(), "teacher": str(teacher_dir),
                                                 "train_end": str(train_end), "seed": seed}, indent=2, default=str))
    from quantlm.model.card import refresh_run_card

    refresh_run_card(out, "distill")  # the model card records this stage's config and metrics
    return out


def _save_student(student, tok, run_dir: Path) -> None:
    from quantlm.finetune.common import save_trader

    student.eval().to("cpu")
    save_trader(student, tok, run_dir)  # run_dir/model atomically (StudentMLP.save has the same signature)


def _latencies(cfg: DistillConfig, store, teacher_dir: Path, student_dir: Path, train_end) -> dict:
    from quantlm.finetune.latency import measure_latency
    from quantlm.finetune.model import TraderModel

    lat = {"student": measure_latency(student_dir, store, cfg.latency_symbols, cfg.latency_updates, end=train_end)}
    if TraderModel.load(teacher_dir).spec.factors != "none":  # no live scorer for cross-sectional factor ranks
        return lat | {"teacher": None, "speedup_p50": None}
    lat["teacher"] = measure_latency(teacher_dir, store, cfg.latency_symbols, cfg.latency_updates, end=train_end)
    lat["speedup_p50"] = lat["teacher"]["p50"] / lat["student"]["p50"]
    return lat
