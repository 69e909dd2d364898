"""The independent units of one `quantlm run`, in the waves an executor runs them in.

1. the main chain of every seed (`train_chain` of the main variant: sft -> reward -> rl -> distill over
   every fold; folds of one chain stay in order because SFT of fold k warm-starts from fold k-1);
2. every ablation x seed chain (each needs its seed's main chain);
3. the scoring of every model run x seed.

`RunUnits` carries what every unit needs (config, store, stage cache, store fingerprint, the
pretrained model, train ends, folds). In this process (ProcessExecutor with jobs=1) a unit uses the
run's own stage cache; shipped to another process or a Ray worker, it is pickled without its console
and catalog cache and re-opens the store and the stage cache on the same paths there, and the unit
sends back the stages it ran so the driver's cache records them (summary.json `stages`) and
propagates `--force` to the next wave. Stages are written into the same `stages/` folder either way
(an atomic rename per stage), so a later run finds them cached whatever executor built them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from quantlm.workflow.config import RunConfig, Variant
from quantlm.workflow.models import Chain, score_run, stepped_aside_runs, train_chain
from quantlm.workflow.stages import StageCache, StageResult


@dataclass
class UnitOutput:
    """What a unit returns: its value and the stages it ran ({stage id: result}, in run order)."""

    value: Any
    stages: dict[str, StageResult] = field(default_factory=dict)
    forced_keys: set[str] = field(default_factory=set)


class RunUnits:
    """Chain training and scoring units of one run (see the module docstring)."""

    def __init__(self, cfg: RunConfig, store, cache: StageCache, fingerprint: str, pretrained: StageResult,
                 pretrained_dir: Path, train_ends: list[pd.Timestamp], folds: list) -> None:
        self.cfg, self.store, self.cache, self.fingerprint = cfg, store, cache, fingerprint
        self.pretrained, self.pretrained_dir = pretrained, pretrained_dir
        self.train_ends, self.folds = train_ends, folds

    # ---------------------------------------------------------------- pickling (other processes)
    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("store", "cache")}
        state["store_root"] = Path(self.store.root)
        state["cache_state"] = (self.cache.root, sorted(self.cache.force), sorted(self.cache.forced_keys),
                                self.cache.console.quiet)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from quantlm.data.store import Store

        root, force, forced_keys, quiet = state.pop("cache_state")
        self.__dict__.update(state)
        self.store = Store(state.pop("store_root"))
        self.cache = StageCache(root.parent, Console(quiet=quiet), force, stages_dir=root)
        self.cache.forced_keys = set(forced_keys)

    # ---------------------------------------------------------------- units
    def _output(self, value: Any, before: set[str]) -> UnitOutput:
        ran = {sid: r for sid, r in self.cache.results.items() if sid not in before}
        return UnitOutput(value, ran, set(self.cache.forced_keys))

    def chain(self, job: tuple[Variant, int, Chain | None]) -> UnitOutput:
        """Train (or find cached) one variant x seed chain over every train end; value: the Chain."""
        variant, seed, main = job
        before = set(self.cache.results)
        chain = train_chain(self.cfg, variant, seed, self.store, self.cache, self.fingerprint, self.pretrained,
                            self.pretrained_dir, self.train_ends, main=main)
        return self._output(chain, before)

    def score(self, job: tuple[str, int, list[StageResult]]) -> UnitOutput:
        """Score one model run x seed over the test periods; value: the score stage."""
        run, seed, models = job
        before = set(self.cache.results)
        return self._output(score_run(run, seed, models, self.folds, self.store, self.cache, self.fingerprint), before)

    # ---------------------------------------------------------------- waves
    def _collect(self, outputs: list[UnitOutput]) -> list[Any]:
        for out in outputs:  # input order: the records keep the order a sequential run gives
            for sid, res in out.stages.items():
                self.cache.results[sid] = res
            self.cache.forced_keys |= out.forced_keys
        return [out.value for out in outputs]

    def train_chains(self, executor) -> list[Chain]:
        """Every chain, main chains first (one wave), then the ablations (a second wave); returned per
        seed as main, then its ablations (chains[0] is the first seed's main chain)."""
        mains: list[Chain] = self._collect(executor.map(self.chain, [(self.cfg.main, s, None) for s in self.cfg.seeds]))
        jobs = [(v, m.seed, m) for m in mains for v in self.cfg.ablations]
        ablations: list[Chain] = self._collect(executor.map(self.chain, jobs))
        per = len(self.cfg.ablations)
        return [c for i, m in enumerate(mains) for c in (m, *ablations[i * per:(i + 1) * per])]

    def score_all(self, executor, chains: list[Chain]) -> dict[str, dict[int, StageResult]]:
        """{run: {seed: score stage}} of every model run of every chain (one wave); with
        evaluate.score_stepped_aside false, RL runs promoted in no seed and fold are left out."""
        skip = set() if self.cfg.evaluate.score_stepped_aside else set(stepped_aside_runs(chains))
        jobs = [(run, chain.seed, models) for chain in chains for run, models in chain.runs().items()
                if run not in skip]
        results: list[StageResult] = self._collect(executor.map(self.score, jobs))
        scores: dict[str, dict[int, StageResult]] = {}
        for (run, seed, _), res in zip(jobs, results, strict=True):
            scores.setdefault(run, {})[seed] = res
        return scores


__all__ = ["RunUnits", "UnitOutput"]
