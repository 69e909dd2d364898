"""The `llm:` stage of `quantlm run`: a general causal LM fine-tuned with LoRA beside the market GPT.

    llm:
      tiny: {family: qwen2}       # build a tiny local model (quantlm.llm.tiny), or
      base: models/Qwen2.5-0.5B   # any local Hugging Face causal LM folder (exactly one of the two)
      lora_rank: 8
      freeze_bottom: 0            # decoder layers without adapters
      steps: 100                  # LoRA steps (batch_size prompts each)
      train_sessions: 120         # decision sessions before the fold's train end used as examples

Stages (cached like the others): ``llm/base`` (the tiny model, when `tiny`), ``llm/s{seed}/f{k}``
(`quantlm.llm.sft.run_sft` with train_end = fold k's train end: its examples are the decisions of
the last `train_sessions` sessions up to it whose labels are known by then; every fold starts from
the base model), ``score/llm/s{seed}`` (`quantlm.llm.score.score_store`, fold k's model scoring fold
k's test period from bars up to its test end; one model for refit "once"), ``llm/latency``
(`quantlm.llm.latency.measure_llm_latency` of the first seed's last model). The scores join the
evaluation as the run ``llm`` through `run_evaluation(extra_scores=...)`, so it is judged by the same
backtest, on the same sessions, as the teacher / student / baselines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from quantlm.workflow.stages import StageCache, StageResult, file_stamp, stage_key

RUN_NAME = "llm"


class TinySection(BaseModel):
    """A tiny randomly initialised model built here (`quantlm.llm.tiny.make_tiny_model`)."""

    model_config = ConfigDict(extra="forbid")

    family: Literal["qwen2", "llama"] = "qwen2"
    layers: int = Field(2, ge=1)
    hidden: int = Field(48, ge=8)
    heads: int = Field(4, ge=1)
    kv_heads: int = Field(2, ge=1)
    intermediate: int = Field(96, ge=8)
    vocab_size: int = Field(1500, ge=300)
    seed: int = 0
    embed_std: float = Field(0.2, gt=0)  # init std of the tied embeddings (see make_tiny_model)


class LLMSection(BaseModel):
    """The run config's `llm:` section (units: steps and sessions are counts, lr per step)."""

    model_config = ConfigDict(extra="forbid")

    base: str | None = None  # local HF causal LM folder (relative to the working directory)
    tiny: TinySection | None = None
    lora_rank: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    freeze_bottom: int = Field(0, ge=0)
    steps: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    train_sessions: int = Field(120, ge=1)
    window_bars: int = Field(32, ge=1)
    max_prompt_tokens: int = Field(1024, ge=16)
    text_sessions: int = Field(3, ge=1)
    max_text_chars: int = Field(600, ge=0)
    answer_return: bool = False  # answers "buy +35bp"; the score stays log P(buy) - log P(sell)
    score_batch_size: int = Field(32, ge=1)
    latency: bool = True
    latency_symbols: int = Field(20, ge=1)  # symbols per decision update (one prompt each)
    latency_updates: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _one_model(self) -> LLMSection:
        if (self.base is None) == (self.tiny is None):
            raise ValueError("give exactly one of base (a local model folder) or tiny (build one here)")
        return self


def settings_of(section: LLMSection, seed: int):
    """(SFTSettings, PromptConfig) of the section for `seed`."""
    from quantlm.llm.serialize import PromptConfig
    from quantlm.llm.sft import SFTSettings

    s = SFTSettings(lora_rank=section.lora_rank, lora_alpha=section.lora_alpha, freeze_bottom=section.freeze_bottom,
                    steps=section.steps, batch_size=section.batch_size, lr=section.lr, seed=seed)
    p = PromptConfig(window_bars=section.window_bars, max_prompt_tokens=section.max_prompt_tokens,
                     text_sessions=section.text_sessions, max_text_chars=section.max_text_chars,
                     answer_return=section.answer_return)
    return s, p


def base_stage(section: LLMSection, cache: StageCache) -> tuple[str, Path]:
    """(key, folder) of the base model: the tiny one built as stage ``llm/base``, or the given folder."""
    if section.tiny is not None:
        from quantlm.llm.tiny import make_tiny_model

        tiny = section.tiny.model_dump()
        key = stage_key("llm-base", tiny)
        res = cache.run("llm/base", key, lambda tmp: make_tiny_model(tmp / "model", **tiny))
        return res.key, res.path / "model"
    folder = Path(section.base)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"llm.base: {folder} is not a Hugging Face model folder (no config.json)")
    stamp = file_stamp([f for f in folder.iterdir() if f.is_file()])
    key = stage_key("llm-base", {"base": str(folder.resolve()), "files": stamp})
    return cache.note("llm/base", key, folder).key, folder


