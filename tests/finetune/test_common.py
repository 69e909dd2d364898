"""finetune.common.split_rows (validation block, pretraining end) and the workflow's pretraining cap."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from quantlm.finetune.data import FinetuneDataError, TraderData


def _data(n_sessions: int = 100, horizons=(1, 5, 10)) -> TraderData:
    cal = pd.bdate_range("2021-01-04", periods=n_sessions).as_unit("ns")
    session = np.arange(n_sessions, dtype=np.int64)
    z = np.zeros((n_sessions, 2), np.int64)
    f = np.zeros((n_sessions, len(horizons)), np.float32)
    return TraderData(["A"], np.array([0, n_sessions]), pd.DatetimeIndex(cal), session, z, z,
                      np.zeros((n_sessions, 7), np.float32), None, None, f, f, np.zeros(n_sessions, np.int64),
                      list(horizons), 1)


def test_split_rows_blocks_and_pretraining_end():
    from quantlm.finetune.common import split_rows

    d = _data()
    end = d.calendar[89]
    last_train, e, valid = split_rows(d, end, 20)
    assert (last_train, e) == (69, 89)
    assert valid.min() == 70 and valid.max() == 87  # h=1 target known by train_end
    # Pretraining may run up to session last_train - 10 (label horizon), not one session later.
    split_rows(d, end, 20, pretrained_until=d.calendar[59])
    with pytest.raises(FinetuneDataError, match="must end by " + str(d.calendar[59].date())):
        split_rows(d, end, 20, pretrained_until=d.calendar[60])
    with pytest.raises(FinetuneDataError, match="no training sessions"):
        split_rows(d, d.calendar[10], 20)


def test_workflow_pretrain_end_sits_before_the_sft_validation_block():
    from quantlm.workflow.pipeline import WorkflowError, pretrain_end

    cal = pd.bdate_range("2021-01-04", periods=300)

    class Store:
        def calendar(self, freq, market=None):
            return pd.DatetimeIndex(cal)

        def meta(self):
            return {"market": "cn"}

    def sft(valid, horizons=(1, 5, 10), direction="fixed", barrier=10):
        t = SimpleNamespace(horizons=list(horizons), direction=direction, barrier_horizon=barrier)
        return SimpleNamespace(valid_sessions=valid, targets=t)

    main = SimpleNamespace(stages={"sft": sft(40)})
    ablation = SimpleNamespace(stages={"sft": sft(60, horizons=(1,), direction="triple_barrier", barrier=20)})
    cap = cal[250]
    cfg = SimpleNamespace(main=main, variants=[main])
    assert pretrain_end(cfg, Store(), cap) == cal[250 - 40 - 10]
    cfg = SimpleNamespace(main=main, variants=[main, ablation, SimpleNamespace(stages={"rl": object()})])
    assert pretrain_end(cfg, Store(), cap) == cal[250 - 60 - 20]
    with pytest.raises(WorkflowError, match="leaves no session for pretraining"):
        pretrain_end(cfg, Store(), cal[50])
