"""`quantlm llm ...`: a general causal LLM (any local Hugging Face folder) as a trader.

    quantlm llm tiny    --out models/tiny-qwen2 [--family qwen2|llama]
    quantlm llm sft     --base models/tiny-qwen2 --store STORE --train-end 2023-12-31 --out runs/llm
                        [--lora-rank 8 --freeze-bottom 0 --steps 100 --window-bars 32 --merge --answer-return]
                        [--grad-accum 1 --checkpoint-every 50 --resume]   (the training core, as every stage)
    quantlm llm sft     --base DIR --data examples.jsonl --out runs/llm   (`quantlm finetune export` lines)
    quantlm llm score   --model runs/llm [--base DIR] --store STORE --start 2024-01-01 --end 2024-06-30
                        --out scores.parquet
    quantlm llm dpo     --model runs/llm --store STORE --train-end 2023-12-31 --out runs/llm-dpo [--steps 50 --beta 0.1]
                        [--grad-accum 1 --checkpoint-every 10 --resume]
    quantlm llm latency --model runs/llm --store STORE [--symbols 20 --updates 10]
                        [--compare runs/demo/stages/distill-.../run/model ...]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantlm.cli.common import StoreOption, console, store_from, user_errors

GradAccumOption = Annotated[int, typer.Option("--grad-accum", min=1, help="Micro-batches per optimizer step.")]
CheckpointEveryOption = Annotated[int, typer.Option("--checkpoint-every", min=0,
                                                    help="Steps between checkpoints in OUT/checkpoints (0: none).")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out "
                                                              "(same inputs and settings).")]
DeviceOption = Annotated[str, typer.Option("--device", help="Where the base is loaded: cpu | cuda. Training runs on "
                                                            "the core's device (CUDA when present, bf16; "
                                                            "ACCELERATE_USE_CPU=1 forces the CPU).")]


def register(app: typer.Typer) -> None:
    """Add the `llm` command group to `app`."""
    g = typer.Typer(help="General LLMs: LoRA fine-tuning on serialised bars and news, buy/sell scores.",
                    no_args_is_help=True)
    g.command("tiny")(user_errors(tiny_cmd))
    g.command("sft")(user_errors(sft_cmd))
    g.command("score")(user_errors(score_cmd))
    g.command("latency")(user_errors(latency_cmd))
    g.command("dpo")(user_errors(dpo_cmd))
    app.add_typer(g, name="llm")


def tiny_cmd(out: Annotated[Path, typer.Option("--out", help="Folder for the tiny model and tokenizer.")],
             family: Annotated[str, typer.Option("--family", help="qwen2 | llama.")] = "qwen2",
             layers: Annotated[int, typer.Option("--layers")] = 2,
             hidden: Annotated[int, typer.Option("--hidden")] = 48) -> None:
    """Build a tiny randomly initialised causal LM folder (local tokenizer, no hub) to try the commands."""
    from quantlm.llm.tiny import make_tiny_model

    make_tiny_model(out, family=family, layers=layers, hidden=hidden)
    console.print(f"wrote a tiny {family} model to {out}")


def sft_cmd(base: Annotated[Path, typer.Option("--base", help="Local Hugging Face causal LM folder.")],
            out: Annotated[Path, typer.Option("--out", help="Run folder: adapter/, llm.json[, merged/].")],
            train_end: Annotated[str | None, typer.Option("--train-end", help="Last session whose label is known (YYYY-MM-DD); with --store.")] = None,
            store: StoreOption = None,
            data: Annotated[Path | None, typer.Option("--data", help="`quantlm finetune export` JSON Lines instead of --store.")] = None,
            start: Annotated[str | None, typer.Option("--start", help="First decision session of the training set.")] = None,
            lora_rank: Annotated[int, typer.Option("--lora-rank")] = 8,
            freeze_bottom: Annotated[int, typer.Option("--freeze-bottom", help="Decoder layers left without adapters.")] = 0,
            steps: Annotated[int, typer.Option("--steps")] = 100,
            batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
            lr: Annotated[float, typer.Option("--lr")] = 1e-3,
            window_bars: Annotated[int, typer.Option("--window-bars")] = 32,
            max_prompt_tokens: Annotated[int, typer.Option("--max-prompt-tokens")] = 1024,
            merge: Annotated[bool, typer.Option("--merge", help="Also write merged/ (base + adapter).")] = False,
            answer_return: Annotated[bool, typer.Option("--answer-return", help="Answers carry the return: 'buy +35bp'.")] = False,
            device: DeviceOption = "cpu",
            qlora: Annotated[bool, typer.Option("--qlora", help="4-bit NF4 base (CUDA + bitsandbytes only).")] = False,
            seed: Annotated[int, typer.Option("--seed")] = 0,
            grad_accum: GradAccumOption = 1,
            checkpoint_every: CheckpointEveryOption = 0,
            resume: ResumeOption = False) -> None:
    """LoRA-fine-tune a local causal LM to answer buy / hold / sell on point-in-time prompts (store or JSON Lines)."""
    from quantlm.cli.common import fail
    from quantlm.llm.serialize import PromptConfig
    from quantlm.llm.sft import SFTSettings, run_sft

    if (data is None) == (train_end is None):
        fail("give --store with --train-end, or --data FILE (a `quantlm finetune export` JSON Lines file)")
    if data is not None and not data.exists():
        fail(f"--data: {data} not found")
    info = run_sft(base, store_from(store) if data is None else None, train_end, out,
                   SFTSettings(lora_rank=lora_rank, freeze_bottom=freeze_bottom, steps=steps,
                               batch_size=batch_size, lr=lr, seed=seed, grad_accum=grad_accum,
                               checkpoint_every=checkpoint_every),
                   PromptConfig(window_bars=window_bars, max_prompt_tokens=max_prompt_tokens, answer_return=answer_return),
                   start=start, merge=merge, log=console.print, data=data, device=device, qlora=qlora, resume=resume)
    tok = info["tokens"]
    console.print(f"tokens per bar {tok['tokens_per_bar']:.2f} (this tokenizer); prompts {tok['prompt_tokens_mean']:.0f} "
                  f"tokens on average, max {tok['prompt_tokens_max']} (limit {max_prompt_tokens})", highlight=False)
    console.print(f"{info['examples']} examples, loss {info['first_loss']:.4f} -> {info['last_loss']:.4f}; wrote {out}")


def score_cmd(model: Annotated[Path, typer.Option("--model", help="Run folder of `llm sft`, an adapter or a model folder.")],
              out: Annotated[Path, typer.Option("--out", help="Scores file (.parquet or .csv): symbol, ts, score.")],
              store: StoreOption = None,
              base: Annotated[Path | None, typer.Option("--base", help="Base model folder (default: the run's).")] = None,
              start: Annotated[str | None, typer.Option("--start")] = None,
              end: Annotated[str | None, typer.Option("--end")] = None,
              batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
              device: Annotated[str, typer.Option("--device", help="cpu | cuda.")] = "cpu") -> None:
    """Score = log P(buy) - log P(sell) per (symbol, session): a signals file for `quantlm backtest`."""
    from quantlm.llm.score import score_store

    df = score_store(model, store_from(store), start=start, end=end, base=base, batch_size=batch_size, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        df.to_csv(out, index=False)
    else:
        df.to_parquet(out, index=False)
    console.print(f"wrote {len(df)} scores to {out}")


def latency_cmd(model: Annotated[Path, typer.Option("--model", help="Run folder of `llm sft`, an adapter or a model folder.")],
                store: StoreOption = None,
                base: Annotated[Path | None, typer.Option("--base", help="Base model folder (default: the run's).")] = None,
                symbols: Annotated[int, typer.Option("--symbols", min=1, help="Decisions (symbols) per update.")] = 20,
                updates: Annotated[int, typer.Option("--updates", min=1, help="Timed updates (sessions).")] = 10,
                threads: Annotated[int, typer.Option("--threads", min=1, help="CPU threads for torch.")] = 1,
                compare: Annotated[list[Path] | None, typer.Option("--compare", help="Student / trader folders timed on the same symbols (repeat).")] = None,
                out: Annotated[Path | None, typer.Option("--out", help="Also write the rows as JSON here.")] = None) -> None:
    """p50 / p99 per decision update: prompt build + prefill + answer log-probs, beside students / traders.

    The rows are also stored under "latency_ms" in the run's llm.json (when --model is an `llm sft` run)."""
    import json

    from rich.table import Table

    from quantlm.finetune.latency import measure_latency
    from quantlm.llm.latency import measure_llm_latency

    st = store_from(store)
    rows = [{"model": str(model), **measure_llm_latency(model, st, n_symbols=symbols, n_updates=updates,
                                                         threads=threads, base=base)}]
    for folder in compare or []:
        r = measure_latency(folder, st, n_symbols=symbols, n_updates=updates, threads=threads)
        rows.append({"model": str(folder), **r, "per_symbol_p50": r["p50"] / symbols})
    tab = Table(title=f"decision latency on this CPU ({symbols} symbols per update, {threads} thread(s))",
                title_justify="left")
    for c in ("model", "kind", "params", "p50 ms", "p99 ms", "ms / symbol"):
        tab.add_column(c, justify="left" if c in ("model", "kind") else "right")
    for r in rows:
        tab.add_row(r["model"], str(r.get("kind", "?")), f"{r.get('params', 0):,}", f"{r['p50']:.2f}",
                    f"{r['p99']:.2f}", f"{r['per_symbol_p50']:.3f}")
    console.print(tab)
    llm = rows[0]
    console.print(f"llm prompt build p50 {llm['prompt_p50']:.2f} ms, prompts {llm['prompt_tokens_mean']:.0f} tokens "
                  "on average", highlight=False)
    info_file = model / "llm.json"
    if info_file.exists():  # a run folder of `llm sft`: keep the measurement with it
        info = json.loads(info_file.read_text())
        info["latency_ms"] = rows
        tmp = info_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info, indent=2, default=str))
        tmp.replace(info_file)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2, default=str))


