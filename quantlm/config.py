"""Reading YAML config files with clear errors (shared by gates, pretraining and later workflows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_yaml_mapping(path: str | Path, error: type[Exception], what: str = "config file") -> dict[str, Any] | None:
    """The top-level mapping of a YAML file (None for an empty file).

    A missing file raises FileNotFoundError; invalid YAML or a non-mapping top level raises `error`
    with the file name in the message.
    """
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None
    if data is not None and not isinstance(data, dict):
        raise error(f"{path}: expected a mapping at the top level")
    return data
