"""`quantlm sweep CONFIG --grid FILE`: run variants of a `quantlm run` config and compare them.

The grid is a YAML mapping of dotted config keys to lists of values, plus an optional `mode`:

    mode: product          # product (default): every combination; zip: the i-th value of every key
    sft.lr: [3.0e-4, 1.0e-3]
    sft.steps: [100, 200]

Each combination sets its keys in a copy of the run config (missing sections are created) and is
validated like any run config: an unknown key, a value that is not a non-empty list or a value its
key does not accept is an error naming the grid file and the key, raised before anything runs or
is written. Variants are named v00, v01, ... in grid order.

Every variant is a `quantlm run` with its own run folder `OUT/variants/<name>/` and one stage cache
shared by all, `OUT/stages/`: a stage whose config and inputs a variant does not change (data,
pretraining, the baselines, ...) is built once and found cached by the others (each stage is built
under a lock, so variants running at the same time wait for it instead of building it twice). With
`executor="ray"` each variant is one Ray task (`evaluate.ray` of the config sets its CPUs / GPUs and
the cluster address), else the variants run one after the other in this process; the units inside
a variant run in that variant's process. A failing variant is recorded with its error and the
others still run.

Outputs in OUT: `sweep.csv` and `sweep.json` (one row per variant: name, the grid values, status,
primary run, its RankIC / Sharpe / annual excess return as mean and std over seeds, the number of
gates passed and failed, the run folder), `sweep.html` (the same table), `grid.yaml` (the grid used).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from rich.console import Console

from quantlm.workflow.config import RunConfig, RunConfigError, parse_run_config

MODES = ("product", "zip")
METRICS = ("rank_ic", "sharpe", "annual_excess_return")  # per variant: primary run's mean and std over seeds


class SweepError(ValueError):
    """A bad grid or sweep request (shown to CLI users as a plain message)."""

    user_facing = True


@dataclass
class SweepVariant:
    """One point of the grid: its name, the values it sets ({dotted key: value}) and its run config."""

    name: str
    params: dict[str, Any]
    cfg: RunConfig


def read_grid(path: str | Path) -> tuple[str, dict[str, list[Any]]]:
    """(mode, {dotted key: values}) of a grid YAML file; errors name the file and the key."""
    from quantlm.config import read_yaml_mapping

    raw = dict(read_yaml_mapping(path, SweepError, what="sweep grid") or {})
    mode = raw.pop("mode", "product")
    if mode not in MODES:
        raise SweepError(f"{path}: mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if not raw:
        raise SweepError(f"{path}: the grid is empty: map dotted config keys to lists of values (e.g. sft.lr: [3e-4, 1e-3])")
    for key, values in raw.items():
        if not isinstance(key, str) or not all(key.split(".")):
            raise SweepError(f"{path}: {key!r}: expected a dotted config key such as sft.lr")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: {key}: expected a non-empty list of values, got {values!r}")
    if mode == "zip" and len({len(v) for v in raw.values()}) > 1:
        lengths = ", ".join(f"{k} ({len(v)})" for k, v in raw.items())
        raise SweepError(f"{path}: mode zip needs lists of one length, got {lengths}")
    return mode, raw


def grid_points(grid: dict[str, list[Any]], mode: str = "product") -> list[dict[str, Any]]:
    """The grid's points in order: every combination (product, last key fastest) or the i-th values (zip)."""
    keys = list(grid)
    rows = itertools.product(*grid.values()) if mode == "product" else zip(*grid.values(), strict=True)
    return [dict(zip(keys, row, strict=True)) for row in rows]


def set_dotted(raw: dict[str, Any], key: str, value: Any, grid: str | Path = "grid") -> None:
    """Set `key` (a.b.c) to `value` in the nested mapping `raw`, creating missing or null sections."""
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif not isinstance(nxt, dict):
            raise SweepError(f"{grid}: {key}: {'.'.join(parts[:i + 1])} is {nxt!r} in the config, not a section")
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)


