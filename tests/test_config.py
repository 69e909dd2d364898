"""YAML config reading: every failure names the file."""

from __future__ import annotations

import pytest

from quantlm.backtest.gates import GateConfigError, Gates
from quantlm.config import read_yaml_mapping
from quantlm.train.config import ConfigError, load_config


def test_reads_a_mapping_and_an_empty_file(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("sharpe: 1.5\n")
    assert read_yaml_mapping(f, ValueError) == {"sharpe": 1.5}
    f.write_text("")
    assert read_yaml_mapping(f, ValueError) is None


@pytest.mark.parametrize(("text", "message"), [("a: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "expected a mapping")])
def test_bad_yaml_names_the_file_for_gates_and_pretrain_configs(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(GateConfigError, match=f"bad.yaml: {message}"):
        Gates.from_yaml(f)
    with pytest.raises(ConfigError, match=f"bad.yaml: {message}"):
        load_config(f)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="gates file not found"):
        Gates.from_yaml(tmp_path / "nope.yaml")
