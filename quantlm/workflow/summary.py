"""summary.json of `quantlm run` and the printed table (model runs vs baselines vs oracle).

Schema (metric names exactly as in metrics.json of `quantlm evaluate`, fractions not percent):

    primary        name of the primary run (evaluate.primary, else the model run with the best RankIC)
    book           the book the gates judged: long_only, hedged (evaluate.hedge: benchmark) or long_short;
                   `runs`, `oracle` and `gates` are that book's metrics
    gates_judged   the same, in words
    books          {run: {book: {metric: mean over seeds}}}: every run's long-only and hedged book
                   (the oracle's too); prediction metrics (IC, accuracy, pick_hit_rate) are shared
    runs           {run: {metric: value}}: model runs (mean over seeds) and baselines; no oracle
    runs_std       {run: {metric: std over seeds (ddof 1)}} for runs with >= 2 seeds
    runs_by_seed   {run: {seed: {metric: value}}} for model runs (and LightGBM with >= 2 seeds)
    oracle         synthetic stores only: the oracle run's metrics + synth_oracle_rank_ic (store meta)
    gates          {gate: {value, threshold, op, passed}} of the primary run (mean over seeds), with
                   latency_p99_ms = the deployed model's measured p99
    gates_passed   every gate passed
    latency_ms     {run, p50, p99, model, ...measure_latency's other fields}: decision latency (ms per
                   update of n_symbols) of the deployed model (student if distilled, else the RL
                   policy, else the teacher; first seed, last fold); null if evaluate.latency is false
    ratios         {rank_ic_vs_oracle, ic_vs_oracle, rank_ic_vs_synth_oracle} (primary / oracle)
    period         "YYYY-MM-DD..YYYY-MM-DD": the out-of-sample sessions every run is judged on
    stack          only with evaluate.stack: {inputs, rank_ic_alone, rank_ic_stack, rank_ic_without, adds
                   (per input, means over seeds, on the test folds), weights_by_fold (first seed)}
    llm            only with an `llm:` section: {run, base, model, tokens (tokens_per_bar, prompt_tokens_mean
                   / _max, bars_mean), examples, last_loss, latency_ms (quantlm.llm.latency: p50, p99 per
                   update of n_symbols decisions, per_symbol_p50, prompt_p50, ...) or null}
    post_training  the main chain's {reward: [{pairwise_accuracy, _last, baseline_cost_only_accuracy}],
                   rl: [{promoted, reason}], distill: [{teacher_rank_ic, rank_ic, sizes}]} per fold
    notes          lines printed under the table (reward accuracy vs cost-only, RL promotion, student sizes)
    folds          [{index, train_start, train_end, test_start, test_end}]
    stages         {stage id: {key (sha256), cached, seconds}} in run order
    report, evaluate_dir, store, config, version
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from quantlm.workflow.stages import VERSION


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and isinstance(v, int | float) and math.isfinite(v)]


def mean_std(per_seed: dict[Any, dict[str, Any]]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Per metric: the mean over seeds and the std over seeds (ddof 1; None below 2 finite values)."""
    metrics = list(dict.fromkeys(k for m in per_seed.values() for k in m))
    mean, std = {}, {}
    for k in metrics:
        v = _finite([m.get(k) for m in per_seed.values()])
        mean[k] = sum(v) / len(v) if v else None
        if len(v) >= 2:
            mu = mean[k]
            std[k] = math.sqrt(sum((x - mu) ** 2 for x in v) / (len(v) - 1))
        else:
            std[k] = None
    return mean, std


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return None
    return a / b


def build_summary(cfg, store, evaluation: dict[str, Any], latency: dict[str, Any] | None, gates,
                  stages: dict[str, dict[str, Any]], folds: list, report_dir: Path, main_chain=None) -> dict[str, Any]:
    """summary.json's content (schema in the module docstring) from the evaluate stage's evaluation.json."""
    from quantlm.backtest.gates import all_passed, evaluate_gates

    runs: dict[str, dict[str, Any]] = {}
    runs_std: dict[str, dict[str, Any]] = {}
    by_seed: dict[str, dict[str, Any]] = {}
    seed_metrics = evaluation.get("seed_metrics", {})
    seed_books = evaluation.get("seed_books", {})
    books: dict[str, dict[str, Any]] = {}
    oracle = None
    for name, run in evaluation["runs"].items():
        per_book = seed_books.get(name)
        if per_book:
            names = list(next(iter(per_book.values())))
            books[name] = {b: mean_std({s: m[b] for s, m in per_book.items()})[0] for b in names}
        else:
            books[name] = run.get("books") or {"long_only": dict(run["metrics"])}
        if name == "oracle":
            oracle = dict(run["metrics"])
            continue
        per = seed_metrics.get(name)
        if per:
            runs[name], std = mean_std(per)
            by_seed[name] = per
            if len(per) >= 2:
                runs_std[name] = std
        else:
            runs[name] = dict(run["metrics"])
    synth_ic = store.meta().get("synth_oracle_rank_ic")
    if synth_ic is not None and math.isfinite(float(synth_ic)):  # "nan" on markets too small to rank
        oracle = {**(oracle or {}), "synth_oracle_rank_ic": float(synth_ic)}

    primary = evaluation["primary"]
    p = runs[primary]
    gate_metrics = {**p, "latency_p99_ms": latency["p99"] if latency else None}
    table = evaluate_gates(gate_metrics, gates)
    ratios = {}
    if oracle is not None:
        for k in ("rank_ic", "ic"):
            r = _ratio(p.get(k), oracle.get(k))
            if r is not None:
                ratios[f"{k}_vs_oracle"] = r
        r = _ratio(p.get("rank_ic"), oracle.get("synth_oracle_rank_ic"))
        if r is not None:
            ratios["rank_ic_vs_synth_oracle"] = r
    book = evaluation.get("book", "long_only")
    from quantlm.workflow.models import post_training_notes

    post, notes = post_training_notes(main_chain) if main_chain is not None else ({}, [])
    return {
        "post_training": post,
        "notes": notes,
        "primary": primary,
        "book": book,
        "gates_judged": f"the {book} book of {primary} (evaluate.hedge: the book the config deploys)",
        "books": books,
        "runs": runs,
        "runs_std": runs_std,
        "runs_by_seed": by_seed,
        "oracle": oracle,
        "gates": table,
        "gates_passed": all_passed(table),
        "latency_ms": latency,
        "ratios": ratios,
        "period": evaluation["period"],
        "folds": [{k: (str(v.date()) if hasattr(v, "date") else v) for k, v in dataclasses.asdict(f).items()}
                  for f in folds],
        "refit": cfg.evaluate.refit,
        "seeds": list(cfg.seeds),
        "stages": stages,
        "report": "report.html",
        "evaluate_dir": str(report_dir),
        "store": str(store.root),
        "config": cfg.source,
        "version": VERSION,
    }


