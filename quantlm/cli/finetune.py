"""`quantlm finetune ...`: post-training of a pretrained market GPT (sft, reward, rl, distill), JSON Lines
export and scoring into a signals file.

    quantlm finetune sft      --init PRE/model --out runs/sft --train-end 2023-12-31 [--config C.yaml] [--seed 0]
    quantlm finetune sft      --init PRE/model --out runs/sft --jsonl examples.jsonl [--valid-fraction 0.1]
    quantlm finetune reward   --policy runs/sft --out runs/reward --train-end 2023-12-31
    quantlm finetune rl       --policy runs/sft [--reward runs/reward] --out runs/rl --train-end 2023-12-31
    quantlm finetune distill  --teacher runs/rl --out runs/student --train-end 2023-12-31
    quantlm finetune export   --out examples.jsonl --start 2021-01-01 --end 2023-12-31 [--model PRE/model]
    quantlm finetune score    --model runs/sft/model --out signals.csv --start 2024-01-01 --end 2024-06-30

--config takes a YAML file holding either the command's section alone (the keys of SFTConfig, ...) or
a `quantlm run` file with sft / reward / rl / distill sections (the command's section is used).
Unknown keys, bad values and a missing section are errors (exit code 2) naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from quantlm.cli.common import StoreOption, console, fail, store_from, user_errors

SECTIONS = ("sft", "reward", "rl", "distill")

ConfigOption = Annotated[Path | None, typer.Option(
    "--config", help="YAML: the command's section (sft, reward, rl or distill keys) or a `quantlm run` file.")]
OutRun = Annotated[Path, typer.Option("--out", help="Run folder (config.json, metrics.jsonl, metrics.json, model/).")]
TrainEnd = Annotated[str | None, typer.Option("--train-end", help="Last session of data the run may read (YYYY-MM-DD).")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Print validation rows while training.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out (bit-exact on CPU).")]


def register(app: typer.Typer) -> None:
    """Add the `finetune` command group to `app`."""
    ft = typer.Typer(help="Post-training: SFT trader, reward model, RL, distillation, JSONL export, scoring.",
                     no_args_is_help=True)
    ft.command("sft")(sft_cmd)
    ft.command("reward")(reward_cmd)
    ft.command("rl")(rl_cmd)
    ft.command("distill")(distill_cmd)
    ft.command("export")(export_cmd)
    ft.command("score")(score_cmd)
    app.add_typer(ft, name="finetune")


def _config_classes() -> dict[str, type]:
    from quantlm.finetune.config import SFTConfig
    from quantlm.finetune.distill import DistillConfig
    from quantlm.finetune.reward import RewardConfig
    from quantlm.finetune.rl import RLConfig

    return {"sft": SFTConfig, "reward": RewardConfig, "rl": RLConfig, "distill": DistillConfig}


def section_config(name: str, path: Path | None) -> Any:
    """The `name` section of a config file validated by its class (defaults when path is None).

    A file is read as sections when a top-level key is a `quantlm run` key that the class does not
    have, or a stage name holding a mapping; otherwise the whole file is the section.
    """
    from quantlm.config import read_yaml_mapping
    from quantlm.finetune.config import ConfigError, parse_section

    cls = _config_classes()[name]
    if path is None:
        return cls()
    raw = read_yaml_mapping(path, ConfigError) or {}
    from quantlm.workflow.config import RunFile

    own = set(cls.model_fields)  # rl has a `reward` key: a section is a mapping, rl.reward a string
    if any((k in RunFile.model_fields and k not in own) or (k in SECTIONS and isinstance(raw[k], dict)) for k in raw):
        unknown = [k for k in raw if k not in RunFile.model_fields]
        if unknown:
            raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(map(str, unknown))} "
                              f"(sections: {', '.join(RunFile.model_fields)})")
        if raw.get(name) is None:
            raise ConfigError(f"{path}: no '{name}' section")
        return parse_section(cls, raw[name], f"{path} (section '{name}')")
    return parse_section(cls, raw, str(path))


def _need_train_end(train_end: str | None) -> str:
    import pandas as pd

    if train_end is None:
        fail("--train-end is required: the run reads the store up to this session (YYYY-MM-DD)")
    try:
        pd.Timestamp(train_end)
    except ValueError:
        fail(f"--train-end: not a date: {train_end!r}")
    return train_end


def _need_dir(path: Path, option: str) -> Path:
    if not path.exists():
        fail(f"{option} {path}: no such model folder")
    return path


def _summary(run: Path, title: str) -> None:
    """Print metrics.json of a run as a small table."""
    import json

    from rich.table import Table

    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    table = Table(title=title, show_header=False)
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        if isinstance(v, dict | list):
            continue
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)
    console.print(f"model: {run / 'model'}", highlight=False)


@user_errors
def sft_cmd(
    init: Annotated[Path, typer.Option("--init", help="Pretrained model folder (pretrain run/model) or a trader folder.")],
    out: OutRun,
    store: StoreOption = None,
    train_end: TrainEnd = None,
    config: ConfigOption = None,
    seed: Seed = 0,
    jsonl: Annotated[Path | None, typer.Option("--jsonl", help="Train on this JSON Lines file instead of the store.")] = None,
    valid_fraction: Annotated[float, typer.Option("--valid-fraction", min=0.0, max=1.0,
                                                  help="--jsonl: latest share of example timestamps held out.")] = 0.1,
    progress: Progress = False,
    resume: Resume = False,
) -> None:
    """Supervised fine-tuning: pretrained market GPT -> trader (direction, quantile and rank heads)."""
    cfg = section_config("sft", config)
    _need_dir(init, "--init")
    if jsonl is not None:
        from quantlm.finetune.jsonl import train_sft_jsonl

        if resume:
            fail("--resume works with --store runs only (JSON Lines fine-tuning restarts from --init)")

        if train_end is not None:
            console.print("[yellow]warning:[/] --train-end is ignored with --jsonl (examples are split by their ts)",
                          highlight=False)
        market = store_from(store).meta().get("market") if store is not None else None
        run = train_sft_jsonl(cfg, jsonl, out, init, valid_fraction=valid_fraction, seed=seed, market=market,
                              progress=progress)
    else:
        from quantlm.finetune.sft import train_sft

        run = train_sft(cfg, store_from(store), out, init, _need_train_end(train_end), seed=seed, progress=progress,
                        resume=resume)
    _summary(run, "sft")


@user_errors
def reward_cmd(
    policy: Annotated[Path, typer.Option("--policy", help="SFT trader folder (or its run folder).")],
    out: OutRun,
    store: StoreOption = None,
    train_end: TrainEnd = None,
    config: ConfigOption = None,
    seed: Seed = 0,
    progress: Progress = False,
    resume: Resume = False,
) -> None:
    """Train a reward model (pairwise, net of costs) initialised from the SFT trader."""
    from quantlm.finetune.reward import train_reward

    cfg = section_config("reward", config)
    run = train_reward(cfg, store_from(store), out, _need_dir(policy, "--policy"), _need_train_end(train_end),
                       seed=seed, progress=progress, resume=resume)
    _summary(run, "reward")


@user_errors
def rl_cmd(
    policy: Annotated[Path, typer.Option("--policy", help="SFT trader folder (or its run folder).")],
    out: OutRun,
    reward: Annotated[Path | None, typer.Option("--reward", help="Reward model folder (for rl.reward: model).")] = None,
    store: StoreOption = None,
    train_end: TrainEnd = None,
    config: ConfigOption = None,
    seed: Seed = 0,
    progress: Progress = False,
    resume: Resume = False,
) -> None:
    """GRPO fine-tuning of the trader's direction head, KL-anchored to the SFT model."""
    from quantlm.finetune.rl import train_rl

    cfg = section_config("rl", config)
    if cfg.reward == "model" and reward is None:
        fail("rl.reward is 'model': pass --reward REWARD_MODEL_DIR (or set reward: realized in the rl section)")
    if reward is not None:
        _need_dir(reward, "--reward")
    run = train_rl(cfg, store_from(store), out, _need_dir(policy, "--policy"), reward, _need_train_end(train_end),
                   seed=seed, progress=progress, resume=resume)
    _summary(run, "rl")


