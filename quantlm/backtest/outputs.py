"""Write a backtest's results to a folder: metrics.json, equity.csv, trades.csv, report.html.

All files are written into a staging folder next to `out_dir` first and moved in only when every
file is complete, so a failure leaves no partial set behind (an existing `out_dir` keeps its
other files; a new one appears in one rename).

metrics.json: {"metrics": {...}, "gates": {gate: {value, threshold, op, passed}}, "gates_passed",
"book", "books", "config": {...}, "runs": {name: {"metrics", "book", "books", "gates", "gates_passed"}},
...extra}; NaN is written as null. Gates judge the book the config deploys (`config.hedge`): "metrics"
is that book's, "book" names it (long_only, hedged or long_short) and, for hedged configs, "books"
holds {"long_only": metrics, <hedged book>: metrics} (prediction metrics are the same for both).
equity.csv: ts, equity, cash, benchmark, excess, drawdown, exposure, turnover, costs, where ts is
YYYY-MM-DD when every stamp is a midnight (daily sessions), else YYYY-MM-DD HH:MM:SS (intraday bars), and
excess = strategy growth / benchmark growth - 1 and drawdown = equity / running peak - 1 (both
fractions; the starting cash is the first peak); hedged configs add hedged_equity and hedged_drawdown
(the deployed book), and for the benchmark overlay futures_notional and margin (currency).
trades.csv: every order the engine saw, rejections included (status, reason).

Prediction metrics (IC, RankIC, directional accuracy) need a `score` column; a weights-only signals
table (strategy "weights") gets them as null and the note NO_SCORE_NOTE in metrics.json's "notes".
Their labels follow the backtest's fill (`quantlm.features.labels.evaluation_labels`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quantlm.backtest.gates import Gates, all_passed, evaluate_gates
from quantlm.backtest.metrics import benchmark_returns, compute_metrics, drawdown_series, ic_series

PREDICTION_KEYS = ("ic", "icir", "rank_ic", "rank_icir", "directional_accuracy", "pick_hit_rate")

BaselineArg = Any  # BacktestResult | tuple[BacktestResult, Scores | None]
NO_SCORE_NOTE = "no score column: prediction metrics skipped"


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: NaN/inf -> None, timestamps -> ISO strings, numpy scalars -> Python."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [to_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, pd.Timestamp | np.datetime64):
        return None if pd.isna(value) else pd.Timestamp(value).isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if hasattr(value, "model_dump"):
        return to_jsonable(value.model_dump())
    if hasattr(value, "__dict__"):
        return to_jsonable({k: v for k, v in vars(value).items() if not k.startswith("_")})
    return str(value)


def ts_format(ts: pd.DatetimeIndex | pd.Series) -> str:
    """strftime format that loses nothing: '%Y-%m-%d' if every stamp is a midnight, else with the time."""
    idx = pd.DatetimeIndex(ts)
    idx = idx[~idx.isna()]
    return "%Y-%m-%d" if (idx == idx.normalize()).all() else "%Y-%m-%d %H:%M:%S"


def equity_table(result) -> pd.DataFrame:
    """Per-session table of equity.csv (definitions in the module docstring); ts keeps its time of day
    (intraday bars) and is written by `write_outputs` with `ts_format`."""
    r = result.returns()
    wealth = (1.0 + r.fillna(0.0)).cumprod()
    out = pd.DataFrame({"ts": pd.DatetimeIndex(result.equity.index), "equity": result.equity.to_numpy()})
    idx = result.equity.index

    def col(name: str) -> np.ndarray:
        s = getattr(result, name, None)
        return s.reindex(idx).to_numpy() if s is not None else np.full(len(idx), np.nan)

    out["cash"] = col("cash")
    out["benchmark"] = col("benchmark")
    rb = benchmark_returns(result)
    out["excess"] = (wealth / (1.0 + rb).cumprod() - 1.0).to_numpy() if rb is not None else np.nan
    out["drawdown"] = drawdown_series(r).to_numpy()
    for name in ("exposure", "turnover", "costs"):
        out[name] = col(name)
    hedged = getattr(result, "hedged", None)
    if hedged is not None:
        out["hedged_equity"] = hedged.equity.reindex(idx).to_numpy()
        out["hedged_drawdown"] = drawdown_series(hedged.returns()).reindex(idx).to_numpy()
        detail = getattr(hedged, "hedge_detail", None)
        if detail is not None:
            out["futures_notional"] = detail["notional"].reindex(idx).to_numpy()
            out["margin"] = detail["margin"].reindex(idx).to_numpy()
    return out


def benchmark_label_series(result, benchmark_bars: pd.DataFrame | None = None, fill: str = "open") -> pd.Series | None:
    """The benchmark's evaluation label by session (for `pick_hit_rate`): from its bars under `fill`
    (`evaluation_labels`: bought at t+1's fill price, sold at t+2's), else from the result's benchmark
    closes (close(t+2) / close(t+1) - 1). None without a benchmark."""
    from quantlm.features.labels import evaluation_labels

    if benchmark_bars is not None and len(benchmark_bars):
        bench = getattr(getattr(result, "config", None), "benchmark", None)
        bars = benchmark_bars
        if bench is not None and (bars["symbol"].astype(str) == bench).any():
            bars = bars[bars["symbol"].astype(str) == bench]
        if bars["symbol"].nunique() == 1 and bars["open" if fill == "open" else "close"].notna().all():
            try:
                lab = evaluation_labels(bars.reset_index(drop=True), fill)
                return pd.Series(lab["label"].to_numpy(dtype="float64"), index=pd.DatetimeIndex(lab["ts"]))
            except ValueError:  # e.g. vwap on a benchmark without volume: fall back to its closes
                pass
    closes = getattr(result, "benchmark", None)
    if closes is None or len(closes) == 0:
        return None
    c = closes.astype("float64")
    return (c.shift(-2) / c.shift(-1) - 1.0).rename("label")


def book_metrics(result, scores: pd.DataFrame | None, labels: pd.DataFrame | None, market: str = "cn",
                 benchmark_labels: pd.Series | None = None) -> dict[str, Any]:
    """{"book": the deployed book's name, "metrics": its metrics, "books": {book: metrics}} of a result.

    Without a hedged book, "books" holds only long_only. The hedged book's prediction metrics (IC,
    accuracy, pick hit rate) are the long book's: both trade on the same scores."""
    long_only = compute_metrics(result, scores, labels, market=market, benchmark_labels=benchmark_labels)
    books = {"long_only": long_only}
    hedged = getattr(result, "hedged", None)
    if hedged is None:
        return {"book": "long_only", "metrics": long_only, "books": books}
    m = compute_metrics(hedged, market=market)
    m.update({k: long_only[k] for k in PREDICTION_KEYS})
    books[hedged.book] = m
    return {"book": hedged.book, "metrics": m, "books": books}


