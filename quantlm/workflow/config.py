"""The `quantlm run` config: one YAML file composing data -> pretrain -> sft -> (reward -> rl) -> distill
-> walk-forward evaluation -> report.

Every level is strict (unknown keys are errors). `load_run_config(path)` validates the whole file,
including each stage section against its stage's own config class (`PretrainConfig`, `SFTConfig`,
`RewardConfig`, `RLConfig`, `DistillConfig`) and every ablation's merged sections, and raises one
`RunConfigError` listing every problem as `FILE: key.path: message`. Nothing is written before the
file validates.

Sections (see configs/demo.yaml for a commented example):

    run_dir: runs/demo            # output folder (--out overrides)
    seeds: [0]                    # fine-tuning seeds; every model stage runs once per seed
    data:                         # one of synth / import, or neither (use the store as is)
      synth: {SynthConfig fields}
      import: {paths: [...], market: cn, format: auto, freq: null, replace: false}
      embed_texts: true           # embed the store's texts (offline MiniLM), cached in the store
    pretrain: {PretrainConfig}    # or {init: PATH}: reuse a pretrained model folder
    sft: {SFTConfig}
    reward: {RewardConfig}        # optional (null / absent: no reward model)
    rl: {RLConfig}                # optional
    distill: {DistillConfig}      # optional
    evaluate: {EvaluateSection}   # walk-forward folds, refit, backtest options, baselines, gates
    ablations: {name: {stage: {overrides}}}   # stage in sft, reward, rl, distill; runs teacher[name] ...
    llm: {LLMSection}             # optional: a general causal LM with LoRA, run `llm` (quantlm.workflow.llm_stage)
    report: {title: ...}

An ablation re-runs the stages it names with its overrides deep-merged into the main sections and
takes the stages it needs but does not name from the main chain; its runs are named `teacher[name]`,
`rl[name]`, `student[name]` and its stages `sft[name]/s0/f0` etc.

Relative paths (data.import.paths, pretrain.init, evaluate.gates) are relative to the working
directory.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from quantlm.workflow.executor import RaySection

BASELINES = ("benchmark", "momentum", "reversal", "lightgbm", "oracle")
BASELINE_RUNS = {"benchmark": "benchmark", "momentum": "momentum-20", "reversal": "reversal-5",
                 "lightgbm": "lightgbm", "oracle": "oracle"}
MODEL_STAGES = ("sft", "reward", "rl", "distill")
# The report / summary name of each model stage's output ("reward" is a tool of RL, not a trading run).
RUN_NAMES = {"sft": "teacher", "rl": "rl", "distill": "student"}


class RunConfigError(ValueError):
    """An invalid `quantlm run` config (the CLI prints it and exits 2)."""

    user_facing = True


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImportSection(_Strict):
    """`quantlm data import` of files or folders into the store (all or nothing)."""

    paths: list[str] = Field(min_length=1)
    market: Literal["cn", "us", "crypto"]
    format: Literal["auto", "generic", "yahoo", "tushare", "qlib-csv", "qlib-bin"] = "auto"
    freq: Literal["1d", "1h", "30min", "15min", "5min", "1min"] | None = None
    replace: bool = False


class DataSection(_Strict):
    """Where the bars come from: a synthetic market, imported files, or the store as it is."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    synth: dict[str, Any] | None = None  # SynthConfig fields (validated in `load_run_config`)
    import_: ImportSection | None = Field(None, alias="import")
    embed_texts: bool = False
    # more pretraining data: synthetic markets made like data.synth with these seeds join pretraining's
    # corpus (symbols suffixed ~m<seed>, cut at the same dates; quantlm.workflow.corpus); needs data.synth
    pretrain_synth_seeds: list[int] = Field(default_factory=list)


