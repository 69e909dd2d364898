"""The `stack` run of `quantlm run` (evaluate.stack: true): the market GPT blended with LightGBM and the rules.

Per seed one cached stage `stack/s<seed>` reads the primary model run's scores (evaluate.primary when
it names a model run, else `teacher`), LightGBM's scores of the same seed and reversal-5 / momentum-20,
and writes `scores.parquet` (the stacked Scores over every fold's test sessions, weights fitted per
fold on earlier out-of-sample sessions only: `quantlm.baselines.stack`) and `stack.json` (the inputs,
the weights per fold, and what each part adds: RankIC alone, of the stack, and of the stack without
each input). The evaluate stage backtests `stack` like any other run; the summary carries `stack`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from quantlm.baselines.stack import LABEL_SESSIONS, RIDGE, WINDOW_SESSIONS
from quantlm.workflow.stages import StageCache, StageResult, stage_key

RUN_NAME = "stack"
RULE_RUNS = ("lightgbm", "reversal-5", "momentum-20")


def stack_model_run(cfg, scores: dict[str, dict[int, StageResult]]) -> str | None:
    """The market-GPT run the stack takes: evaluate.primary when it is a model run, else `teacher`."""
    primary = cfg.evaluate.primary
    if primary in scores and primary != RUN_NAME:
        return primary
    return "teacher" if "teacher" in scores else next((n for n in scores if n != RUN_NAME), None)


def stack_stage(cfg, setup, cache: StageCache, fingerprint: str, baselines: StageResult,
                scores: dict[str, dict[int, StageResult]]) -> tuple[dict[int, StageResult], dict[str, Any]] | None:
    """Run (or find cached) the stack of every seed; ({seed: stage}, the summary entry), or None when
    there is no model run or no baseline to stack with."""
    from quantlm.baselines.compare import BaselineScores

    if getattr(setup, "timing", False):  # a store too small to rank: the stack blends per-session ranks
        cache.console.print("[yellow]stack: skipped (it blends per-session ranks; this store has no cross-section "
                            "to rank: a timing book)[/]")
        return None
    model = stack_model_run(cfg, scores)
    base = BaselineScores.load(baselines.path)
    rules = [r for r in RULE_RUNS if r in base.scores]
    if model is None or not rules:
        cache.console.print("[yellow]stack: skipped (it needs a model run and at least one of "
                            f"{', '.join(RULE_RUNS)} among the baselines)[/]")
        return None
    sessions = pd.DatetimeIndex(sorted(pd.unique(pd.DatetimeIndex(setup.bars["ts"]))))
    folds = [{"index": f.index, "test_start": str(f.test_start), "test_end": str(f.test_end)} for f in setup.folds]
    out: dict[int, StageResult] = {}
    entries: dict[int, dict[str, Any]] = {}
    for seed, model_stage in scores[model].items():
        inputs_keys = [baselines.key, model_stage.key]
        key = stage_key(RUN_NAME, {"model": model, "rules": rules, "seed": int(seed), "folds": folds,
                                   "fill": setup.config.fill, "ridge": RIDGE, "window_sessions": WINDOW_SESSIONS,
                                   "label_sessions": LABEL_SESSIONS}, inputs_keys, fingerprint)

        def build(tmp: Path, seed=seed, model_stage=model_stage) -> None:
            from quantlm.baselines.stack import what_each_part_adds

            inputs = {model: pd.read_parquet(model_stage.path / "scores.parquet")}
            for r in rules:
                by_seed = base.seed_scores.get(r, {})
                inputs[r] = by_seed.get(int(seed), base.scores[r])
            stacked, adds = what_each_part_adds(inputs, setup.labels, setup.folds, sessions)
            stacked.to_parquet(tmp / "scores.parquet", index=False)
            (tmp / "stack.json").write_text(json.dumps({"inputs": list(inputs), **adds}, indent=2))

        out[int(seed)] = cache.run(f"{RUN_NAME}/s{seed}", key, build, inputs=inputs_keys)
        entries[int(seed)] = json.loads((out[int(seed)].path / "stack.json").read_text())
    return out, summary_entry(entries)


def summary_entry(entries: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """summary.json's `stack`: inputs, RankIC alone / stack / without each input and what each adds
    (means over seeds), and the first seed's weights per fold."""
    import numpy as np

    first = next(iter(entries.values()))

    def mean(get) -> float | None:
        vals = [v for v in (get(e) for e in entries.values()) if v is not None and np.isfinite(v)]
        return float(np.mean(vals)) if vals else None

    names = first["inputs"]
    return {"inputs": names, "seeds": list(entries),
            "rank_ic_alone": {n: mean(lambda e, n=n: e["alone"].get(n)) for n in names},
            "rank_ic_stack": mean(lambda e: e["stack"]),
            "rank_ic_without": {n: mean(lambda e, n=n: e["without"].get(n)) for n in first["without"]},
            "adds": {n: mean(lambda e, n=n: e["adds"].get(n)) for n in first["adds"]},
            "weights_by_fold": [{"fold": f["fold"], "test_start": f["test_start"], "fitted": f["fitted"],
                                 "fit_sessions": f["fit_sessions"], **f["weights"]} for f in first["folds"]]}


def print_stack(entry: dict[str, Any], console) -> None:
    """What each part of the stack adds, as one table (RankIC on the test folds, mean over seeds)."""
    from rich.table import Table

    table = Table(title="stack: what each part adds (RankIC on the test folds)")
    for col in ("input", "alone", "stack without it", "adds"):
        table.add_column(col, justify="left" if col == "input" else "right")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:+.4f}"

    for n in entry["inputs"]:
        table.add_row(n, fmt(entry["rank_ic_alone"].get(n)), fmt(entry["rank_ic_without"].get(n)),
                      fmt(entry["adds"].get(n)))
    table.add_row("stack", fmt(entry["rank_ic_stack"]), "", "")
    console.print(table)


__all__ = ["RULE_RUNS", "RUN_NAME", "print_stack", "stack_model_run", "stack_stage", "summary_entry"]
