"""SFT with factor inputs (sft.factors: alpha158) and listwise cross-section batches (sft.batches: cross_section)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from quantlm.finetune import SFTConfig, TraderModel, score_model, train_sft  # noqa: E402
from quantlm.finetune.data import factor_ranks, market_bars  # noqa: E402
from quantlm.finetune.listwise import listwise_pearson_loss  # noqa: E402

BASE = {"steps": 4, "batch_size": 8, "window_bars": 24, "warm": 8, "valid_sessions": 40, "eval_every": 2,
        "warmup_steps": 1, "lr": 3e-3, "text": False}


def _cfg(**kw) -> SFTConfig:
    return SFTConfig(**(BASE | kw))


@pytest.fixture(scope="module")
def factor_run(ft_env, tmp_path_factory):
    cfg = _cfg(factors="alpha158", batches="cross_section", cross_section_symbols=6, batch_size=12,
               loss={"listwise": 1.0})
    return train_sft(cfg, ft_env.store, tmp_path_factory.mktemp("sftf") / "run", ft_env.pretrained,
                     ft_env.train_end, seed=0)


def _ranked(bars: pd.DataFrame) -> pd.DataFrame:
    b = bars.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    ts = pd.DatetimeIndex(b["ts"]).asi8
    session = np.searchsorted(np.unique(ts), ts)
    out = pd.DataFrame(factor_ranks(b, session).astype(np.float32))
    out.index = pd.MultiIndex.from_arrays([b["symbol"].to_numpy(), pd.DatetimeIndex(b["ts"])], names=["symbol", "ts"])
    return out


def test_factor_ranks_are_point_in_time_and_in_range(ft_env):
    from quantlm.testing import assert_causal

    bars, _ = market_bars(ft_env.store)
    ranked = _ranked(bars).to_numpy()
    assert ranked.shape[1] == 159 and np.isfinite(ranked).all()
    assert ranked[:, :158].min() >= -1 and ranked[:, :158].max() <= 1 and ranked[:, :158].std() > 0.3
    assert ((ranked[:, 158] >= 0) & (ranked[:, 158] <= 1)).all() and ranked[:, 158].min() == 0.0
    assert ranked[:, 158].max() > 0.9  # a first bar has only its K-bar and price features (13 of 158)
    assert_causal(_ranked, bars, cutoffs=2)


def test_listwise_loss_by_hand():
    y = torch.tensor([[0.01, -0.02, 0.03, 0.0, -0.01, 0.02]])
    sig = torch.zeros_like(y)  # sigma 1
    one_group = torch.zeros_like(y, dtype=torch.long)
    assert listwise_pearson_loss(y * 7 + 1, y, sig, one_group).item() == pytest.approx(0.0, abs=1e-5)
    assert listwise_pearson_loss(-y, y, sig, one_group).item() == pytest.approx(2.0, abs=1e-5)
    # two groups of 3 with min_count 3: perfect in one, reversed in the other -> mean (0 + 2) / 2
    g = torch.tensor([[0, 0, 0, 1, 1, 1]])
    s = torch.cat([y[:, :3], -y[:, 3:]], dim=1)
    assert listwise_pearson_loss(s, y, sig, g, min_count=3).item() == pytest.approx(1.0, abs=1e-5)
    # unknown targets and -1 groups are ignored; too small groups give 0 with a gradient path
    s2 = s.clone().requires_grad_(True)
    loss = listwise_pearson_loss(s2, torch.full_like(y, float("nan")), sig, g)
    loss.backward()
    assert loss.item() == 0.0


def test_factor_cross_section_run_trains_saves_and_scores(factor_run, ft_env):
    metrics = json.loads((factor_run / "metrics.json").read_text())
    assert np.isfinite(metrics["valid_rank_ic"])
    rows = [json.loads(x) for x in (factor_run / "metrics.jsonl").read_text().splitlines()]
    assert "listwise" in rows[-1] and 0.0 <= rows[-1]["listwise"] <= 2.0
    model = TraderModel.load(factor_run / "model")
    assert model.spec.factors == "alpha158" and model.spec.d_factors == 159 and model.factor_proj is not None
    scores = score_model(factor_run / "model", ft_env.store, "2020-10-09", "2020-10-30")
    assert len(scores) > 0 and scores["score"].notna().all()


def test_factor_input_is_live(factor_run, ft_env):
    """Zeroing the factor inputs changes the scores (the channel is used) and a batch without them is refused."""
    from quantlm.finetune.score import load_for_scoring, predict_rows

    model, data = load_for_scoring(factor_run / "model", ft_env.store, end="2020-12-31")
    rows = np.flatnonzero(data.session >= data.session.max() - 5)
    a = predict_rows(model, data, rows)["score"]
    data.factors = np.zeros_like(data.factors)
    b = predict_rows(model, data, rows)["score"]
    assert not np.allclose(a, b)
    data.factors = None
    with pytest.raises(ValueError, match="factor inputs"):
        predict_rows(model, data, rows)


def test_live_scorer_refuses_a_factor_teacher(factor_run):
    from quantlm.finetune.latency import LiveScorer
    from quantlm.tokenize import KlineTokenizer

    model = TraderModel.load(factor_run / "model")
    with pytest.raises(ValueError, match="sft.factors: alpha158"):
        LiveScorer(model, KlineTokenizer.load(factor_run / "model" / "tokenizer"))


def test_listwise_needs_cross_section_batches():
    with pytest.raises(ValueError, match="cross_section"):
        _cfg(loss={"listwise": 1.0})


def test_cross_section_batches_are_sessions_and_resume_is_bit_identical(ft_env, tmp_path):
    cfg = _cfg(batches="cross_section", cross_section_symbols=4, batch_size=8, loss={"listwise": 0.5},
               checkpoint_every=2, steps=4, eval_every=2)
    straight = train_sft(cfg, ft_env.store, tmp_path / "a", ft_env.pretrained, ft_env.train_end, seed=3)
    train_sft(cfg, ft_env.store, tmp_path / "b", ft_env.pretrained, ft_env.train_end, seed=3, stop_after=2)
    resumed = train_sft(cfg, ft_env.store, tmp_path / "b", ft_env.pretrained, ft_env.train_end, seed=3, resume=True)
    a, b = (TraderModel.load(r / "model").state_dict() for r in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cross_section_batch_layout(ft_env):
    from quantlm.finetune.data import build_trader_data
    from quantlm.finetune.sft import load_init, training_batches

    cfg = _cfg(batches="cross_section", cross_section_symbols=4, batch_size=8)
    _, tok = load_init(ft_env.pretrained)
    data = build_trader_data(ft_env.store, tok, cfg.targets, text=False, end=ft_env.train_end)
    last_train = data.session_index(ft_env.train_end) - cfg.valid_sessions
    next_batch, _ = training_batches(data, cfg, last_train, 0, 1, data.targets_known(data.calendar[last_train]))
    batch = next_batch(5)
    assert batch["input_ids"].shape[0] == 8 and batch["group"].shape == (8, cfg.window_bars)
    last = batch["group"][:, -1]
    assert len(np.unique(last[:4])) == 1 and len(np.unique(last[4:])) == 1 and last[0] != last[4]
    np.testing.assert_array_equal(next_batch(5)["group"], batch["group"])  # a pure function of the step


def test_distil_a_factor_teacher_into_a_token_only_student(factor_run, ft_env, tmp_path):
    """The teacher gets its factor inputs when its outputs are computed; the student stays token-only and is
    scored live; the teacher's own latency is not measurable live (None)."""
    from quantlm.finetune.distill import DistillConfig, train_distill
    from quantlm.finetune.student import StudentMLP, load_scorer

    cfg = DistillConfig(window_bars=12, mlp={"token_dim": 4, "bar_dim": 4, "hidden": 16, "layers": 1, "text_bars": 1},
                        warm=8, steps=20, batch_size=8, lr=1e-2, warmup_steps=2, valid_sessions=40, eval_every=20,
                        latency_symbols=6, latency_updates=2)
    run = train_distill(cfg, ft_env.store, tmp_path / "distill", factor_run / "model", ft_env.train_end, seed=0)
    m = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(m["teacher_rank_ic"]) and np.isfinite(m["valid"]["score_corr"])
    assert m["latency_ms"]["teacher"] is None and m["latency_ms"]["student"]["p50"] > 0
    student = load_scorer(run / "model")
    assert isinstance(student, StudentMLP) and getattr(student.spec, "factors", "none") == "none"


