"""Choose a model by measured decision latency: `quantlm plan --latency-budget 5ms --candidates ...`.

Each candidate folder is timed here (p50 of one decision, ms) and its accuracy read from a
`summary.json` in the folder or its parent (the first RankIC found: top-level `rank_ic`, then
`runs[primary].rank_ic`, then `metrics.rank_ic`); a candidate without one has unknown accuracy.
The recommendation is the candidate with the highest known RankIC whose p50 is within the budget;
if none within the budget has a known RankIC, the fastest one within the budget.

How a folder is timed (`measure_folder`):
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


def read_accuracy(folder: str | Path) -> float | None:
    """RankIC from summary.json in the folder or its parent; None when absent."""
    folder = Path(folder)
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
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
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
    if (folder / "student.json").exists() or (folder / "trader.json").exists():
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
