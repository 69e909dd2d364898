"""CLI errors and warnings are printed unwrapped: a path or key is never split, whatever the width."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from rich.console import Console


def _long_dir(tmp_path):
    d = tmp_path / ("a_rather_long_folder_name_" * 3) / ("and-another-one-" * 3)
    d.mkdir(parents=True)
    return d


@pytest.mark.parametrize("columns", ["20", "400"])
def test_cli_error_keeps_long_paths_whole_at_any_width(tmp_path, columns):
    d = _long_dir(tmp_path)
    store = d / "no_store_here"
    env = {**os.environ, "COLUMNS": columns, "LINES": "25", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    code = "from quantlm.cli import app; app()"
    res = subprocess.run([sys.executable, "-c", code, "backtest", "--signals", str(d / "s.csv"), "--store", str(store),
                          "--out", str(d / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2, res.stderr
    assert f"no quantlm store at {store}" in res.stderr and "Traceback" not in res.stderr


def test_fail_and_warn_do_not_wrap(monkeypatch):
    import typer

    from quantlm.cli import common

    long = "/tmp/" + "x" * 150 + "/file.csv: sft.lora.rnak: extra inputs are not permitted"
    for width in (20, 400):
        err, out = io.StringIO(), io.StringIO()
        monkeypatch.setattr(common, "err_console", Console(file=err, width=width))
        monkeypatch.setattr(common, "console", Console(file=out, width=width))
        with pytest.raises(typer.Exit):
            common.fail(long)
        common.warn(long)
        common.note(long)
        assert err.getvalue() == f"error: {long}\n"
        assert out.getvalue() == f"warning: {long}\nnote: {long}\n"
