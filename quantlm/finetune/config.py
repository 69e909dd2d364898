"""Fine-tuning configs (strict pydantic: unknown or mistyped keys are errors naming the key path)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from quantlm.features.targets import TargetConfig
from quantlm.model.fpa import FPAConfig


class ConfigError(ValueError):
    """An invalid fine-tuning config (shown to CLI users as a plain message)."""

    user_facing = True


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LossConfig(_Strict):
    """Multi-task weights; lm is the auxiliary next-token loss that keeps the market language."""

    direction: float = Field(1.0, ge=0)
    quantile: float = Field(1.0, ge=0)
    rank: float = Field(1.0, ge=0)
    lm: float = Field(0.1, ge=0)
    listwise: float = Field(0.0, ge=0)  # 1 - per-session Pearson(rank score, vol-scaled return); cross_section batches


class LoraConfig(_Strict):
    """peft LoRA on the trunk's top layers (those not frozen by freeze_bottom); merged into the weights on
    save, or with merge: false saved as a peft adapter folder (model/adapter/) beside the base weights."""

    enabled: bool = False
    merge: bool = True
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])


class SFTConfig(_Strict):
    """Supervised fine-tuning of a pretrained market GPT into a trader (see quantlm/finetune/sft.py)."""

    steps: int = Field(200, ge=1)
    batch_size: int = Field(32, ge=1)  # windows per step (each window gives window_bars examples)
    window_bars: int = Field(64, ge=8)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    text: bool = True  # feed point-in-time text embeddings (needs embedded texts in the store)
    text_half_life: float = Field(1.5, gt=0)  # sessions; the text input of bar t is the decayed mean of texts visible by t
    targets: TargetConfig = Field(default_factory=TargetConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    rank_target: Literal["return", "vol_scaled"] = "return"  # what the rank head ranks (see finetune.data)
    factors: Literal["none", "alpha158"] = "none"  # session-ranked Alpha158 factors as a per-bar input
    batches: Literal["windows", "cross_section"] = "windows"  # random windows, or whole sessions' cross-sections
    cross_section_symbols: int = Field(32, ge=2)  # cross_section: symbols per session (batch_size // it sessions)
    score: Literal["rank", "rank_vol", "direction", "expected"] = "rank"
    freeze_bottom: int = Field(0, ge=0)  # freeze token embeddings + the bottom N decoder layers
    lora: LoraConfig = Field(default_factory=LoraConfig)
    fpa: FPAConfig = Field(default_factory=FPAConfig)
    from_scratch: bool = False  # ablation: random trunk of the pretrained shape instead of its weights
    valid_sessions: int = Field(240, ge=10)  # last sessions before train_end used to pick the best step
    eval_every: int = Field(50, ge=1)
    warm: int = Field(16, ge=1)  # bars of context every scored bar gets at least
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # on CUDA (a CPU run is fp32)
    grad_accum: int = Field(1, ge=1)  # micro-batches of batch_size windows per optimizer step
    log_every: int = Field(10, ge=1)  # steps between metrics.jsonl rows (each costs a host sync)
    checkpoint_every: int = Field(0, ge=0)  # steps between checkpoints for resume; 0 = none
    keep_checkpoints: int = Field(1, ge=1)
    threads: int | None = None  # torch threads (None: leave as is)

    def optim(self):
        """The training core's OptimConfig (quantlm.train.optim): AdamW betas (0.9, 0.95)."""
        from quantlm.train.optim import OptimConfig

        return OptimConfig(max_steps=self.steps, lr=self.lr, min_lr=self.min_lr, warmup_steps=self.warmup_steps,
                           weight_decay=self.weight_decay, grad_clip=self.grad_clip, grad_accum=self.grad_accum,
                           mixed_precision=self.mixed_precision)

    @model_validator(mode="after")
    def _check(self) -> SFTConfig:
        if self.warm >= self.window_bars:
            raise ValueError(f"warm ({self.warm}) must be < window_bars ({self.window_bars})")
        if self.loss.listwise > 0 and self.batches != "cross_section":
            raise ValueError("loss.listwise needs batches: cross_section (random windows share no session)")
        return self


def parse_section(cls: type[BaseModel], raw: dict | None, source: str):
    """Validate `raw` as `cls`; ConfigError lists each bad key path."""
    try:
        return cls.model_validate(raw or {})
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, err['loc'])) or '(top)'}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{source}: invalid config\n  " + "\n  ".join(lines)) from None


def load_section(cls: type[BaseModel], path: str | Path):
    from quantlm.config import read_yaml_mapping

    return parse_section(cls, read_yaml_mapping(Path(path), ConfigError), str(path))
