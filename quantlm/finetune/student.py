"""A small, fast student trader: an MLP over the last k bars, with the trader's heads.

The deployment model of `quantlm.finetune.distill`. For the bar t of a symbol it reads:

    bars t-k+1 .. t     the 7 causal tokenizer features as the teacher normalises them (11 candle
                        features, the teacher's training mean / std, clipped at +-8), the (coarse,
                        fine) token ids through a small embedding table, and a "bar exists" flag
                        (bars before a listing are zeros / pad tokens / flag 0)
    bars t-m+1 .. t     the point-in-time text embedding and log1p(text weight) (m = text_bars;
                        only when the teacher reads text)

    per bar      x_b = Linear([z_b, emb(coarse_b), emb(fine_b), flag_b]) -> bar_dim
                 y_b = Linear([text_b * sqrt(384), log1p(weight_b)]) -> text_dim
    body         h = GELU(Linear([x_1..x_k, y_1..y_m])) -> (layers - 1) x GELU(Linear(h))
    heads        direction [3] sell/hold/buy logits, quantiles [n_h, n_q] (vol-normalised returns),
                 rank [n_h] - the shapes and meanings of `TraderModel`'s heads; the trading score is
                 computed from them as the teacher does (`TraderModel.score`, spec.score).

The score of bar t is a fixed function of the symbol's bars <= t (no windows, no positions), so
the batch scoring path (`predict_student_rows`) and the live path (`quantlm.finetune.latency`)
compute the same numbers. The per-bar embeddings do not depend on the position, so a live update
embeds the new bar only and runs the body on the kept embeddings: one [S, k bar_dim + m text_dim]
x [., hidden] matmul and a few [S, hidden] ones.

Saved as a folder: student.json (format, shapes, normalisation, horizons), student.safetensors,
tokenizer/ (the teacher's tokenizer) and README.md (model card, `quantlm.model.card`). `load_scorer(dir)` loads either a student or a trader folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from quantlm.finetune.data import TraderData
from quantlm.finetune.model import N_CANDLE, TEXT_SCALE, TraderModel, candle_features, numpy_batch

STUDENT_JSON = "student.json"
STUDENT_WEIGHTS = "student.safetensors"
FORMAT = "quantlm.StudentMLP/1"


@dataclass
class StudentSpec:
    """Shapes and input conventions of a saved student (the fields `load_for_scoring` reads match TraderSpec's)."""

    vocab_size: int
    pad_id: int = 0
    window_bars: int = 32  # k: bars of context per scored bar
    text_bars: int = 2  # m: most recent bars whose text embedding is read
    text_dim: int = 16  # per-bar text projection width
    token_dim: int = 8
    bar_dim: int = 16
    hidden: int = 128
    layers: int = 2
    horizons: list[int] = field(default_factory=lambda: [1, 5, 10])
    quantiles: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 0.75, 0.9])
    d_text: int = 0
    feature_mean: list[float] = field(default_factory=lambda: [0.0] * N_CANDLE)
    feature_std: list[float] = field(default_factory=lambda: [1.0] * N_CANDLE)
    score: str = "rank"
    text_half_life: float = 1.5
    train_end: str | None = None
    market: str = "cn"

    def to_dict(self) -> dict:
        return asdict(self)


