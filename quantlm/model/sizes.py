"""Named model sizes of the market GPT.

Shapes follow Llama (RoPE, RMSNorm, SwiGLU); the SwiGLU width is ~8/3 of the hidden size rounded
up to a multiple of 64. Head size is 32 for `mini` (CPU demos and tests) and 64 otherwise, so the
fast fused attention kernels apply on GPUs. Parameter counts exclude the vocabulary-dependent
token embedding and output head (about 2 * vocab_size * hidden).

| size  | layers | hidden | heads | head | ffn  | non-embedding params |
|-------|--------|--------|-------|------|------|----------------------|
| mini  | 4      | 128    | 4     | 32   | 384  | ~0.85M               |
| small | 8      | 512    | 8     | 64   | 1408 | ~25.4M               |
| base  | 14     | 768    | 12    | 64   | 2048 | ~99.1M               |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class ModelSize:
    """Transformer shape; `max_bars` is the context length in bars (2 tokens per bar + BOS)."""

    n_layer: int
    hidden: int
    n_head: int
    ffn: int
    max_bars: int = 512
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_head

    def non_embedding_params(self) -> int:
        """Parameters in the decoder blocks and final norm (no embeddings, no output head)."""
        per_layer = 4 * self.hidden * self.hidden + 3 * self.hidden * self.ffn + 2 * self.hidden
        return self.n_layer * per_layer + self.hidden

    def to_dict(self) -> dict:
        return asdict(self)


SIZES: dict[str, ModelSize] = {
    "mini": ModelSize(n_layer=4, hidden=128, n_head=4, ffn=384, max_bars=256),
    "small": ModelSize(n_layer=8, hidden=512, n_head=8, ffn=1408, max_bars=512),
    "base": ModelSize(n_layer=14, hidden=768, n_head=12, ffn=2048, max_bars=512),
}


def get_size(size: str | ModelSize | dict, **overrides) -> ModelSize:
    """A ModelSize from a name in SIZES, a ModelSize or a dict of its fields, with overrides applied."""
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown model size '{size}' (expected one of {', '.join(SIZES)})")
        s = SIZES[size]
    elif isinstance(size, dict):
        s = ModelSize(**size)
    else:
        s = size
    s = replace(s, **{k: v for k, v in overrides.items() if v is not None})
    if s.hidden % s.n_head:
        raise ValueError(f"hidden {s.hidden} is not a multiple of n_head {s.n_head}")
    if s.max_bars < 2:
        raise ValueError(f"max_bars must be >= 2, got {s.max_bars}")
    return s
