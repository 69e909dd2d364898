"""More pretraining data for `quantlm run`: extra synthetic markets beside the run's own.

`data.pretrain_synth_seeds: [1, 2, ...]` builds, once per run cache, a pretraining store holding the run's
market up to pretraining's data end plus, for every seed, a synthetic market made with the run's
`data.synth` settings and that seed (the same mechanisms, other prices, news and alpha draws), its symbols
suffixed `~m<seed>` so they never meet the fine-tuning symbols. Every source is cut at the same date as
the run's own bars, so the point-in-time cap of pretraining (`pipeline.capped_pretrain_config`) holds for
the whole corpus. Fine-tuning and evaluation still read only the run's store.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from quantlm.workflow.stages import StageCache, StageResult, stage_key


def corpus_stage(cfg, store, cache: StageCache, fingerprint: str, data_end: pd.Timestamp) -> StageResult:
    """The stage whose `store/` holds the pretraining corpus (the run's bars up to data_end + extra markets)."""
    from quantlm.data.store import Store
    from quantlm.data.synth import generate_market

    seeds = list(cfg.data.pretrain_synth_seeds)
    market = store.meta().get("market") or "cn"
    key = stage_key("corpus", {"seeds": seeds, "synth": cfg.synth.model_dump(mode="json"),
                               "end": str(pd.Timestamp(data_end).date())}, store=fingerprint)

    def build(tmp: Path) -> None:
        frames = [store.bars(freq="1d", market=market, end=data_end)]
        for seed in seeds:
            bars = generate_market(cfg.synth.model_copy(update={"seed": seed})).bars
            bars = bars[pd.DatetimeIndex(bars["ts"]) <= pd.Timestamp(data_end)]
            frames.append(bars.assign(symbol=bars["symbol"].astype(str) + f"~m{seed}"))
        corpus = Store(tmp / "store")
        corpus.write_bars(pd.concat(frames, ignore_index=True), market=market, freq="1d")

    return cache.run("corpus", key, build)


__all__ = ["corpus_stage"]
