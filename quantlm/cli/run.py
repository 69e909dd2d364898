"""`quantlm run CONFIG`: the one-command workflow (data -> pretrain -> fine-tune -> evaluate -> report)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from quantlm.cli.common import StoreOption, console, store_from, user_errors

FORCE_KINDS = ("all", "data", "embed", "pretrain", "sft", "reward", "rl", "distill", "score", "baselines",
               "latency", "evaluate", "llm")


def register(app: typer.Typer) -> None:
    """Add `quantlm run` to `app`."""

    @app.command("run")
    @user_errors
    def run(
        config: Annotated[Path, typer.Argument(help="Run config (YAML), e.g. configs/demo.yaml.")],
        store: StoreOption = None,
        out: Annotated[Path | None, typer.Option("--out", help="Run folder (default: the config's run_dir).")] = None,
        force: Annotated[list[str] | None, typer.Option(
            "--force", help="Re-run the stages of this kind and everything after them (repeatable): "
            + ", ".join(FORCE_KINDS) + ".")] = None,
        executor: Annotated[str | None, typer.Option(
            "--executor", help="Where the independent units (model chains per seed x variant, scoring, LightGBM "
            "folds) run: process (this process) or ray (one Ray task each); default: evaluate.executor.")] = None,
        ray_address: Annotated[str | None, typer.Option(
            "--ray-address", help="With --executor ray: the Ray cluster to connect to (auto, HOST:6379, "
            "ray://HOST:10001); default: evaluate.ray.address, else a local Ray started and stopped by quantlm.")] = None,
    ) -> None:
        """Run the workflow a config describes: data -> pretrain -> sft -> (reward -> rl) -> distill ->
        walk-forward evaluation of the models, the baselines and the oracle -> report.html and
        summary.json in the run folder. Finished stages are cached under RUN/stages/ and skipped on the
        next run; a crashed run resumes."""
        from quantlm.workflow.config import RunConfigError, load_run_config
        from quantlm.workflow.pipeline import run_workflow

        unknown = [f for f in force or [] if f not in FORCE_KINDS]
        if unknown:
            raise RunConfigError(f"--force: unknown stage {', '.join(unknown)} (choose from {', '.join(FORCE_KINDS)})")
        cfg = load_run_config(config)
        cfg = with_executor(cfg, executor, ray_address)
        t0 = time.perf_counter()
        run_workflow(cfg, store_from(store), run_dir=out, console=console, force=force or [],
                     progress=console.is_terminal)
        console.print(f"[bold green]run finished[/] in {time.perf_counter() - t0:.1f} s")


def with_executor(cfg, executor: str | None, ray_address: str | None):
    """`cfg` with the CLI's --executor / --ray-address applied to its evaluate section (stage keys ignore
    both: a run gives the same stages whatever executor runs it)."""
    from quantlm.workflow.config import RunConfigError
    from quantlm.workflow.executor import EXECUTORS

    if executor is None and ray_address is None:
        return cfg
    if executor is not None and executor not in EXECUTORS:
        raise RunConfigError(f"--executor: unknown executor '{executor}' (choose from {', '.join(EXECUTORS)})")
    ev = cfg.evaluate
    kind = executor or ev.executor
    if ray_address is not None and kind != "ray":
        raise RunConfigError("--ray-address needs --executor ray (or evaluate.executor: ray in the config)")
    ray = ev.ray.model_copy(update={"address": ray_address}) if ray_address is not None else ev.ray
    cfg.evaluate = ev.model_copy(update={"executor": kind, "ray": ray})
    return cfg