def train_start(store, train_end, sessions: int) -> pd.Timestamp:
    """The first decision session of the training examples: `sessions` sessions up to train_end."""
    cal = pd.DatetimeIndex(store.calendar("1d"))
    cal = cal[cal <= pd.Timestamp(train_end)]
    return cal[max(0, len(cal) - sessions)]


def llm_chain(section: LLMSection, seed: int, store, cache: StageCache, fingerprint: str,
              train_ends: list[pd.Timestamp], base: tuple[str, Path]) -> list[StageResult]:
    """One LoRA fine-tune per train end (fold) for `seed`; each reads the store up to its train end only."""
    from quantlm.llm.sft import run_sft

    base_key, base_dir = base
    settings, prompt = settings_of(section, seed)
    out = []
    for k, train_end in enumerate(train_ends):
        te = pd.Timestamp(train_end)
        start = train_start(store, te, section.train_sessions)
        config = {"settings": settings.__dict__, "prompt": prompt.to_dict(), "train_end": str(te.date()),
                  "start": str(start.date())}
        key = stage_key("llm", config, [base_key], fingerprint)

        def build(tmp: Path, te=te, start=start) -> None:
            run_sft(base_dir, store, te, tmp / "run", settings, prompt, start=start, log=cache.console.print)

        out.append(cache.run(f"llm/s{seed}/f{k}", key, build, inputs=[base_key]))
    return out


def llm_score_run(models: list[StageResult], folds: list, seed: int, store, cache: StageCache, fingerprint: str,
                  batch_size: int = 32) -> StageResult:
    """Scores (`scores.parquet`: symbol, ts, score) over every test period, as `models.score_run` does."""
    from quantlm.llm.score import score_store

    periods = ([(folds[0].test_start, folds[-1].test_end)] if len(models) == 1
               else [(f.test_start, f.test_end) for f in folds])
    inputs = [m.key for m in models]
    key = stage_key("score", {"periods": [[str(a.date()), str(b.date())] for a, b in periods], "llm": True},
                    inputs, fingerprint)

    def build(tmp: Path) -> None:
        parts = [score_store(m.path / "run", store, start=a, end=b, batch_size=batch_size)
                 for m, (a, b) in zip(models, periods, strict=True)]
        pd.concat(parts, ignore_index=True).to_parquet(tmp / "scores.parquet", index=False)

    return cache.run(f"score/{RUN_NAME}/s{seed}", key, build, inputs=inputs)


def llm_latency_stage(model: StageResult, section: LLMSection, store, cache: StageCache,
                      fingerprint: str) -> StageResult:
    """`latency.json` of `measure_llm_latency` (ms per update of latency_symbols decisions, and per symbol)."""
    from quantlm.llm.latency import measure_llm_latency

    config = {"n_symbols": section.latency_symbols, "n_updates": section.latency_updates}
    key = stage_key("llm-latency", config, [model.key], fingerprint)

    def build(tmp: Path) -> None:
        res = measure_llm_latency(model.path / "run", store, n_symbols=section.latency_symbols,
                                  n_updates=section.latency_updates)
        (tmp / "latency.json").write_text(json.dumps(res, indent=2, default=str))

    return cache.run("llm/latency", key, build, inputs=[model.key])


def run_llm(section: LLMSection, seeds: list[int], store, cache: StageCache, fingerprint: str,
            train_ends: list[pd.Timestamp], folds: list) -> tuple[dict[int, StageResult], dict[str, Any]]:
    """Every llm stage of a run: ({seed: score stage}, summary entry {tokens, latency_ms, models})."""
    base = base_stage(section, cache)
    scores, last = {}, {}
    for seed in seeds:
        models = llm_chain(section, seed, store, cache, fingerprint, train_ends, base)
        scores[seed] = llm_score_run(models, folds, seed, store, cache, fingerprint, section.score_batch_size)
        last[seed] = models[-1]
    first = last[seeds[0]]
    info = json.loads((first.path / "run" / "llm.json").read_text())
    entry: dict[str, Any] = {"run": RUN_NAME, "base": str(base[1]), "model": str(first.path / "run"),
                             "tokens": info.get("tokens"), "examples": info.get("examples"),
                             "last_loss": info.get("last_loss"), "latency_ms": None}
    if section.latency:
        lat = llm_latency_stage(first, section, store, cache, fingerprint)
        entry["latency_ms"] = json.loads((lat.path / "latency.json").read_text())
    return scores, entry


__all__ = ["LLMSection", "RUN_NAME", "TinySection", "base_stage", "llm_chain", "llm_latency_stage",
           "llm_score_run", "run_llm", "settings_of", "train_start"]
