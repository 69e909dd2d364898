"""`configs/live.yaml`: primary and backup model, strategy, risk, broker and journal of a live session.

Every section is a pydantic model with `extra="forbid"`: an unknown key is an error naming the file
and the key path, as for `quantlm run` configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quantlm.config import read_yaml_mapping


class LiveConfigError(ValueError):
    """A bad live config (shown to CLI users without a traceback)."""

    user_facing = True


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Strict):
    """A scorer: a model folder (student / trader), or a signals file replayed as scores."""

    path: str | None = None  # model folder (quantlm finetune distill / sft output)
    signals: str | None = None  # or a Scores file (symbol, ts, score) replayed as the model's output
    backend: Literal["torch", "onnx"] = "onnx"
    name: str | None = None  # shown in orders, events and metrics (default: the folder or file name)


class StrategySection(_Strict):
    """The backtest's strategy and exchange settings (quantlm.backtest.engine.BacktestConfig fields)."""

    strategy: Literal["topk", "threshold", "weights"] = "topk"
    topk: int = 50
    n_drop: int = 5
    hold_thresh: int = 1
    long_threshold: float = 0.0
    short_threshold: float | None = None
    risk_degree: float = 0.95
    fill: Literal["open", "close", "vwap"] = "open"
    costs: bool = True
    participation: float = 0.1
    leverage: float = 1.0
    allow_short: bool | None = None
    corporate_actions: Literal["cash", "reinvest", "off"] = "cash"


class BrokerSection(_Strict):
    kind: Literal["paper", "file"] = "paper"
    out: str | None = None  # FileBroker: folder for the order files
    limit_slack: float = 0.01  # FileBroker limit price: last close x (1 +/- slack), inside the price limits


class MonitorSection(_Strict):
    window_sessions: int = 20
    latency_budget_ms: float = 5.0
    latency_strikes: int = 3
    min_ic: float | None = None
    ic_window: int = 20
    recover_sessions: int = 5


class LiveConfig(_Strict):
    """A live session: market, cash, models, strategy, risk rules, broker, journal."""

    market: Literal["cn", "us", "crypto"] | None = None  # None: the store's market
    cash: float = 1_000_000.0
    benchmark: str | None = None  # None: the store's benchmark (market pause rule)
    primary: ModelSection = Field(default_factory=ModelSection)
    backup: ModelSection | None = None
    strategy: StrategySection = Field(default_factory=StrategySection)
    risk: dict[str, Any] = Field(default_factory=dict)  # quantlm.live.risk.RiskConfig fields
    broker: BrokerSection = Field(default_factory=BrokerSection)
    monitor: MonitorSection = Field(default_factory=MonitorSection)
    journal: str | None = None  # default: OUT/journal.sqlite
    history_days: int = 90  # calendar days of bars before the start used to warm up state and scorers

    def risk_config(self):
        from quantlm.live.risk import RiskConfig

        try:
            return RiskConfig(**self.risk)
        except ValidationError as e:
            raise LiveConfigError(_format(e, "risk")) from None


def _format(e: ValidationError, prefix: str = "") -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in (prefix, *err["loc"]) if x != "")
        parts.append(f"{loc}: {err['msg'].lower()}")
    return "; ".join(parts)


def load_live_config(path: str | Path) -> LiveConfig:
    """Read and validate a live config file; errors name the file and the key path."""
    raw = read_yaml_mapping(path, LiveConfigError, "live config") or {}
    try:
        cfg = LiveConfig(**raw)
    except ValidationError as e:
        raise LiveConfigError(f"{path}: {_format(e)}") from None
    try:
        cfg.risk_config()
    except LiveConfigError as e:
        raise LiveConfigError(f"{path}: {e}") from None
    base = Path(path).resolve().parent
    for section in (cfg.primary, cfg.backup):
        if section is None:
            continue
        for attr in ("path", "signals"):
            value = getattr(section, attr)
            if value and not Path(value).is_absolute() and not Path(value).exists() and (base / value).exists():
                setattr(section, attr, str(base / value))
    return cfg