class EvaluateSection(_Strict):
    """Walk-forward evaluation of the models, the baselines and the oracle in one backtest.

    Units: train_years in years, test_months in months, cash in currency; topk / n_drop in stocks.
    refit "once": every model stage trains once with train_end = the first fold's train end and
    scores every test fold; "per_fold": the model stages re-run per fold (SFT warm-starts from the
    previous fold's model), each scoring its own test period.
    """

    market: Literal["cn", "us", "crypto"] | None = None  # default: the store's market
    mode: Literal["expanding", "rolling"] = "expanding"
    train_years: float = Field(3.0, gt=0)
    test_months: int = Field(6, ge=1)
    refit: Literal["once", "per_fold"] = "once"
    strategy: Literal["topk", "threshold", "timing", "auto"] = "topk"  # auto: timing under 10 symbols (backtest.timing)
    topk: int = Field(50, ge=1)
    n_drop: int = Field(5, ge=0)
    fill: Literal["open", "close", "vwap"] = "open"
    costs: bool = True
    cash: float = Field(1_000_000.0, gt=0)
    baselines: list[Literal["benchmark", "momentum", "reversal", "lightgbm", "oracle"]] = Field(
        default_factory=lambda: list(BASELINES))
    num_boost_round: int = Field(200, ge=1)  # LightGBM trees (LightGBM is trained once per run seed)
    jobs: int = Field(1, ge=1)  # worker processes for the LightGBM walk-forward folds (executor "process")
    # where the independent units (model chains per seed x variant, scoring, LightGBM folds) run:
    # "process" = this process (LightGBM folds in `jobs` processes); "ray" = one Ray task per unit
    executor: Literal["process", "ray"] = "process"
    ray: RaySection = Field(default_factory=RaySection)  # address, num_cpus / num_gpus per task, local_cpus
    # the book deployed and gated: none = long-only topk; benchmark = long the picks, short a future on the
    # benchmark (quantlm.backtest.hedge: margin, commission, rolls, basis); long_short = us/crypto only
    hedge: Literal["none", "benchmark", "long_short"] = "none"
    hedge_settings: dict[str, Any] | None = None  # HedgeConfig settings over the market's preset (hedge benchmark)
    gates: str | dict[str, float | None] | None = None  # a gates YAML file or inline thresholds; None: defaults
    primary: str | None = None  # run that leads the report and is gated; None: the model run with the best RankIC
    # a `stack` run: the primary model + LightGBM + reversal / momentum, ridge weights per fold fitted on earlier
    # out-of-sample sessions (quantlm.baselines.stack); the summary says what each part adds
    stack: bool = False
    # false: an RL run that was promoted in no seed and fold (it stepped aside everywhere: no book trades it) is
    # not scored over the test periods and has no row; its validation result stays in the summary notes
    score_stepped_aside: bool = True
    latency: bool = True  # measure the deployed model's decision latency (quantlm.finetune.measure_latency)
    latency_symbols: int = Field(300, ge=1)
    latency_updates: int = Field(50, ge=1)


class ReportSection(_Strict):
    title: str = "quantlm run"


class RunFile(_Strict):
    """The YAML file's top level; stage sections stay mappings here and are typed by `load_run_config`."""

    run_dir: str = "runs/run"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    data: DataSection = Field(default_factory=DataSection)
    pretrain: dict[str, Any]
    sft: dict[str, Any] = Field(default_factory=dict)
    reward: dict[str, Any] | None = None
    rl: dict[str, Any] | None = None
    distill: dict[str, Any] | None = None
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    ablations: dict[str, dict[Literal["sft", "reward", "rl", "distill"], dict[str, Any]]] = Field(default_factory=dict)
    report: ReportSection = Field(default_factory=ReportSection)
    llm: dict[str, Any] | None = None  # quantlm.workflow.llm_stage.LLMSection (validated in parse_run_config)

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v


@dataclass
class Variant:
    """One chain of model stages: the main one (name "") or an ablation.

    stages: {stage: config object} for the stages this variant runs itself. The main variant runs every
    configured stage; an ablation runs the stages it names, each with its overrides deep-merged into
    the main section, and takes the stages it needs but does not name (sft for a policy, reward for
    rl with reward="model") from the main variant.
    """

    name: str
    stages: dict[str, Any]

    def tag(self) -> str:
        """'' for the main variant, '[name]' for an ablation (appended to stage and run names)."""
        return f"[{self.name}]" if self.name else ""


@dataclass
class RunConfig:
    """A validated run config: typed stage configs, the main variant and the ablations."""

    source: str
    run_dir: Path
    seeds: list[int]
    data: DataSection
    synth: Any | None  # SynthConfig
    pretrain: Any | None  # PretrainConfig, or None when pretrain_init is set
    pretrain_init: Path | None
    evaluate: EvaluateSection
    report: ReportSection
    main: Variant
    ablations: list[Variant] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    llm: Any | None = None  # LLMSection: the general-LLM run `llm`, or None

    @property
    def variants(self) -> list[Variant]:
        return [self.main, *self.ablations]

    def model_runs(self) -> list[str]:
        """Names of the trading runs the models give (teacher, rl, student, and the ablations')."""
        runs = [RUN_NAMES[s] + v.tag() for v in self.variants for s in v.stages if s in RUN_NAMES]
        return runs + (["llm"] if self.llm is not None else [])


