"""Pretraining in `quantlm run`: training windows end before SFT's validation block; bars after it up to the
first fold's train end only validate (a held-out loss), so the demo's short history still has validation."""

from __future__ import annotations

import pandas as pd

from quantlm.train.config import parse_config
from quantlm.workflow.pipeline import capped_pretrain_config


def _cfg(**data):
    return parse_config({"data": {"window_bars": 32, **data}})


def test_training_ends_at_the_cap_and_validation_runs_to_the_train_end():
    cap, train_end = pd.Timestamp("2019-12-18"), pd.Timestamp("2020-12-30")
    got = capped_pretrain_config(_cfg(), cap, data_end=train_end).data
    assert pd.Timestamp(got.split) == cap and pd.Timestamp(got.end) == train_end
    # a user split before the cap is kept; one after it is pulled back to the cap
    assert pd.Timestamp(capped_pretrain_config(_cfg(split="2019-06-28"), cap, data_end=train_end).data.split) \
        == pd.Timestamp("2019-06-28")
    assert pd.Timestamp(capped_pretrain_config(_cfg(split="2020-06-30"), cap, data_end=train_end).data.split) == cap
    # a data end before the cap: training and validation both before it, split by valid_fraction
    early = capped_pretrain_config(_cfg(end="2019-06-28"), cap, data_end=train_end).data
    assert pd.Timestamp(early.end) == pd.Timestamp("2019-06-28") and early.split is None
    # without data_end nothing after the cap is read
    plain = capped_pretrain_config(_cfg(), cap).data
    assert pd.Timestamp(plain.end) == cap and plain.split is None
