"""`quantlm finetune sft|reward|rl|distill|export|score` through the typer app."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from quantlm.cli import app

pytest.importorskip("torch")

SFT = {"steps": 4, "batch_size": 8, "window_bars": 24, "warm": 8, "valid_sessions": 40, "eval_every": 2,
       "warmup_steps": 1, "text": False}
STAGES = {
    "sft": SFT,
    "reward": {"steps": 4, "batch_size": 2, "max_symbols": 12, "window_bars": 24, "warm": 8, "pairs_per_session": 16,
               "valid_sessions": 40, "eval_every": 4},
    "rl": {"steps": 4, "batch_size": 2, "max_symbols": 12, "window_bars": 24, "warm": 8, "valid_sessions": 40,
           "eval_every": 4, "reward": "model"},
    "distill": {"window_bars": 12, "mlp": {"token_dim": 4, "bar_dim": 4, "hidden": 16, "layers": 1, "text_bars": 1},
                "warm": 8, "steps": 4, "batch_size": 8, "valid_sessions": 40, "eval_every": 4, "latency_symbols": 8,
                "latency_updates": 2},
}


def flat(text: str) -> str:
    """Output without whitespace: rich wraps long lines wherever it likes."""
    return "".join(text.split())


def invoke(*args) -> object:
    return CliRunner().invoke(app, ["finetune", *map(str, args)])


def _yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def cli(ft_env, tmp_path_factory):
    """The stages run once through the CLI with a `quantlm run`-style file of sections."""
    root = tmp_path_factory.mktemp("cli")
    cfg = _yaml(root / "stages.yaml", {"run_dir": "runs/x", **STAGES})
    common = ["--store", ft_env.store.root, "--train-end", ft_env.train_end, "--config", cfg]
    res = {"sft": invoke("sft", "--init", ft_env.pretrained, "--out", root / "sft", "--seed", 1, *common)}
    res["reward"] = invoke("reward", "--policy", root / "sft", "--out", root / "reward", *common)
    res["rl"] = invoke("rl", "--policy", root / "sft" / "model", "--reward", root / "reward", "--out", root / "rl",
                       *common)
    res["distill"] = invoke("distill", "--teacher", root / "rl", "--out", root / "distill", *common)
    return root, res


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_commands_train_and_print_a_summary(cli, stage):
    root, res = cli
    r = res[stage]
    assert r.exit_code == 0, r.output
    metrics = json.loads((root / stage / "metrics.json").read_text())
    assert (root / stage / "model").is_dir() and "seconds" in metrics
    assert stage in r.output and "seconds" in r.output and flat(str(root / stage / "model")) in flat(r.output)
    if stage == "sft":
        assert metrics["seed"] == 1 and "best_step" in r.output


def test_export_then_sft_from_jsonl(ft_env, tmp_path):
    cfg = _yaml(tmp_path / "sft.yaml", SFT)
    path = tmp_path / "ex.jsonl"
    r = invoke("export", "--store", ft_env.store.root, "--out", path, "--start", "2019-06-03", "--end", "2020-12-31",
               "--every", 5, "--model", ft_env.pretrained, "--config", cfg)
    assert r.exit_code == 0, r.output
    n = len(path.read_text().splitlines())
    assert n > 100 and f"wrote {n:,} examples" in r.output
    assert all(len(json.loads(x)["bars"]) <= 24 + 40 for x in path.open())
    r = invoke("sft", "--init", ft_env.pretrained, "--out", tmp_path / "run", "--jsonl", path, "--config", cfg,
               "--valid-fraction", 0.2)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["examples"] == n and "valid_rank_ic" in r.output


@pytest.mark.parametrize("suffix,stage", [("csv", "sft"), ("parquet", "distill")])
def test_score_writes_signals_that_backtest_reads(cli, ft_env, tmp_path, suffix, stage):
    from quantlm.backtest.signals import read_signals

    root, _ = cli
    out = tmp_path / f"signals.{suffix}"
    r = invoke("score", "--model", root / stage / "model", "--store", ft_env.store.root, "--start", "2020-10-09",
               "--end", "2020-12-31", "--out", out)
    assert r.exit_code == 0, r.output
    sig = read_signals(out)
    assert list(sig.columns) == ["symbol", "ts", "score"] and sig["ts"].min().date().isoformat() == "2020-10-09"
    assert sig["symbol"].nunique() >= 10 and f"wrote {len(sig):,} scores" in r.output
    if suffix == "csv":
        bt = CliRunner().invoke(app, ["backtest", "--signals", str(out), "--store", str(ft_env.store.root),
                                      "--out", str(tmp_path / "bt"), "--topk", "3", "--n-drop", "1"])
        assert bt.exit_code == 0, bt.output
        assert (tmp_path / "bt" / "metrics.json").exists()


BAD_CONFIGS = {  # name: (yaml content, command, words in the error)
    "unknown key": ({"stepz": 3}, "sft", "stepz"),
    "bad value": ({"steps": 0}, "sft", "steps"),
    "nested unknown": ({"lora": {"rnk": 4}}, "sft", "lora.rnk"),
    "section unknown key": ({"sft": {"stepz": 3}}, "sft", "section 'sft'"),
    "unknown top level": ({"sft": {}, "sfft": {}}, "sft", "sfft"),
    "missing section": ({"sft": {}}, "reward", "no 'reward' section"),
    "reward unknown key": ({"pairz": 3}, "reward", "pairz"),
    "not a mapping": ([1, 2], "sft", "mapping"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_exits_2_naming_the_key(ft_env, tmp_path, case):
    content, command, words = BAD_CONFIGS[case]
    cfg = _yaml(tmp_path / "bad.yaml", content)
    model = "--init" if command == "sft" else "--policy"
    r = invoke(command, model, ft_env.pretrained, "--out", tmp_path / "run", "--store", ft_env.store.root,
               "--train-end", ft_env.train_end, "--config", cfg)
    assert r.exit_code == 2, r.output
    assert flat(words) in flat(r.stderr) and "Traceback" not in r.output
    if case == "section unknown key":
        assert "stepz" in r.stderr
    assert not (tmp_path / "run").exists()


def test_usage_errors_exit_2(ft_env, cli, tmp_path):
    root, _ = cli
    r = invoke("sft", "--init", ft_env.pretrained, "--out", tmp_path / "run", "--store", ft_env.store.root)
    assert r.exit_code == 2 and "--train-endisrequired" in flat(r.stderr)
    r = invoke("rl", "--policy", root / "sft", "--out", tmp_path / "rl", "--store", ft_env.store.root,
               "--train-end", ft_env.train_end, "--config", _yaml(tmp_path / "rl.yaml", {"reward": "model"}))
    assert r.exit_code == 2 and "--reward" in r.stderr and "rl.reward" in r.stderr
    r = invoke("score", "--model", root / "sft" / "model", "--store", ft_env.store.root, "--start", "2020-10-09",
               "--end", "2020-12-31", "--out", tmp_path / "s.txt")
    assert r.exit_code == 2 and ".csv or .parquet" in r.stderr
    r = invoke("sft", "--init", tmp_path / "nope", "--out", tmp_path / "run", "--train-end", "2020-01-01")
    assert r.exit_code == 2 and "nosuchmodelfolder" in flat(r.stderr)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"symbol": "A"}\n')
    r = invoke("sft", "--init", ft_env.pretrained, "--out", tmp_path / "run", "--jsonl", bad)
    assert r.exit_code == 2 and flat(f"{bad}, line 1, field 'ts': missing") in flat(r.stderr)
    assert not (tmp_path / "run").exists()