@user_errors
def distill_cmd(
    teacher: Annotated[Path, typer.Option("--teacher", help="Trader folder (or SFT / RL run folder) to distil.")],
    out: OutRun,
    store: StoreOption = None,
    train_end: TrainEnd = None,
    config: ConfigOption = None,
    seed: Seed = 0,
    progress: Progress = False,
    resume: Resume = False,
) -> None:
    """Distil a trader into a small, fast student (MLP or small GPT)."""
    from quantlm.finetune.distill import train_distill

    cfg = section_config("distill", config)
    run = train_distill(cfg, store_from(store), out, _need_dir(teacher, "--teacher"), _need_train_end(train_end),
                        seed=seed, progress=progress, resume=resume)
    _summary(run, "distill")


@user_errors
def export_cmd(
    out: Annotated[Path, typer.Option("--out", help="JSON Lines file to write (.jsonl, or .jsonl.gz).")],
    start: Annotated[str | None, typer.Option("--start", help="First example session (default: the store's first).")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Last example session (default: the store's last).")] = None,
    store: StoreOption = None,
    model: Annotated[Path | None, typer.Option("--model", help="Model folder whose tokenizer sets the warm-up bars.")] = None,
    config: ConfigOption = None,
    window_bars: Annotated[int | None, typer.Option("--window-bars", min=1, help="Model window in bars (default: sft.window_bars).")] = None,
    warmup_bars: Annotated[int | None, typer.Option("--warmup-bars", min=0, help="Extra bars before the window (default: 2 x tokenizer half-life).")] = None,
    every: Annotated[int, typer.Option("--every", min=1, help="One example session every N sessions.")] = 1,
    symbols: Annotated[str | None, typer.Option("--symbols", help="Comma-separated symbols (default: all tradable).")] = None,
    text: Annotated[bool | None, typer.Option("--text/--no-text", help="Include texts (default: sft.text).")] = None,
) -> None:
    """Write labelled examples (bars up to ts, text visible at ts, signal, returns) as JSON Lines."""
    from quantlm.finetune.jsonl import export_jsonl

    cfg = section_config("sft", config)
    st = store_from(store)
    if not st.exists():
        fail(f"no quantlm store at {st.root} (create one with 'quantlm data import' or 'quantlm data synth')")
    if model is not None:
        _need_dir(model, "--model")
    wanted = [s.strip() for s in symbols.split(",") if s.strip()] if symbols else None
    n = export_jsonl(st, out, model, start, end, window_bars=window_bars or cfg.window_bars, targets=cfg.targets,
                     text=cfg.text if text is None else text, symbols=wanted, every=every, warmup_bars=warmup_bars)
    console.print(f"wrote {n:,} examples to {out}", highlight=False)


@user_errors
def score_cmd(
    model: Annotated[Path, typer.Option("--model", help="Trader or student folder (run/model).")],
    out: Annotated[Path, typer.Option("--out", help="Signals file to write: .csv or .parquet (ts, symbol, score).")],
    start: Annotated[str, typer.Option("--start", help="First session to score (YYYY-MM-DD).")],
    end: Annotated[str, typer.Option("--end", help="Last session to score (YYYY-MM-DD).")],
    store: StoreOption = None,
    warm: Annotated[int, typer.Option("--warm", min=1, help="Bars of context every scored bar gets at least.")] = 16,
) -> None:
    """Score the store's bars with a model: a signals file for `quantlm backtest` / `quantlm evaluate --signals`."""
    from quantlm.finetune.score import score_model

    suffix = "".join(out.suffixes[-2:]).lower()
    if not suffix.endswith((".csv", ".parquet", ".pq")):
        fail(f"--out must end in .csv or .parquet, got '{out.name}'")
    st = store_from(store)
    if not st.exists():
        fail(f"no quantlm store at {st.root} (create one with 'quantlm data import' or 'quantlm data synth')")
    scores = score_model(_need_dir(model, "--model"), st, start, end, warm=warm)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if suffix.endswith(".csv"):
        scores.assign(ts=scores["ts"].dt.strftime("%Y-%m-%d")).to_csv(tmp, index=False)
    else:
        scores.to_parquet(tmp, index=False)
    tmp.replace(out)
    days = scores["ts"].nunique()
    console.print(f"wrote {len(scores):,} scores ({days} sessions, {scores['symbol'].nunique()} symbols, "
                  f"{scores['ts'].min().date()} to {scores['ts'].max().date()}) to {out}", highlight=False)
