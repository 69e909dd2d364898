"""CLI for the planner: `quantlm plan` (memory / throughput / latency table, or choose by measured latency)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantlm.cli.common import StoreOption, console, fail, user_errors


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app`."""
    app.command("plan")(plan_cmd)


def _gb(b: int | float) -> str:
    return f"{b / 1024**3:,.2f}"


@user_errors
def plan_cmd(
    model: Annotated[str | None, typer.Option("--model", help="HF folder with config.json, or a size: 0.5B 1.5B 7B 14B 72B.")] = None,
    method: Annotated[str, typer.Option("--method", help="full | lora | qlora.")] = "lora",
    rank: Annotated[int, typer.Option("--rank", min=1, help="LoRA rank.")] = 16,
    targets: Annotated[str, typer.Option("--targets", help="LoRA target modules, comma separated.")] = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    seq: Annotated[int, typer.Option("--seq", min=1, help="Sequence (prompt) length in tokens.")] = 2048,
    micro_batch: Annotated[int, typer.Option("--micro-batch", min=1, help="Sequences per GPU per step.")] = 1,
    checkpointing: Annotated[bool, typer.Option("--checkpointing", help="Gradient checkpointing (per block).")] = False,
    precision: Annotated[str, typer.Option("--precision", help="fp32 | bf16 | fp16.")] = "bf16",
    gpus: Annotated[int, typer.Option("--gpus", min=1, help="Number of GPUs.")] = 1,
    gpu_mem: Annotated[float | None, typer.Option("--gpu-mem", help="Memory per GPU in GiB (2^30 bytes; default: the GPU type's).")] = None,
    gpu: Annotated[str, typer.Option("--gpu", help="a100 | h100 | h200 | l4 | cpu (cpu: measured here).")] = "a100",
    zero: Annotated[int, typer.Option("--zero", min=0, max=3, help="ZeRO stage 0-3.")] = 0,
    fsdp: Annotated[bool, typer.Option("--fsdp", help="FSDP full shard (as ZeRO 3).")] = False,
    headroom: Annotated[float, typer.Option("--headroom", help="Fraction of GPU memory kept free.")] = 0.10,
    mfu: Annotated[float | None, typer.Option("--mfu", help="Model FLOPs utilisation (default: the GPU table's).")] = None,
    decode: Annotated[int, typer.Option("--decode", min=0, help="Generated tokens per decision.")] = 0,
    validate: Annotated[bool, typer.Option("--validate/--no-validate", help="Measure tiny models here and print the estimate's error.")] = False,
    latency_budget: Annotated[str | None, typer.Option("--latency-budget", help="e.g. 5ms: choose among --candidates by measured latency.")] = None,
    candidates: Annotated[list[Path] | None, typer.Option("--candidates", help="Candidate model folders (repeat, or list after the option).")] = None,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", min=1, help="Prompt length when timing a HF model.")] = 256,
    store: StoreOption = None,
    run: Annotated[Path | None, typer.Option("--run", help="A finished `quantlm run` folder: plan each of its models (market GPT, teacher, student, LLM) and print the memory model's measured error.")] = None,
    more: Annotated[list[Path] | None, typer.Argument(help="More candidate folders (after --candidates DIR).", show_default=False)] = None,
) -> None:
    """Plan memory per GPU, training tokens/s and decision latency; or choose a model by measured latency."""
    candidates = [*(candidates or []), *(more or [])]
    if latency_budget is None and more:
        fail("folders given without --latency-budget / --candidates")
    if latency_budget is not None or candidates:
        if latency_budget is None or not candidates:
            fail("--latency-budget and --candidates go together")
        _choose(latency_budget, candidates, store, prompt_tokens)
        return
    if run is not None:
        from quantlm.plan.memory import GPUS

        mem = gpu_mem if gpu_mem is not None else GPUS.get(gpu.lower(), {}).get("mem", 16.0)
        try:
            print_run_plan(run, micro_batch=micro_batch, gpu=gpu.lower(), gpu_mem_gb=mem,
                           gpus=gpus, precision=precision, zero=zero, fsdp=fsdp, checkpointing=checkpointing)
        except (ValueError, FileNotFoundError) as e:
            fail(str(e))
        validate = True
        if model is None:
            print_validation()
            return
    if model is None and not validate:
        fail("give --model DIR|SIZE (or --run DIR, --latency-budget with --candidates, or --validate)")
    if model is not None:
        try:
            print_plan(model, method=method, lora_rank=rank, lora_targets=tuple(t.strip() for t in targets.split(",") if t.strip()),
                   seq=seq, micro_batch=micro_batch, checkpointing=checkpointing, precision=precision, gpus=gpus,
                   gpu_mem_gb=gpu_mem, gpu=gpu.lower(), zero=zero, fsdp=fsdp, headroom=headroom, mfu=mfu, decode=decode)
        except ValueError as e:
            fail(str(e))
    if validate:
        print_validation()


