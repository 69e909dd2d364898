"""Pass/fail gates on backtest metrics (the mission's bar a strategy must clear).

Each gate compares one metric of `quantlm.backtest.metrics.compute_metrics` (or a live/latency
measurement such as `latency_p99_ms`) with a threshold. The direction is fixed per metric:
"higher is better" metrics pass when value >= threshold, the others when value <= threshold.

Defaults (fractions, not percent):

| gate | passes when |
|---|---|
| annual_excess_return | >= 0.15 (15% a year over the benchmark) |
| max_drawdown | >= -0.08 (a drawdown of at most 8%; max_drawdown is negative) |
| max_consecutive_losing_days | <= 3 |
| sharpe | >= 2.0 |
| directional_accuracy | >= 0.65 |
| latency_p99_ms | <= 5.0 (decision latency, from the live/predict benchmarks) |

The metrics are measured per session (day) for intraday results too (`quantlm.backtest.metrics`):
max_consecutive_losing_days counts losing days, sharpe annualises daily returns.

Optional gates (off unless set): ic, rank_ic, information_ratio (>=), annual_return (>=).
Set a gate to null in YAML to switch it off. Unknown keys are errors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

HIGHER_IS_BETTER = {
    "annual_excess_return": True,
    "max_drawdown": True,
    "max_consecutive_losing_days": False,
    "sharpe": True,
    "directional_accuracy": True,
    "latency_p99_ms": False,
    "ic": True,
    "rank_ic": True,
    "information_ratio": True,
    "annual_return": True,
}


class GateConfigError(ValueError):
    """A gates file or mapping that does not validate (shown to CLI users as a plain message)."""

    user_facing = True


class Gates(BaseModel):
    """Thresholds per metric; None switches a gate off. See the module docstring for directions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    annual_excess_return: float | None = 0.15
    max_drawdown: float | None = -0.08
    max_consecutive_losing_days: float | None = 3
    sharpe: float | None = 2.0
    directional_accuracy: float | None = 0.65
    latency_p99_ms: float | None = 5.0
    ic: float | None = None
    rank_ic: float | None = None
    information_ratio: float | None = None
    annual_return: float | None = None

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None, source: str = "gates") -> Gates:
        """Validate a mapping (e.g. parsed YAML); errors name the source and the bad key."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise GateConfigError(f"{source}: expected a mapping of gate name to threshold, got {type(data).__name__}")
        data = data.get("gates", data) if set(data) == {"gates"} else data
        try:
            return cls(**data)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or '(root)'}: {'unknown gate' if err['type'] == 'extra_forbidden' else err['msg']}"
                for err in e.errors()
            )
            raise GateConfigError(f"{source}: {problems} (known gates: {', '.join(cls.model_fields)})") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> Gates:
        """Load gates from a YAML file (a flat mapping, optionally under a top-level `gates:` key)."""
        from quantlm.config import read_yaml_mapping

        data = read_yaml_mapping(path, GateConfigError, what="gates file")
        return cls.from_mapping(data, source=str(path))

    def active(self) -> dict[str, float]:
        """Gates that are switched on: {metric: threshold}."""
        return {k: float(v) for k, v in self.model_dump().items() if v is not None}


def evaluate_gates(metrics: dict[str, float | None], gates: Gates | None = None) -> dict[str, dict[str, Any]]:
    """{gate: {"value", "threshold", "op", "passed"}} for every active gate.

    A metric that is missing, None or NaN does not pass and is reported with value None.
    """
    gates = gates or Gates()
    table: dict[str, dict[str, Any]] = {}
    for name, threshold in gates.active().items():
        higher = HIGHER_IS_BETTER[name]
        raw = metrics.get(name)
        value = None if raw is None or (isinstance(raw, float) and math.isnan(raw)) else float(raw)
        passed = value is not None and (value >= threshold if higher else value <= threshold)
        table[name] = {"value": value, "threshold": threshold, "op": ">=" if higher else "<=", "passed": bool(passed)}
    return table


def all_passed(table: dict[str, dict[str, Any]]) -> bool:
    """True when every gate in an `evaluate_gates` table passed."""
    return all(row["passed"] for row in table.values())


__all__ = ["Gates", "GateConfigError", "evaluate_gates", "all_passed", "HIGHER_IS_BETTER"]
