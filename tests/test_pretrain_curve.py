"""scripts/pretrain_curve.py: the pretraining corpus ends before SFT's validation block; other markets never
share a symbol with the fine-tuning market."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_curve.py"


def load_script():
    spec = importlib.util.spec_from_file_location("pretrain_curve", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_corpus_is_capped_before_the_validation_block(tmp_path):
    pc = load_script()
    p = {**pc.QUICK, "n_symbols": 6, "start": "2019-01-02", "end": "2020-06-30", "extra_markets": 2}
    main = pc.synth_store(tmp_path / "store", p["n_symbols"], p["start"], p["end"], seed=0)
    train_end = pd.Timestamp("2020-03-31")
    cap = pc.pretrain_cap(main, train_end, valid_sessions=20, horizon=10)
    cal = main.calendar("1d", market="cn")
    assert int(cal.get_loc(cap)) == int(cal.get_loc(train_end)) - 30  # valid_sessions + horizon sessions before
    corpus, n_bars = pc.pretraining_store(tmp_path, p, cap, main)
    bars = corpus.bars(freq="1d")
    assert len(bars) == n_bars and pd.DatetimeIndex(bars["ts"]).max() == cap
    own = set(main.bars(freq="1d")["symbol"])
    extra = set(bars["symbol"]) - own
    assert extra and all(s.endswith(("~m1", "~m2")) for s in extra)
    assert {s.split("~")[0] for s in extra} & own  # the same codes exist in other markets: only the suffix keeps them apart
    mine = bars[bars["symbol"].isin(own)]
    pd.testing.assert_frame_equal(mine.reset_index(drop=True),
                                  main.bars(freq="1d", end=cap).reset_index(drop=True), check_like=True)
