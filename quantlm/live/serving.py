"""Model serving for the live engine: the distilled student exported to ONNX and run with ONNX Runtime.

    export_onnx(student_dir) -> student_dir / "student.onnx"
    scorer = load_live_scorer(student_dir, backend="onnx")  # or "torch" (the reference, LiveScorer)
    scorer.start(history, symbols)
    scores = scorer.update(bars, ts)  # float32 [S], one new bar per symbol

What is exported is the live *update step* of a `StudentMLP` (what `LiveScorer.update` runs per new
bar after the incremental tokenizer features), so that an ONNX update is the torch update:

    inputs   features [S, 7] float32    the new bar's raw tokenizer features (IncrementalFeatures)
             ids [S, 2] int64           its (coarse, fine) token ids
             context [S, k-1, bar_dim]  the kept embeddings of the symbol's previous k-1 bars   (k > 1)
             text [S, d_text], text_weight [S], text_context [S, m-1, text_dim]   (text students only)
    outputs  score [S]                  the trading score (spec.score, as TraderModel.score)
             bar_emb [S, bar_dim]       the new bar's embedding (kept for the next k-1 updates)
             text_emb [S, text_dim]     (text students only)

The symbol axis S is dynamic. `OnnxScorer` is a `LiveScorer` whose update runs that graph with ONNX
Runtime on the CPU (intra_op_num_threads=1 by default); `start` (embedding each symbol's last k bars
once, off the decision path) is LiveScorer's, in torch, with the same weights. Parity with the torch
path is tested to 1e-5 (tests/live/test_serving.py).

The exported file carries the sha256 of the weights it was made from (metadata
`quantlm.weights_sha256`); `load_live_scorer` re-exports when it is missing or stale.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from quantlm.finetune.latency import LiveScorer, _push
from quantlm.finetune.student import STUDENT_WEIGHTS, StudentMLP, is_student_folder, load_scorer

ONNX_FILE = "student.onnx"
OPSET = 17
HASH_KEY = "quantlm.weights_sha256"
BACKENDS = ("onnx", "torch")


class StudentStep(nn.Module):
    """One live update of a StudentMLP as a module (the graph that is exported; see the module docstring)."""

    def __init__(self, model: StudentMLP) -> None:
        super().__init__()
        self.model = model.eval()
        s = model.spec
        self.has_context = s.window_bars > 1
        self.has_text = bool(s.d_text)
        self.has_text_context = self.has_text and s.text_bars > 1

    def input_names(self) -> list[str]:
        names = ["features", "ids"] + (["context"] if self.has_context else [])
        if self.has_text:
            names += ["text", "text_weight"] + (["text_context"] if self.has_text_context else [])
        return names

    def output_names(self) -> list[str]:
        return ["score", "bar_emb"] + (["text_emb"] if self.has_text else [])

    def forward(self, features: torch.Tensor, ids: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m, rest = self.model, list(rest)
        new = m.bar_embed(features, ids, torch.ones_like(features[:, 0]))
        bars = torch.cat([rest.pop(0), new[:, None]], dim=1) if self.has_context else new[:, None]
        texts = new_text = None
        if self.has_text:
            text, weight = rest.pop(0), rest.pop(0)
            new_text = m.text_embed(text, weight)
            texts = torch.cat([rest.pop(0), new_text[:, None]], dim=1) if self.has_text_context else new_text[:, None]
        score = m.score(m.head(bars, texts), features)
        return (score, new) + ((new_text,) if self.has_text else ())

    def example_inputs(self, n: int = 2) -> tuple[torch.Tensor, ...]:
        s = self.model.spec
        out = [torch.zeros(n, 7), torch.full((n, 2), s.pad_id, dtype=torch.int64)]
        if self.has_context:
            out.append(torch.zeros(n, s.window_bars - 1, s.bar_dim))
        if self.has_text:
            out += [torch.zeros(n, s.d_text), torch.zeros(n)]
            if self.has_text_context:
                out.append(torch.zeros(n, s.text_bars - 1, s.text_dim))
        return tuple(out)


def weights_sha256(student_dir: str | Path) -> str:
    """sha256 (hex) of a student folder's weights file."""
    return hashlib.sha256((Path(student_dir) / STUDENT_WEIGHTS).read_bytes()).hexdigest()


