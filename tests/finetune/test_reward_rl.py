"""Reward model (pairs, Bradley-Terry, point-in-time training) and GRPO fine-tuning of the trader."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from quantlm.finetune.reward import (  # noqa: E402
    RewardConfig,
    RewardModel,
    bradley_terry_loss,
    excess_returns,
    make_pairs,
    pairwise_accuracy,
    realized_outcome,
    train_reward,
)
from quantlm.finetune.rl import RLConfig, group_advantages, grpo_loss, train_rl  # noqa: E402

TRAIN_END = "2020-09-30"
TINY = {"n_layer": 1, "hidden": 32, "n_head": 2, "ffn": 64, "max_bars": 32}


def _reward_cfg(**kw) -> RewardConfig:
    base = {"steps": 12, "batch_size": 4, "max_symbols": 16, "window_bars": 24, "warm": 8, "pairs_per_session": 32,
            "valid_sessions": 40, "eval_every": 6, "lr": 1e-3}
    return RewardConfig(**(base | kw))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Synthetic store (16 stocks, 2019-2020), a tiny pretrained-style trunk, an SFT trader and a reward model."""
    from quantlm.data.store import Store
    from quantlm.data.synth import SynthConfig, write_market
    from quantlm.finetune import SFTConfig, train_sft
    from quantlm.finetune.data import market_bars
    from quantlm.model.build import model_for_tokenizer
    from quantlm.tokenize import KlineTokenizer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rl")
    store = Store(root / "store")
    write_market(store, SynthConfig(n_symbols=16, start="2019-01-02", end="2020-12-31", news=False))
    bars, _ = market_bars(store)
    tok = KlineTokenizer(n_coarse=64, n_fine=64).fit(bars, end="2020-03-31")
    trunk = model_for_tokenizer("mini", tok, seed=0, **TINY)
    trunk.save(root / "pre")
    tok.save(root / "pre" / "tokenizer")
    sft = train_sft(SFTConfig(steps=4, batch_size=8, window_bars=24, warm=8, text=False, valid_sessions=40,
                              eval_every=4, warmup_steps=1), store, root / "sft", root / "pre", TRAIN_END)
    rw = train_reward(_reward_cfg(), store, root / "reward", sft / "model", TRAIN_END, seed=0)
    return {"root": root, "store": store, "policy": sft / "model", "reward": rw}


# ---------------------------------------------------------------------- pairs and loss
def test_bradley_terry_loss_hand_example():
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert float(loss) == pytest.approx((math.log1p(math.exp(-2.0)) + math.log(2.0)) / 2, rel=1e-6)
    assert float(bradley_terry_loss(torch.tensor([5.0]), torch.tensor([-5.0]))) < 1e-4


def test_outcome_nets_costs_and_pairs_follow_it():
    actions, cost, sigma = [-1.0, 0.0, 1.0], 0.002, 0.02
    ret = np.array([0.001, 0.01, -0.01, np.nan])  # +0.1% does not cover a 0.2% round trip
    o = realized_outcome(ret, np.full(4, np.log(sigma)), actions, cost)
    np.testing.assert_allclose(o[0], [(-0.001 - cost) / sigma, 0.0, (0.001 - cost) / sigma])
    np.testing.assert_allclose(o[1], [(-0.01 - cost) / sigma, 0.0, (0.01 - cost) / sigma])
    assert np.isnan(o[3]).all()
    np.testing.assert_allclose(realized_outcome(ret[:1], np.zeros(1), actions, cost, kind="pnl")[0],
                               [-0.003, 0.0, -0.001])
    win, lose = make_pairs(o, np.array([0, 0, 0, 0]), 500, np.random.default_rng(0))
    assert len(win) > 0 and (o.reshape(-1)[win] > o.reshape(-1)[lose]).all()
    assert np.isfinite(o.reshape(-1)[np.r_[win, lose]]).all()  # unknown outcomes are never candidates
    # the small buy of row 0 is always beaten by holding it
    buy0, hold0 = 0 * 3 + 2, 0 * 3 + 1
    m = ((win == buy0) & (lose == hold0)) | ((win == hold0) & (lose == buy0))
    assert m.any() and (win[m] == hold0).all()


