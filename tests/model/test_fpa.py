"""FPA regulariser: off = bit-identical loss; on = flatter attention on a toy copy task."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from quantlm.model import build_model  # noqa: E402
from quantlm.model.fpa import FPA, attention_concentration, eager_attention  # noqa: E402

V = 64
TINY = dict(n_layer=2, hidden=64, n_head=2, ffn=128, max_bars=16)


def _batch(g):
    base = torch.randint(4, V, (16, 6), generator=g)
    return base.repeat(1, 6)[:, :33]  # period-6 sequences: solved by sharp attention 6 tokens back


def _train(lambda0: float, steps: int = 60):
    torch.set_num_threads(1)
    m = build_model("mini", V, seed=0, **TINY)
    fpa = FPA(m, lambda0=lambda0, gamma=0.999)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(steps):
        loss, _ = m.loss(_batch(g))
        p = fpa.penalty(step)
        total = loss if p is None else loss + p
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(loss.item())
    return m, losses


def test_fpa_off_is_bit_identical():
    torch.set_num_threads(1)
    x = _batch(torch.Generator().manual_seed(1))
    plain = build_model("mini", V, seed=0, **TINY)
    with_off = build_model("mini", V, seed=0, **TINY)
    fpa = FPA(with_off, lambda0=0.0)
    assert not fpa.active and fpa.penalty(0) is None
    assert with_off.lm.config._attn_implementation == "sdpa"
    a, b = plain.loss(x)[0], with_off.loss(x)[0]
    assert a.item() == b.item()
    a.backward()
    b.backward()
    for p, q in zip(plain.parameters(), with_off.parameters(), strict=True):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad)


def test_fpa_reduces_attention_concentration():
    x = _batch(torch.Generator().manual_seed(123))
    m0, _ = _train(0.0)
    m1, _ = _train(0.1)
    c0, c1 = attention_concentration(m0, x), attention_concentration(m1, x)
    assert c1["mean_frobenius_sq"] < 0.9 * c0["mean_frobenius_sq"]
    assert c1["mean_max_prob"] < c0["mean_max_prob"]


def test_fpa_schedule_and_errors():
    m = build_model("mini", V, seed=0, **TINY)
    fpa = FPA(m, lambda0=0.5, gamma=0.9)
    assert fpa.weight(0) == 0.5 and abs(fpa.weight(2) - 0.405) < 1e-12
    with pytest.raises(RuntimeError, match="before a forward"):
        fpa.penalty(0)
    m.loss(_batch(torch.Generator().manual_seed(0)))
    assert fpa.penalty(0).item() > 0
    with pytest.raises(ValueError):
        FPA(m, lambda0=-1)


def test_fpa_penalty_equals_hand_computation_and_ignores_dropout():
    """penalty = lambda0 * gamma**step * sum over layers, heads of mean over batch of sum_{i,j} A[i,j]^2,
    with A the softmax probabilities (attention dropout forced to 0 while FPA is on)."""
    torch.set_num_threads(1)
    m = build_model("mini", V, seed=0, dropout=0.3, **TINY)
    x = _batch(torch.Generator().manual_seed(5))[:3]
    fpa = FPA(m, lambda0=0.05, gamma=0.9)
    m.train()  # dropout active everywhere else: the probabilities read must still be the softmax itself
    m.loss(x)
    pen = fpa.penalty(step=3)
    fpa.remove()
    assert m.lm.config._attn_implementation == "sdpa"
    assert all(layer.self_attn.attention_dropout == 0.3 for layer in m.lm.model.layers)  # restored
    m.eval()
    with torch.no_grad(), eager_attention(m):
        out = m.lm(inputs_embeds=m.embed(x), output_attentions=True)
    attn = out.attentions  # per layer [B, H, T, T]
    assert len(attn) == TINY["n_layer"] and attn[0].shape == (3, TINY["n_head"], 33, 33)
    hand = 0.0
    for layer in attn:
        for h in range(layer.shape[1]):
            hand += sum(float((layer[b, h].double() ** 2).sum()) for b in range(layer.shape[0])) / layer.shape[0]
    hand *= 0.05 * 0.9 ** 3
    assert pen.item() == pytest.approx(hand, rel=1e-5)