def print_plan(model: str, **kw) -> None:
    from rich.table import Table

    from quantlm.plan import PlanConfig, plan_memory, resolve_arch, throughput
    from quantlm.plan.memory import GPUS

    if kw.get("gpu_mem_gb") is None:
        kw["gpu_mem_gb"] = GPUS.get(kw["gpu"], {}).get("mem", 16.0)
    arch = resolve_arch(model)
    cfg = PlanConfig(**kw)
    m, t = plan_memory(arch, cfg), throughput(arch, cfg)
    stage = "FSDP" if cfg.fsdp else f"ZeRO {cfg.zero}"
    title = (f"{arch.name}: {arch.params() / 1e9:.3f}B params, {cfg.method}"
             f"{f' r={cfg.lora_rank}' if cfg.method != 'full' else ''} ({m.trainable / 1e6:,.1f}M trainable), "
             f"seq {cfg.seq} x micro-batch {cfg.micro_batch}, {cfg.precision}, "
             f"{'checkpointing' if cfg.checkpointing else 'no checkpointing'}, "
             f"{cfg.gpus} x {cfg.gpu.upper()} {cfg.gpu_mem_gb:g} GB, {stage}")
    tab = Table(title=title, title_justify="left")
    tab.add_column("per GPU")
    tab.add_column("GiB", justify="right")
    for name, v in (("weights", m.weights), ("gradients", m.gradients), ("optimizer states", m.optimizer),
                    ("activations", m.activations)):
        tab.add_row(name, _gb(v))
    tab.add_row("[bold]training total[/]", f"[bold]{_gb(m.total)}[/]")
    tab.add_row(f"usable ({1 - cfg.headroom:.0%} of {cfg.gpu_mem_gb:g} GB)", _gb(m.usable))
    tab.add_row("[bold]fits (training)[/]", "[green]yes[/]" if m.fits else "[red]no[/]")
    tab.add_row("inference weights", _gb(m.infer_weights))
    tab.add_row(f"inference KV cache ({cfg.seq + cfg.decode} tokens)", _gb(m.kv_cache))
    tab.add_row("inference working set", _gb(m.infer_activations))
    tab.add_row("[bold]inference total[/]", f"[bold]{_gb(m.infer_total)}[/]")
    tab.add_row("[bold]fits (inference, 1 GPU)[/]", "[green]yes[/]" if m.infer_fits else "[red]no[/]")
    tab.add_row(f"training tokens/s (MFU {t['mfu']:.0%} of {t['peak_tflops']:g} TFLOP/s)",
                f"{t['tokens_per_s_gpu']:,.0f}/GPU  {t['tokens_per_s']:,.0f} total")
    tab.add_row(f"latency per decision (prefill {cfg.seq}{f' + {cfg.decode} decoded' if cfg.decode else ''})",
                f"{t['latency_ms']:,.2f} ms")
    console.print(tab)
    for n in m.notes:
        console.print(f"note: {n}", highlight=False)
    if not m.fits and not cfg.checkpointing:
        console.print("hint: --checkpointing keeps one block's input per layer instead of all its activations",
                      highlight=False)


