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


def test_sft_from_exported_jsonl_measures_tokens_per_bar(synth_store, tiny_qwen, tmp_path):
    from transformers import AutoTokenizer

    from quantlm.finetune.jsonl import export_jsonl
    from quantlm.llm.serialize import bar_lines, tokens_per_bar

    data = tmp_path / "ex.jsonl"
    n = export_jsonl(synth_store, data, start="2020-06-01", end="2020-06-10", window_bars=8, warmup_bars=0)
    res = _run("llm", "sft", "--base", tiny_qwen, "--data", data, "--out", tmp_path / "run", "--steps", "2",
               "--batch-size", "4", "--window-bars", "8", "--lora-rank", "2", "--answer-return")
    info = json.loads((tmp_path / "run" / "llm.json").read_text())
    assert info["examples"] == n > 0 and info["data"] == str(data.resolve()) and info["train_end"] is None
    assert info["prompt"]["answer_return"] and sum(info["answers"].values()) == n
    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    lines = bar_lines(synth_store.bars(symbols=[synth_store.symbols()[0]], end="2020-06-10").tail(30))
    assert abs(info["tokens"]["tokens_per_bar"] - tokens_per_bar(tok, lines)) < 2.5
    assert f"tokens per bar {info['tokens']['tokens_per_bar']:.2f}" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text().splitlines()[0].replace('"signal": "', '"signal": "maybe') + "\n")
    res = CliRunner().invoke(app, ["llm", "sft", "--base", str(tiny_qwen), "--data", str(bad), "--out",
                                   str(tmp_path / "bad_run")])
    assert res.exit_code != 0 and "bad.jsonl, line 1" in res.output and not (tmp_path / "bad_run").exists()


def test_latency_cli_times_the_llm_and_records_it(synth_store, tiny_qwen, tmp_path):
    _run("llm", "sft", "--base", tiny_qwen, "--store", synth_store.root, "--train-end", "2020-06-30", "--start",
         "2020-06-22", "--out", tmp_path / "run", "--steps", "1", "--batch-size", "2", "--window-bars", "8")
    res = _run("llm", "latency", "--model", tmp_path / "run", "--store", synth_store.root, "--symbols", "3",
               "--updates", "2", "--out", tmp_path / "lat.json")
    rows = json.loads((tmp_path / "lat.json").read_text())
    assert rows[0]["n_symbols"] == 3 and rows[0]["p99"] >= rows[0]["p50"] > rows[0]["prompt_p50"] > 0
    assert "decision latency" in res.output
    assert json.loads((tmp_path / "run" / "llm.json").read_text())["latency_ms"][0]["p50"] == rows[0]["p50"]
