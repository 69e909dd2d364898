"""The models of a finished `quantlm run` folder, planned: `quantlm plan --run runs/demo`.

Found under `RUN/stages/` (the first of each kind; later folds and seeds have the same shapes):

    pretrain-*/run/model      market GPT (config.json: a LlamaForCausalLM), method full
    sft.*/run/model           the teacher: its config.json's market GPT trunk (heads: a few thousand params), full
    distill.*/run/model       the student MLP (student.json + safetensors): parameters and fp32 weights only
    llm.base-*/model          the tiny LLM (or summary.json's llm.base), method lora at the run's rank

Sequence lengths: a market GPT reads 2 tokens per bar, so seq = its max_position_embeddings (2 x
max_bars); the LLM's is the longest prompt measured in its llm.json (tokens.prompt_tokens_max, else
prompt.max_prompt_tokens). Micro-batch: `micro_batch` (the CLI's --micro-batch).
Every decoder row is `plan_memory` / `throughput` with the caller's GPU settings.
"""

from __future__ import annotations

import json
from pathlib import Path

from quantlm.plan.arch import resolve_arch
from quantlm.plan.memory import PlanConfig, plan_memory, throughput


def _first(stages: Path, pattern: str, sub: str) -> Path | None:
    for d in sorted(stages.glob(pattern)):
        if (d / sub).exists():
            return d / sub
    return None


def _safetensors_params(folder: Path) -> int:
    """Parameter count from the safetensors headers of a folder (no tensor is loaded)."""
    import struct

    total = 0
    for f in folder.glob("*.safetensors"):
        with f.open("rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k != "__metadata__":
                size = 1
                for x in v["shape"]:
                    size *= x
                total += size
    return total


def run_models(run_dir: str | Path) -> list[dict]:
    """[{name, kind, folder, method, seq, lora_rank}] of the run's models (see the module docstring)."""
    run_dir = Path(run_dir)
    stages = run_dir / "stages"
    if not stages.is_dir():
        raise FileNotFoundError(f"{run_dir}: not a `quantlm run` folder (no stages/)")
    out = []
    gpt = _first(stages, "pretrain-*", "run/model/config.json")
    if gpt is not None:
        out.append({"name": "market GPT (pretrained)", "folder": gpt.parent, "method": "full"})
    trunk = _first(stages, "sft.*", "run/model/config.json")
    if trunk is not None:
        out.append({"name": "teacher (market GPT trunk)", "folder": trunk.parent, "method": "full"})
    for row in out:
        cfg = json.loads((row["folder"] / "config.json").read_text())
        cfg = cfg.get("trunk", cfg) if "hidden_size" not in cfg else cfg
        row["seq"] = int(cfg.get("max_position_embeddings", 128))
    student = _first(stages, "distill.*", "run/model/student.json")
    if student is not None:
        out.append({"name": "student (MLP)", "folder": student.parent, "method": None})
    base = _first(stages, "llm.base-*", "model/config.json")
    summary = run_dir / "summary.json"
    if base is None and summary.exists():
        b = (json.loads(summary.read_text()).get("llm") or {}).get("base")
        base = Path(b) / "config.json" if b else None
    if base is not None:
        info_file = _first(stages, "llm.s*", "run/llm.json")
        info = json.loads(info_file.read_text()) if info_file else {}
        seq = (info.get("tokens") or {}).get("prompt_tokens_max") or (info.get("prompt") or {}).get(
            "max_prompt_tokens", 1024)
        out.append({"name": "LLM (LoRA)", "folder": base.parent, "method": "lora", "seq": int(seq),
                    "lora_rank": int((info.get("settings") or {}).get("lora_rank", 8))})
    if not out:
        raise FileNotFoundError(f"{run_dir}: no model folder under stages/")
    return out


def plan_run(run_dir: str | Path, micro_batch: int = 1, **gpu) -> list[dict]:
    """One row per model of the run: params, method, seq, training / inference GiB estimate, est. latency ms.

    gpu: PlanConfig fields (gpu, gpu_mem_gb, gpus, precision, ...) applied to every decoder row.
    """
    rows = []
    for m in run_models(run_dir):
        row = {"model": m["name"], "folder": str(m["folder"]), "method": m["method"] or "-"}
        if m["method"] is None:
            n = _safetensors_params(m["folder"])
            rows.append({**row, "params": n, "seq": None, "train_gib": None, "infer_gib": 4 * n / 2**30,
                         "latency_ms": None})
            continue
        arch = resolve_arch(m["folder"])
        cfg = PlanConfig(method=m["method"], seq=m["seq"], micro_batch=micro_batch,
                         lora_rank=m.get("lora_rank", 16), **gpu)
        mem, t = plan_memory(arch, cfg), throughput(arch, cfg)
        rows.append({**row, "params": arch.params(), "seq": m["seq"], "train_gib": mem.total / 2**30,
                     "infer_gib": mem.infer_total / 2**30, "latency_ms": t["latency_ms"], "fits": mem.fits})
    return rows


__all__ = ["plan_run", "run_models"]
