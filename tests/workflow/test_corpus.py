"""`data.pretrain_synth_seeds`: extra synthetic markets join pretraining's corpus, cut at the same date."""

from __future__ import annotations

import pandas as pd
import pytest

from quantlm.data.store import Store
from quantlm.workflow.config import RunConfigError, parse_run_config
from quantlm.workflow.corpus import corpus_stage
from quantlm.workflow.pipeline import pretrain_stage
from quantlm.workflow.stages import StageCache, store_fingerprint

SYNTH = {"n_symbols": 6, "start": "2019-01-02", "end": "2020-06-30", "news": False}
RUN = {"run_dir": "unused", "data": {"synth": SYNTH, "pretrain_synth_seeds": [3, 4]},
       "pretrain": {"model": {"size": "mini", "n_layer": 1, "hidden": 32, "n_head": 2, "ffn": 64, "max_bars": 16},
                    "data": {"window_bars": 16}, "tokenizer": {"n_coarse": 16, "n_fine": 16},
                    "train": {"max_steps": 2, "batch_size": 2, "warmup_steps": 1, "eval_batches": 0, "log_every": 1,
                              "checkpoint_every": 0}},
       "sft": {"steps": 1}}


def test_corpus_holds_the_run_market_and_the_extra_seeds_up_to_the_cut(tmp_path):
    from quantlm.data.synth import SynthConfig, write_market

    store = Store(tmp_path / "store")
    write_market(store, SynthConfig(**SYNTH))
    cfg = parse_run_config(RUN, "run.yaml")
    cut = pd.Timestamp("2020-03-31")
    cache = StageCache(tmp_path / "run")
    res = corpus_stage(cfg, store, cache, store_fingerprint(store), cut)
    bars = Store(res.path / "store").bars(freq="1d")
    suffixes = set(bars["symbol"].str.extract(r"(~m\d+)$")[0].dropna())
    assert suffixes == {"~m3", "~m4"}
    assert bars["ts"].max() <= cut
    own = bars[~bars["symbol"].str.contains("~")]
    pd.testing.assert_frame_equal(own.reset_index(drop=True), store.bars(freq="1d", end=cut).reset_index(drop=True),
                                  check_like=True)
    # the extra markets are other draws, not copies of the run's market
    first = bars[bars["symbol"].str.endswith("~m3")].groupby("ts")["close"].mean()
    assert not first.equals(own.groupby("ts")["close"].mean())
    # pretraining trains on the corpus: the same config without the extra markets gives other weights
    fp, cap = store_fingerprint(store), pd.Timestamp("2020-01-31")
    _, with_extra = pretrain_stage(cfg, store, cache, fp, cap, data_end=cut)
    plain = parse_run_config({**RUN, "data": {"synth": SYNTH}}, "run.yaml")
    _, alone = pretrain_stage(plain, store, cache, fp, cap, data_end=cut)
    assert with_extra != alone
    assert (with_extra / "model.safetensors").read_bytes() != (alone / "model.safetensors").read_bytes()


def test_config_refuses_extra_seeds_without_synth_or_with_its_own_seed():
    bad = {**RUN, "data": {"pretrain_synth_seeds": [1]}}
    with pytest.raises(RunConfigError, match="needs data.synth"):
        parse_run_config(bad, "run.yaml")
    same = {**RUN, "data": {"synth": {**SYNTH, "seed": 3}, "pretrain_synth_seeds": [3]}}
    with pytest.raises(RunConfigError, match="differ from data.synth.seed"):
        parse_run_config(same, "run.yaml")
