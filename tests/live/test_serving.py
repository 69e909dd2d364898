"""Model serving: the student's live update step exported to ONNX equals the torch LiveScorer."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from quantlm.finetune.latency import LiveScorer  # noqa: E402
from quantlm.finetune.student import StudentMLP, StudentSpec  # noqa: E402
from quantlm.live.serving import (  # noqa: E402
    ONNX_FILE,
    OnnxScorer,
    export_onnx,
    load_live_scorer,
    onnx_is_current,
)

COLS = ("open", "high", "low", "close", "volume", "amount")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A synthetic store (8 stocks, 2023) with a fitted tokenizer, and tiny random students with and without text."""
    from quantlm.data.store import Store
    from quantlm.data.synth import SynthConfig, write_market
    from quantlm.finetune.data import market_bars
    from quantlm.tokenize import KlineTokenizer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving")
    store = Store(root / "store")
    write_market(store, SynthConfig(n_symbols=8, start="2023-01-02", end="2023-09-29", news=False))
    bars, _ = market_bars(store)
    tok = KlineTokenizer(n_coarse=32, n_fine=32).fit(bars, end="2023-06-30")
    dirs = {}
    for name, extra in {"plain": {}, "text": {"d_text": 6, "text_bars": 2, "text_dim": 3, "score": "rank_vol"}}.items():
        torch.manual_seed(1)
        spec = StudentSpec(vocab_size=tok.vocab_size, pad_id=tok.special_tokens["pad"], window_bars=6, token_dim=4,
                           bar_dim=5, hidden=16, layers=2, **extra)
        dirs[name] = StudentMLP(spec).save(root / name, tokenizer=tok)
    return {"root": root, "bars": bars, "tok": tok, "dirs": dirs}


def _stream(bars, n: int, symbols: list[str]):
    sessions = np.sort(bars["ts"].unique())
    hist = bars[bars["ts"] < sessions[-n]]
    ups = []
    for ts in sessions[-n:]:
        g = bars[bars["ts"] == ts].set_index("symbol").loc[symbols]
        ups.append((ts, {c: g[c].to_numpy(np.float64) for c in COLS}))
    return hist, ups


def test_export_writes_a_checked_model_with_dynamic_symbols(env):
    import onnx

    path = export_onnx(env["dirs"]["plain"])
    assert path == env["dirs"]["plain"] / ONNX_FILE and path.exists()
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = {i.name: i.type.tensor_type.shape.dim[0] for i in proto.graph.input}
    assert set(dims) == {"features", "ids", "context"} and all(d.dim_param for d in dims.values())
    assert onnx_is_current(env["dirs"]["plain"], path)


@pytest.mark.parametrize("name", ["plain", "text"])
def test_onnx_scores_equal_torch_over_consecutive_updates(env, name):
    """Absolute difference <= 1e-5 on every score over 6 consecutive updates (8 symbols, one repeated)."""
    d = env["dirs"][name]
    syms = sorted(env["bars"]["symbol"].unique())[:6]
    syms = syms + [syms[0]]
    hist, ups = _stream(env["bars"], 6, syms)
    ref = load_live_scorer(d, backend="torch")
    got = load_live_scorer(d, backend="onnx")
    assert type(ref) is LiveScorer and isinstance(got, OnnxScorer)
    ref.start(hist, syms)
    got.start(hist, syms)
    rng = np.random.default_rng(0)
    worst = 0.0
    for u, (ts, arrays) in enumerate(ups):
        kw = {}
        if name == "text" and u % 2 == 0:  # texts on some updates, none on the others
            kw = {"text": rng.normal(0, 0.4, (len(syms), 6)).astype(np.float32),
                  "text_weight": rng.uniform(0, 3, len(syms)).astype(np.float32)}
        a, b = ref.update(arrays, ts, **kw), got.update(arrays, ts, **kw)
        assert b.dtype == np.float32 and b.shape == (len(syms),) and np.isfinite(b).all()
        assert a.std() > 0
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
        worst = max(worst, float(np.abs(a - b).max()))
    np.testing.assert_allclose(ref.bars, got.bars, rtol=0, atol=1e-5)  # the kept embeddings advance alike
    assert worst < 1e-5
    print(f"max |onnx - torch| = {worst:.2e}")


def test_stale_onnx_is_re_exported_and_a_trader_is_refused(env, tmp_path):
    import shutil

    d = tmp_path / "student"
    shutil.copytree(env["dirs"]["plain"], d)
    export_onnx(d)
    model = StudentMLP.load(d)
    with torch.no_grad():
        model.rank_head.bias.add_(1.0)
    model.save(d)
    assert not onnx_is_current(d)
    syms = sorted(env["bars"]["symbol"].unique())[:3]
    hist, ups = _stream(env["bars"], 1, syms)
    ref, got = load_live_scorer(d, backend="torch"), load_live_scorer(d, backend="onnx")
    assert onnx_is_current(d)
    ref.start(hist, syms)
    got.start(hist, syms)
    ts, arrays = ups[0]
    np.testing.assert_allclose(got.update(arrays, ts), ref.update(arrays, ts), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="backend"):
        load_live_scorer(d, backend="tensorrt")
    (tmp_path / "trader").mkdir()
    with pytest.raises(ValueError, match="StudentMLP"):
        export_onnx(tmp_path / "trader")
