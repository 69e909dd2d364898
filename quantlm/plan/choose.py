"""Choose a model by measured decision latency: `quantlm plan --latency-budget 5ms --candidates ...`.

Each candidate folder is timed here (p50 of one decision, ms) and its accuracy read from a
`summary.json` in the folder or its parent (the first RankIC found: top-level `rank_ic`, then
`runs[primary].rank_ic`, then `metrics.rank_ic`); a candidate without one has unknown accuracy.
The recommendation is the candidate with the highest known RankIC whose p50 is within the budget;
if none within the budget has a known RankIC, the fastest one within the budget.

A model inside a `quantlm run` folder (runs/demo/stages/distill-.../run/model, stages/llm.s0.f0-.../run)
takes the RankIC of its own run (student, teacher, rl, llm) from the run's summary.json.

How a folder is timed (`measure_folder`):
    llm.json / adapter      an `llm sft` run or adapter: `quantlm.llm.latency.measure_llm_latency` (prompt
                            build + prefill + answer log-probs for n_symbols symbols per update) on --store
    student.json / trader.json   a student or trader: `quantlm.finetune.latency.measure_latency`
                            (live path, n_symbols per update) on --store
    config.json (HF)        any local causal LM (a market GPT model folder too): one forward of `AutoModelForCausalLM` over a fixed
                            prompt of `prompt_tokens` tokens, batch 1, KV cache on, last logits only
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path


def parse_ms(text: str | float) -> float:
    """'5ms' / '5 ms' / '0.5s' / '250us' / 5 -> milliseconds."""
    if isinstance(text, int | float):
        return float(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|us|µs)?\s*", str(text))
    if not m:
        raise ValueError(f"cannot read a latency from '{text}' (e.g. 5ms, 0.5s, 250us)")
    v, unit = float(m.group(1)), m.group(2) or "ms"
    return v * {"ms": 1.0, "s": 1e3, "us": 1e-3, "µs": 1e-3}[unit]


_STAGE_RUNS = {"sft": "teacher", "rl": "rl", "distill": "student", "llm": "llm"}


def _stage_run(folder: Path) -> tuple[Path | None, str | None]:
    """(run folder, run name) when `folder` lies in a `quantlm run` stage folder: stages/sft.s0.f0-<key>
    -> teacher, stages/sft@lora.s0.f0-<key> -> teacher[lora], stages/llm.s0.f0-<key> -> llm."""
    for d in [folder, *folder.parents]:
        if d.parent.name == "stages":
            stage, _, tag = d.name.rsplit("-", 1)[0].split(".")[0].partition("@")
            name = _STAGE_RUNS.get(stage)
            return d.parent.parent, (name + (f"[{tag}]" if tag else "")) if name else None
    return None, None


def read_accuracy(folder: str | Path) -> float | None:
    """RankIC from summary.json in the folder or its parent; for a model inside a `quantlm run` stage
    folder, that run's summary.json entry of the model's own run (teacher / rl / student / llm).
    None when absent."""
    folder = Path(folder)
    run_dir, run_name = _stage_run(folder)
    if run_dir is not None and run_name is not None and (run_dir / "summary.json").exists():
        try:
            v = (json.loads((run_dir / "summary.json").read_text()).get("runs") or {}).get(run_name, {}).get("rank_ic")
        except (OSError, json.JSONDecodeError):
            v = None
        if isinstance(v, int | float) and math.isfinite(v):
            return float(v)
    for f in (folder / "summary.json", folder.parent / "summary.json"):
        if not f.exists():
            continue
        try:
            s = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for v in (s.get("rank_ic"), (s.get("runs") or {}).get(s.get("primary"), {}).get("rank_ic")
                  if isinstance(s.get("runs"), dict) else None, (s.get("metrics") or {}).get("rank_ic")):
            if isinstance(v, int | float) and math.isfinite(v):
                return float(v)
    return None


def _time(fn, repeats: int, warmup: int) -> dict:
    import numpy as np

    for _ in range(warmup):
        fn()
    lat = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        lat.append((time.perf_counter() - t0) * 1e3)
    x = np.asarray(lat)
    return {"p50": float(np.percentile(x, 50)), "p99": float(np.percentile(x, 99))}


def measure_hf_forward(folder: str | Path, prompt_tokens: int = 256, repeats: int = 20, warmup: int = 3,
                       threads: int = 1) -> dict:
    """p50 / p99 (ms) of one forward of a HF causal LM folder over a fixed prompt (batch 1)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from quantlm.model.hf import MARKET_GPT_TYPE, model_type

    # a quantlm market GPT folder's code is quantlm itself (installed): trust it, nothing else
    own = model_type(folder) == MARKET_GPT_TYPE
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=own).eval()
    vocab = int(model.config.vocab_size)
    x = torch.randint(0, vocab, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            out = _time(lambda: model(input_ids=x, use_cache=True, logits_to_keep=1), repeats, warmup)
    finally:
        torch.set_num_threads(old)
    return {**out, "kind": f"hf:{model.config.model_type}", "prompt_tokens": prompt_tokens,
            "params": sum(p.numel() for p in model.parameters())}


def measure_folder(folder: str | Path, store=None, prompt_tokens: int = 256, n_symbols: int = 300,
                   threads: int = 1) -> dict:
    """Measured latency of one candidate folder (see the module docstring for how each kind is timed)."""
    folder = Path(folder)
    if (folder / "llm.json").exists() or (folder / "adapter_config.json").exists():
        if store is None:
            raise ValueError(f"{folder}: timing an LLM trader needs --store (its prompts are built from bars)")
        from quantlm.llm.latency import measure_llm_latency

        return measure_llm_latency(folder, store, n_symbols=n_symbols, n_updates=10, threads=threads)
    from quantlm.finetune.model import is_trader_folder

    if (folder / "student.json").exists() or is_trader_folder(folder):
        if store is None:
            raise ValueError(f"{folder}: timing a student / trader needs --store (its live path streams bars)")
        from quantlm.finetune.latency import measure_latency

        r = measure_latency(folder, store, n_symbols=n_symbols, n_updates=30, threads=threads)
        return {**r, "kind": r.get("kind", "student")}
    if (folder / "config.json").exists():
        return measure_hf_forward(folder, prompt_tokens, threads=threads)
    raise ValueError(f"{folder}: not a student, trader or Hugging Face model folder")


def choose(candidates: list[str | Path], budget_ms: float,
           measure: Callable[[Path], dict] | None = None) -> tuple[list[dict], dict | None]:
    """Measure every candidate -> (rows, recommended row or None). `measure(folder) -> {"p50": ms, ...}`."""
    measure = measure or measure_folder
    rows = []
    for c in candidates:
        c = Path(c)
        row = {"candidate": str(c), "rank_ic": read_accuracy(c)}
        try:
            m = measure(c)
            row |= {"p50_ms": float(m["p50"]), "p99_ms": m.get("p99"), "kind": m.get("kind", "?"),
                    "params": m.get("params")}
            row["within"] = row["p50_ms"] <= budget_ms
        except (ValueError, FileNotFoundError, OSError) as e:
            row |= {"p50_ms": None, "within": False, "error": str(e)}
        rows.append(row)
    ok = [r for r in rows if r["within"]]
    known = [r for r in ok if r["rank_ic"] is not None]
    if known:
        best = max(known, key=lambda r: (r["rank_ic"], -r["p50_ms"]))
    elif ok:
        best = min(ok, key=lambda r: r["p50_ms"])
    else:
        best = None
    return rows, best