Issue = tuple[tuple, str]  # (key path inside the validated section, message)


def _issues(e: ValidationError) -> list[Issue]:
    """(location, message) per pydantic error (message starting lower case)."""
    out = []
    for err in e.errors():
        msg = err["msg"]
        msg = msg[:1].lower() + msg[1:]
        if err["type"] in ("value_error", "assertion_error"):
            msg = msg.removeprefix("value error, ").removeprefix("assertion failed, ")
        out.append((tuple(err["loc"]), msg))
    return out


def _format(issues: list[Issue], prefix: tuple = ()) -> list[str]:
    """'key.path: message' per issue, the path starting with `prefix`."""
    return [f"{'.'.join(str(p) for p in (*prefix, *loc)) or '(top)'}: {msg}" for loc, msg in issues]


def _messages(e: ValidationError, prefix: tuple = ()) -> list[str]:
    """'key.path: message' per pydantic error (message starting lower case)."""
    return _format(_issues(e), prefix)


def _validate(cls: type[BaseModel], raw: Any, prefix: tuple, problems: list[str],
              known: list[Issue] | None = None) -> Any:
    """`cls.model_validate(raw)`, or None with its problems added to `problems` (paths under `prefix`).

    known: issues already reported elsewhere (e.g. in the base section an ablation merges); an issue
    here with the same location and message is not reported again.
    """
    try:
        return cls.model_validate(raw if raw is not None else {})
    except ValidationError as e:
        issues = [i for i in _issues(e) if i not in (known or [])]
        problems.extend(_format(issues, prefix))
        return None


def _base_issues(cls: type[BaseModel], raw: Any) -> list[Issue]:
    """The validation issues of a main stage section (empty if it is valid)."""
    try:
        cls.model_validate(raw if raw is not None else {})
    except ValidationError as e:
        return _issues(e)
    return []


def _overridden(loc: tuple, overrides: Any) -> bool:
    """Whether the key path `loc` (or a mapping above it) is set by an ablation's `overrides`."""
    node = overrides
    for key in loc:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in, recursively for nested mappings (overrides win)."""
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def stage_classes() -> dict[str, type[BaseModel]]:
    """The fine-tuning stages' config classes (imported lazily: quantlm.finetune imports torch)."""
    from quantlm.finetune.config import SFTConfig
    from quantlm.finetune.distill import DistillConfig
    from quantlm.finetune.reward import RewardConfig
    from quantlm.finetune.rl import RLConfig

    return {"sft": SFTConfig, "reward": RewardConfig, "rl": RLConfig, "distill": DistillConfig}


def _check_chain(stages: dict[str, Any], where: str, problems: list[str], has_reward: bool) -> None:
    rl = stages.get("rl")
    if rl is not None and getattr(rl, "reward", None) == "model" and not has_reward:
        problems.append(f"{where}rl.reward: 'model' needs a reward section (or set rl.reward: realized)")


