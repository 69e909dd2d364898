"""Fast offline sentence embedders for `quantlm.data.text` (MiniLM: BERT + mean pooling + L2 norm).

`FastEmbedder` runs a sentence-transformers folder (config, tokenizer, weights; mean pooling and
normalisation as in its `1_Pooling` / `2_Normalize` modules) without the sentence-transformers wrapper:

- each distinct string is embedded once (duplicates share its vector);
- texts are sorted by token length and cut into batches, so a batch pads to its longest member only;
- `torch.inference_mode()` and `torch.set_num_threads(threads)` (default: the process's CPU count);
- `method` picks the engine:
  - `torch`: float32 PyTorch; equals `SentenceTransformer.encode` to ~1e-6 (same cache key);
  - `int8`: `torch.ao.quantization.quantize_dynamic` on the Linear layers (per-channel int8 weights, dynamic
    activation scales); vectors differ slightly, so the cache key is `<model>+int8`;
  - `onnx`: the model exported once to ONNX (`torch.onnx.export`, eager attention), fused by ONNX
    Runtime's BERT optimizer (attention, bias-GELU, skip-LayerNorm), cached in `$QUANTLM_CACHE/onnx/`
    or `~/.cache/quantlm/onnx/` by the weights' hash, and run with ONNX Runtime (extra `text`)
    without spinning threads; float32 (cosine to sentence-transformers >= 0.99999), so the same
    cache key as `torch`. The default (`DEFAULT_METHOD`);
  - `onnx-int8`: that graph with ONNX Runtime's dynamic per-channel int8 quantisation; key
    `<model>+onnx-int8`.

The int8 methods are faster but move vectors by more than the 0.99 cosine the project accepts on
the demo's news (see the benchmark), so they are opt-in.

`benchmarks/bench_embed.py` measures them against the sentence-transformers path on the demo's texts.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

METHODS = ("torch", "int8", "onnx", "onnx-int8")
DEFAULT_METHOD = "onnx"
# float32: the vectors equal sentence-transformers' to float tolerance, so they share its cache key
EXACT_METHODS = ("sentence-transformers", "torch", "onnx")


class UnknownMethodError(ValueError):
    """An embedding method that is not one of METHODS / EXACT_METHODS (shown to CLI users as a plain message)."""

    user_facing = True


def cache_name(model: str, method: str) -> str:
    """The cache key of `model` embedded with `method`: the model's name, plus the method where vectors differ."""
    if method not in METHODS + EXACT_METHODS:
        raise UnknownMethodError(f"unknown embedding method '{method}': use one of "
                                 f"{', '.join(dict.fromkeys(METHODS + EXACT_METHODS))}")
    return model if method in EXACT_METHODS else f"{model}+{method}"