def test_outcome_floors_sigma_clips_and_nets_out_the_market():
    o = realized_outcome(np.array([0.10, 0.01]), np.log([1e-4, 0.02]), [-1.0, 0.0, 1.0], 0.0, min_sigma=0.005, clip=10)
    np.testing.assert_allclose(o[:, 2], [10.0, 0.5])  # 0.10 / 0.005 = 20 sigma -> clipped at 10
    ret = np.array([0.03, 0.01, -0.01, np.nan, 0.03])
    ex = excess_returns(ret, np.array([0, 0, 0, 0, 1]))
    np.testing.assert_allclose(ex, [0.02, 0.0, -0.02, np.nan, 0.0], atol=1e-12)


def test_pairs_stay_in_their_group_and_skip_ties():
    rng = np.random.default_rng(1)
    o = rng.normal(size=(40, 3))
    o[:, 1] = 0.0
    group = np.repeat(np.arange(8), 5)
    win, lose = make_pairs(o, group, 50, rng)
    assert (group[win // 3] == group[lose // 3]).all()
    assert (o.reshape(-1)[win] != o.reshape(-1)[lose]).all()  # hold vs hold (0 = 0) never paired
    assert pairwise_accuracy(o, win, lose) == 1.0 and pairwise_accuracy(-o, win, lose) == 0.0


def test_reward_head_learns_a_planted_signal():
    """reward = f(feature) through the outcome; the BT-trained head orders held-out pairs > 0.7."""
    from quantlm.finetune.model import _head

    rng = np.random.default_rng(0)
    n_sess, n_stock, actions = 120, 20, [-1.0, 0.0, 1.0]
    x = rng.normal(size=(n_sess * n_stock, 4)).astype(np.float32)
    ret = 0.01 * np.tanh(x[:, 0] - 0.5 * x[:, 1]) + 0.002 * rng.normal(size=len(x))
    logsig = np.log(0.01 + 0.005 * rng.random(len(x)))
    o = realized_outcome(ret, logsig, actions, 0.001)
    session = np.repeat(np.arange(n_sess), n_stock)
    train, valid = session < 90, session >= 90
    torch.manual_seed(0)
    head = _head(4, 3)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    xt = torch.from_numpy(x)

    def rewards(rows: np.ndarray) -> torch.Tensor:
        g = head(xt[rows])
        return g - g[:, 1:2]

    tr = np.flatnonzero(train)
    for step in range(150):
        w, lo = make_pairs(o[tr], session[tr], 16, np.random.default_rng(step))
        r = rewards(tr).reshape(-1)
        loss = bradley_terry_loss(r[torch.from_numpy(w)], r[torch.from_numpy(lo)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    va = np.flatnonzero(valid)
    w, lo = make_pairs(o[va], session[va], 200, np.random.default_rng(99))
    with torch.no_grad():
        acc = pairwise_accuracy(rewards(va).numpy(), w, lo)
    assert acc > 0.7


# ---------------------------------------------------------------------- GRPO pieces
def test_group_advantages_zero_mean_unit_std():
    g = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    r = torch.tensor([1.0, 2.0, 6.0, -1.0, 3.0, 0.5, 0.5, 0.5, 0.5, 7.0], dtype=torch.float64)
    a = group_advantages(r, g)
    for k in range(4):
        assert float(a[g == k].mean()) == pytest.approx(0.0, abs=1e-9)
    assert float(a[g == 0].pow(2).mean()) == pytest.approx(1.0, rel=1e-4)
    assert (a[g >= 2] == 0).all()  # a constant group (or a group of one) carries no signal


def test_kl_zero_at_reference_and_gradient_moves_to_better_actions():
    logits = torch.tensor([[0.3, 0.2, -0.1]], requires_grad=True)
    acts = torch.tensor([[2, 0, 2, 0]])  # buy, sell, buy, sell
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, parts = grpo_loss(logits, logits.detach().clone(), acts, adv, kl_coef=0.5, entropy_coef=0.0)
    assert float(parts["kl"]) == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    with torch.no_grad():
        p0 = logits.softmax(-1).clone()
        p1 = (logits - 0.5 * logits.grad).softmax(-1)
    assert p1[0, 2] > p0[0, 2] and p1[0, 0] < p0[0, 0]


# ---------------------------------------------------------------------- store runs
def test_train_reward_outputs_and_holdout(env):
    m = json.loads((env["reward"] / "metrics.json").read_text())
    for k in ("pairwise_accuracy", "pairwise_accuracy_last", "baseline_cost_only_accuracy", "pairs_train",
              "pairs_valid", "seconds"):
        assert k in m
    assert 0.0 <= m["pairwise_accuracy"] <= 1.0 and m["pairs_valid"] > 100 and m["pairs_train"] > 100
    assert pd.Timestamp(m["first_valid_session"]) > pd.Timestamp(m["last_train_session"])
    assert pd.Timestamp(m["last_train_session"]) < pd.Timestamp(TRAIN_END)
    # cn round trip in 2020: 2 x (commission 0.03% + transfer 0.001% + slippage 0.02%) + stamp duty 0.1%
    assert m["round_trip_cost"] == pytest.approx(0.00204)  # 2 x (0.03% + 0.002% transfer + 0.02%) + 0.1% stamp, pre-2022-04-29
    rm = RewardModel.load(env["reward"])
    assert rm.actions == [-1.0, 0.0, 1.0] and rm.meta["last_train_session"] == m["last_train_session"]
    from quantlm.finetune.score import load_for_scoring

    _, data = load_for_scoring(env["reward"] / "model" / "trader", env["store"], end=TRAIN_END)
    r = rm.reward_rows(data, np.arange(30, 40))
    assert r.shape == (10, 3) and (r[:, 1] == 0).all() and np.isfinite(r).all()


def test_reward_training_ignores_everything_after_the_training_block(env, tmp_path):
    """Perturbing prices after the last training session leaves the trained weights bit-identical."""
    from quantlm.data.store import Store

    cfg = _reward_cfg(steps=4, eval_every=4)  # one evaluation at the end: no step selection
    a = train_reward(cfg, env["store"], tmp_path / "a", env["policy"], TRAIN_END, seed=3)
    last = pd.Timestamp(json.loads((a / "metrics.json").read_text())["last_train_session"])
    shutil.copytree(env["store"].root, tmp_path / "store2")
    store2 = Store(tmp_path / "store2")
    bars = store2.bars(freq="1d")
    late = bars[bars["ts"] > last].copy()
    f = np.exp(np.random.default_rng(0).normal(0, 0.05, len(late)))
    for col in ("open", "high", "low", "close"):
        late[col] = late[col] * f
    store2.write_bars(late, market="cn", freq="1d", replace=True)
    b = train_reward(cfg, store2, tmp_path / "b", env["policy"], TRAIN_END, seed=3)
    ma, mb = RewardModel.load(a).state_dict(), RewardModel.load(b).state_dict()
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    ja, jb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert ja["pairwise_accuracy"] != jb["pairwise_accuracy"] or ja["bt_loss"] != jb["bt_loss"]  # validation did see it


def test_train_rl_realized_gives_a_scoreable_trader(env, tmp_path):
    from quantlm.finetune import TraderModel, score_model

    cfg = RLConfig(steps=4, batch_size=4, max_symbols=16, window_bars=24, warm=8, valid_sessions=40, eval_every=2,
                   reward="realized", samples_per_state=2, lr=1e-3, aux_weight=0.1)
    run = train_rl(cfg, env["store"], tmp_path / "rl", env["policy"], None, TRAIN_END, seed=0)
    m = json.loads((run / "metrics.json").read_text())
    assert m["before"]["kl_ref"] == pytest.approx(0.0, abs=1e-9)  # policy == reference at step 0
    for part in ("before", "after"):
        for k in ("rank_ic", "reward_greedy", "reward_policy", "kl_ref"):
            assert np.isfinite(m[part][k])
    assert m["after"]["kl_ref"] > 0 and m["seconds"] > 0
    model = TraderModel.load(run / "model")
    assert model.spec.score == "direction"
    scores = score_model(run / "model", env["store"], "2020-10-01", "2020-12-31")
    assert len(scores) > 100 and np.isfinite(scores["score"]).all() and scores["score"].abs().max() <= 1.0


def test_train_rl_with_reward_model(env, tmp_path):
    cfg = RLConfig(steps=2, batch_size=2, max_symbols=16, window_bars=24, warm=8, valid_sessions=40, eval_every=2,
                   reward="model", group="state", samples_per_state=3)
    run = train_rl(cfg, env["store"], tmp_path / "rl", env["policy"], env["reward"], TRAIN_END, seed=0)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
    # a reward model trained on later outcomes would leak the validation block: refused
    with pytest.raises(ValueError, match="seen the validation"):
        train_rl(cfg.model_copy(update={"valid_sessions": 60}), env["store"], tmp_path / "rl2", env["policy"],
                 env["reward"], TRAIN_END, seed=0)
