"""MarketGPT: HF round trip, prefix, calendar, causality, KV cache == full recomputation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from quantlm.model import build_model  # noqa: E402
from quantlm.model.layout import bar_sequence, left_pad, positions  # noqa: E402

V = 80
TINY = dict(n_layer=2, hidden=32, n_head=2, ffn=64, max_bars=16)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def tiny(**kw):
    args = dict(TINY)
    args.update(kw)
    return build_model("mini", V, n_slots=3, seed=0, **args).eval()


def rand_batch(b=2, n_bars=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(16, V, (b, 1 + 2 * n_bars), generator=g)
    ids[:, 0] = 1
    cal = torch.randint(0, 3, (b, 1 + 2 * n_bars, 2), generator=g)
    cal[:, 0] = -1
    return ids, cal


def test_sizes_and_errors():
    from quantlm.model.sizes import SIZES

    assert 20e6 < SIZES["small"].non_embedding_params() < 30e6
    assert 90e6 < SIZES["base"].non_embedding_params() < 110e6
    assert SIZES["base"].head_dim % 64 == 0 and SIZES["small"].head_dim % 64 == 0
    m = build_model("mini", 528, seed=0)
    assert 0.7e6 < m.num_params(non_embedding=False) < 1.5e6
    with pytest.raises(ValueError, match="unknown model size"):
        build_model("huge", V)
    with pytest.raises(ValueError, match="multiple of n_head"):
        build_model("mini", V, hidden=30, n_head=4)


def test_hf_round_trip(tmp_path):
    """The saved folder loads WHOLE through transformers (trust_remote_code) and through MarketGPT.load."""
    from transformers import AutoModelForCausalLM

    from quantlm.model.build import MarketGPT

    m = tiny(d_prefix=5, max_prefix=2)
    m.save(tmp_path / "m")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True).eval()
    ids, cal = rand_batch()
    pre = torch.randn(2, 2, 5)
    # Calendar embeddings and prefix projection included: identical logits, not just the Llama part.
    torch.testing.assert_close(hf(ids, cal, pre).logits, m(ids, cal, pre).logits, rtol=0, atol=0)
    m2 = MarketGPT.load(tmp_path / "m").eval()
    torch.testing.assert_close(m2(ids, cal, pre).logits, m(ids, cal, pre).logits, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError):
        MarketGPT.load(tmp_path)


def test_calendar_and_prefix_change_outputs_and_prefix_not_in_loss():
    m = tiny(d_prefix=4, max_prefix=3)
    ids, cal = rand_batch()
    base = m(ids).logits
    assert base.shape == (2, ids.shape[1], V)
    assert not torch.allclose(m(ids, cal).logits, base)
    pre = torch.randn(2, 3, 4)
    with_prefix = m(ids, cal, pre).logits
    assert with_prefix.shape == (2, ids.shape[1], V)  # logits for token positions only
    assert not torch.allclose(with_prefix, m(ids, cal).logits)
    # The loss only covers token targets: equals CE over token positions computed by hand.
    loss, _ = m.loss(ids, cal, pre)
    ref = torch.nn.functional.cross_entropy(with_prefix[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, ref)
    with pytest.raises(ValueError, match="prefix"):
        m(ids, cal, torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="no prefix"):
        tiny()(ids, cal, pre)


def test_causal_mask():
    m = tiny()
    ids, cal = rand_batch(n_bars=8)
    a = m(ids, cal).logits
    ids2, cal2 = ids.clone(), cal.clone()
    ids2[:, 9:] = torch.randint(16, V, ids2[:, 9:].shape)
    cal2[:, 9:] = 0
    b = m(ids2, cal2).logits
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_layout():
    ids = np.array([[20, 40], [21, 41]])
    cal = np.array([[0, 1], [1, 2]])
    tok, c = bar_sequence(ids, cal, bos_id=1)
    assert tok.tolist() == [1, 20, 40, 21, 41]
    assert c.tolist() == [[-1, -1], [0, 1], [0, 1], [1, 2], [1, 2]]
    t, cc, mask = left_pad([tok, tok[:3]], [c, c[:3]], pad_id=0)
    assert t[1].tolist() == [0, 0, 1, 20, 40] and mask[1].tolist() == [0, 0, 1, 1, 1]
    assert positions(torch.tensor(mask))[1].tolist() == [0, 0, 0, 1, 2]


def test_left_padding_matches_unpadded():
    m = tiny()
    ids, cal = rand_batch(n_bars=5)
    short, short_cal = ids[1, 4:], cal[1, 4:]
    t, c, mask = left_pad([ids[0].numpy(), short.numpy()], [cal[0].numpy(), short_cal.numpy()], pad_id=0)
    t, c, mask = torch.tensor(t), torch.tensor(c), torch.tensor(mask)
    out = m(t, c, attention_mask=mask, position_ids=positions(mask)).logits
    alone = m(short[None], short_cal[None]).logits
    torch.testing.assert_close(out[1, 4:], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0], m(ids[:1], cal[:1]).logits[0], rtol=1e-5, atol=1e-5)


def test_kv_cache_equals_full_recompute():
    from transformers import DynamicCache

    m = tiny()
    ids, cal = rand_batch(n_bars=7, seed=3)
    # Left-pad the second row by 4 tokens to exercise masks and positions with a cache.
    t, c, mask = left_pad([ids[0].numpy(), ids[1, 4:].numpy()], [cal[0].numpy(), cal[1, 4:].numpy()], pad_id=0)
    t, c, mask = torch.tensor(t), torch.tensor(c), torch.tensor(mask)
    full = m(t, c, attention_mask=mask, position_ids=positions(mask)).logits
    k = 5
    cache = DynamicCache()
    pos = positions(mask)
    out = m(t[:, :k], c[:, :k], attention_mask=mask[:, :k], position_ids=pos[:, :k], past_key_values=cache,
            use_cache=True)
    steps = [out.logits]
    for j in range(k, t.shape[1]):
        out = m(t[:, j:j + 1], c[:, j:j + 1], attention_mask=mask[:, :j + 1], position_ids=pos[:, j:j + 1],
                past_key_values=out.past_key_values, use_cache=True)
        steps.append(out.logits)
    inc = torch.cat(steps, dim=1)
    real = mask.bool()
    torch.testing.assert_close(inc[real], full[real], rtol=1e-5, atol=1e-5)