def _split_baseline(value: BaselineArg) -> tuple[Any, pd.DataFrame | None]:
    if isinstance(value, tuple):
        return value[0], value[1]
    return value, None


def _with_score(scores: pd.DataFrame | None) -> pd.DataFrame | None:
    """`scores` if it has a score column to judge predictions by, else None (e.g. a weights file)."""
    return scores if scores is not None and "score" in scores.columns else None


def _gates_of(gates: Gates | Mapping | None) -> Gates:
    if isinstance(gates, Gates):
        return gates
    return Gates.from_mapping(dict(gates) if gates is not None else None)


def write_outputs(result, out_dir: str | Path, scores: pd.DataFrame | None = None, bars: pd.DataFrame | None = None,
                  gates: Gates | Mapping | None = None, baselines: Mapping[str, BaselineArg] | None = None,
                  labels: pd.DataFrame | None = None, name: str = "strategy", title: str = "quantlm backtest report",
                  extra: Mapping[str, Any] | None = None, report: bool = True,
                  walk_forward: tuple[str, pd.DataFrame] | None = None, fill: str | None = None,
                  benchmark_bars: pd.DataFrame | None = None) -> dict[str, Any]:
    """Compute metrics and gates and write metrics.json, equity.csv, trades.csv and report.html.

    result: the BacktestResult; scores: the Scores table that drove it (for IC and accuracy; without a
    score column, e.g. weights, those are skipped with a note);
    bars: the bars, to build the evaluation labels when `labels` is not given, for the fill price
    `fill` (open, close or vwap; default: result.config.fill, else open);
    gates: a Gates object or a mapping of thresholds (None = the default gates);
    baselines: {name: BacktestResult or (BacktestResult, Scores)} compared in the report and json;
    extra: more top-level entries for metrics.json (e.g. walk-forward summaries);
    walk_forward: (caption, WalkForwardResult.summary) for the report's walk-forward table;
    benchmark_bars: the benchmark's bars, for its evaluation label in `pick_hit_rate` (default: the
    result's benchmark closes). Gates judge each run's deployed book (`book_metrics`).
    Returns {"metrics", "book", "books", "gates", "gates_passed", "runs", "paths", "notes"}.
    """
    from quantlm.backtest.report import render_report
    from quantlm.features.labels import evaluation_labels

    out_dir = Path(out_dir)
    config = getattr(result, "config", None)
    market = getattr(config, "market", "cn") or "cn"
    fill = fill or getattr(config, "fill", None) or "open"
    gate_model = _gates_of(gates)
    notes: list[str] = []
    if scores is not None and _with_score(scores) is None:
        notes.append(NO_SCORE_NOTE)
    scores = _with_score(scores)
    if labels is None and bars is not None and (scores is not None or baselines):
        labels = evaluation_labels(bars, fill)
    bench_labels = benchmark_label_series(result, benchmark_bars, fill)
    main = book_metrics(result, scores, labels, market, bench_labels)
    metrics = main["metrics"]
    table = evaluate_gates(metrics, gate_model)
    runs = {name: {**main, "gates": table, "gates_passed": all_passed(table)}}
    report_baselines = {}
    for base_name, value in (baselines or {}).items():
        base_result, base_scores = _split_baseline(value)
        base_scores = _with_score(base_scores)
        b = book_metrics(base_result, base_scores, labels if base_scores is not None else None, market, bench_labels)
        t = evaluate_gates(b["metrics"], gate_model)
        runs[base_name] = {**b, "gates": t, "gates_passed": all_passed(t)}
        report_baselines[base_name] = (base_result, b["metrics"])
    sessions = pd.DatetimeIndex(result.equity.index) if len(result.equity) else None
    ics = ic_series(scores, labels, sessions) if scores is not None and labels is not None else None
    payload = {"metrics": metrics, "book": main["book"], "books": main["books"], "gates": table,
               "gates_passed": all_passed(table), "gates_judged": f"the {main['book']} book (the book the config deploys)",
               "config": config, "runs": runs, **(extra or {})}
    if notes:
        payload["notes"] = [*payload.get("notes", []), *notes]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        (staging / "metrics.json").write_text(json.dumps(to_jsonable(payload), indent=2, allow_nan=False))
        equity = equity_table(result)
        equity.to_csv(staging / "equity.csv", index=False, date_format=ts_format(equity["ts"]))
        trades = getattr(result, "trades", None)
        (trades if trades is not None else pd.DataFrame()).to_csv(staging / "trades.csv", index=False)
        if report:
            page = render_report(result, metrics, table, report_baselines or None, ics, title=title, name=name,
                                 walk_forward=walk_forward, books={k: v["books"] for k, v in runs.items()},
                                 book=main["book"])
            (staging / "report.html").write_text(page, encoding="utf-8")
        files = sorted(p.name for p in staging.iterdir())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; the folder should look like any other
        if not out_dir.exists():
            os.rename(staging, out_dir)
        else:
            for f in files:
                os.replace(staging / f, out_dir / f)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"metrics": metrics, "book": main["book"], "books": main["books"], "gates": table,
            "gates_passed": all_passed(table), "runs": runs,
            "paths": {f.rsplit(".", 1)[0]: out_dir / f for f in files}, "notes": notes}


__all__ = ["write_outputs", "equity_table", "to_jsonable", "ts_format", "NO_SCORE_NOTE", "book_metrics",
           "benchmark_label_series", "PREDICTION_KEYS"]
