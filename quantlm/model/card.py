"""Model cards: the README.md of every saved model folder (market GPT, trader, student).

`write_model_card(folder, info)` writes YAML front matter (library_name, tags, a license placeholder
and the card's facts under `quantlm:` so later stages can add to them) and then prose sections:
model, data and period, tokenizer, training stages with their configs, evaluation metrics, how to
load, intended use and limits. `refresh_model_card(folder, metrics=...)` merges new facts (e.g. the
walk-forward evaluation `quantlm run` measures after training) into an existing card.

info keys (all optional): kind (market_gpt | trader | student), title, model (shape facts),
data (store, market, freq, symbols, start, end), train_end, tokenizer (facts; read from the
folder's tokenizer/ when absent), stages (list of {name, config}), metrics ({name: value} or
{group: {name: value}}), adapter (folder of an unmerged LoRA adapter), notes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

CARD_FILE = "README.md"
_LOADERS = {
    "market_gpt": ("AutoModelForCausalLM", "model(input_ids, calendar_ids).logits  # [B, L, vocab]"),
    "trader": ("AutoModel", "model(batch)  # direction / quantiles / rank per bar"),
}


def _plain(x: Any) -> Any:
    """JSON-safe copy (numpy scalars, paths, timestamps -> plain values / strings)."""
    return json.loads(json.dumps(x, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def read_card_info(folder: str | Path) -> dict:
    """The `quantlm:` facts of a folder's README.md front matter ({} when there is no card)."""
    p = Path(folder) / CARD_FILE
    if not p.exists():
        return {}
    text = p.read_text()
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        return {}
    front = yaml.safe_load(text[4:text.index("\n---\n", 4)]) or {}
    return dict(front.get("quantlm") or {})


def tokenizer_facts(folder: str | Path) -> dict | None:
    """Vocabulary, bins and fit period of a saved K-line tokenizer folder (None when absent)."""
    p = Path(folder) / "tokenizer.json"
    if not p.exists():
        return None
    meta = json.loads(p.read_text())
    cfg = meta.get("config", {})
    return {"class": "quantlm.tokenize.KlineTokenizer", "vocab_size": meta.get("vocab_size"),
            "n_coarse": cfg.get("n_coarse"), "n_fine": cfg.get("n_fine"), "freq": meta.get("freq"),
            "fit_end": meta.get("fit_end"), "vol_halflife": cfg.get("vol_halflife")}


def write_model_card(folder: str | Path, info: dict) -> Path:
    """Write folder/README.md from `info` (see the module docstring); returns its path."""
    d = Path(folder)
    info = _plain({k: v for k, v in info.items() if v is not None})
    if "tokenizer" not in info and (tok := tokenizer_facts(d / "tokenizer")) is not None:
        info["tokenizer"] = tok
    kind = info.get("kind", "model")
    front = {"library_name": "transformers" if kind in _LOADERS else "quantlm",
             "license": "other",
             "tags": ["quantlm", "finance", "time-series", "k-line", kind.replace("_", "-")],
             "quantlm": info}
    head = yaml.safe_dump(front, sort_keys=False, allow_unicode=True).replace(
        "license: other\n", "license: other  # placeholder: set the license of your data and weights\n", 1)
    parts = [f"---\n{head}---\n", f"# {info.get('title') or _title(kind)}\n", _intro(kind)]
    parts.append(_section("Model", info.get("model")))
    parts.append(_section("Data and period", {**(info.get("data") or {}),
                                              **({"train_end": info["train_end"]} if "train_end" in info else {})}))
    parts.append(_section("Tokenizer", info.get("tokenizer")))
    stages = info.get("stages") or []
    if stages:
        parts.append("## Training stages\n\n" + "\n".join(
            f"### {s.get('name', '?')}\n\n```yaml\n{yaml.safe_dump(s.get('config') or {}, sort_keys=False)}```\n"
            + (_section("", _numbers(s["metrics"])).replace("## \n\n", "Metrics:\n\n") if s.get("metrics") else "")
            for s in stages))
    parts.append(_section("Evaluation", info.get("metrics"), empty="No evaluation recorded yet (`quantlm run` adds "
                                                                   "its walk-forward metrics here)."))
    if info.get("adapter"):
        parts.append(f"## LoRA adapter\n\nThe trunk's LoRA adapter is NOT merged: `{info['adapter']}/` is a peft "
                     "adapter folder (`peft.PeftModel.from_pretrained(trunk_lm, adapter_dir)`); "
                     "`TraderModel.load` applies it.\n")
    parts.append(_USE_AND_LIMITS)
    if info.get("notes"):
        parts.append(f"## Notes\n\n{info['notes']}\n")
    path = d / CARD_FILE
    path.write_text("\n".join(p for p in parts if p))
    return path


def refresh_model_card(folder: str | Path, **updates: Any) -> Path:
    """Merge `updates` (e.g. metrics={...}) into the folder's card facts and rewrite README.md."""
    info = read_card_info(folder)
    for k, v in updates.items():
        info[k] = {**info[k], **v} if isinstance(v, dict) and isinstance(info.get(k), dict) else v
    return write_model_card(folder, info)