def _grid_error(e: RunConfigError, source: str, grid: Path, config: Path, params: dict[str, Any]) -> SweepError:
    """A variant's RunConfigError restated per grid key: 'GRID: key: unknown key' or 'GRID: key = value: why'."""
    out = []
    for line in str(e).splitlines():
        loc, _, msg = line.removeprefix(f"{source}: ").partition(": ")
        key = next((k for k in params if loc == k or k.startswith(loc + ".") or loc.startswith(k + ".")), None)
        if key is None:
            out.append(f"{config}: {loc}: {msg} (with {grid} values {params})")
        elif "extra inputs are not permitted" in msg and (loc == key or key.startswith(loc + ".")):
            out.append(f"{grid}: {key}: unknown key of the run config {config} ({loc}: {msg})")
        else:
            out.append(f"{grid}: {key} = {params[key]!r}: {loc}: {msg}")
    return SweepError("\n".join(dict.fromkeys(out)))


def sweep_variants(config: str | Path, grid: str | Path) -> tuple[str, list[SweepVariant]]:
    """(mode, variants) of a run config and a grid, every variant validated."""
    from quantlm.config import read_yaml_mapping

    config, grid = Path(config), Path(grid)
    base = read_yaml_mapping(config, RunConfigError, what="run config") or {}
    parse_run_config(base, str(config))  # the config itself must be valid
    mode, values = read_grid(grid)
    points = grid_points(values, mode)
    width = max(2, len(str(len(points) - 1)))
    variants = []
    for i, params in enumerate(points):
        name = f"v{i:0{width}d}"
        raw = copy.deepcopy(base)
        for key, value in params.items():
            set_dotted(raw, key, value, grid)
        source = f"{config} [{grid} {name}]"
        try:
            cfg = parse_run_config(raw, source)
        except RunConfigError as e:
            raise _grid_error(e, source, grid, config, params) from None
        variants.append(SweepVariant(name, params, cfg))
    return mode, variants


@dataclass
class VariantJob:
    """What one variant's unit needs (picklable: it travels to a Ray worker)."""

    variant: SweepVariant
    store_root: Path
    run_dir: Path
    stages_dir: Path
    quiet: bool = False