def test_reward_and_rl_on_a_factor_trader(factor_run, ft_env, tmp_path):
    """Reward model and RL copy a factor trader and feed it its factor inputs (no 'factor inputs' error)."""
    from quantlm.finetune.reward import RewardConfig, train_reward
    from quantlm.finetune.rl import RLConfig, train_rl

    rw = train_reward(RewardConfig(steps=2, batch_size=2, max_symbols=8, window_bars=24, warm=8, pairs_per_session=16,
                                   valid_sessions=40, eval_every=2, lr=1e-3),
                      ft_env.store, tmp_path / "reward", factor_run / "model", ft_env.train_end, seed=0)
    cfg = RLConfig(steps=2, batch_size=2, max_symbols=8, window_bars=24, warm=8, valid_sessions=40, eval_every=2,
                   reward="model", group="state", samples_per_state=2)
    run = train_rl(cfg, ft_env.store, tmp_path / "rl", factor_run / "model", rw, ft_env.train_end, seed=0)
    assert TraderModel.load(run / "model").spec.factors == "alpha158"
    scores = score_model(run / "model", ft_env.store, "2020-10-09", "2020-10-30")
    assert len(scores) > 0 and scores["score"].notna().all()


def test_json_lines_fine_tuning_refuses_factors(ft_env, tmp_path):
    from quantlm.finetune.data import FinetuneDataError
    from quantlm.finetune.jsonl import export_jsonl, train_sft_jsonl

    path = tmp_path / "ex.jsonl"
    export_jsonl(ft_env.store, path, ft_env.pretrained, start="2019-06-03", end="2020-12-31", window_bars=24, every=5)
    with pytest.raises(FinetuneDataError, match="sft.factors: alpha158"):
        train_sft_jsonl(_cfg(factors="alpha158"), path, tmp_path / "run", ft_env.pretrained, embedder=None)
