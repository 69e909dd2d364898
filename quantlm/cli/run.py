"""`quantlm run CONFIG`: the one-command workflow (data -> pretrain -> fine-tune -> evaluate -> report)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from quantlm.cli.common import StoreOption, console, store_from, user_errors

FORCE_KINDS = ("all", "data", "embed", "pretrain", "sft", "reward", "rl", "distill", "score", "baselines",
               "latency", "evaluate")


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
        t0 = time.perf_counter()
        run_workflow(cfg, store_from(store), run_dir=out, console=console, force=force or [],
                     progress=console.is_terminal)
        console.print(f"[bold green]run finished[/] in {time.perf_counter() - t0:.1f} s")