def run_variant(job: VariantJob) -> dict[str, Any]:
    """Run one variant (units inline in this process); {"status": "ok", "summary"} or {"status": "error", "error"}."""
    from quantlm.data.store import Store
    from quantlm.workflow.executor import ProcessExecutor
    from quantlm.workflow.pipeline import run_workflow

    console = Console(quiet=job.quiet)
    console.print(f"[bold]sweep variant {job.variant.name}[/] {job.variant.params}")
    try:
        summary = run_workflow(job.variant.cfg, Store(job.store_root), run_dir=job.run_dir, console=console,
                               executor=ProcessExecutor(1), stages_dir=job.stages_dir)
    except Exception as e:  # recorded in the table; the other variants still run
        return {"status": "error", "error": f"{type(e).__name__}: {e}"}
    return {"status": "ok", "summary": summary}


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def variant_row(variant: SweepVariant, result: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One row of the comparison table (see the module docstring)."""
    row: dict[str, Any] = {"variant": variant.name, **variant.params, "status": result["status"]}
    if result["status"] != "ok":
        return {**row, "error": result["error"], "run_dir": str(run_dir)}
    s = result["summary"]
    primary = s["primary"]
    mean, std = s["runs"][primary], s.get("runs_std", {}).get(primary, {})
    row["primary"] = primary
    for m in METRICS:
        row[m], row[f"{m}_std"] = _finite(mean.get(m)), _finite(std.get(m))
    gates = s.get("gates", {})
    row["gates_passed"] = sum(bool(g["passed"]) for g in gates.values())
    row["gates_failed"] = ", ".join(k for k, g in gates.items() if not g["passed"])
    row["all_gates_passed"] = bool(s.get("gates_passed"))
    row["run_dir"] = str(run_dir)
    return row


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


_CSS = ("body{font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:24px;color:#222}"
        "table{border-collapse:collapse;font-size:13px}th,td{padding:6px 10px;border-bottom:1px solid #eee;"
        "text-align:right;white-space:nowrap}th{background:#fafafa}td:first-child,th:first-child{text-align:left}"
        ".pass{color:#1a9850;font-weight:600}.fail{color:#d73027;font-weight:600}.sub{color:#666;font-size:13px}")


def sweep_html(payload: dict[str, Any]) -> str:
    """sweep.html: one row per variant (grid values, primary run, RankIC / Sharpe / excess as mean +- std
    over seeds, gates), the best RankIC in bold; metrics formatted like the run reports."""
    import html

    from quantlm.backtest.report import fmt

    keys = payload["keys"]
    head = ["variant", *keys, "primary", "RankIC", "Sharpe", "Excess (annual)", "gates", "status"]
    body = []
    for r in payload["variants"]:
        cells = [html.escape(r["variant"])] + [html.escape(json.dumps(r.get(k), default=str)) for k in keys]
        if r["status"] == "ok":
            cells.append(html.escape(r["primary"]))
            for m in METRICS:
                text = fmt(m, r[m]) + (f" &plusmn; {fmt(m, r[f'{m}_std'])}" if r[f"{m}_std"] is not None else "")
                cells.append(f"<b>{text}</b>" if m == "rank_ic" and r["variant"] == payload["best"] else text)
            n_failed = len([g for g in r["gates_failed"].split(", ") if g])
            cls = "pass" if r["all_gates_passed"] else "fail"
            cells.append(f'<span class="{cls}">{r["gates_passed"]} passed, {n_failed} failed</span>'
                         + (f" ({html.escape(r['gates_failed'])})" if n_failed else ""))
            cells.append("ok")
        else:
            cells += ["-"] * (len(METRICS) + 2) + [f'<span class="fail">{html.escape(r["error"])}</span>']
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    title = f"quantlm sweep: {html.escape(payload['config'])}"
    sub = (f"{len(payload['variants'])} variant(s), {payload['mode']} of {html.escape(payload['grid'])}; "
           "metrics of each variant's primary run, mean &plusmn; std over seeds; best RankIC in bold")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style></head>"
            f"<body><h1>{title}</h1><div class='sub'>{sub}</div><table><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(body) + "</table></body></html>")


def run_sweep(config: str | Path, grid: str | Path, store, out: str | Path | None = None, executor: str = "process",
              ray_address: str | None = None, console: Console | None = None, quiet_variants: bool = False
              ) -> dict[str, Any]:
    """Run every variant of `config` x `grid` against `store` and write the comparison into `out`
    (default: the config's run_dir + "-sweep"). Returns sweep.json's content."""
    from quantlm.workflow.executor import make_executor

    console = console or Console()
    mode, variants = sweep_variants(config, grid)
    out = Path(out) if out is not None else Path(f"{variants[0].cfg.run_dir}-sweep")
    ray = variants[0].cfg.evaluate.ray
    if ray_address is not None:
        if executor != "ray":
            raise SweepError("--ray-address needs --executor ray")
        ray = ray.model_copy(update={"address": ray_address})
    ex = make_executor(executor, 1, ray)  # before anything is written: a missing Ray is an error here
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(out / "grid.yaml", yaml.safe_dump({"config": str(config), "grid": str(grid), "mode": mode,
                                                          "variants": {v.name: v.params for v in variants}},
                                                         sort_keys=False))
        console.print(f"sweep: {len(variants)} variant(s) of {config} ({mode} of {grid}) with the {executor} "
                      f"executor; stages shared in {out / 'stages'}")
        jobs = [VariantJob(v, Path(store.root), out / "variants" / v.name, out / "stages", quiet_variants)
                for v in variants]
        results = ex.map(run_variant, jobs)
    finally:
        ex.close()
    rows = [variant_row(v, r, j.run_dir) for v, r, j in zip(variants, results, jobs, strict=True)]
    ok = [r for r in rows if r["status"] == "ok" and r.get("rank_ic") is not None]
    payload = {"config": str(config), "grid": str(grid), "mode": mode, "executor": executor, "out": str(out),
               "keys": list(variants[0].params),
               "best": max(ok, key=lambda r: r["rank_ic"])["variant"] if ok else None, "variants": rows}
    _write_atomic(out / "sweep.json", json.dumps(payload, indent=2, allow_nan=False, default=str))
    table = pd.DataFrame(rows)
    _write_atomic(out / "sweep.csv", table.to_csv(index=False))
    _write_atomic(out / "sweep.html", sweep_html(payload))
    return payload


__all__ = ["MODES", "METRICS", "SweepError", "SweepVariant", "VariantJob", "grid_points", "read_grid", "run_sweep",
           "run_variant", "set_dotted", "sweep_html", "sweep_variants", "variant_row"]
