"""RL's portfolio reward (what the book earns) and the promotion rule, on hand-made cross-sections."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from quantlm.finetune.book import (  # noqa: E402
    book_return,
    book_rewards,
    dense_slots,
    loo_advantages,
    sample_actions,
)
from quantlm.finetune.reward import realized_outcome  # noqa: E402
from quantlm.finetune.rl import paired_t, promotion  # noqa: E402


def _persistent_market(n: int = 20, sessions: int = 30, edge: float = 0.0005, seed: int = 0):
    """Stocks 0..n/2-1 beat the cross-section by `edge` every session (a weak, persistent signal), plus noise."""
    rng = np.random.default_rng(seed)
    mu = np.where(np.arange(n) < n // 2, edge, -edge)
    ret = 0.01 + mu[:, None] + 0.0001 * rng.standard_normal((n, sessions))  # market +1% a day
    return torch.from_numpy(ret)[None]  # [1, n, P]


def test_weak_persistent_signal_beats_holding_only_at_book_level():
    cost = 0.002  # round trip: larger than the 0.05% daily edge
    ret = _persistent_market()
    n, P = ret.shape[1], ret.shape[2]
    c = torch.full_like(ret, cost)
    signal = torch.zeros(1, n, P, 3, dtype=torch.bool)
    signal[:, : n // 2, :, 0] = True  # sample 0: buys the good half every session
    signal[:, :, :, 2] = torch.rand(1, n, P, generator=torch.Generator().manual_seed(1)) < 0.5  # sample 2: churns
    r, valid = book_rewards(signal, ret, c)  # sample 1: no buys (holds the cross-section)
    assert valid.all()
    mean = r[0].mean(0)
    assert mean[0] > 0.0004  # the edge, turnover paid once (the first session pays none)
    assert mean[1].abs() < 1e-12  # the benchmark book: no excess, no turnover
    assert mean[2] < -0.0005  # a book that churns pays its turnover
    # The per-bar outcome of the same buy never covers its round trip: hold (0) wins on every bar.
    o = realized_outcome(ret[0, : n // 2].reshape(-1).numpy() - ret[0].mean(0).repeat(n // 2).numpy(),
                         np.zeros(n // 2 * P), [-1.0, 0.0, 1.0], cost, kind="pnl")
    assert (o[:, 2] < o[:, 1]).all()


def test_book_reward_by_hand_and_unknown_stocks_stay_out():
    ret = torch.tensor([[[0.02, 0.01], [0.00, float("nan")], [-0.01, 0.03]]], dtype=torch.float64)  # [1, 3, 2]
    cost = torch.full_like(ret, 0.002)
    buy = torch.zeros(1, 3, 2, 2, dtype=torch.bool)
    buy[0, 0, :, 0] = True  # sample 0 holds stock 0 both sessions
    buy[0, 0, 0, 1] = True  # sample 1: stock 0, then stocks 1 (unknown) and 2
    buy[0, 1:, 1, 1] = True
    r, valid = book_rewards(buy, ret, cost)
    assert valid.all()
    assert float(r[0, 0, 0]) == pytest.approx(0.02 - 0.01 / 3)
    assert float(r[0, 1, 0]) == pytest.approx(0.01 - 0.02)  # no turnover
    # session 2, sample 1: stock 1 is unknown -> book = stock 2 only; turnover |0-1| + |1-0| = 2, half the round trip each
    assert float(r[0, 1, 1]) == pytest.approx(0.03 - 0.02 - 2 * 0.002 / 2)


def test_leave_one_out_advantages_and_sampling():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    a = loo_advantages(r)
    raw = r[0] - (r[0].sum() - r[0]) / 3
    np.testing.assert_allclose(a[0].numpy(), (raw / r[0].std(unbiased=False)).numpy(), rtol=1e-5)
    assert (a[1] == 0).all()  # equal books carry no signal
    probs = torch.tensor([[0.2, 0.3, 0.5]]).expand(20000, 3)
    u = torch.rand(20000, 1, generator=torch.Generator().manual_seed(0))
    acts = sample_actions(probs, u)[:, 0]
    freq = torch.bincount(acts, minlength=3).double() / len(acts)
    np.testing.assert_allclose(freq.numpy(), [0.2, 0.3, 0.5], atol=0.015)
    slot, nb, ns = dense_slots(np.array([0, 0, 0, 1, 1, 2]))
    assert slot.tolist() == [0, 1, 2, 0, 1, 0] and (nb, ns) == (3, 3)


def test_validation_book_return_and_promotion_rule():
    session = np.repeat(np.arange(4), 5)
    symbol = np.tile(np.arange(5), 4)
    ret = np.tile([0.03, 0.01, 0.0, -0.01, -0.03], 4)
    cost = np.full(20, 0.002)
    good = book_return(-symbol.astype(float), ret, cost, session, symbol, fraction=0.2)
    bad = book_return(symbol.astype(float), ret, cost, session, symbol, fraction=0.2)
    # the top stock every session: +3% - 0% mean, entry turnover paid once (0.2% / 2 over 4 sessions)
    assert good["book_return"] == pytest.approx(0.03 - 0.001 / 4)
    assert bad["book_return"] < 0 and good["book_turnover"] == pytest.approx(0.5 / 4)
    sft = {"rank_ic_sft_score": 0.05, "book_return_sft_score": 0.001}
    ok, why = promotion(sft, {"rank_ic": 0.06, "book_return": 0.0012})
    assert ok and why.startswith("RL promoted")
    ok, why = promotion(sft, {"rank_ic": 0.04, "book_return": 0.002})
    assert not ok and "RankIC not higher" in why and "SFT model is kept" in why
    ok, why = promotion(sft, {"rank_ic": 0.07, "book_return": 0.0})
    assert not ok and "book return lower" in why


def test_promotion_needs_a_significant_rank_ic_gain():
    """A higher validation RankIC within noise (paired t below the bar) keeps the SFT model."""
    sft = {"rank_ic_sft_score": 0.050, "book_return_sft_score": 0.001}
    rl = {"rank_ic": 0.0505, "book_return": 0.0015}
    ok, why = promotion(sft, rl, t_stat=0.4, min_t=2.0)
    assert not ok and "RankIC gain not significant" in why and "paired t +0.40" in why
    ok, why = promotion(sft, rl, t_stat=2.5, min_t=2.0)
    assert ok and why.startswith("RL promoted")
    ok, _ = promotion(sft, rl, t_stat=float("nan"), min_t=2.0)  # no per-session ICs (timing store): higher is enough
    assert ok


def test_paired_t_is_the_t_stat_of_the_mean_difference():
    import pandas as pd

    rng = np.random.default_rng(0)
    a = pd.Series(rng.normal(0.05, 0.1, 200))
    b = a - 0.01 + pd.Series(rng.normal(0, 0.02, 200))
    d = (a - b).to_numpy()
    assert paired_t(a, b) == pytest.approx(d.mean() / (d.std(ddof=1) / np.sqrt(len(d))))
    assert paired_t(a, b) > 4 and paired_t(b, a) < -4
    assert np.isnan(paired_t(a.iloc[:1], b.iloc[:1])) and np.isnan(paired_t(a, a))