def refresh_run_card(run_dir: str | Path, stage: str, model_dir: str | Path | None = None) -> Path | None:
    """Add a finished training stage to its model's card: the stage's config.json and metrics.json (in
    `run_dir`) as a stage entry (a student without stages first takes its teacher's data, tokenizer and
    stages, config["teacher"]). None without a model card."""
    run = Path(run_dir)
    folder = Path(model_dir) if model_dir is not None else run / "model"
    if not (folder / CARD_FILE).exists():
        return None
    config, metrics = ({} if not (run / n).exists() else json.loads((run / n).read_text())
                       for n in ("config.json", "metrics.json"))
    info = read_card_info(folder)
    teacher = config.get("teacher")
    if not info.get("stages") and isinstance(teacher, str) and Path(teacher).is_dir():
        parent = inherited_card_info(read_card_info(teacher))  # a student: the teacher's lineage
        info = {**parent, **info, "data": {**parent.get("data", {}), **info.get("data", {})}}
    stages = [s for s in info.get("stages", []) if s.get("name") != stage or s.get("config") != config]
    stages.append({"name": stage, "config": config, "metrics": metrics})
    return write_model_card(folder, {**info, "stages": stages})


def inherited_card_info(info: dict) -> dict:
    """What a model built from another one keeps of its card: the data, tokenizer and earlier stages."""
    return {k: info[k] for k in ("data", "tokenizer", "stages") if k in info}


def _numbers(metrics: dict) -> dict:
    """The scalar numeric entries of a metrics dict, nested dicts flattened with dots."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update({f"{k}.{k2}": v2 for k2, v2 in _numbers(v).items()})
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = v
    return out


def market_gpt_card_info(model) -> dict:
    """Facts a MarketGPT knows about itself."""
    return {"kind": "market_gpt", "model": {**model.extra_config(), "params": int(model.num_params(False)),
                                            "non_embedding_params": int(model.num_params(True))}}


def trader_card_info(model) -> dict:
    """Facts a TraderModel knows about itself (trunk shape, heads, score, training end, market)."""
    spec = model.spec
    return {"kind": "trader", "train_end": spec.train_end, "data": {"market": spec.market},
            "model": {"trunk": model.trunk.extra_config(), "horizons": list(spec.horizons),
                      "quantiles": list(spec.quantiles), "score": spec.score, "window_bars": spec.window_bars,
                      "d_text": spec.d_text, "params": int(sum(p.numel() for p in model.parameters()))},
            "adapter": model.config.adapter}


def student_card_info(model) -> dict:
    """Facts a StudentMLP knows about itself."""
    spec = model.spec.to_dict()
    keep = ("window_bars", "text_bars", "hidden", "layers", "horizons", "quantiles", "score", "d_text")
    return {"kind": "student", "train_end": spec.get("train_end"), "data": {"market": spec.get("market")},
            "model": {**{k: spec[k] for k in keep}, "params": int(sum(p.numel() for p in model.parameters()))}}


def pretrain_card_info(cfg) -> dict:
    """Card facts of a pretraining run from its PretrainConfig."""
    c = cfg.model_dump()
    data = c.get("data") or {}
    return {"data": {k: data.get(k) for k in ("store", "symbols", "start", "end", "split") if data.get(k) is not None}
            | {"sources": data.get("sources")},
            "stages": [{"name": "pretrain", "config": c}]}


def _title(kind: str) -> str:
    return {"market_gpt": "quantlm market GPT", "trader": "quantlm trader",
            "student": "quantlm distilled student"}.get(kind, "quantlm model")


def _intro(kind: str) -> str:
    if kind in _LOADERS:
        auto, call = _LOADERS[kind]
        return ("The model's code is the `quantlm` package, which must be installed (`pip install quantlm`); "
                "the folder's configuration_quantlm.py / modeling_quantlm.py import it and fail with that "
                "message otherwise.\n\n"
                f"```python\nfrom transformers import {auto}\n\nmodel = {auto}.from_pretrained(folder, "
                f"trust_remote_code=True)\n{call}\n```\n\nWithout `trust_remote_code=True` transformers "
                "refuses the folder (its model_type is quantlm's own). `quantlm` loads it with "
                f"`{'MarketGPT' if kind == 'market_gpt' else 'TraderModel'}.load(folder)`.\n")
    return ("A quantlm student (an MLP, not a transformers model): load it with "
            "`quantlm.finetune.student.StudentMLP.load(folder)` or `load_scorer(folder)` (quantlm must be installed).\n")


def _section(title: str, facts: Any, empty: str | None = None) -> str:
    if not facts:
        return f"## {title}\n\n{empty}\n" if empty else ""
    if not isinstance(facts, dict):
        return f"## {title}\n\n{facts}\n"
    rows = []
    for k, v in facts.items():
        if isinstance(v, dict):
            rows += [f"| {k}.{k2} | {_cell(v2)} |" for k2, v2 in v.items()]
        else:
            rows.append(f"| {k} | {_cell(v)} |")
    return f"## {title}\n\n| item | value |\n|---|---|\n" + "\n".join(rows) + "\n"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


_USE_AND_LIMITS = """## Intended use

Research on model-based trading: scoring symbols from their own past K-lines (and, for traders that
read text, point-in-time text embeddings) for a walk-forward backtest or a paper / supervised live
engine under the market's rules. Each bar's output depends on bars up to that bar only.

## Limits

- Trained on one market, frequency and period (see above); scores outside them are extrapolation.
- Backtest metrics include the modelled costs and rules only; they are not a promise of live returns.
- Not investment advice. Live use needs the risk manager and human oversight.
"""
