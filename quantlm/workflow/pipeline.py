"""`quantlm run CONFIG`: data -> pretrain -> sft -> (reward -> rl) -> distill -> walk-forward evaluation of the
models, the baselines and the oracle -> report.html and summary.json in the run folder.

Order and point-in-time rules:

1. data (synthesise or import into the store; or use the store as is), embed texts;
2. the walk-forward fold calendar (`quantlm.baselines.compare.evaluation_setup`, the same folds
   `quantlm evaluate` uses) is laid BEFORE any training: pretraining reads bars up to `pretrain_end`
   only: the first fold's train end (= first test start minus 1 + 2 embargo sessions) minus SFT's
   validation block and the label horizon (`data.end` of the pretraining config is capped there,
   its tokenizer is fitted before it), and each fine-tuning stage gets `train_end` = its fold's
   train end;
3. pretrain (once), then per seed x variant (main + ablations) x fold the model stages
   (`quantlm.workflow.models`), the scoring of every model run, the baselines, the deployed model's
   latency and the evaluation (`run_evaluation` with the model runs as `extra_scores`); the chains
   and scorings are units run by an executor (`quantlm.workflow.units`: this process by default, Ray
   tasks with `evaluate.executor: ray`), pretraining, latency and evaluation run in this process;
4. summary.json (`quantlm.workflow.summary`), report.html copied to the run folder, a printed table.

Every step is a cached stage (`quantlm.workflow.stages`): a second run with the same config prints
"cached" for each; a crashed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from rich.console import Console

from quantlm.workflow.config import RunConfig
from quantlm.workflow.models import latency_stage, not_promoted_runs
from quantlm.workflow.stages import StageCache, StageResult, file_stamp, stage_key, store_fingerprint
from quantlm.workflow.units import RunUnits


class WorkflowError(ValueError):
    """A run that cannot proceed with this store or config (shown to CLI users as a plain message)."""

    user_facing = True


# ------------------------------------------------------------------------------------------ data
def preflight(cfg: RunConfig, store) -> None:
    """Input problems found before anything is written: a missing store, import path or pretrained model."""
    if cfg.data.import_ is None and cfg.synth is None and not store.exists():
        raise WorkflowError(f"no quantlm store at {store.root}: give data.synth or data.import in the config, "
                            "or point --store at an existing store")
    if cfg.data.import_ is not None:
        missing = [p for p in cfg.data.import_.paths if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"{cfg.source}: data.import.paths: not found: {', '.join(missing)}")
    init = cfg.pretrain_init
    if init is not None and not ((init / "config.json").exists() and (init / "tokenizer" / "tokenizer.json").exists()):
        raise FileNotFoundError(f"{cfg.source}: pretrain.init: {init} is not a pretrained model folder (needs "
                                "config.json and tokenizer/)")


def data_stage(cfg: RunConfig, store, cache: StageCache) -> StageResult | None:
    """Synthesise or import the configured data into the store (None: the store is used as is)."""
    d = cfg.data
    if d.import_ is None and cfg.synth is None:
        return None
    if cfg.synth is not None:
        from quantlm.data.synth import write_market

        wanted = cfg.synth.model_dump_json()
        key = stage_key("data", {"synth": json.loads(wanted)})

        def build(tmp: Path) -> None:
            stored = store.meta().get("synth_config")
            if stored is not None and stored != wanted:
                raise WorkflowError(f"the store at {store.root} already holds a synthetic market made with another "
                                    "config; use a fresh --store (or delete that one) for this data.synth")
            if stored is None:
                cache.console.print(f"generating the synthetic market ({cfg.synth.n_symbols} stocks) into {store.root}")
                write_market(store, cfg.synth)
            (tmp / "data.json").write_text(json.dumps({"synth": json.loads(wanted), "store": str(store.root)}))

        return cache.run("data", key, build, valid=lambda _: store.meta().get("synth_config") == wanted)

    from quantlm.data.importers import import_paths

    imp = d.import_
    key = stage_key("data", {"import": imp.model_dump(mode="json"), "files": file_stamp(imp.paths)})

    def build_import(tmp: Path) -> None:
        report = import_paths(imp.paths, store, market=imp.market, freq=imp.freq, format=imp.format,
                              replace=imp.replace)
        cache.console.print(f"imported: {report}")
        (tmp / "data.json").write_text(json.dumps({"import": imp.model_dump(mode="json"), "report": str(report),
                                                   "store_fingerprint": store_fingerprint(store)}))

    def still_there(final: Path) -> bool:
        return json.loads((final / "data.json").read_text())["store_fingerprint"] == store_fingerprint(store)

    return cache.run("data", key, build_import, valid=still_there)


def embed_stage(store, cache: StageCache, fingerprint: str) -> StageResult:
    """Embed the store's texts with the offline MiniLM (incremental; the vectors are cached in the store).

    The engine is `quantlm.data.text.default_method()` (ONNX Runtime, float32: the same vectors and
    cache key as sentence-transformers, ~2.8x less CPU time; `benchmarks/bench_embed.py`)."""
    import time

    from quantlm.data.text import DEFAULT_MODEL, EMBEDDINGS_TABLE, default_method, embed_texts

    key = stage_key("embed", {"model": DEFAULT_MODEL}, store=fingerprint)

    def build(tmp: Path) -> None:
        method, t0, c0 = default_method(), time.perf_counter(), time.process_time()
        table = embed_texts(store, method=method)
        (tmp / "embed.json").write_text(json.dumps({"model": DEFAULT_MODEL, "method": method, "texts": len(table),
                                                    "new": int(table.attrs.get("n_new", 0)),
                                                    "seconds": round(time.perf_counter() - t0, 2),
                                                    "cpu_seconds": round(time.process_time() - c0, 2)}))

    def complete(_: Path) -> bool:
        n_texts = store.read_table("texts")["text_id"].nunique() if store.has_table("texts") else 0
        return len(store.read_table(EMBEDDINGS_TABLE, key=DEFAULT_MODEL)) >= n_texts

    return cache.run("embed", key, build, valid=complete)


# -------------------------------------------------------------------------------------- pretrain
def capped_pretrain_config(pcfg, cap: pd.Timestamp, console: Console | None = None,
                           data_end: pd.Timestamp | None = None):
    """The pretraining config whose TRAINING windows end by `cap` (`pretrain_end`: before SFT's validation
    block and its label horizon).

    data_end (the first fold's train end, default cap): the last session pretraining may read at all. Bars
    after `cap` up to it form pretraining's validation windows (split = cap): they only report a held-out
    loss, pretraining keeps its last step and selects nothing on them, so SFT's validation block stays
    unseen by the weights. A configured data.end / split earlier than that is kept; a split on or after
    the data end falls back to valid_fraction.
    """
    data = pcfg.data
    limit = pd.Timestamp(data_end) if data_end is not None else pd.Timestamp(cap)
    end = pd.Timestamp(data.end) if data.end is not None else None
    end = limit if end is None or end > limit else end
    split = pd.Timestamp(data.split) if data.split is not None else None
    if end > cap:
        split = cap if split is None or split > cap else split
    elif split is not None and split >= end:
        if console is not None:
            console.print(f"[yellow]pretrain.data.split {split.date()} is not before the data end {end.date()} "
                          "(first fold's train end): using valid_fraction instead[/]")
        split = None
    data = data.model_copy(update={"end": str(end.date()), "split": None if split is None else str(split.date()),
                                   "store": None})
    return pcfg.model_copy(update={"data": data, "run_dir": "stage"})


def pretrain_end(cfg: RunConfig, store, cap: pd.Timestamp) -> pd.Timestamp:
    """The last session pretraining may read: SFT of the first fold validates on its last `valid_sessions`
    sessions up to `cap` (the first fold's train end) and its labels look `horizon` sessions ahead, so
    pretraining ends valid_sessions + horizon sessions before cap (largest over the variants' sft
    sections); `quantlm.finetune.common.split_rows` checks it again from the model's train_config."""
    need = 0
    for variant in cfg.variants:
        sft = variant.stages.get("sft") or cfg.main.stages.get("sft")
        if sft is None:
            continue
        t = sft.targets
        horizon = max([*t.horizons, t.barrier_horizon if t.direction == "triple_barrier" else 1])
        need = max(need, sft.valid_sessions + horizon)
    cal = store.calendar("1d", market=store.meta().get("market"))
    i = int(cal.searchsorted(pd.Timestamp(cap), side="right")) - 1 - need
    if i < 0:
        raise WorkflowError(f"the first fold's train end {pd.Timestamp(cap).date()} leaves no session for pretraining "
                            f"before SFT's validation block ({need} sessions = valid_sessions + label horizon): "
                            "lower sft.valid_sessions or start the evaluation later")
    return pd.Timestamp(cal[i])


def pretrain_stage(cfg: RunConfig, store, cache: StageCache, fingerprint: str, cap: pd.Timestamp,
                   progress: bool = False, data_end: pd.Timestamp | None = None) -> tuple[StageResult, Path]:
    """(stage, pretrained model folder): pretrain on windows up to `cap` (`pretrain_end`), validating on
    bars up to `data_end` (see `capped_pretrain_config`), or the given `pretrain.init` folder."""
    if cfg.pretrain_init is not None:
        return _pretrained_init(cfg.pretrain_init, cache, cap)
    from quantlm.train.loop import pretrain

    pcfg = capped_pretrain_config(cfg.pretrain, cap, cache.console, data_end=data_end)
    if pcfg.data.split is not None and pcfg.train.eval_batches > 0:
        cal = store.calendar("1d", market=store.meta().get("market"))
        after = int(((cal > pd.Timestamp(pcfg.data.split)) & (cal <= pd.Timestamp(pcfg.data.end))).sum())
        if after < pcfg.data.window_bars:  # too short a history for one validation window: train without one
            cache.console.print(f"[yellow]pretraining: {after} sessions between the training end {pcfg.data.split} and "
                                f"{pcfg.data.end} hold no {pcfg.data.window_bars}-bar validation window; "
                                "validation is skipped[/]")
            pcfg = pcfg.model_copy(update={"train": pcfg.train.model_copy(update={"eval_batches": 0})})
    source, inputs = store.root, []
    if cfg.data.pretrain_synth_seeds:  # extra synthetic markets join the corpus (quantlm.workflow.corpus)
        from quantlm.workflow.corpus import corpus_stage

        corpus = corpus_stage(cfg, store, cache, fingerprint, pd.Timestamp(pcfg.data.end))
        source, inputs = corpus.path / "store", [corpus.key]
    key = stage_key("pretrain", pcfg.model_dump(mode="json"), inputs, store=fingerprint)

    def build(tmp: Path) -> None:
        out = tmp / "run"
        resume = any((out / "checkpoints").glob("step_*/trainer.json"))
        if resume:
            cache.console.print("pretrain: resuming from the last checkpoint")
        elif out.exists():
            shutil.rmtree(out)
        pretrain(pcfg, store=source, out=out, resume=resume, progress=progress)
        if not (out / "model").exists():
            raise RuntimeError(f"pretraining ended without a model folder in {out}")

    res = cache.run("pretrain", key, build, resumable=True)
    return res, res.path / "run" / "model"


def _pretrained_init(path: Path, cache: StageCache, cap: pd.Timestamp) -> tuple[StageResult, Path]:
    tok = path / "tokenizer" / "tokenizer.json"
    fit_end = json.loads(tok.read_text()).get("fit_end")
    if fit_end is None or pd.Timestamp(fit_end) > cap:
        cache.console.print(f"[yellow]warning: the pretrained model {path} was fitted on data up to {fit_end}, after "
                            f"the first fold's train end {cap.date()}: its evaluation may have seen the test period[/]")
    key = stage_key("pretrain-init", {"path": str(path.resolve()), "tokenizer": tok.read_text(),
                                      "files": file_stamp([path])})
    return cache.note("pretrain", key, path), path


# -------------------------------------------------------------------------------------- evaluate
def evaluate_options(cfg: RunConfig):
    """The EvaluateOptions of the config's evaluate section (LightGBM seeds = the run's seeds)."""
    from quantlm.baselines.compare import EvaluateOptions

    ev = cfg.evaluate
    return EvaluateOptions(market=ev.market, strategy=ev.strategy, topk=ev.topk, n_drop=ev.n_drop, fill=ev.fill,
                           costs=ev.costs, cash=ev.cash, mode=ev.mode, train_years=ev.train_years,
                           test_months=ev.test_months, seeds=list(cfg.seeds), jobs=ev.jobs, baselines=list(ev.baselines),
                           num_boost_round=ev.num_boost_round, hedge=ev.hedge, hedge_settings=ev.hedge_settings)


def gates_of(cfg: RunConfig):
    """The Gates of evaluate.gates (a YAML file, an inline mapping, or the defaults)."""
    from quantlm.backtest.gates import Gates

    g = cfg.evaluate.gates
    if g is None:
        return Gates()
    return Gates.from_yaml(g) if isinstance(g, str) else Gates.from_mapping(g, source="evaluate.gates")


def baselines_stage(store, options, setup, cache: StageCache, fingerprint: str, executor=None) -> StageResult:
    """Scores of the baselines over the evaluation period (LightGBM walk-forward, momentum, reversal, oracle);
    executor: where the LightGBM folds run (None: options.jobs processes)."""
    from quantlm.baselines.compare import baseline_scores

    config = {k: v for k, v in dataclasses.asdict(options).items()
              if k not in ("jobs", "gates_file", "hedge", "hedge_settings")}  # scores do not depend on the hedge
    key = stage_key("baselines", config, store=fingerprint)
    return cache.run("baselines", key, lambda tmp: baseline_scores(store, setup, options, executor=executor).save(tmp))


def evaluate_stage(cfg: RunConfig, store, options, setup, cache: StageCache, fingerprint: str,
                   baselines: StageResult, scores: dict[str, dict[int, StageResult]],
                   not_primary: list[str] | None = None) -> StageResult:
    """run_evaluation of the model runs and the baselines (report.html, metrics.json, evaluation.json);
    not_primary: runs never chosen as the default primary (RL runs that were not promoted)."""
    from quantlm.backtest.outputs import to_jsonable
    from quantlm.baselines.compare import BaselineScores, run_evaluation

    gates = gates_of(cfg)
    # Latency is not a backtest metric: its gate is judged in summary.json with the measured latency.
    report_gates = gates.model_copy(update={"latency_p99_ms": None})
    runs = {name: {seed: r.key for seed, r in by_seed.items()} for name, by_seed in scores.items()}
    evaluate = cfg.evaluate.model_dump(mode="json", exclude={"executor", "ray"})  # results do not depend on them
    config = {"evaluate": evaluate, "gates": gates.model_dump(), "title": cfg.report.title,
              "runs": runs, "seeds": cfg.seeds} | ({"not_primary": sorted(not_primary)} if not_primary else {})
    inputs = [baselines.key] + [k for by_seed in runs.values() for k in by_seed.values()]
    key = stage_key("evaluate", config, inputs, fingerprint)

    def build(tmp: Path) -> None:
        extra = {name: {seed: pd.read_parquet(r.path / "scores.parquet") for seed, r in by_seed.items()}
                 for name, by_seed in scores.items()}
        res = run_evaluation(store, tmp / "report", options, extra_scores=extra, primary=cfg.evaluate.primary,
                             baselines=BaselineScores.load(baselines.path), gates=report_gates,
                             title=cfg.report.title, setup=setup, not_primary=tuple(not_primary or ()))
        payload = {"primary": res["primary"], "period": res["period"], "runs": res["runs"],
                   "seed_metrics": res["seed_metrics"], "seed_books": res["seed_books"], "book": res["book"]}
        (tmp / "evaluation.json").write_text(json.dumps(to_jsonable(payload), indent=2, allow_nan=False))

    return cache.run("evaluate", key, build, inputs=inputs)


# -------------------------------------------------------------------------------------- the run
def run_workflow(cfg: RunConfig, store, run_dir: str | Path | None = None, console: Console | None = None,
                 force: list[str] | tuple[str, ...] = (), progress: bool = False, executor=None,
                 stages_dir: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) every stage of `cfg` against `store`; returns the summary also written to
    `run_dir/summary.json` (default run_dir: the config's).

    executor: where the independent units run (`quantlm.workflow.executor`; default: the one
    `cfg.evaluate.executor` names, closed at the end); stages_dir: the stage cache folder (default
    run_dir/stages; a sweep's variants share one)."""
    from quantlm.workflow.executor import make_executor

    if executor is not None:
        return _run_workflow(cfg, store, run_dir, console, force, progress, executor, stages_dir)
    ev = cfg.evaluate
    preflight(cfg, store)  # input problems are reported before a Ray instance starts
    executor = make_executor(ev.executor, 1, ev.ray)
    try:
        return _run_workflow(cfg, store, run_dir, console, force, progress, executor, stages_dir)
    finally:
        executor.close()


def _run_workflow(cfg: RunConfig, store, run_dir, console, force, progress, executor, stages_dir) -> dict[str, Any]:
    from quantlm.baselines.compare import evaluation_setup
    from quantlm.workflow.summary import build_summary, print_summary

    console = console or Console()
    preflight(cfg, store)
    run_dir = Path(run_dir) if run_dir is not None else cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.raw, sort_keys=False))
    cache = StageCache(run_dir, console, force, stages_dir=stages_dir)

    data_stage(cfg, store, cache)
    fingerprint = store_fingerprint(store)
    if cfg.data.embed_texts:
        embed_stage(store, cache, fingerprint)
    options = evaluate_options(cfg)
    setup = evaluation_setup(store, options)
    folds = setup.folds
    cap = pretrain_end(cfg, store, folds[0].train_end)  # before SFT's validation block of the first fold
    console.print(f"walk-forward: {len(folds)} {options.mode} fold(s), test {setup.start:%Y-%m-%d}..{setup.end:%Y-%m-%d};"
                  f" pretraining trains on bars up to {cap:%Y-%m-%d} (validates up to {folds[0].train_end:%Y-%m-%d})")
    pretrained, pretrained_dir = pretrain_stage(cfg, store, cache, fingerprint, cap, progress,
                                                data_end=folds[0].train_end)
    # SFT trains up to the fold's train end (its validation block follows pretraining's cap, not precedes it)
    train_ends = [folds[0].train_end] if cfg.evaluate.refit == "once" else [f.train_end for f in folds]

    units = RunUnits(cfg, store, cache, fingerprint, pretrained, pretrained_dir, train_ends, folds)
    chains = units.train_chains(executor)
    scores = units.score_all(executor, chains)
    units_runs = [run for chain in chains for run in chain.runs()]
    # LightGBM folds: Ray tasks under the ray executor, else evaluate.jobs processes
    baselines = baselines_stage(store, options, setup, cache, fingerprint,
                                executor if getattr(executor, "name", "") == "ray" else None)
    stack_entry = None
    if cfg.evaluate.stack:  # the primary model + LightGBM + the rules, weights per fold (quantlm.workflow.stack_stage)
        from quantlm.workflow.stack_stage import stack_stage

        stacked = stack_stage(cfg, setup, cache, fingerprint, baselines, scores)
        if stacked is not None:
            scores["stack"], stack_entry = stacked
    llm_entry = None
    if cfg.llm is not None:  # a general LLM with LoRA beside the market GPT (quantlm.workflow.llm_stage)
        from quantlm.workflow.llm_stage import RUN_NAME, run_llm

        scores[RUN_NAME], llm_entry = run_llm(cfg.llm, cfg.seeds, store, cache, fingerprint, train_ends, folds)
    latency = None
    if cfg.evaluate.latency:
        deployed_run, deployed = chains[0].deployed()
        lat = latency_stage(deployed, store, cache, fingerprint, cfg.evaluate.latency_symbols,
                            cfg.evaluate.latency_updates)
        latency = {"run": deployed_run, **json.loads((lat.path / "latency.json").read_text())}
    evaluation = evaluate_stage(cfg, store, options, setup, cache, fingerprint, baselines, scores,
                                not_primary=not_promoted_runs(chains))

    shutil.copyfile(evaluation.path / "report" / "report.html", run_dir / "report.html")
    evaluated = json.loads((evaluation.path / "evaluation.json").read_text())
    if evaluated["primary"] == "llm" and llm_entry is not None and llm_entry.get("latency_ms"):
        latency = {"run": "llm", **llm_entry["latency_ms"]}  # a primary LLM is gated on its own latency
    summary = build_summary(cfg, store, evaluated, latency,
                            gates_of(cfg), cache.records(), folds, evaluation.path / "report", chains[0])
    for run in sorted(set(units_runs) - set(scores)):  # evaluate.score_stepped_aside: false
        summary.setdefault("notes", []).append(f"{run}: promoted in no seed and fold (it stepped aside everywhere), so "
                                               "it is not scored on the test periods (evaluate.score_stepped_aside)")
    if llm_entry is not None:
        summary["llm"] = llm_entry
    if stack_entry is not None:
        summary["stack"] = stack_entry
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, allow_nan=False))
    tmp.replace(run_dir / "summary.json")
    refresh_deployed_card(chains[0], summary)
    print_summary(summary, console)
    console.print(f"report: {run_dir / 'report.html'}  summary: {run_dir / 'summary.json'}")
    return summary


def refresh_deployed_card(chain, summary: dict[str, Any]) -> None:
    """Write the walk-forward metrics of the deployed model's run into its model card (README.md)."""
    from quantlm.model.card import refresh_model_card
    from quantlm.workflow.models import model_dir

    try:
        run, stage = chain.deployed()
    except KeyError:  # no trained model in this run
        return
    metrics = {k: v for k, v in summary["runs"].get(run, {}).items() if isinstance(v, int | float)}
    refresh_model_card(model_dir(stage), metrics={"walk_forward": {"run": run, "period": summary.get("period"),
                                                                   **metrics}})


__all__ = ["WorkflowError", "capped_pretrain_config", "pretrain_end", "data_stage", "preflight", "embed_stage", "evaluate_options", "gates_of",
           "pretrain_stage", "run_workflow"]