def dpo_cmd(model: Annotated[Path, typer.Option("--model", help="Run folder of `llm sft` (adapter/ + llm.json).")],
            out: Annotated[Path, typer.Option("--out", help="Run folder for the preference-tuned adapter.")],
            train_end: Annotated[str, typer.Option("--train-end", help="Last session whose outcome is known (YYYY-MM-DD).")],
            store: StoreOption = None,
            start: Annotated[str | None, typer.Option("--start", help="First decision session of the pairs.")] = None,
            steps: Annotated[int, typer.Option("--steps", min=1)] = 50,
            batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
            lr: Annotated[float, typer.Option("--lr")] = 5e-4,
            beta: Annotated[float, typer.Option("--beta", help="DPO temperature on the log-ratio margin.")] = 0.1,
            seed: Annotated[int, typer.Option("--seed")] = 0,
            grad_accum: GradAccumOption = 1,
            checkpoint_every: CheckpointEveryOption = 0,
            resume: ResumeOption = False,
            device: DeviceOption = "cpu") -> None:
    """DPO over realised outcomes on an SFT run's LoRA adapter (chosen = realised direction, rejected = the losing trade)."""
    from quantlm.llm.dpo import DPOSettings, run_dpo

    info = run_dpo(model, store_from(store), train_end, out,
                   DPOSettings(steps=steps, batch_size=batch_size, lr=lr, beta=beta, seed=seed, grad_accum=grad_accum,
                               checkpoint_every=checkpoint_every), start=start, log=console.print, resume=resume,
                   device=device)["dpo"]
    console.print(f"{info['pairs']} pairs, loss {info['first_loss']:.4f} -> {info['last_loss']:.4f}; chosen preferred "
                  f"{info['chosen_preferred_before']:.1%} -> {info['chosen_preferred_after']:.1%}; wrote {out}",
                  highlight=False)