def parse_run_config(raw: dict[str, Any] | None, source: str = "config") -> RunConfig:
    """Validate a parsed config mapping; raise RunConfigError naming `source` and every bad key path."""
    from quantlm.data.synth import SynthConfig, SynthConfigError
    from quantlm.train.config import PretrainConfig

    problems: list[str] = []
    top = _validate(RunFile, raw or {}, (), problems)
    if top is None:
        raise RunConfigError("\n".join(f"{source}: {p}" for p in problems))

    synth = None
    if top.data.synth is not None and top.data.import_ is not None:
        problems.append("data: give either synth or import, not both")
    if top.data.pretrain_synth_seeds and top.data.synth is None:
        problems.append("data.pretrain_synth_seeds: needs data.synth (the extra markets are made like it)")
    if top.data.synth is not None and (top.data.synth.get("seed", 0) in top.data.pretrain_synth_seeds
                                       or len(set(top.data.pretrain_synth_seeds)) != len(top.data.pretrain_synth_seeds)):
        problems.append("data.pretrain_synth_seeds: seeds must be distinct and differ from data.synth.seed")
    if top.data.synth is not None:
        synth = _validate(SynthConfig, top.data.synth, ("data", "synth"), problems)
        if synth is not None:
            try:
                synth.check()
            except SynthConfigError as e:
                problems.append(f"data.synth: {e}")

    pretrain, init = None, None
    if "init" in top.pretrain:
        extra = sorted(set(top.pretrain) - {"init"})
        if extra:
            problems.append(f"pretrain: with init, no other key is allowed (got {', '.join(extra)})")
        elif not isinstance(top.pretrain["init"], str):
            problems.append("pretrain.init: expected the path of a pretrained model folder")
        else:
            init = Path(top.pretrain["init"])
    else:
        pretrain = _validate(PretrainConfig, top.pretrain, ("pretrain",), problems)
        if pretrain is not None and pretrain.data.store is not None:
            problems.append("pretrain.data.store: leave it null; the run's store is --store (or the default store)")

    classes = stage_classes()
    main_stages: dict[str, Any] = {}
    for stage in MODEL_STAGES:
        section = getattr(top, stage)
        if section is not None:
            obj = _validate(classes[stage], section, (stage,), problems)
            if obj is not None:
                main_stages[stage] = obj
    _check_chain(main_stages, "", problems, "reward" in main_stages)

    ablations = []
    for name, named in top.ablations.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            problems.append(f"ablations.{name}: names may hold letters, digits, '_', '.', '-' only")
            continue
        stages: dict[str, Any] = {}
        if not named:
            problems.append(f"ablations.{name}: name at least one stage to override ({', '.join(MODEL_STAGES)})")
        for stage in MODEL_STAGES:
            if stage not in named:
                continue
            section, overrides = getattr(top, stage), named.get(stage) or {}
            merged = deep_merge(section or {}, overrides)
            # a problem of the main section (validated above) is reported once, at its real place
            # (e.g. sft.lora.rank), not again under ablations.NAME, unless the ablation sets that key
            known = [] if section is None else [
                i for i in _base_issues(classes[stage], section) if not _overridden(i[0], overrides)]
            obj = _validate(classes[stage], merged, ("ablations", name, stage), problems, known)
            if obj is not None:
                stages[stage] = obj
        _check_chain(stages, f"ablations.{name}.", problems, "reward" in stages or "reward" in main_stages)
        ablations.append(Variant(name, stages))

    llm = None
    if top.llm is not None:
        from quantlm.workflow.llm_stage import LLMSection

        llm = _validate(LLMSection, top.llm, ("llm",), problems)
    ev = top.evaluate
    if ev.hedge_settings is not None:
        from quantlm.backtest.hedge import HedgeConfig, HedgeConfigError

        try:
            HedgeConfig.from_mapping(ev.hedge_settings, market=ev.market or "cn", source="evaluate.hedge_settings")
        except HedgeConfigError as e:
            problems.append(str(e))
    if ev.hedge == "long_short" and ev.market == "cn":
        problems.append("evaluate.hedge: long_short needs a market that allows shorting (us, crypto), not cn "
                        "(A-shares cannot be shorted in general: use hedge: benchmark)")
    if isinstance(ev.gates, dict):
        from quantlm.backtest.gates import GateConfigError, Gates

        try:
            Gates.from_mapping(ev.gates, source="evaluate.gates")
        except GateConfigError as e:
            problems.append(str(e))
    cfg = RunConfig(source=source, run_dir=Path(top.run_dir), seeds=list(top.seeds), data=top.data, synth=synth,
                    pretrain=pretrain, pretrain_init=init, evaluate=ev, report=top.report,
                    main=Variant("", main_stages), ablations=ablations, raw=raw or {}, llm=llm)
    if ev.primary is not None:
        known = cfg.model_runs() + [BASELINE_RUNS[b] for b in ev.baselines if b not in ("oracle", "benchmark")]
        known += ["stack"] if ev.stack else []
        if ev.primary not in known:
            problems.append(f"evaluate.primary: '{ev.primary}' is not a run of this config ({', '.join(known)})")
    if "sft" not in main_stages and not problems:
        problems.append("sft: the sft section is required")
    if problems:
        raise RunConfigError("\n".join(f"{source}: {p}" for p in problems))
    return cfg


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a `quantlm run` YAML file (errors name the file and the key path)."""
    from quantlm.config import read_yaml_mapping

    raw = read_yaml_mapping(path, RunConfigError, what="run config")
    return parse_run_config(raw, str(path))


__all__ = ["RunConfig", "RunConfigError", "Variant", "deep_merge", "load_run_config", "parse_run_config",
           "RUN_NAMES", "MODEL_STAGES", "BASELINE_RUNS"]