def export_onnx(student_dir: str | Path, out_path: str | Path | None = None, opset: int = OPSET) -> Path:
    """Export the live update step of the student in `student_dir` to ONNX (default: student_dir/student.onnx).

    Uses torch's TorchScript-based exporter (`dynamo=False`: no onnxscript needed) with a dynamic
    symbol axis, checks the file with `onnx.checker`, and stamps the weights' sha256 into its metadata.
    Raises ValueError for a folder that is not a StudentMLP (traders are served by the torch path).
    """
    import onnx

    student_dir = Path(student_dir)
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    if not is_student_folder(student_dir):
        raise ValueError(f"{student_dir} is not a StudentMLP folder: only the MLP student is exported to ONNX")
    out = Path(out_path) if out_path is not None else student_dir / ONNX_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    step = StudentStep(StudentMLP.load(student_dir))
    ins, outs = step.input_names(), step.output_names()
    dyn = {name: {0: "symbols"} for name in ins + outs}
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is deprecated since torch 2.9
        torch.onnx.export(step, step.example_inputs(), str(tmp), input_names=ins, output_names=outs,
                          dynamic_axes=dyn, opset_version=opset, dynamo=False, do_constant_folding=True)
    proto = onnx.load(str(tmp))
    onnx.checker.check_model(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = HASH_KEY, weights_sha256(student_dir)
    onnx.save(proto, str(tmp))
    tmp.replace(out)
    return out


def onnx_is_current(student_dir: str | Path, onnx_path: str | Path | None = None) -> bool:
    """True when the ONNX file exists and was exported from the folder's current weights."""
    import onnx

    path = Path(onnx_path) if onnx_path is not None else Path(student_dir) / ONNX_FILE
    if not path.exists():
        return False
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return meta.get(HASH_KEY) == weights_sha256(student_dir)


def ort_session(onnx_path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session: `threads` intra-op threads, 1 inter-op thread, sequential, all graph optimisations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


class OnnxScorer(LiveScorer):
    """`LiveScorer` whose per-bar update runs the exported student step with ONNX Runtime (CPU).

    Same interface and numbers as the torch LiveScorer (to ~1e-6): `start(history, symbols)`, then
    `update(bars, ts, text=None, text_weight=None) -> float32 scores [S]` in `symbols` order.
    `start` embeds the history's last k bars per symbol with the torch model (once, not timed);
    `update` does the incremental features (numba) and one ONNX Runtime call, no torch.
    """

    def __init__(self, model: StudentMLP, tokenizer, onnx_path: str | Path, threads: int = 1) -> None:
        if not isinstance(model, StudentMLP):
            raise ValueError("OnnxScorer serves a StudentMLP only; use the torch LiveScorer for a trader")
        super().__init__(model, tokenizer)
        self.onnx_path = Path(onnx_path)
        self.session = ort_session(onnx_path, threads)
        step = StudentStep(model)
        want = step.input_names()
        got = [i.name for i in self.session.get_inputs()]
        if got != want:
            raise ValueError(f"{onnx_path}: inputs {got} do not match the student's {want}; re-export it")
        self._has_context, self._has_text_context = step.has_context, step.has_text_context
        self._outputs = step.output_names()

    def update(self, bars: dict[str, np.ndarray], ts, text: np.ndarray | None = None,
               text_weight: np.ndarray | None = None) -> np.ndarray:
        """bars: open, high, low, close, volume (+ amount, adj_factor) float arrays [S] in `symbols` order,
        all for session `ts`; text [S, d_text] / text_weight [S] (none if None) -> float32 scores [S]."""
        f, i = self.inc.update(bars["open"], bars["high"], bars["low"], bars["close"], bars["volume"],
                               bars.get("amount"), bars.get("adj_factor"))
        feeds: dict[str, np.ndarray] = {"features": f, "ids": i}
        if self._has_context:
            feeds["context"] = np.ascontiguousarray(self.bars[:, 1:])
        n = len(f)
        if self.d_text:
            feeds["text"] = (np.zeros((n, self.d_text), np.float32) if text is None
                             else np.ascontiguousarray(text, dtype=np.float32))
            feeds["text_weight"] = (np.zeros(n, np.float32) if text is None or text_weight is None
                                    else np.ascontiguousarray(text_weight, dtype=np.float32))
            if self._has_text_context:
                feeds["text_context"] = np.ascontiguousarray(self.texts[:, 1:])
        res = self.session.run(self._outputs, feeds)
        _push(self.bars, res[1])
        if self.d_text:
            _push(self.texts, res[2])
        return res[0]


def load_live_scorer(model_dir: str | Path, backend: str = "onnx", threads: int = 1,
                     onnx_path: str | Path | None = None) -> LiveScorer:
    """The live scorer of a model folder: `OnnxScorer` (backend="onnx", a student only; exported first
    when its ONNX file is missing or stale) or the torch reference `LiveScorer` (backend="torch", a
    student or a trader). `threads` is ONNX Runtime's intra-op thread count (torch's is the caller's)."""
    from quantlm.tokenize import KlineTokenizer

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    model_dir = Path(model_dir)
    model, tok = load_scorer(model_dir), KlineTokenizer.load(model_dir / "tokenizer")
    if backend == "torch":
        return LiveScorer(model, tok)
    path = Path(onnx_path) if onnx_path is not None else model_dir / ONNX_FILE
    if not onnx_is_current(model_dir, path):
        export_onnx(model_dir, path)
    return OnnxScorer(model, tok, path, threads)


__all__ = ["export_onnx", "load_live_scorer", "OnnxScorer", "StudentStep", "onnx_is_current", "ort_session",
           "weights_sha256", "ONNX_FILE"]
