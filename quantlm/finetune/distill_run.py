"""One distillation run on the training core: stateless batches, the loss step, the cross-section match.

    fit_student(cfg, student, teacher, data, ...) -> TrainResult     (used by `distill.train_distill`)
    train_sizes(cfg, out, one, ...) -> metrics.json content         (distill.sizes: the accuracy / latency table)

Batches (micro-batch i, a pure function of (seed, i), so resume is exact):
- cfg.batches "windows": batch_size random teacher windows (`train.sampler.WindowSampler`);
- cfg.batches "cross_sections": batch_size // max_symbols sessions (at least one), each with up to
  max_symbols symbols' windows ending on it (`reward.CrossSectionSampler`), so every distilled
  window position is a real cross-section of one session.
A batch carries the teacher's window inputs, the student's inputs for the distilled bars (keys
prefixed "s_"), the hard targets known by the last training session ("y_") and each distilled
bar's cross-section id ("y_group": block x session).

- cfg.batches "rows": the teacher's outputs for every training bar (>= warm bars of history, session
  <= the last training session) are computed once (`teacher_rows`, eval mode, `score.predict_rows`);
  a step then takes whole sessions of those bars (about batch_size x (teacher window - warm) bars),
  so each step costs a student forward only: many more steps in the same time, and every step is a
  set of complete cross-sections. mlp students only.

Cross-section match (loss.match_cross_section, weight w): per group with >= 3 bars, 1 - Pearson
correlation of the session-demeaned trading scores (student vs teacher, `TraderModel.score`), mean
over groups: what the teacher's RankIC is made of (the ordering of one session's stocks), free of
the time-series level that the plain head MSEs also fit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from quantlm.finetune.data import TraderData
from quantlm.finetune.student import StudentMLP, student_inputs


def cross_section_corr_loss(s_score: torch.Tensor, t_score: torch.Tensor, group: torch.Tensor,
                            min_size: int = 3) -> torch.Tensor:
    """Mean over groups (>= min_size rows) of 1 - corr(student, teacher) of the group-demeaned scores [N]."""
    _, inv = torch.unique(group, return_inverse=True)
    n_g = int(inv.max()) + 1 if len(inv) else 0
    ones = torch.ones_like(t_score, dtype=torch.float32)
    count = torch.zeros(n_g, device=t_score.device).index_add_(0, inv, ones)
    s, t = s_score.float(), t_score.float().detach()
    ds = s - (torch.zeros(n_g, device=s.device).index_add_(0, inv, s) / count.clamp(min=1))[inv]
    dt = t - (torch.zeros(n_g, device=t.device).index_add_(0, inv, t) / count.clamp(min=1))[inv]
    num = torch.zeros(n_g, device=s.device).index_add_(0, inv, ds * dt)
    ss = torch.zeros(n_g, device=s.device).index_add_(0, inv, ds * ds)
    tt = torch.zeros(n_g, device=s.device).index_add_(0, inv, dt * dt)
    corr = num / torch.sqrt(ss * tt + 1e-12)
    keep = (count >= min_size) & (tt > 0)
    return (1.0 - corr[keep]).mean() if bool(keep.any()) else s.sum() * 0.0


def teacher_rows(teacher, data: TraderData, last_train: int, warm: int) -> dict[str, np.ndarray]:
    """{"rows": training rows (>= warm bars of history, session <= last_train) sorted by session, and the
    teacher's direction [R, 3], quantiles [R, n_h, n_q], rank [R, n_h] on them (float32)}."""
    from quantlm.finetune.reward import bar_history
    from quantlm.finetune.score import predict_rows

    rows = np.flatnonzero((data.session <= last_train) & (bar_history(data) >= warm))
    rows = rows[np.argsort(data.session[rows], kind="stable")]
    res = predict_rows(teacher, data, rows, warm=warm, keep=("direction", "quantiles", "rank"))
    return {"rows": rows, **{k: res[k].astype(np.float32) for k in ("direction", "quantiles", "rank")}}


def fit_student(cfg, student, teacher, data: TraderData, tw: int, pos: np.ndarray, last_train: int,
                train_targets: dict[str, np.ndarray], evaluate, out: Path, seed: int, progress: bool = False,
                resume: bool = False, stop_after: int | None = None, teacher_out: dict | None = None):
    """Distil `teacher` (frozen) into `student` on the core; returns the TrainResult (see the module docstring)."""
    from quantlm.finetune.distill import distill_terms
    from quantlm.finetune.reward import CrossSectionSampler
    from quantlm.finetune.stagecore import run_on_core
    from quantlm.train.sampler import WindowSampler

    bos = teacher.trunk.special_ids["bos"]
    n_cal = len(data.calendar)
    cached = cfg.batch_mode == "rows"
    if cached:
        if teacher_out is None:
            teacher_out = teacher_rows(teacher, data, last_train, cfg.warm)
        t_rows = teacher_out["rows"]
        sess = data.session[t_rows]
        sess_ids, first, count = np.unique(sess, return_index=True, return_counts=True)
        n_sessions = max(1, int(round(cfg.batch_size * len(pos) / max(count.mean(), 1.0))))

        def rows_at(i: int) -> np.ndarray:
            rng = np.random.default_rng([seed, i])
            pick = rng.choice(len(sess_ids), size=min(n_sessions, len(sess_ids)), replace=False)
            return np.concatenate([np.arange(first[s], first[s] + count[s]) for s in pick])  # indices into t_rows
    elif cfg.batch_mode == "cross_sections":
        xs = CrossSectionSampler(data, tw, last_train, cfg.max_symbols, seed)
        n_sessions = max(1, cfg.batch_size // cfg.max_symbols)

        def starts_at(i: int) -> tuple[np.ndarray, np.ndarray]:
            return xs.sample(i, n_sessions)
    else:
        ws = WindowSampler.from_rows(data.session, data.offsets, tw, last_train, seed)

        def starts_at(i: int) -> tuple[np.ndarray, np.ndarray]:
            starts = ws.batch_starts(i, cfg.batch_size)
            return starts, np.arange(len(starts))  # each window its own block: groups are one bar (no match)

    levels = torch.tensor(teacher.spec.quantiles, dtype=torch.float32)
    horizons = list(teacher.spec.horizons)

    def batch_at(i: int) -> dict[str, np.ndarray]:
        if cached:
            j = rows_at(i)
            rows = t_rows[j]
            s = student.spec
            y = {k: v[rows] for k, v in train_targets.items()} | {"features": data.features[rows],
                                                                    "group": data.session[rows]}
            return {**{f"t_{k}": teacher_out[k][j] for k in ("direction", "quantiles", "rank")},
                    **{f"s_{k}": v for k, v in student_inputs(data, rows, s.window_bars, s.pad_id, s.text_bars).items()},
                    **{f"y_{k}": v for k, v in y.items()}}
        starts, block = starts_at(i)
        rows = (starts[:, None] + pos[None, :]).reshape(-1)
        if isinstance(student, StudentMLP):
            s = student.spec
            s_in = student_inputs(data, rows, s.window_bars, s.pad_id, s.text_bars)
        else:
            w = student.spec.window_bars
            s_in = data.gather(starts + tw - w, w, bos)
        y = {k: v[rows] for k, v in train_targets.items()} | {"features": data.features[rows]}
        y["group"] = np.repeat(block, len(pos)) * n_cal + data.session[rows]
        return {**data.gather(starts, tw, bos), **{f"s_{k}": v for k, v in s_in.items()},
                **{f"y_{k}": v for k, v in y.items()}}

    def loss_fn(m, batch: dict[str, torch.Tensor], step: int):
        p = torch.as_tensor(pos, device=batch["y_features"].device)
        if cached:
            t_out = {k[2:]: v for k, v in batch.items() if k.startswith("t_")}
        else:
            with torch.no_grad():
                t_all = teacher(batch)
                t_out = {k: t_all[k][:, p].flatten(0, 1) for k in ("direction", "quantiles", "rank")}
        s_batch = {k[2:]: v for k, v in batch.items() if k.startswith("s_")}
        s_out = m(s_batch)
        if not isinstance(student, StudentMLP):
            keep = p - (tw - student.spec.window_bars)
            s_out = {k: v[:, keep].flatten(0, 1) for k, v in s_out.items() if k != "bar_hidden"}
        tgt = {k[2:]: v for k, v in batch.items() if k.startswith("y_")}
        total, parts = distill_terms(s_out, t_out, tgt, tgt["features"], cfg, horizons, levels.to(p.device))
        if cfg.loss.match_cross_section:
            feats = tgt["features"]
            xs_loss = cross_section_corr_loss(student.score(s_out, feats), teacher.score(t_out, feats), tgt["group"])
            parts["match_cross_section"] = xs_loss.detach()
            total = total + cfg.loss.match_cross_section * xs_loss
        return total, {k: v.detach() for k, v in parts.items()}

    student.train()
    return run_on_core("distill", student, cfg, out, loss_fn, batch_at, evaluate,
                       None if cfg.select == "last" else cfg.select, cfg.eval_every, progress=progress,
                       resume=resume, stop_after=stop_after, to_device=lambda d: teacher.to(d))


def train_sizes(cfg, out: Path, one, store, teacher_dir: Path, train_end, resume: bool) -> dict:
    """Train every shape of cfg.sizes, time it, deploy the most accurate within the latency budget."""
    from quantlm.finetune.distill import _latencies
    from quantlm.finetune.latency import measure_latency

    n_sym = cfg.latency_symbols or 300
    table, results = [], []
    for j, shape in enumerate(cfg.sizes):
        d = out / "sizes" / str(j)
        done = d / "size.json"
        if resume and done.exists():
            res = json.loads(done.read_text())
        else:
            if d.exists() and not resume:
                shutil.rmtree(d)
            res = one(d, shape, resume and (d / "checkpoints").exists(), None)
            res["latency_ms"] = measure_latency(d / "model", store, n_sym, cfg.latency_updates, end=train_end)
            done.write_text(json.dumps(res, indent=2))
        results.append(res)
        lat = res["latency_ms"]
        table.append({"size": j, **shape.model_dump(), "params": res["params"]["student"],
                      "rank_ic": res["valid"].get("rank_ic"), "score_corr": res["valid"].get("score_corr"),
                      "rank_ic_vs_teacher": _ratio(res["valid"].get("rank_ic"), res["teacher_rank_ic"]),
                      "p50_ms": lat["p50"], "p99_ms": lat["p99"], "n_symbols": n_sym,
                      "within_budget": bool(lat["p99"] <= cfg.latency_budget_ms)})
    pick = _deploy_pick(table)
    for row in table:
        row["deployed"] = row["size"] == pick
    src = out / "sizes" / str(pick) / "model"
    tmp = out / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(out / "model", ignore_errors=True)
    tmp.rename(out / "model")
    summary = dict(results[pick])
    summary["sizes"] = table
    summary["latency_budget_ms"] = cfg.latency_budget_ms
    summary["deployed_size"] = pick
    if cfg.latency_symbols:
        summary["latency_ms"] = _latencies(cfg, store, teacher_dir, out / "model", train_end)
    return summary


def _deploy_pick(table: list[dict]) -> int:
    """The size with the best validation RankIC among those within the latency budget (none within: the fastest)."""
    inside = [r for r in table if r["within_budget"]]
    if not inside:
        return min(table, key=lambda r: r["p99_ms"])["size"]
    return max(inside, key=lambda r: r["rank_ic"] if r["rank_ic"] is not None and np.isfinite(r["rank_ic"])
               else -np.inf)["size"]


def _ratio(a, b) -> float | None:
    if a is None or b is None or not np.isfinite(a) or not np.isfinite(b) or b == 0:
        return None
    return float(a / b)
