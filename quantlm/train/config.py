"""Pretraining configuration: pydantic models of configs/pretrain/*.yaml (unknown keys are errors).

Units: learning rates per optimizer step; `*_every` and `*_steps` in optimizer steps; window and
context lengths in bars (2 tokens per bar + BOS); batch_size in windows per process per micro-batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quantlm.data.schema import FREQS, MARKETS
from quantlm.model.fpa import FPAConfig
from quantlm.train.optim import OptimConfig


class ConfigError(ValueError):
    """A bad config file or value; the CLI prints it and exits 2."""

    user_facing = True


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    size: Literal["mini", "small", "base"] = "mini"
    # Optional overrides of the named size's shape.
    n_layer: int | None = Field(None, ge=1)
    hidden: int | None = Field(None, ge=8)
    n_head: int | None = Field(None, ge=1)
    ffn: int | None = Field(None, ge=8)
    max_bars: int | None = Field(None, ge=2)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    d_prefix: int = Field(0, ge=0)
    max_prefix: int = Field(0, ge=0)

    def overrides(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("n_layer", "hidden", "n_head", "ffn", "max_bars")
                if getattr(self, k) is not None}


class SourceConfig(_Strict):
    """One slice of the store to train on; windows are drawn from sources in proportion to weight."""

    freq: str = "1d"
    market: str | None = None
    weight: float = Field(1.0, gt=0.0)

    @field_validator("freq")
    @classmethod
    def _freq(cls, v: str) -> str:
        if v not in FREQS:
            raise ValueError(f"unknown frequency '{v}' (expected one of {', '.join(FREQS)})")
        return v

    @field_validator("market")
    @classmethod
    def _market(cls, v: str | None) -> str | None:
        if v is not None and v not in MARKETS:
            raise ValueError(f"unknown market '{v}' (expected one of {', '.join(MARKETS)})")
        return v


class DataConfig(_Strict):
    store: str | None = None
    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig()], min_length=1)
    symbols: list[str] | None = None
    start: str | None = None
    end: str | None = None
    # Time split: training windows end on or before `split`; validation windows start after it.
    # If split is None it is the calendar date leaving `valid_fraction` of the dates for validation.
    split: str | None = None
    valid_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    window_bars: int = Field(64, ge=2)

    @field_validator("split", "start", "end")
    @classmethod
    def _date(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                pd.Timestamp(v)
            except (ValueError, TypeError) as e:
                raise ValueError(f"not a date: {v!r}") from e
        return v


class TrainConfig(OptimConfig):
    """Pretraining's `train:` section: the core's optimisation settings (`OptimConfig`) plus batching,
    logging, validation and checkpoint cadence."""

    batch_size: int = Field(32, ge=1)
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(200, ge=0)  # 0 = only at the end
    eval_batches: int = Field(8, ge=0)  # 0 = no validation
    checkpoint_every: int = Field(500, ge=0)  # 0 = only at the end
    keep_checkpoints: int = Field(2, ge=1)

    def optim(self) -> OptimConfig:
        """The training core's `OptimConfig` (quantlm.train.optim) from these keys."""
        return OptimConfig(**{k: getattr(self, k) for k in OptimConfig.model_fields})


class PretrainConfig(_Strict):
    run_dir: str = "runs/pretrain"
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    fpa: FPAConfig = Field(default_factory=FPAConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: dict[str, Any] = Field(default_factory=dict)  # KlineTokenizer(**tokenizer)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _shapes(self) -> PretrainConfig:
        from quantlm.model.sizes import get_size

        size = get_size(self.model.size, **self.model.overrides())
        if self.data.window_bars > size.max_bars:
            raise ValueError(f"data.window_bars ({self.data.window_bars}) exceeds the model context "
                             f"max_bars ({size.max_bars})")
        if (self.model.d_prefix > 0) != (self.model.max_prefix > 0):
            raise ValueError("model.d_prefix and model.max_prefix must both be 0 or both > 0")
        return self


def parse_config(raw: dict, source: str = "config") -> PretrainConfig:
    """Validate a dict; raise ConfigError naming the file and the offending keys."""
    try:
        return PretrainConfig.model_validate(raw or {})
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, err['loc'])) or '(top)'}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{source}: invalid config\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path) -> PretrainConfig:
    """Read and validate a YAML pretraining config."""
    from quantlm.config import read_yaml_mapping

    raw = read_yaml_mapping(path, ConfigError)
    return parse_config(raw, str(path))


def dump_config(cfg: PretrainConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
