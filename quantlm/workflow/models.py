"""The model stages of `quantlm run`: sft -> (reward -> rl) -> distill per variant x seed x fold, then
scoring of every model run over the test periods and the deployed model's latency.

Point in time: every fine-tuning stage of fold k gets `train_end` = fold k's train end (or the first
fold's with refit "once"), and reads the store only up to it; scoring of fold k reads bars up to
fold k's test end only and keeps the scores of its test sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from quantlm.workflow.config import RUN_NAMES, RunConfig, Variant
from quantlm.workflow.stages import StageCache, StageResult, stage_key


def model_dir(stage: StageResult) -> Path:
    """The model folder a training stage produced (its run folder's `model/`)."""
    return stage.path / "run" / "model"


@dataclass
class Chain:
    """One variant x seed: the stage results per training stage, one per train end (fold)."""

    variant: Variant
    seed: int
    stages: dict[str, list[StageResult]] = field(default_factory=dict)

    def runs(self) -> dict[str, list[StageResult]]:
        """{run name: per-fold stage results} for the stages that give trading runs."""
        return {RUN_NAMES[s] + self.variant.tag(): res for s, res in self.stages.items() if s in RUN_NAMES}

    def deployed(self) -> tuple[str, StageResult]:
        """(run name, stage) of the model that would trade: the student if distilled, else the RL policy
        if promoted (`rl_promoted`), else the SFT teacher (the last fold's)."""
        for s in ("distill", "rl", "sft"):
            if s in self.stages and not (s == "rl" and not rl_promoted(self.stages[s][-1])):
                return RUN_NAMES[s] + self.variant.tag(), self.stages[s][-1]
        raise KeyError("no model stage")


def stage_metrics(stage: StageResult) -> dict:
    """A training stage's run/metrics.json ({} if absent)."""
    import json

    path = stage.path / "run" / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def rl_promoted(stage: StageResult) -> bool:
    """Whether an RL stage beat its SFT model on validation (metrics.json `promoted`; older runs: True)."""
    return bool(stage_metrics(stage).get("promoted", True))


def _num(x: Any, fmt: str = "{:.3f}") -> str:
    return fmt.format(x) if isinstance(x, int | float) and x == x else "-"


def _finite(obj: Any) -> Any:
    """NaN / inf -> None, recursively (summary.json is written with allow_nan=False)."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def not_promoted_runs(chains: list[Chain]) -> list[str]:
    """RL run names with a stage (any seed, any fold) that was not promoted: never the default primary."""
    return sorted({RUN_NAMES["rl"] + c.variant.tag() for c in chains
                   for st in c.stages.get("rl", []) if not rl_promoted(st)})


def stepped_aside_runs(chains: list[Chain]) -> list[str]:
    """RL run names none of whose stages (any seed, any fold) was promoted: runs no book would trade."""
    rl = RUN_NAMES["rl"]
    by_run: dict[str, list[bool]] = {}
    for c in chains:
        for st in c.stages.get("rl", []):
            by_run.setdefault(rl + c.variant.tag(), []).append(rl_promoted(st))
    return sorted(name for name, promoted in by_run.items() if not any(promoted))


def post_training_notes(chain: Chain) -> tuple[dict[str, Any], list[str]]:
    """({reward, rl, distill} per fold from the stages' metrics.json, summary note lines) of one chain."""
    info: dict[str, Any] = {}
    notes: list[str] = []
    for k, st in enumerate(chain.stages.get("reward", [])):
        m = stage_metrics(st)
        row = {k2: m.get(k2) for k2 in ("pairwise_accuracy", "pairwise_accuracy_last", "baseline_cost_only_accuracy")}
        info.setdefault("reward", []).append(row)
        notes.append(f"reward model fold {k}: held-out pairwise accuracy {_num(row['pairwise_accuracy'])} "
                     f"(last step {_num(row['pairwise_accuracy_last'])}) vs cost-only baseline "
                     f"{_num(row['baseline_cost_only_accuracy'])}")
    for k, st in enumerate(chain.stages.get("rl", [])):
        m = stage_metrics(st)
        info.setdefault("rl", []).append({"promoted": m.get("promoted", True), "reason": m.get("promotion_reason")})
        if m.get("promotion_reason"):
            notes.append(f"rl fold {k}: {m['promotion_reason']}"
                         + ("" if m.get("promoted", True) else " (distillation teacher, deployed and primary candidate)"))
    for k, st in enumerate(chain.stages.get("distill", [])):
        m = stage_metrics(st)
        info.setdefault("distill", []).append({"teacher_rank_ic": m.get("teacher_rank_ic"),
                                               "rank_ic": (m.get("valid") or {}).get("rank_ic"),
                                               "sizes": m.get("sizes")})
        for r in m.get("sizes") or []:
            notes.append(f"student fold {k} size {r['size']} (hidden {r['hidden']}, layers {r['layers']}, window "
                         f"{r.get('window_bars') or '-'}): RankIC {_num(r['rank_ic'], '{:.4f}')} "
                         f"({_num(r['rank_ic_vs_teacher'], '{:.2f}')}x teacher), p50 {_num(r['p50_ms'], '{:.2f}')} ms, "
                         f"p99 {_num(r['p99_ms'], '{:.2f}')} ms" + (" [deployed]" if r.get("deployed") else ""))
    return _finite(info), notes


def _dump(obj: Any) -> Any:
    return obj.model_dump(mode="json")


def train_chain(cfg: RunConfig, variant: Variant, seed: int, store, cache: StageCache, fingerprint: str,
                pretrained: StageResult, pretrained_dir: Path, train_ends: list[pd.Timestamp],
                main: Chain | None = None) -> Chain:
    """Run (or find cached) every model stage of `variant` for `seed` and each train end.

    SFT of fold 0 starts from the pretrained model; with several train ends (refit "per_fold") SFT
    of fold k warm-starts from fold k-1's SFT model. An ablation takes the stages it does not run
    itself from `main` (same seed and fold): the SFT policy, the reward model for RL with
    reward="model", and (for an ablation of distill alone) the RL policy as the teacher. An RL policy
    that is not promoted (its metrics.json: validation RankIC / book return not better than the SFT
    model's) steps aside: the SFT model is then the distillation teacher and the deployed candidate.
    """
    from quantlm.finetune.distill import train_distill
    from quantlm.finetune.reward import train_reward
    from quantlm.finetune.rl import train_rl
    from quantlm.finetune.sft import train_sft

    chain = Chain(variant, seed)
    tag = variant.tag()
    for k, train_end in enumerate(train_ends):
        te = str(pd.Timestamp(train_end).date())
        suffix = f"/s{seed}/f{k}"
        if "sft" in variant.stages:
            prev = chain.stages["sft"][k - 1] if k > 0 else None
            init_key, init_dir = (prev.key, model_dir(prev)) if prev else (pretrained.key, pretrained_dir)
            sft_cfg = variant.stages["sft"]
            key = stage_key("sft", {"config": _dump(sft_cfg), "train_end": te, "seed": seed}, [init_key], fingerprint)

            def build_sft(tmp: Path, sft_cfg=sft_cfg, init_dir=init_dir, train_end=train_end) -> None:
                train_sft(sft_cfg, store, tmp / "run", init=init_dir, train_end=pd.Timestamp(train_end), seed=seed)

            sft = cache.run(f"sft{tag}{suffix}", key, build_sft, inputs=[init_key])
            chain.stages.setdefault("sft", []).append(sft)
        else:
            sft = main.stages["sft"][k]

        reward = None
        if "reward" in variant.stages:
            rcfg = variant.stages["reward"]
            key = stage_key("reward", {"config": _dump(rcfg), "train_end": te, "seed": seed}, [sft.key], fingerprint)

            def build_reward(tmp: Path, rcfg=rcfg, policy=model_dir(sft), train_end=train_end) -> None:
                train_reward(rcfg, store, tmp / "run", policy=policy, train_end=pd.Timestamp(train_end), seed=seed)

            reward = cache.run(f"reward{tag}{suffix}", key, build_reward, inputs=[sft.key])
            chain.stages.setdefault("reward", []).append(reward)
        elif main is not None and "reward" in main.stages:
            reward = main.stages["reward"][k]

        policy = sft  # the distillation teacher: this variant's RL policy, else its SFT model
        if "sft" not in variant.stages and main is not None and "rl" in main.stages:
            if rl_promoted(main.stages["rl"][k]):
                policy = main.stages["rl"][k]  # an ablation of distill only: the main chain's final policy
        if "rl" in variant.stages:
            rlcfg = variant.stages["rl"]
            uses_reward = getattr(rlcfg, "reward", "model") == "model" and reward is not None
            inputs = [sft.key] + ([reward.key] if uses_reward else [])
            key = stage_key("rl", {"config": _dump(rlcfg), "train_end": te, "seed": seed}, inputs, fingerprint)

            def build_rl(tmp: Path, rlcfg=rlcfg, policy=model_dir(sft), train_end=train_end,
                         reward_dir=model_dir(reward) if uses_reward else None) -> None:
                train_rl(rlcfg, store, tmp / "run", policy=policy, reward=reward_dir, train_end=pd.Timestamp(train_end),
                         seed=seed)

            rl = cache.run(f"rl{tag}{suffix}", key, build_rl, inputs=inputs)
            chain.stages.setdefault("rl", []).append(rl)
            policy = rl if rl_promoted(rl) else sft  # an RL policy that did not beat its SFT model steps aside

        if "distill" in variant.stages:
            dcfg = variant.stages["distill"]
            key = stage_key("distill", {"config": _dump(dcfg), "train_end": te, "seed": seed}, [policy.key], fingerprint)

            def build_distill(tmp: Path, dcfg=dcfg, teacher=model_dir(policy), train_end=train_end) -> None:
                train_distill(dcfg, store, tmp / "run", teacher=teacher, train_end=pd.Timestamp(train_end), seed=seed)

            chain.stages.setdefault("distill", []).append(
                cache.run(f"distill{tag}{suffix}", key, build_distill, inputs=[policy.key]))
    return chain


def score_run(run: str, seed: int, models: list[StageResult], folds: list, store, cache: StageCache,
              fingerprint: str) -> StageResult:
    """Scores of one model run and seed over every test period (`scores.parquet`: ts, symbol, score).

    One model (refit "once"): scored over first test start .. last test end in one call. One model
    per fold: model k scores fold k's test period (reading bars up to its test end only).
    """
    from quantlm.finetune.score import score_model

    if len(models) == 1:
        periods = [(folds[0].test_start, folds[-1].test_end)]
    else:
        periods = [(f.test_start, f.test_end) for f in folds]
    inputs = [m.key for m in models]
    key = stage_key("score", {"periods": [[str(a.date()), str(b.date())] for a, b in periods]}, inputs, fingerprint)

    def build(tmp: Path) -> None:
        parts = [score_model(model_dir(m), store, start, end) for m, (start, end) in zip(models, periods, strict=True)]
        pd.concat(parts, ignore_index=True).to_parquet(tmp / "scores.parquet", index=False)

    return cache.run(f"score/{run}/s{seed}", key, build, inputs=inputs)


def latency_stage(deployed: StageResult, store, cache: StageCache, fingerprint: str, n_symbols: int,
                  n_updates: int) -> StageResult:
    """Decision latency of the deployed model (`latency.json`: {"p50", "p99"} in milliseconds)."""
    import json

    from quantlm.finetune.latency import measure_latency

    config = {"n_symbols": n_symbols, "n_updates": n_updates}
    key = stage_key("latency", config, [deployed.key], fingerprint)

    def build(tmp: Path) -> None:
        res = measure_latency(model_dir(deployed), store, n_symbols=n_symbols, n_updates=n_updates)
        (tmp / "latency.json").write_text(json.dumps({**res, "model": str(model_dir(deployed))}, indent=2,
                                                     default=str))

    return cache.run("latency", key, build, inputs=[deployed.key])


__all__ = ["Chain", "latency_stage", "model_dir", "not_promoted_runs", "post_training_notes", "rl_promoted", "score_run",
           "stepped_aside_runs", "train_chain"]