COLUMNS = (("annual_excess_return", "excess/yr", "{:+.1%}"), ("sharpe", "Sharpe", "{:.2f}"),
           ("max_drawdown", "max DD", "{:.1%}"), ("ic", "IC", "{:.4f}"), ("rank_ic", "RankIC", "{:.4f}"),
           ("directional_accuracy", "dir.acc", "{:.3f}"), ("pick_hit_rate", "pick hit", "{:.3f}"),
           ("turnover", "turnover", "{:.2f}"))


BOOK_COLUMNS = (("annual_return", "return/yr", "{:+.1%}"), ("sharpe", "Sharpe", "{:.2f}"),
                ("max_drawdown", "max DD", "{:.1%}"), ("max_consecutive_losing_days", "losing run", "{:.0f}"),
                ("pick_hit_rate", "pick hit", "{:.3f}"))


def _cell(m: dict[str, Any], key: str, fmt: str, std: dict[str, Any] | None = None) -> str:
    v = m.get(key)
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    s = fmt.format(v)
    sd = (std or {}).get(key)
    return f"{s} ±{fmt.format(sd).lstrip('+')}" if sd is not None and key == "rank_ic" else s


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """One row per run (models first, then baselines, then the oracle), headline metrics as columns."""
    model_runs = list(summary["runs_by_seed"])
    order = model_runs + [n for n in summary["runs"] if n not in model_runs]
    book = summary.get("book", "long_only")
    table = Table(title=f"out of sample {summary['period']} (primary *, mean over seeds {summary['seeds']}; "
                  f"{book} book{'s' if book != 'long_only' else ''} where a run has one)")
    table.add_column("run")
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    for name in order:
        label = escape(f"{name} *" if name == summary["primary"] else name)
        table.add_row(label, *[_cell(summary["runs"][name], k, f, summary["runs_std"].get(name)) for k, _, f in COLUMNS])
    if summary["oracle"] and "rank_ic" in summary["oracle"]:
        table.add_row("oracle", *[_cell(summary["oracle"], k, f) for k, _, f in COLUMNS])
    console.print(table)
    books = summary.get("books", {})
    if any(len(b) > 1 for b in books.values()):
        both = Table(title=f"long-only and hedged books (gates judge the {summary.get('book')} book)")
        for header in ("run", "book", *[h for k, h, _ in BOOK_COLUMNS]):
            both.add_column(header, justify="left" if header in ("run", "book") else "right")
        for name in [*order, "oracle"]:
            for i, (b, m) in enumerate(books.get(name, {}).items()):
                both.add_row(escape(name) if i == 0 else "", b, *[_cell(m, k, f) for k, _, f in BOOK_COLUMNS])
        console.print(both)
    gates = summary["gates"]
    passed = sum(g["passed"] for g in gates.values())
    lat = summary["latency_ms"]
    lat_txt = f"deployed {lat['run']} latency p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms; " if lat else ""
    ratio = summary["ratios"].get("rank_ic_vs_oracle")
    ratio_txt = f"RankIC / oracle {ratio:.2f}; " if ratio is not None else ""
    console.print(f"primary {escape(summary['primary'])}: {ratio_txt}gates ({summary.get('book', 'long_only')} book) "
                  f"passed {passed}/{len(gates)}"
                  + (f"; {escape(lat_txt.rstrip('; '))}" if lat_txt else ""))
    for note in summary.get("notes", []):
        console.print(f"note: {escape(note)}", highlight=False)
    if summary.get("stack"):
        from quantlm.workflow.stack_stage import print_stack

        print_stack(summary["stack"], console)
    llm = summary.get("llm")
    if llm:
        tok, lat = llm.get("tokens") or {}, llm.get("latency_ms")
        lat_txt = (f"; latency p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms per update of {lat['n_symbols']} "
                   f"symbols ({lat['per_symbol_p50']:.2f} ms per symbol)" if lat else "")
        console.print(f"llm: {tok.get('tokens_per_bar', float('nan')):.2f} tokens per bar, prompts "
                      f"{tok.get('prompt_tokens_mean', float('nan')):.0f} tokens on average{lat_txt}", highlight=False)


__all__ = ["build_summary", "mean_std", "print_summary"]
