"""The trader: a pretrained MarketGPT trunk plus continuous inputs and decision heads.

One forward pass over a window of n bars scores every bar of it (causal attention: the outputs
at bar i see bars <= i only), so one sequence of n bars is n training examples:

    tokens      [BOS, c_1, f_1, ..., c_n, f_n]                       (the pretrained K-line language)
    + at f_i    feat_proj(features_i) + text_proj(text_i) + count_proj(text_weight_i)
                + factor_proj(factors_i)   (spec.factors "alpha158": session-ranked factors, finetune.data)
    hidden      h_i = final hidden state at f_i                       [B, n, H]
    heads       direction  [B, n, 3]        sell / hold / buy logits
                quantiles  [B, n, n_h, n_q] returns over each horizon / (sigma_i sqrt(h)), sigma_i the
                                            tokenizer's causal volatility of bar i (vol-normalised)
                rank       [B, n, n_h]      cross-sectional rank of the return, in [-1, 1]

Why the continuous features and the text go on the fine token of bar i only: the fine token is the
last token of the bar, so they are visible from the position that predicts bar i+1 and never
inside bar i's own token prediction (the auxiliary next-token loss stays honest). Text enters per
bar rather than as one prefix per window because every bar of the window is scored: a window-level
prefix would show bar i texts published after it (a "prefix per bar", added where it became
visible, is the point-in-time version of the prefix).

`TraderModel` is a `transformers.PreTrainedModel` (config `quantlm.model.hf.TraderConfig`: the trunk's
MarketGPTConfig + the TraderSpec fields). Saved as a Hugging Face folder (layout in `quantlm.model.hf`):
config.json, model.safetensors, the code files, tokenizer/, README.md and, for an unmerged LoRA, adapter/;
`AutoModel.from_pretrained(dir, trust_remote_code=True)` loads it whole. Folders of the previous layout
(trunk/, heads.safetensors, trader.json) still load with `TraderModel.load`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from quantlm.model.build import MarketGPT, lm_loss
from quantlm.model.card import inherited_card_info
from quantlm.model.hf import (
    ADAPTER_DIR,
    TRADER_TYPE,
    NoAutoClassCopy,
    TraderConfig,
    auto_map,
    model_type,
    write_code_files,
)

TRADER_JSON = "trader.json"  # previous layout (read only)
HEADS_WEIGHTS = "heads.safetensors"  # previous layout (read only)
FORMAT = "quantlm.Trader/1"
N_FEATURES = 7  # KlineTokenizer.features: ret, gap, upper, lower, vol, amount, logsig
N_CANDLE = N_FEATURES + 4  # + body, body sign, range, shadow balance (see candle_features)
TEXT_SCALE = 384 ** 0.5  # unit-norm sentence embeddings -> components of order 1


def candle_features(raw: torch.Tensor) -> torch.Tensor:
    """[..., 7] tokenizer features (sigma units) -> [..., 11]: the 7 + candle shape.

    body = log(C/O)/sigma = ret - gap; its sign; range = (log H/L)/sigma = upper + lower + |body|;
    shadow balance = (lower - upper) / range in [-1, 1] (a hammer is close to 1). The Alpha158
    "K-bar" group in scale-free form; the model gets the candle's shape directly instead of having
    to rebuild it from 4-bin shadow tokens.
    """
    ret, gap, upper, lower = raw[..., 0], raw[..., 1], raw[..., 2], raw[..., 3]
    body = ret - gap
    rng = upper + lower + body.abs()
    balance = (lower - upper) / (rng + 1e-3)
    return torch.cat([raw, torch.stack([body, torch.sign(body), rng, balance], dim=-1)], dim=-1)


@dataclass
class TraderSpec:
    """Everything but the weights that a saved trader needs to rebuild and to read its inputs."""

    horizons: list[int] = field(default_factory=lambda: [1, 5, 10])
    quantiles: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 0.75, 0.9])
    d_text: int = 0  # 0 = no text input
    factors: str = "none"  # factor input set (finetune.data.FACTOR_SETS): "none" or "alpha158"
    d_factors: int = 0  # width of the factor input (0 = none)
    feature_mean: list[float] = field(default_factory=lambda: [0.0] * N_CANDLE)  # of candle_features
    feature_std: list[float] = field(default_factory=lambda: [1.0] * N_CANDLE)
    score: str = "rank"  # which head gives the trading score: rank | expected | direction
    window_bars: int = 64
    text_half_life: float = 1.5
    train_end: str | None = None
    market: str = "cn"

    def to_dict(self) -> dict:
        return asdict(self)


def _head(hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out))


def spec_from_config(config: TraderConfig) -> TraderSpec:
    """The TraderSpec held by a TraderConfig (None fields take the spec's defaults)."""
    values = {f.name: getattr(config, f.name, None) for f in fields(TraderSpec)}
    return TraderSpec(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if v is not None})


