"""The market GPT: a transformers Llama decoder over K-line tokens, plus calendar and prefix inputs.

Sequence layout for one window of n bars (2 tokens per bar, see `quantlm.tokenize.KlineTokenizer`):

    [p_1 .. p_P] [BOS, c_1, f_1, c_2, f_2, ..., c_n, f_n]
     prefix (optional, projected embeddings)   tokens: L = 1 + 2n

Each bar's calendar embedding (weekday + intraday slot) is added to the token embedding of both
of its tokens; BOS, pads and prefix positions get none (calendar id -1). The prefix
(`prefix_embeds [B, P, d_prefix]`, e.g. report/news embeddings) goes through a Linear to the
hidden size and is prepended; logits (and so the loss) are only produced for token positions.

`MarketGPT` is a `transformers.PreTrainedModel` (config `quantlm.model.hf.MarketGPTConfig`, a
LlamaConfig plus the calendar / prefix sizes) whose decoder is `transformers.LlamaForCausalLM`
(RoPE, RMSNorm, SwiGLU, SDPA attention). A saved folder (`save`, layout in `quantlm.model.hf`)
loads whole with `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`; without
trust_remote_code transformers refuses it (unknown model_type) instead of dropping the extra weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedModel

from quantlm.model.hf import MarketGPTConfig, NoAutoClassCopy, auto_map, write_code_files
from quantlm.model.sizes import ModelSize, get_size

QUANTLM_JSON = "quantlm.json"  # previous layout (read only)
QUANTLM_WEIGHTS = "quantlm.safetensors"  # previous layout (read only)
FORMAT = "quantlm.MarketGPT/1"


def llama_config(size: ModelSize, vocab_size: int, max_prefix: int = 0, dropout: float = 0.0,
                 pad_id: int = 0, bos_id: int = 1, eos_id: int = 2, attn_implementation: str = "sdpa",
                 n_weekdays: int = 7, n_slots: int = 1, d_prefix: int = 0) -> MarketGPTConfig:
    """The MarketGPTConfig for `size`; max_position_embeddings covers prefix + BOS + 2 tokens per bar."""
    return MarketGPTConfig(
        vocab_size=int(vocab_size), hidden_size=size.hidden, intermediate_size=size.ffn,
        num_hidden_layers=size.n_layer, num_attention_heads=size.n_head, num_key_value_heads=size.n_head,
        head_dim=size.head_dim, max_position_embeddings=max_prefix + 1 + 2 * size.max_bars,
        rope_theta=size.rope_theta, attention_dropout=float(dropout), tie_word_embeddings=False,
        pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id, attn_implementation=attn_implementation,
        use_cache=True, n_weekdays=int(n_weekdays), n_slots=int(n_slots), d_prefix=int(d_prefix),
        max_prefix=int(max_prefix), size=size.to_dict(),
    )


class MarketGPT(NoAutoClassCopy, PreTrainedModel):
    """Llama decoder (`self.lm`) + calendar embeddings + optional prefix projection.

    Built from a MarketGPTConfig (what `from_pretrained` does) or, as before, from
    (size, vocab_size, n_weekdays, n_slots, d_prefix, max_prefix, dropout, special_ids).
    """

    config_class = MarketGPTConfig
    base_model_prefix = "market_gpt"
    main_input_name = "input_ids"
    _no_split_modules = ["LlamaDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: MarketGPTConfig | ModelSize | str | dict, vocab_size: int | None = None,
                 n_weekdays: int = 7, n_slots: int = 1, d_prefix: int = 0, max_prefix: int = 0, dropout: float = 0.0,
                 special_ids: dict[str, int] | None = None) -> None:
        if not isinstance(config, MarketGPTConfig):
            if vocab_size is None:
                raise ValueError("MarketGPT(size, vocab_size, ...) needs vocab_size")
            if vocab_size < 4:
                raise ValueError(f"vocab_size must be >= 4, got {vocab_size}")
            if d_prefix < 0 or max_prefix < 0 or (d_prefix > 0) != (max_prefix > 0):
                raise ValueError(f"d_prefix ({d_prefix}) and max_prefix ({max_prefix}) must both be 0 or both > 0")
            ids = dict(special_ids or {"pad": 0, "bos": 1, "eos": 2})
            config = llama_config(get_size(config), vocab_size, max_prefix, dropout, ids.get("pad", 0),
                                  ids.get("bos", 1), ids.get("eos", 2), n_weekdays=n_weekdays, n_slots=n_slots,
                                  d_prefix=d_prefix)
        if config.size is None:
            raise ValueError("MarketGPTConfig.size is missing (the ModelSize fields)")
        super().__init__(config)
        self.lm = LlamaForCausalLM(config)
        h = config.hidden_size
        # The last row of each calendar table is the "none" id (BOS, pads): zero and never trained.
        self.weekday_emb = nn.Embedding(self.n_weekdays + 1, h, padding_idx=self.n_weekdays)
        self.slot_emb = nn.Embedding(self.n_slots + 1, h, padding_idx=self.n_slots)
        for emb in (self.weekday_emb, self.slot_emb):
            nn.init.normal_(emb.weight, std=0.02)
            with torch.no_grad():
                emb.weight[-1].zero_()
        self.prefix_proj = nn.Linear(self.d_prefix, h) if self.d_prefix else None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """The decoder initialises itself (its own `_init_weights`); the calendar tables and the prefix
        projection are initialised in `__init__`, so nothing is redone here."""

    # ------------------------------------------------------------------ shapes
    @property
    def size(self) -> ModelSize:
        return get_size(self.config.size)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def n_weekdays(self) -> int:
        return int(self.config.n_weekdays)

    @property
    def n_slots(self) -> int:
        return int(self.config.n_slots)

    @property
    def d_prefix(self) -> int:
        return int(self.config.d_prefix)

    @property
    def max_prefix(self) -> int:
        return int(self.config.max_prefix)

    @property
    def dropout(self) -> float:
        return float(self.config.attention_dropout or 0.0)

    @property
    def special_ids(self) -> dict[str, int]:
        c = self.config
        return {"pad": int(c.pad_token_id), "bos": int(c.bos_token_id), "eos": int(c.eos_token_id)}

    @property
    def max_bars(self) -> int:
        return self.size.max_bars

    @property
    def max_tokens(self) -> int:
        """Longest token sequence (BOS + 2 per bar), prefix excluded."""
        return 1 + 2 * self.size.max_bars

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; non_embedding drops the token embedding and output head (vocabulary sized)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.lm.model.embed_tokens.weight.numel() + self.lm.lm_head.weight.numel()
        return n

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm.lm_head

    # ------------------------------------------------------------------ forward
    def embed(self, input_ids: torch.Tensor, calendar_ids: torch.Tensor | None = None,
              prefix_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, L], calendar_ids [B, L, 2] (-1 = none), prefix_embeds [B, P, d_prefix] -> [B, P+L, H]."""
        x = self.lm.model.embed_tokens(input_ids)  # [B, L, H]
        if calendar_ids is not None:
            if calendar_ids.shape != (*input_ids.shape, 2):
                raise ValueError(f"calendar_ids must be {(*input_ids.shape, 2)}, got {tuple(calendar_ids.shape)}")
            wd, slot = calendar_ids[..., 0].long(), calendar_ids[..., 1].long()  # int8 / int16 from the loader
            wd = torch.where((wd < 0) | (wd >= self.n_weekdays), self.n_weekdays, wd)
            slot = torch.where(slot < 0, self.n_slots, slot.clamp(max=self.n_slots - 1))
            x = x + self.weekday_emb(wd) + self.slot_emb(slot)
        if prefix_embeds is not None:
            if self.prefix_proj is None:
                raise ValueError("this model has no prefix projection (built with d_prefix=0)")
            if prefix_embeds.shape[-1] != self.d_prefix or prefix_embeds.shape[1] > self.max_prefix:
                raise ValueError(f"prefix_embeds must be [B, <= {self.max_prefix}, {self.d_prefix}], "
                                 f"got {tuple(prefix_embeds.shape)}")
            x = torch.cat([self.prefix_proj(prefix_embeds.to(x.dtype)), x], dim=1)  # [B, P+L, H]
        return x

    def forward(self, input_ids: torch.Tensor, calendar_ids: torch.Tensor | None = None,
                prefix_embeds: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache=None, use_cache: bool = False,
                logits_to_keep: int = 0, past_key_values=None):
        """Logits for the token positions: [B, L, V] (or the last `logits_to_keep`), and the KV cache.

        attention_mask [B, P+L] (or [B, past+P+L] with a cache) is 1 for real positions, 0 for pads;
        position_ids [B, P+L] default to 0..P+L-1 (plus the cache length). `cache` is a transformers
        `Cache` (DynamicCache / StaticCache), filled in place; `past_key_values` is accepted as its
        older name for Hugging Face-style callers. Returns `transformers` CausalLMOutputWithPast
        (fields logits, cache).
        """
        if past_key_values is not None:
            if cache is not None:
                raise ValueError("pass the KV cache as `cache` or `past_key_values`, not both")
            cache = past_key_values
        x = self.embed(input_ids, calendar_ids, prefix_embeds)
        keep = logits_to_keep if logits_to_keep else input_ids.shape[1]
        return self.lm(inputs_embeds=x, attention_mask=attention_mask, position_ids=position_ids,
                       cache=cache, use_cache=use_cache, logits_to_keep=keep)

    def loss(self, input_ids: torch.Tensor, calendar_ids: torch.Tensor | None = None,
             prefix_embeds: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token cross-entropy over token positions (prefix excluded) -> (loss, next-token accuracy)."""
        return lm_loss(self(input_ids, calendar_ids, prefix_embeds).logits, input_ids, loss_mask)

    # ------------------------------------------------------------------ persistence
    def extra_config(self) -> dict:
        """The model's shape in the previous layout's quantlm.json terms (also the model card's facts)."""
        return {"format": FORMAT, "size": self.size.to_dict(), "vocab_size": self.vocab_size,
                "n_weekdays": self.n_weekdays, "n_slots": self.n_slots, "d_prefix": self.d_prefix,
                "max_prefix": self.max_prefix, "dropout": self.dropout, "special_ids": self.special_ids}

    def save(self, directory: str | Path, card: dict | None = None) -> Path:
        """A Hugging Face model folder: config.json, model.safetensors, configuration_quantlm.py,
        modeling_quantlm.py and a README.md model card (`card`: extra `quantlm.model.card` info)."""
        from quantlm.model.card import inherited_card_info, market_gpt_card_info, write_model_card

        _quiet()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.auto_map = auto_map("market_gpt")
        self.save_pretrained(d)
        write_code_files(d)
        write_model_card(d, {**inherited_card_info(getattr(self, "card_info", None) or {}), **market_gpt_card_info(self),
                             **(card or {})})
        return d

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> MarketGPT:
        """Rebuild a model saved by `save` (weights exactly as saved); previous-layout folders are read too."""
        from quantlm.model.hf import MARKET_GPT_TYPE

        _quiet()
        d = Path(directory)
        if (d / QUANTLM_JSON).exists():
            return _load_previous_layout(cls, d).to(device)
        return load_hf_folder(cls, d, MARKET_GPT_TYPE, "quantlm market GPT", device)


def load_hf_folder(cls, d: Path, model_type: str, what: str, device: str | torch.device = "cpu"):
    """`cls.from_pretrained(d)` for a folder whose config.json has `model_type` (else a clear error), with
    every weight checked (`check_loading_info`) and the model card's history kept on `model.card_info`
    (what a model trained from this one inherits in its card)."""
    from quantlm.model.card import read_card_info
    from quantlm.model.hf import read_config

    cfg = read_config(d)
    if cfg is None:
        raise FileNotFoundError(f"{d} is not a {what} folder (no config.json)")
    if cfg.get("model_type") != model_type:
        raise ValueError(f"{d / 'config.json'}: model_type {cfg.get('model_type')!r} is not a {what} ('{model_type}')")
    model, info = cls.from_pretrained(d, attn_implementation="sdpa", output_loading_info=True)
    check_loading_info(d, info)
    model.card_info = read_card_info(d)
    return model.to(device)


def check_loading_info(directory: Path, info: dict) -> None:
    """Raise when from_pretrained left weights missing, unexpected or of the wrong shape."""
    bad = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(bad.values()):
        raise ValueError(f"{Path(directory) / 'model.safetensors'} does not match its config.json: "
                         + "; ".join(f"{k}: {v[:5]}" for k, v in bad.items() if v))


def _load_previous_layout(cls, d: Path) -> MarketGPT:
    """A folder of the previous layout: Llama config.json + model.safetensors, quantlm.json + quantlm.safetensors."""
    from safetensors.torch import load_file

    meta = json.loads((d / QUANTLM_JSON).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{d / QUANTLM_JSON}: unknown format {meta.get('format')!r}")
    model = cls(get_size(meta["size"]), meta["vocab_size"], meta["n_weekdays"], meta["n_slots"],
                meta["d_prefix"], meta["max_prefix"], meta["dropout"], meta["special_ids"])
    lm = load_file(str(d / "model.safetensors"))
    extras = load_file(str(d / QUANTLM_WEIGHTS))
    missing = {k for k in model.state_dict() if not k.startswith("lm.")} - set(extras)
    if missing:
        raise ValueError(f"{d / QUANTLM_WEIGHTS} lacks {sorted(missing)}")
    state = {**{f"lm.{k}": v for k, v in lm.items()}, **extras}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise ValueError(f"{d / 'model.safetensors'} (previous layout): missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def _quiet() -> None:
    """No transformers progress bars for our small local files."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy (nats/token) and accuracy; position t predicts input_ids[:, t+1].

    logits [B, L, V] for the token positions, input_ids [B, L]; loss_mask [B, L] (1 = count the
    target at that position) drops pads. Computed in float32 whatever the autocast dtype.
    """
    logits = logits[:, :-1]  # [B, L-1, V]
    targets = input_ids[:, 1:]  # [B, L-1]
    if loss_mask is not None:
        targets = targets.masked_fill(loss_mask[:, 1:] == 0, -100)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    with torch.no_grad():
        valid = targets != -100
        acc = ((logits.argmax(-1) == targets) & valid).sum() / valid.sum().clamp(min=1)
    return loss, acc


def build_model(size: str | ModelSize | dict, vocab_size: int, n_weekdays: int = 7, n_slots: int = 1,
                d_prefix: int = 0, max_prefix: int = 0, dropout: float = 0.0,
                special_ids: dict[str, int] | None = None, seed: int | None = None, **size_overrides) -> MarketGPT:
    """A freshly initialised MarketGPT of a named size (or ModelSize / dict) with optional overrides.

    `seed` seeds torch before initialisation so the same call gives the same weights.
    """
    if seed is not None:
        torch.manual_seed(seed)
    return MarketGPT(get_size(size, **size_overrides), vocab_size, n_weekdays, n_slots, d_prefix, max_prefix,
                     dropout, special_ids)


def model_for_tokenizer(size: str | ModelSize | dict, tokenizer, **kwargs) -> MarketGPT:
    """build_model with vocabulary, calendar sizes and special ids taken from a KlineTokenizer."""
    return build_model(size, tokenizer.vocab_size, n_weekdays=tokenizer.n_weekdays, n_slots=tokenizer.n_slots,
                       special_ids={"pad": tokenizer.pad_id, "bos": tokenizer.bos_id, "eos": tokenizer.eos_id},
                       **kwargs)
