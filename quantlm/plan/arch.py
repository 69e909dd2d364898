"""Architecture numbers of a decoder-only transformer (Qwen2 / Llama class) for the planner.

Named sizes are Qwen2.5 base models; the numbers are those of each model's `config.json` on the
Hugging Face hub (Qwen/Qwen2.5-0.5B, -1.5B, -7B, -14B, -72B), copied here so no hub is needed:

| size | layers | hidden | heads | kv heads | intermediate | vocab  | tied | params (this module) |
|------|--------|--------|-------|----------|--------------|--------|------|----------------------|
| 0.5B | 24     | 896    | 14    | 2        | 4864         | 151936 | yes  | 0.494B               |
| 1.5B | 28     | 1536   | 12    | 2        | 8960         | 151936 | yes  | 1.544B               |
| 7B   | 28     | 3584   | 28    | 4        | 18944        | 152064 | no   | 7.616B               |
| 14B  | 48     | 5120   | 40    | 8        | 13824        | 152064 | no   | 14.770B              |
| 72B  | 80     | 8192   | 64    | 8        | 29568        | 152064 | no   | 72.706B              |

All have biases on the q/k/v projections (Qwen2); a Llama folder has none (`attention_bias`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Arch:
    """Shape of a decoder-only transformer with RMSNorm, RoPE, GQA attention and a SwiGLU MLP."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool = False
    qkv_bias: bool = True
    head_dim: int | None = None
    name: str = "custom"

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.heads * self.hd

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.hd

    def linear_params_per_layer(self) -> int:
        """Weights of the 7 linear maps of one block (q, k, v, o, gate, up, down), biases excluded."""
        h = self.hidden
        return h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h + 3 * h * self.intermediate

    def layer_params(self) -> int:
        bias = (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        return self.linear_params_per_layer() + bias + 2 * self.hidden  # + 2 RMSNorm weights

    def embedding_params(self) -> int:
        """Token embedding plus (untied) output head."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def params(self) -> int:
        """All parameters, as `sum(p.numel() for p in model.parameters())` of the HF model."""
        return self.layers * self.layer_params() + self.hidden + self.embedding_params()

    def matmul_params(self) -> int:
        """Parameters used in a matmul per token (the embedding lookup is not one; a tied head is)."""
        return self.params() - self.vocab * self.hidden * (0 if self.tied else 1)

    def to_dict(self) -> dict:
        return asdict(self)


SIZES: dict[str, Arch] = {
    "0.5B": Arch(24, 896, 14, 2, 4864, 151936, tied=True, name="Qwen2.5-0.5B"),
    "1.5B": Arch(28, 1536, 12, 2, 8960, 151936, tied=True, name="Qwen2.5-1.5B"),
    "7B": Arch(28, 3584, 28, 4, 18944, 152064, tied=False, name="Qwen2.5-7B"),
    "14B": Arch(48, 5120, 40, 8, 13824, 152064, tied=False, name="Qwen2.5-14B"),
    "72B": Arch(80, 8192, 64, 8, 29568, 152064, tied=False, name="Qwen2.5-72B"),
}


def arch_from_config(cfg: dict, name: str = "custom") -> Arch:
    """An Arch from a Hugging Face config dict (Qwen2, Llama, Mistral and similar field names)."""
    for nested in ("text_config", "trunk"):  # multimodal configs; a quantlm trader's market GPT trunk
        if nested in cfg and "hidden_size" not in cfg:
            cfg = cfg[nested]
    try:
        h, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        layers, inter, vocab = int(cfg["num_hidden_layers"]), int(cfg["intermediate_size"]), int(cfg["vocab_size"])
    except KeyError as e:
        raise ValueError(f"config lacks {e.args[0]!r}: not a decoder-only transformer config this planner reads") from None
    mt = cfg.get("model_type", "")
    bias = bool(cfg.get("attention_bias", mt in ("qwen2", "qwen2_moe")))
    return Arch(layers=layers, hidden=h, heads=heads, kv_heads=int(cfg.get("num_key_value_heads") or heads),
                intermediate=inter, vocab=vocab, tied=bool(cfg.get("tie_word_embeddings", False)), qkv_bias=bias,
                head_dim=cfg.get("head_dim"), name=name)


def resolve_arch(model: str | Path | Arch) -> Arch:
    """A named size (0.5B, 1.5B, 7B, 14B, 72B; case-insensitive), a HF folder with config.json, or an Arch."""
    if isinstance(model, Arch):
        return model
    key = {k.lower(): k for k in SIZES}.get(str(model).lower())
    if key:
        return SIZES[key]
    p = Path(model)
    cfg = p / "config.json" if p.is_dir() else p
    if not cfg.exists():
        raise ValueError(f"'{model}' is neither a named size ({', '.join(SIZES)}) nor a folder with config.json")
    return arch_from_config(json.loads(cfg.read_text()), name=p.name)