class TraderModel(NoAutoClassCopy, PreTrainedModel):
    """MarketGPT trunk + feature/text projections + direction, quantile and rank heads.

    Built as `TraderModel(trunk, spec)` or, by `from_pretrained`, from a TraderConfig. `spec` is the
    live copy of the TraderSpec fields (stages edit it); `save` writes it back into the config.
    """

    config_class = TraderConfig
    base_model_prefix = "trader"
    main_input_name = "input_ids"
    _no_split_modules = ["LlamaDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, trunk: MarketGPT | TraderConfig, spec: TraderSpec | None = None) -> None:
        if isinstance(trunk, TraderConfig):
            config, spec = trunk, spec_from_config(trunk)
            trunk = MarketGPT(config.trunk)
        else:
            spec = spec or TraderSpec()
            # attn_implementation: a new config would otherwise reset the trunk's (set on sub-configs) to None
            config = TraderConfig(trunk=trunk.config, attn_implementation=trunk.config._attn_implementation,
                                  **spec.to_dict())
            for module in trunk.modules():  # already initialised (pretrained or fresh): never re-initialise
                module._is_hf_initialized = True
        super().__init__(config)
        self.trunk, self.spec = trunk, spec
        self.card_info = inherited_card_info(getattr(trunk, "card_info", None) or {})  # model card lineage
        h = trunk.size.hidden
        self.n_h, self.n_q = len(spec.horizons), len(spec.quantiles)
        self.feat_proj = nn.Linear(2 * N_CANDLE, h)  # bar t and bar t-1 (lag inside the window)
        self.text_proj = nn.Linear(spec.d_text, h) if spec.d_text else None
        self.count_proj = nn.Linear(1, h) if spec.d_text else None
        self.factor_proj = nn.Linear(spec.d_factors, h) if spec.d_factors else None
        for p in (self.feat_proj, self.text_proj, self.count_proj, self.factor_proj):
            if p is not None:  # start as the pretrained model: new inputs add nothing until trained
                nn.init.normal_(p.weight, std=0.02)
                nn.init.zeros_(p.bias)
        self.direction_head = _head(h, 3)
        self.quantile_head = _head(h, self.n_h * self.n_q)
        self.rank_head = _head(h, self.n_h)
        self.register_buffer("feature_mean", torch.tensor(spec.feature_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("feature_std", torch.tensor(spec.feature_std, dtype=torch.float32), persistent=False)
        self.register_buffer("quantile_levels", torch.tensor(spec.quantiles, dtype=torch.float32), persistent=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Projections and heads are initialised in `__init__`; here only the spec's buffers are (re)filled
        (from_pretrained builds on the meta device, where they hold no values)."""
        if module is self:
            with torch.no_grad():
                self.feature_mean.copy_(torch.tensor(self.spec.feature_mean, dtype=torch.float32))
                self.feature_std.copy_(torch.tensor(self.spec.feature_std, dtype=torch.float32))
                self.quantile_levels.copy_(torch.tensor(self.spec.quantiles, dtype=torch.float32))

    @property
    def peft_model(self):
        """The peft wrapper of the trunk's decoder while LoRA adapters are attached unmerged (else None)."""
        return self.__dict__.get("_peft_model")

    # ------------------------------------------------------------------ forward
    def hidden(self, input_ids: torch.Tensor, calendar_ids: torch.Tensor, features: torch.Tensor,
               text: torch.Tensor | None = None, text_weight: torch.Tensor | None = None,
               factors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids [B, 1+2n], calendar_ids [B, 1+2n, 2], features [B, n, 7] (raw tokenizer features),
        text [B, n, d_text], text_weight [B, n], factors [B, n, d_factors] (needed iff spec.d_factors) -> (hidden at each bar's fine token [B, n, H], all hidden [B, L, H])."""
        x = self.trunk.embed(input_ids, calendar_ids)  # [B, L, H]
        z = ((candle_features(features.float()) - self.feature_mean) / self.feature_std).clamp(-8.0, 8.0)
        lag = torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], dim=1)  # bar t-1 (zeros before the window)
        add = self.feat_proj(torch.cat([z, lag], dim=-1).to(x.dtype))  # [B, n, H]
        if self.text_proj is not None and text is not None:
            add = add + self.text_proj((text.float() * TEXT_SCALE).to(x.dtype))
            if text_weight is not None:
                add = add + self.count_proj(torch.log1p(text_weight.float()).unsqueeze(-1).to(x.dtype))
        if self.factor_proj is not None:
            if factors is None:
                raise ValueError(f"this trader takes factor inputs (factors: {self.spec.factors}) and the batch has none")
            add = add + self.factor_proj(factors.to(x.dtype))
        x = _add_at_fine(x, add)
        out = self.trunk.lm.model(inputs_embeds=x)
        hid = out.last_hidden_state  # [B, L, H] (final norm applied)
        return hid[:, 2::2], hid

    def forward(self, batch: dict[str, torch.Tensor], with_lm: bool = False) -> dict[str, torch.Tensor]:
        """Head outputs for every bar of the batch (see the module docstring for shapes)."""
        bar_h, all_h = self.hidden(batch["input_ids"], batch["calendar_ids"], batch["features"],
                                   batch.get("text"), batch.get("text_weight"), batch.get("factors"))
        B, n, _ = bar_h.shape
        out = {"direction": self.direction_head(bar_h),
               "quantiles": self.quantile_head(bar_h).view(B, n, self.n_h, self.n_q),
               "rank": self.rank_head(bar_h),
               "bar_hidden": bar_h}
        if with_lm:
            out["lm_logits"] = self.trunk.lm.lm_head(all_h)
        return out

    def score(self, out: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
        """The trading score per bar [B, n] (higher = buy) from the heads, per `spec.score`."""
        if self.spec.score == "rank":
            return out["rank"][..., 0].float()
        if self.spec.score == "rank_vol":  # vol-scaled rank target: back to expected-return units
            return out["rank"][..., 0].float() * torch.exp(features[..., 6].float())
        if self.spec.score == "direction":
            p = out["direction"].float().softmax(-1)
            return p[..., 2] - p[..., 0]
        if self.spec.score == "expected":  # mean of the h=1 quantiles, back in return units
            sigma = torch.exp(features[..., 6].float())
            return out["quantiles"][..., 0, :].float().mean(-1) * sigma
        raise ValueError(f"unknown score '{self.spec.score}' (rank, rank_vol, direction or expected)")

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path, tokenizer=None, card: dict | None = None) -> Path:
        """A Hugging Face model folder (layout in `quantlm.model.hf`): config.json (TraderConfig),
        model.safetensors (trunk, projections, heads), configuration/modeling_quantlm.py, tokenizer/
        (given a tokenizer) and README.md (`card`: extra `quantlm.model.card` info). With LoRA adapters
        attached unmerged (`lora.merge: false`), model.safetensors holds the base weights and adapter/
        the peft adapter; config.adapter records where it is."""
        from quantlm.model.build import _quiet
        from quantlm.model.card import trader_card_info, write_model_card

        _quiet()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for key, value in self.spec.to_dict().items():
            setattr(self.config, key, value)
        self.config.trunk = self.trunk.config
        self.config.architectures = [type(self).__name__]
        self.config.auto_map = auto_map("trader")
        peft = self.peft_model
        self.config.adapter = ADAPTER_DIR if peft is not None else None
        state = None
        shutil.rmtree(d / ADAPTER_DIR, ignore_errors=True)  # never leave a stale adapter beside new weights
        if peft is not None:
            state = base_state_dict(self)
            peft.save_pretrained(d / ADAPTER_DIR)
        self.save_pretrained(d, state_dict=state)
        write_code_files(d)
        if tokenizer is not None:
            tokenizer.save_pretrained(d / "tokenizer")
        write_model_card(d, {**inherited_card_info(self.card_info), **trader_card_info(self), **(card or {})})
        return d

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> TraderModel:
        """A trader folder saved by `save` (its LoRA adapter applied), or one of the previous layout."""
        from quantlm.model.build import _quiet, load_hf_folder

        _quiet()
        d = Path(directory)
        if (d / TRADER_JSON).exists():
            return _load_previous_layout(cls, d).to(device)
        return load_hf_folder(cls, d, TRADER_TYPE, "quantlm trader", device)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' from_pretrained, then the folder's unmerged LoRA adapter (config.adapter) attached."""
        out = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = out[0] if isinstance(out, tuple) else out
        if model.config.adapter:
            attach_adapter(model, Path(pretrained_model_name_or_path) / model.config.adapter)
        return out


def base_state_dict(model: TraderModel) -> dict[str, torch.Tensor]:
    """The trader's state dict without LoRA: adapter tensors dropped, peft's `.base_layer.` names undone."""
    return {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}


def attach_adapter(model: TraderModel, adapter_dir: str | Path) -> None:
    """Inject a saved peft LoRA adapter into the trunk's decoder in place (inference: adapters frozen)."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter_dir}: the trader's LoRA adapter folder is missing (no adapter_config.json)")
    model.__dict__["_peft_model"] = PeftModel.from_pretrained(model.trunk.lm, str(adapter_dir))


def _load_previous_layout(cls, d: Path) -> TraderModel:
    """trader.json + trunk/ (MarketGPT folder) + heads.safetensors, as saved before the HF layout."""
    from safetensors.torch import load_file

    meta = json.loads((d / TRADER_JSON).read_text())
    if meta.pop("format", None) != FORMAT:
        raise ValueError(f"{d / TRADER_JSON}: unknown format")
    model = cls(MarketGPT.load(d / "trunk"), TraderSpec(**meta))
    missing, unexpected = model.load_state_dict(load_file(str(d / HEADS_WEIGHTS)), strict=False)
    missing = [k for k in missing if not k.startswith("trunk.")]
    if missing or unexpected:
        raise ValueError(f"{d / HEADS_WEIGHTS}: missing {missing}, unexpected {unexpected}")
    return model


def is_trader_folder(directory: str | Path) -> bool:
    """A trader folder of either layout (config.json of model_type quantlm_trader, or trader.json)."""
    d = Path(directory)
    return (d / TRADER_JSON).exists() or model_type(d) == TRADER_TYPE


def _add_at_fine(x: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """x [B, 1+2n, H] with add [B, n, H] added at the fine-token positions 2, 4, ..., 2n."""
    pad = torch.zeros_like(add)
    inter = torch.stack([pad, add], dim=2).flatten(1, 2)  # [B, 2n, H]: 0 at coarse, add at fine
    return x + torch.cat([torch.zeros_like(x[:, :1]), inter], dim=1)


# ---------------------------------------------------------------------- losses
@dataclass
class LossWeights:
    direction: float = 1.0
    quantile: float = 1.0
    rank: float = 1.0
    lm: float = 0.1
    listwise: float = 0.0  # 1 - per-session Pearson of the rank score (finetune.listwise); needs batch["group"]


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, levels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean quantile (pinball) loss. pred [..., n_q], target [...], levels [n_q], mask [...] (bool)."""
    diff = target.unsqueeze(-1) - pred  # [..., n_q]
    loss = torch.maximum(levels * diff, (levels - 1.0) * diff).mean(-1)
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def trader_losses(model: TraderModel, batch: dict[str, torch.Tensor], weights: LossWeights,
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Multi-task loss: direction CE + pinball on vol-normalised returns + rank MSE + lm * next-token CE.

    batch targets: direction [B, n] int64 (-1 = none), ret [B, n, n_h] (fractions, NaN = none),
    rank [B, n, n_h] (in [-1, 1], NaN = none). Returns (total loss, detached parts as device tensors):
    nothing here waits for the device, so a training step syncs with the host only when it logs. Every
    enabled part is always present (0 when a batch has no known target of its kind).
    """
    out = model(batch, with_lm=weights.lm > 0)
    parts: dict[str, torch.Tensor] = {}
    d = batch["direction"].reshape(-1)
    if weights.direction:
        known = d >= 0
        ce = F.cross_entropy(out["direction"].float().reshape(-1, 3), d.clamp(min=0), reduction="none")
        parts["direction"] = (ce * known).sum() / known.sum().clamp(min=1)
    ret = batch["ret"]
    if weights.quantile:
        sigma = torch.exp(batch["features"][..., 6].float()).unsqueeze(-1)  # [B, n, 1]
        scale = sigma * torch.sqrt(torch.tensor(model.spec.horizons, dtype=torch.float32, device=ret.device))
        mask = torch.isfinite(ret)
        target = torch.where(mask, ret / scale, 0.0).clamp(-10, 10)
        parts["quantile"] = pinball_loss(out["quantiles"].float(), target, model.quantile_levels, mask)
    if weights.rank:
        r = batch["rank"]
        mask = torch.isfinite(r)
        err = (out["rank"].float() - torch.where(mask, r, 0.0)) ** 2
        parts["rank"] = (err * mask).sum() / mask.sum().clamp(min=1)
    if weights.listwise and "group" in batch:
        from quantlm.finetune.listwise import listwise_pearson_loss

        parts["listwise"] = listwise_pearson_loss(out["rank"][..., 0], ret[..., 0], batch["features"][..., 6],
                                                  batch["group"])
    if weights.lm:
        parts["lm"], _ = lm_loss(out["lm_logits"], batch["input_ids"])
    total = sum(getattr(weights, k) * v for k, v in parts.items())
    return total, {k: v.detach() for k, v in parts.items()}


def numpy_batch(arrays: dict[str, np.ndarray], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}