def print_run_plan(run: Path, **kw) -> None:
    """One row per model of a finished run (quantlm.plan.runs)."""
    from rich.table import Table

    from quantlm.plan.runs import plan_run

    rows = plan_run(run, **kw)
    tab = Table(title=f"models of {run}: estimates on {kw['gpus']} x {kw['gpu'].upper()} {kw['gpu_mem_gb']:g} GB, "
                      f"{kw['precision']}, micro-batch {kw['micro_batch']}", title_justify="left")
    for c in ("model", "params", "method", "seq", "train GiB/GPU", "infer GiB", "est. latency ms"):
        tab.add_column(c, justify="left" if c in ("model", "method") else "right")
    for r in rows:
        tab.add_row(r["model"], f"{r['params'] / 1e6:,.3f}M", r["method"], "-" if r["seq"] is None else str(r["seq"]),
                    "-" if r["train_gib"] is None else f"{r['train_gib']:.4f}", f"{r['infer_gib']:.4f}",
                    "-" if r["latency_ms"] is None else f"{r['latency_ms']:.3f}")
    console.print(tab)


def print_validation() -> None:
    from rich.table import Table

    from quantlm.plan.validate import TOLERANCE, validate

    tab = Table(title=f"memory model vs measured peak (tiny models on this CPU, fp32, tolerance ±{TOLERANCE:.0%})",
                title_justify="left")
    for c in ("model", "train measured MiB", "train est. MiB", "error", "infer measured MiB", "infer est. MiB", "error"):
        tab.add_column(c, justify="left" if c == "model" else "right")
    for r in validate():
        tab.add_row(r["case"], f"{r['train_measured'] / 2**20:.2f}", f"{r['train_estimate'] / 2**20:.2f}",
                    f"{r['train_error']:+.1%}", f"{r['infer_measured'] / 2**20:.2f}",
                    f"{r['infer_estimate'] / 2**20:.2f}", f"{r['infer_error']:+.1%}")
    console.print(tab)


def _choose(budget: str, candidates: list[Path], store, prompt_tokens: int) -> None:
    from functools import partial

    from quantlm.plan.choose import choose, measure_folder, parse_ms

    try:
        budget_ms = parse_ms(budget)
    except ValueError as e:
        fail(str(e))
    rows, best = choose(candidates, budget_ms, measure=partial(measure_folder, store=store, prompt_tokens=prompt_tokens))
    print_choice(rows, best, budget_ms)


def print_choice(rows: list[dict], best: dict | None, budget_ms: float) -> None:
    from rich.table import Table

    tab = Table(title=f"candidates by measured latency (budget {budget_ms:g} ms, p50 per decision, this machine)",
                title_justify="left")
    for c in ("candidate", "kind", "p50 ms", "p99 ms", "RankIC", "within budget"):
        tab.add_column(c, justify="left" if c in ("candidate", "kind") else "right")
    for r in rows:
        tab.add_row(r["candidate"], r.get("kind", r.get("error", "?")),
                    "-" if r["p50_ms"] is None else f"{r['p50_ms']:.3f}",
                    "-" if r.get("p99_ms") is None else f"{r['p99_ms']:.3f}",
                    "unknown" if r["rank_ic"] is None else f"{r['rank_ic']:.4f}", "yes" if r["within"] else "no")
    console.print(tab)
    if best is None:
        console.print(f"no candidate within {budget_ms:g} ms", highlight=False)
    else:
        acc = "unknown RankIC: the fastest" if best["rank_ic"] is None else f"RankIC {best['rank_ic']:.4f}"
        console.print(f"recommended: {best['candidate']} ({best['p50_ms']:.3f} ms p50, {acc})", highlight=False)
