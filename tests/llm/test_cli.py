from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from quantlm.cli import app


def _run(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, (res.output, res.exception)
    return res


def test_end_to_end_tiny_sft_score_backtest(synth_store, tmp_path):
    store = synth_store.root
    _run("llm", "tiny", "--out", tmp_path / "tiny", "--family", "qwen2")
    _run("llm", "sft", "--base", tmp_path / "tiny", "--store", store, "--train-end", "2020-06-30",
         "--start", "2020-06-22", "--out", tmp_path / "run", "--steps", "2", "--batch-size", "4",
         "--window-bars", "8", "--lora-rank", "4", "--freeze-bottom", "1")
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    _run("llm", "score", "--model", tmp_path / "run", "--store", store, "--start", "2020-07-01",
         "--end", "2020-07-03", "--out", tmp_path / "scores.parquet")
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert list(scores.columns) == ["symbol", "ts", "score"] and len(scores) >= 16
    _run("backtest", "--signals", tmp_path / "scores.parquet", "--store", store, "--out", tmp_path / "bt",
         "--topk", "3", "--n-drop", "1")
    assert "total_return" in json.loads((tmp_path / "bt" / "metrics.json").read_text()) or \
        json.loads((tmp_path / "bt" / "metrics.json").read_text())
