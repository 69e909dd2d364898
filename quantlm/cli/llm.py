"""`quantlm llm ...`: a general causal LLM (any local Hugging Face folder) as a trader.

    quantlm llm tiny  --out models/tiny-qwen2 [--family qwen2|llama]
    quantlm llm sft   --base models/tiny-qwen2 --store STORE --train-end 2023-12-31 --out runs/llm
                      [--lora-rank 8 --freeze-bottom 0 --steps 100 --window-bars 32 --merge]
    quantlm llm score --model runs/llm [--base DIR] --store STORE --start 2024-01-01 --end 2024-06-30
                      --out scores.parquet
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantlm.cli.common import StoreOption, console, store_from, user_errors


def register(app: typer.Typer) -> None:
    """Add the `llm` command group to `app`."""
    g = typer.Typer(help="General LLMs: LoRA fine-tuning on serialised bars and news, buy/sell scores.",
                    no_args_is_help=True)
    g.command("tiny")(user_errors(tiny_cmd))
    g.command("sft")(user_errors(sft_cmd))
    g.command("score")(user_errors(score_cmd))
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
            train_end: Annotated[str, typer.Option("--train-end", help="Last session whose label is known (YYYY-MM-DD).")],
            store: StoreOption = None,
            start: Annotated[str | None, typer.Option("--start", help="First decision session of the training set.")] = None,
            lora_rank: Annotated[int, typer.Option("--lora-rank")] = 8,
            freeze_bottom: Annotated[int, typer.Option("--freeze-bottom", help="Decoder layers left without adapters.")] = 0,
            steps: Annotated[int, typer.Option("--steps")] = 100,
            batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
            lr: Annotated[float, typer.Option("--lr")] = 1e-3,
            window_bars: Annotated[int, typer.Option("--window-bars")] = 32,
            max_prompt_tokens: Annotated[int, typer.Option("--max-prompt-tokens")] = 1024,
            merge: Annotated[bool, typer.Option("--merge", help="Also write merged/ (base + adapter).")] = False,
            seed: Annotated[int, typer.Option("--seed")] = 0) -> None:
    """LoRA-fine-tune a local causal LM to answer buy / hold / sell on the store's point-in-time prompts."""
    from quantlm.llm.serialize import PromptConfig
    from quantlm.llm.sft import SFTSettings, run_sft

    info = run_sft(base, store_from(store), train_end, out,
                   SFTSettings(lora_rank=lora_rank, freeze_bottom=freeze_bottom, steps=steps,
                               batch_size=batch_size, lr=lr, seed=seed),
                   PromptConfig(window_bars=window_bars, max_prompt_tokens=max_prompt_tokens),
                   start=start, merge=merge, log=console.print)
    console.print(f"{info['examples']} examples, loss {info['first_loss']:.4f} -> {info['last_loss']:.4f}; wrote {out}")


def score_cmd(model: Annotated[Path, typer.Option("--model", help="Run folder of `llm sft`, an adapter or a model folder.")],
              out: Annotated[Path, typer.Option("--out", help="Scores file (.parquet or .csv): symbol, ts, score.")],
              store: StoreOption = None,
              base: Annotated[Path | None, typer.Option("--base", help="Base model folder (default: the run's).")] = None,
              start: Annotated[str | None, typer.Option("--start")] = None,
              end: Annotated[str | None, typer.Option("--end")] = None,
              batch_size: Annotated[int, typer.Option("--batch-size")] = 16) -> None:
    """Score = log P(buy) - log P(sell) per (symbol, session): a signals file for `quantlm backtest`."""
    from quantlm.llm.score import score_store

    df = score_store(model, store_from(store), start=start, end=end, base=base, batch_size=batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        df.to_csv(out, index=False)
    else:
        df.to_parquet(out, index=False)
    console.print(f"wrote {len(df)} scores to {out}")