class StudentMLP(nn.Module):
    """MLP over the last `window_bars` bars of one symbol -> direction / quantile / rank heads.

    The per-bar parts (`bar_embed`, `text_embed`) do not depend on the bar's position, so the live
    path embeds only the new bar and keeps the last bars' embeddings (`head` takes them)."""

    kind = "mlp"
    score = TraderModel.score  # same score per spec.score ("rank", "rank_vol", "direction", "expected")

    def __init__(self, spec: StudentSpec) -> None:
        super().__init__()
        self.spec = spec
        self.n_h, self.n_q = len(spec.horizons), len(spec.quantiles)
        self.tok_emb = nn.Embedding(spec.vocab_size, spec.token_dim)
        self.bar_proj = nn.Linear(N_CANDLE + 2 * spec.token_dim + 1, spec.bar_dim)
        self.text_proj = nn.Linear(spec.d_text + 1, spec.text_dim) if spec.d_text else None
        n_in = spec.window_bars * spec.bar_dim + (spec.text_bars * spec.text_dim if spec.d_text else 0)
        self.inp = nn.Linear(n_in, spec.hidden)
        self.body = nn.ModuleList(nn.Linear(spec.hidden, spec.hidden) for _ in range(spec.layers - 1))
        self.act = nn.GELU()
        self.direction_head = nn.Linear(spec.hidden, 3)
        self.quantile_head = nn.Linear(spec.hidden, self.n_h * self.n_q)
        self.rank_head = nn.Linear(spec.hidden, self.n_h)
        nn.init.normal_(self.tok_emb.weight, std=0.5)
        self.register_buffer("feature_mean", torch.tensor(spec.feature_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("feature_std", torch.tensor(spec.feature_std, dtype=torch.float32), persistent=False)
        self.register_buffer("quantile_levels", torch.tensor(spec.quantiles, dtype=torch.float32), persistent=False)

    def bar_embed(self, features: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """features [..., 7] raw tokenizer features, ids [..., 2], valid [...] (1 = bar exists) -> [..., bar_dim]."""
        v = valid.float().unsqueeze(-1)
        z = ((candle_features(features.float()) - self.feature_mean) / self.feature_std).clamp(-8.0, 8.0)
        return self.bar_proj(torch.cat([z * v, self.tok_emb(ids).flatten(-2), v], dim=-1))

    def text_embed(self, text: torch.Tensor, text_weight: torch.Tensor) -> torch.Tensor:
        """text [..., d_text] (unit-norm embedding, zeros = none), text_weight [...] -> [..., text_dim]."""
        return self.text_proj(torch.cat([text.float() * TEXT_SCALE, torch.log1p(text_weight.float()).unsqueeze(-1)], -1))

    def head(self, bars: torch.Tensor, texts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """bars [B, k, bar_dim], texts [B, m, text_dim] -> direction [B, 3], quantiles [B, n_h, n_q], rank [B, n_h],
        bar_hidden [B, hidden]."""
        x = bars.flatten(1)
        if self.text_proj is not None:
            x = torch.cat([x, texts.flatten(1)], dim=1)
        h = self.act(self.inp(x))
        for layer in self.body:
            h = self.act(layer(h))
        return {"direction": self.direction_head(h),
                "quantiles": self.quantile_head(h).view(-1, self.n_h, self.n_q),
                "rank": self.rank_head(h), "bar_hidden": h}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """batch: features [B, k, 7], ids [B, k, 2], valid [B, k], and with text inputs text [B, m, d_text],
        text_weight [B, m] (see `student_inputs`) -> `head` outputs."""
        bars = self.bar_embed(batch["features"], batch["ids"], batch["valid"])
        texts = self.text_embed(batch["text"], batch["text_weight"]) if self.text_proj is not None else None
        return self.head(bars, texts)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path, tokenizer=None, card: dict | None = None) -> Path:
        """student.json + student.safetensors, tokenizer/ (given one) and a README.md model card
        (`card`: extra `quantlm.model.card` info, e.g. the teacher and the distillation config)."""
        from safetensors.torch import save_file

        from quantlm.model.card import student_card_info, write_model_card

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(d / STUDENT_WEIGHTS))
        (d / STUDENT_JSON).write_text(json.dumps({"format": FORMAT, **self.spec.to_dict()}, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(d / "tokenizer")
        write_model_card(d, {**student_card_info(self), **(card or {})})
        return d

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> StudentMLP:
        from safetensors.torch import load_file

        d = Path(directory)
        meta = json.loads((d / STUDENT_JSON).read_text())
        if meta.pop("format", None) != FORMAT:
            raise ValueError(f"{d / STUDENT_JSON}: unknown format")
        model = cls(StudentSpec(**meta))
        model.load_state_dict(load_file(str(d / STUDENT_WEIGHTS)))
        return model.to(device).eval()


def is_student_folder(directory: str | Path) -> bool:
    return (Path(directory) / STUDENT_JSON).exists()


def load_scorer(directory: str | Path, device: str | torch.device = "cpu") -> TraderModel | StudentMLP:
    """A student folder as StudentMLP, else a trader folder (teacher or "gpt" student) as TraderModel."""
    if is_student_folder(directory):
        return StudentMLP.load(directory, device)
    return TraderModel.load(directory, device)


def num_params(model: nn.Module) -> int:
    """All parameters (embeddings included)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------- inputs and batch scoring
def student_inputs(data: TraderData, rows: np.ndarray, k: int, pad_id: int, text_bars: int = 1,
                   ) -> dict[str, np.ndarray]:
    """The student's inputs for flat `rows`: the last k bars of each row's symbol (rows <= each row).

    Returns features float32 [R, k, 7], ids int64 [R, k, 2], valid float32 [R, k] and, with text,
    text float32 [R, m, d], text_weight float32 [R, m] (m = text_bars); bars before the symbol's
    first bar are zeros / pad_id / valid 0.
    """
    rows = np.asarray(rows, dtype=np.int64)
    first = data.offsets[np.searchsorted(data.offsets, rows, side="right") - 1][:, None]
    idx = rows[:, None] - (k - 1) + np.arange(k)  # [R, k]
    valid = idx >= first
    idx = np.maximum(idx, first)
    feats = np.where(valid[..., None], data.features[idx], 0.0).astype(np.float32)
    ids = np.where(valid[..., None], data.ids[idx], pad_id)
    out = {"features": feats, "ids": ids, "valid": valid.astype(np.float32)}
    if data.text is not None:
        tv, ti = valid[:, -text_bars:], idx[:, -text_bars:]
        out["text"] = np.where(tv[..., None], data.text[ti].astype(np.float32), 0.0).astype(np.float32)
        out["text_weight"] = np.where(tv, data.text_weight[ti], 0.0).astype(np.float32)
    return out


@torch.no_grad()
def predict_student_rows(model: StudentMLP, data: TraderData, rows: np.ndarray, batch_size: int = 8192,
                         keep: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Like `score.predict_rows` for a student: {"score": [R], and keep ("direction", "quantiles", "rank",
    "bar_hidden") as [R, ...]} in the order of `rows`. Each row depends on bars <= it only."""
    rows = np.asarray(rows, dtype=np.int64)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outs: dict[str, list[np.ndarray]] = {k: [] for k in ("score", *keep)}
    s = model.spec
    for a in range(0, len(rows), batch_size):
        batch = numpy_batch(student_inputs(data, rows[a:a + batch_size], s.window_bars, s.pad_id, s.text_bars), device)
        res = model(batch)
        outs["score"].append(model.score(res, batch["features"][:, -1]).cpu().numpy())
        for k in keep:
            outs[k].append(res[k].float().cpu().numpy())
    model.train(was_training)
    if not len(rows):
        return {k: np.zeros(0, np.float32) for k in outs}
    return {k: np.concatenate(v) for k, v in outs.items()}


def student_spec_from_teacher(teacher: TraderModel, window_bars: int, text_bars: int, token_dim: int, bar_dim: int,
                              hidden: int, layers: int, train_end, text_dim: int = 16) -> StudentSpec:
    """A StudentSpec with the teacher's vocabulary, heads, score, text inputs and feature normalisation."""
    t = teacher.spec
    return StudentSpec(vocab_size=teacher.trunk.vocab_size, pad_id=int(teacher.trunk.special_ids.get("pad", 0)),
                       window_bars=window_bars, text_bars=text_bars, text_dim=text_dim, token_dim=token_dim,
                       bar_dim=bar_dim,
                       hidden=hidden, layers=layers, horizons=list(t.horizons), quantiles=list(t.quantiles),
                       d_text=t.d_text, feature_mean=list(t.feature_mean), feature_std=list(t.feature_std),
                       score=t.score, text_half_life=t.text_half_life,
                       train_end=None if train_end is None else str(pd.Timestamp(train_end).date()), market=t.market)
