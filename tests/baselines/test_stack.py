"""The stack (quantlm.baselines.stack): point-in-time weights, what each part adds, the `stack` run of `quantlm run`."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from quantlm.baselines.stack import fit_window, mean_rank_ic, session_ranks, stack_scores, what_each_part_adds
from quantlm.data.calendars import sessions as cn_sessions

SESSIONS = cn_sessions("cn", "2022-01-04", "2023-12-29")
SYMBOLS = [f"S{i:03d}" for i in range(60)]


def market(seed: int = 0):
    """Labels = 1.0 * a + 0.5 * b + noise; inputs: a (informative), b (weaker, independent), junk (noise)."""
    rng = np.random.default_rng(seed)
    shape = (len(SESSIONS), len(SYMBOLS))
    a, b, noise, junk = (rng.normal(size=shape) for _ in range(4))
    label = 1.0 * a + 0.5 * b + 1.5 * noise

    def frame(values, col="score"):
        return pd.DataFrame({"symbol": np.tile(SYMBOLS, len(SESSIONS)), "ts": np.repeat(SESSIONS, len(SYMBOLS)),
                             col: values.reshape(-1)})

    return {"a": frame(a), "b": frame(b), "junk": frame(junk)}, frame(label, "label")


FOLDS = [SimpleNamespace(index=k, test_start=SESSIONS[s], test_end=SESSIONS[e])
         for k, (s, e) in enumerate([(250, 369), (370, 483)])]


def test_session_ranks_span_minus_one_to_one():
    df = pd.DataFrame({"symbol": ["x", "y", "z", "w"], "ts": pd.Timestamp("2024-01-02"), "score": [3.0, 1.0, 2.0, np.nan]})
    r = session_ranks(df)
    assert r.to_dict() == {(pd.Timestamp("2024-01-02"), "x"): 1.0, (pd.Timestamp("2024-01-02"), "y"): -1.0,
                           (pd.Timestamp("2024-01-02"), "z"): 0.0}


def test_fit_window_leaves_out_unknown_labels():
    w = fit_window(SESSIONS, SESSIONS[250], label_sessions=2, window_sessions=100)
    assert w[-1] == SESSIONS[247] and len(w) == 100  # the labels of 248 and 249 need the fills of 250 / 251


def test_stack_weights_follow_the_signal_and_what_each_part_adds():
    inputs, labels = market()
    # inputs scored only over the test folds, like the models: fold 0 has no earlier out-of-sample session
    test = (labels["ts"] >= FOLDS[0].test_start)
    inputs = {k: v[test.to_numpy()] for k, v in inputs.items()}
    stacked, folds = stack_scores(inputs, labels, FOLDS, SESSIONS)
    assert not folds[0].fitted and folds[0].weights == {"a": 1.0, "b": 0.0, "junk": 0.0}  # the first input alone
    w = folds[1].weights
    assert folds[1].fitted and folds[1].fit_end == str(SESSIONS[367].date()) and folds[1].fit_sessions == 118
    assert w["a"] > 1.5 * w["b"] > 0 and abs(w["junk"]) < 0.3 * w["b"]
    assert stacked["ts"].min() == FOLDS[0].test_start and stacked["ts"].max() == FOLDS[1].test_end
    stacked2, report = what_each_part_adds(inputs, labels, FOLDS, SESSIONS)
    pd.testing.assert_frame_equal(stacked, stacked2)
    alone = report["alone"]
    assert alone["a"] > alone["b"] > 0.05 and abs(alone["junk"]) < 0.03
    assert report["stack"] > alone["a"]  # b adds to a
    assert report["adds"]["b"] > 0.01 and report["adds"]["a"] > report["adds"]["b"] and report["adds"]["junk"] < 0.005
    fold1 = SESSIONS[(SESSIONS >= FOLDS[1].test_start)]
    assert mean_rank_ic(stacked, labels, fold1) > mean_rank_ic(inputs["a"], labels, fold1) + 0.03
    assert report["stack"] == pytest.approx(mean_rank_ic(stacked, labels))


def test_weights_are_point_in_time():
    """Scores and labels from the fit window's end on (the 2 label sessions and the test fold) cannot move
    a fold's weights: perturb them and the weights are bit-identical; perturb the window and they move."""
    inputs, labels = market(1)
    _, base = stack_scores(inputs, labels, FOLDS, SESSIONS)
    start = FOLDS[1].test_start
    after_window = SESSIONS[SESSIONS.get_loc(start) - 2]
    rng = np.random.default_rng(9)
    perturbed = {k: v.assign(score=np.where(v["ts"] >= after_window, rng.normal(size=len(v)), v["score"]))
                 for k, v in inputs.items()}
    perturbed["a"] = perturbed["a"][~((perturbed["a"]["ts"] > start) & (perturbed["a"]["symbol"] == "S001"))]
    labels_p = labels.assign(label=np.where(labels["ts"] >= after_window, rng.normal(size=len(labels)), labels["label"]))
    _, moved = stack_scores(perturbed, labels_p, FOLDS, SESSIONS)
    for f0, f1 in zip(base, moved, strict=True):
        assert f0.weights == f1.weights  # exact equality of the floats
    window_end = SESSIONS[SESSIONS.get_loc(start) - 3]
    labels_w = labels.assign(label=np.where(labels["ts"] == window_end, -labels["label"], labels["label"]))
    _, changed = stack_scores(inputs, labels_w, FOLDS, SESSIONS)
    assert changed[1].weights != base[1].weights and changed[0].weights == base[0].weights


def test_duplicate_scores_are_an_error():
    inputs, labels = market()
    bad = {"a": pd.concat([inputs["a"], inputs["a"].iloc[:1]])}
    with pytest.raises(ValueError, match="stack input 'a' has more than one score for S000 on 2022-01-04"):
        stack_scores(bad, labels, FOLDS, SESSIONS)