def _cpu_count() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _onnx_cache_dir() -> Path:
    root = os.environ.get("QUANTLM_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "quantlm") / "onnx"


class FastEmbedder:
    """A local sentence-transformers BERT folder on CPU, offline: float32 vectors [n, dim], L2-normalised."""

    def __init__(self, name: str, path: str | Path, method: str = "torch", threads: int | None = None,
                 max_length: int | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import json

        import torch
        from transformers import AutoModel, AutoTokenizer

        if method not in METHODS:
            raise UnknownMethodError(f"unknown FastEmbedder method '{method}': use one of {', '.join(METHODS)}")
        self.name = cache_name(name, method)
        self.method = method
        self.path = Path(path)
        self.threads = int(threads) if threads else _cpu_count()
        sbert = self.path / "sentence_bert_config.json"
        self.max_length = int(max_length or (json.loads(sbert.read_text()).get("max_seq_length", 256)
                                             if sbert.exists() else 256))
        pooling = self.path / "1_Pooling" / "config.json"
        if pooling.exists() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", False):
            raise ValueError(f"{pooling}: only mean pooling is supported by FastEmbedder")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.hidden_size = int(json.loads((self.path / "config.json").read_text())["hidden_size"])
        self._torch = torch
        self._session = None
        self.model = None
        if method in ("torch", "int8"):
            model = AutoModel.from_pretrained(str(self.path), local_files_only=True).eval()
            if method == "int8":
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
                    model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: qconfig}, dtype=torch.qint8)
            self.model = model
        else:
            self._session = self._onnx_session(method == "onnx-int8")

    @property
    def dim(self) -> int:
        return self.hidden_size

    # ------------------------------------------------------------------ ONNX
    def _onnx_file(self, quantized: bool) -> Path:
        """Export (once) to ONNX and fuse it for BERT; keyed by the weights' hash. Files are written atomically.

        The export uses eager attention, so ONNX Runtime's transformer optimizer fuses each layer's
        attention, bias-GELU and skip-LayerNorm (about 3x faster than the unfused graph on CPU).
        """
        weights = self.path / "model.safetensors"
        digest = hashlib.sha256(weights.read_bytes() if weights.exists() else str(self.path).encode()).hexdigest()[:16]
        folder = _onnx_cache_dir() / digest
        fused = folder / "model.fused.onnx"
        if not fused.exists():
            from onnxruntime.transformers.optimizer import optimize_model
            from transformers import AutoConfig, AutoModel

            folder.mkdir(parents=True, exist_ok=True)
            model = AutoModel.from_pretrained(str(self.path), local_files_only=True, attn_implementation="eager").eval()
            config = AutoConfig.from_pretrained(str(self.path), local_files_only=True)
            enc = self.tokenizer(["an example sentence", "another"], padding=True, return_tensors="pt")
            raw = folder / f"model.raw.{os.getpid()}.onnx"
            axes = {0: "batch", 1: "seq"}

            class Hidden(self._torch.nn.Module):  # keyword call: BertModel's positional arguments changed
                def __init__(self, bert) -> None:
                    super().__init__()
                    self.bert = bert

                def forward(self, input_ids, attention_mask, token_type_ids):
                    return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                     token_type_ids=token_type_ids).last_hidden_state

            import warnings

            with self._torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._torch.onnx.export(
                    Hidden(model), (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]), str(raw),
                    input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["hidden"],
                    dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "hidden": axes},
                    opset_version=17, dynamo=False)
            optimized = optimize_model(str(raw), model_type="bert", num_heads=int(config.num_attention_heads),
                                       hidden_size=int(config.hidden_size))
            tmp = folder / f"model.fused.{os.getpid()}.tmp"
            optimized.save_model_to_file(str(tmp))
            os.replace(tmp, fused)
            raw.unlink(missing_ok=True)
        if not quantized:
            return fused
        q8 = folder / "model.fused.int8.onnx"
        if not q8.exists():
            from onnxruntime.quantization import QuantType, quantize_dynamic

            tmp = folder / f"model.int8.{os.getpid()}.tmp"
            from onnx import TensorProto

            quantize_dynamic(str(fused), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                             extra_options={"DefaultTensorType": TensorProto.FLOAT})
            os.replace(tmp, q8)
        return q8

    def _onnx_session(self, quantized: bool):
        try:
            import onnxruntime as ort
        except ImportError as e:
            from quantlm.data.text import TextExtraMissing

            raise TextExtraMissing("embedding method 'onnx' needs onnxruntime: pip install 'quantlm[text]'") from e
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting on shared CPUs
        return ort.InferenceSession(str(self._onnx_file(quantized)), opts, providers=["CPUExecutionProvider"])

    # ------------------------------------------------------------------ encode
    def _hidden(self, enc: dict) -> np.ndarray:
        if self._session is not None:
            feeds = {k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
            return self._session.run(None, feeds)[0]
        torch = self._torch
        out = self.model(**{k: torch.as_tensor(np.asarray(v, dtype=np.int64)) for k, v in enc.items()})
        return out.last_hidden_state.float().numpy()

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Vectors of `texts` (float32 [n, dim], unit length); each distinct text embedded once."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.hidden_size), dtype=np.float32)
        unique, inverse = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
        ids = self.tokenizer(list(unique), truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")
        pad = self.tokenizer.pad_token_id or 0
        result: np.ndarray | None = None
        previous = self._torch.get_num_threads()
        self._torch.set_num_threads(self.threads)
        try:
            with self._torch.inference_mode():
                for start in range(0, len(order), max(1, batch_size)):
                    rows = order[start:start + batch_size]
                    width = max(len(ids[i]) for i in rows)
                    input_ids = np.full((len(rows), width), pad, dtype=np.int64)
                    mask = np.zeros((len(rows), width), dtype=np.int64)
                    for r, i in enumerate(rows):
                        input_ids[r, :len(ids[i])] = ids[i]
                        mask[r, :len(ids[i])] = 1
                    hidden = self._hidden({"input_ids": input_ids, "attention_mask": mask,
                                           "token_type_ids": np.zeros_like(input_ids)})
                    m = mask[..., None].astype(np.float32)
                    pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
                    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
                    if result is None:
                        result = np.zeros((len(unique), pooled.shape[1]), dtype=np.float32)
                    result[rows] = pooled
        finally:
            self._torch.set_num_threads(previous)
        assert result is not None
        return result[inverse.reshape(-1)]


__all__ = ["DEFAULT_METHOD", "EXACT_METHODS", "METHODS", "FastEmbedder", "UnknownMethodError", "cache_name"]
