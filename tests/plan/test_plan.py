"""The planner: memory formulas by hand, validation against measured peaks, the CLI, the chooser."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from quantlm.cli import app
from quantlm.plan import SIZES, PlanConfig, plan_memory, resolve_arch, throughput
from quantlm.plan.arch import Arch
from quantlm.plan.choose import choose, parse_ms, read_accuracy
from quantlm.plan.memory import kv_cache_bytes, lora_params
from quantlm.plan.validate import TINY_CASES, TOLERANCE, measure_case, tiny_model


def test_named_sizes_param_counts():
    # published Qwen2.5 totals
    assert round(SIZES["7B"].params() / 1e9, 2) == 7.62
    assert round(SIZES["0.5B"].params() / 1e9, 2) == 0.49
    assert round(SIZES["72B"].params() / 1e9, 1) == 72.7


def test_param_count_matches_hf_model(tmp_path):
    m = tiny_model(TINY_CASES[1])  # llama: no qkv bias
    m.save_pretrained(tmp_path)
    a = resolve_arch(tmp_path)
    assert a.params() == sum(p.numel() for p in m.parameters())
    assert not a.qkv_bias


def test_memory_hand_computed_full_bf16_zero3():
    # L=2, h=64, heads=4 (hd 16), kv=2 heads (32), i=128, V=100, untied, qkv bias
    a = Arch(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=100, tied=False, qkv_bias=True)
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + (64 + 2 * 32) + 2 * 64
    P = 2 * per_layer + 64 + 2 * 100 * 64
    assert a.params() == P
    cfg = PlanConfig(method="full", seq=10, micro_batch=3, precision="bf16", gpus=4, gpu_mem_gb=1, zero=3)
    m = plan_memory(a, cfg)
    assert m.weights == -(-2 * P // 4)
    assert m.gradients == -(-2 * P // 4)
    assert m.optimizer == -(-12 * P // 4)  # 2 fp32 moments + fp32 master
    sb = 30
    layer = sb * (2 * 6 * 64 + 2 * (4 * 64 + 3 * 32 + 4 * 128))
    head = sb * (6 * 64 + 100 * 14)
    assert m.activations == 2 * layer + head
    assert m.kv_cache == 2 * 2 * 32 * 10 * 1 * 2 == kv_cache_bytes(a, 10, 1, 2)
    assert m.total == m.weights + m.gradients + m.optimizer + m.activations


def test_memory_7b_lora_and_stages():
    a = SIZES["7B"]
    T = lora_params(a, 16)
    assert T == 28 * 16 * (2 * (3584 + 3584) + 2 * (3584 + 512) + 3 * (3584 + 18944))
    base = dict(method="lora", lora_rank=16, seq=2048, micro_batch=4, gpus=8, gpu_mem_gb=80, precision="bf16")
    m0 = plan_memory(a, PlanConfig(**base, zero=0))
    m2 = plan_memory(a, PlanConfig(**base, zero=2))
    m3 = plan_memory(a, PlanConfig(**base, fsdp=True, checkpointing=True))
    assert m0.weights == 2 * a.params() + 2 * T and m0.optimizer == 12 * T and m0.gradients == 2 * T
    assert m2.optimizer == -(-12 * T // 8) and m2.gradients == -(-2 * T // 8) and m2.weights == m0.weights
    assert m3.weights == -(-m0.weights // 8) and m3.activations < m0.activations / 3
    assert not m0.fits and m3.fits  # 64.8 GiB of activations without checkpointing
    q = plan_memory(a, PlanConfig(**{**base, "method": "qlora"}))
    assert q.weights < m0.weights / 2.5
    full = plan_memory(a, PlanConfig(**{**base, "method": "full"}, zero=0))
    assert full.optimizer == 12 * a.params() and not full.fits
    t = throughput(a, PlanConfig(**base, gpu="h100"))
    t_a = throughput(a, PlanConfig(**base, gpu="a100"))
    assert t["tokens_per_s"] > t_a["tokens_per_s"] > 0 and t["latency_ms"] > 0


def test_memory_estimate_within_tolerance_of_measured_peak():
    for case in TINY_CASES[:1]:
        r = measure_case(case)
        assert abs(r["train_error"]) <= TOLERANCE, r
        assert abs(r["infer_error"]) <= TOLERANCE, r


def test_cli_7b_table():
    res = CliRunner().invoke(app, ["plan", "--model", "7B", "--method", "lora", "--rank", "16", "--seq", "2048",
                                   "--micro-batch", "4", "--gpus", "8", "--gpu-mem", "80", "--gpu", "a100",
                                   "--zero", "2", "--checkpointing"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for s in ("Qwen2.5-7B", "weights", "gradients", "optimizer states", "activations", "training total",
              "fits (training)", "inference KV cache", "tokens/s", "latency per decision", "ZeRO 2"):
        assert s in res.output, s


def test_cli_errors():
    res = CliRunner().invoke(app, ["plan", "--model", "nope-size"])
    assert res.exit_code == 2 and "named size" in res.output
    res = CliRunner().invoke(app, ["plan", "--latency-budget", "5ms"])
    assert res.exit_code == 2


def test_parse_ms():
    assert parse_ms("5ms") == 5 and parse_ms("0.5s") == 500 and parse_ms("250us") == 0.25 and parse_ms("3") == 3
    with pytest.raises(ValueError):
        parse_ms("fast")


def test_chooser_with_injected_latencies(tmp_path):
    lat = {"fast": 1.0, "mid": 4.0, "slow": 9.0, "unknown": 2.0}
    ic = {"fast": 0.02, "mid": 0.05, "slow": 0.09}
    for k in lat:
        (tmp_path / k).mkdir()
        if k in ic:
            (tmp_path / k / "summary.json").write_text(json.dumps({"rank_ic": ic[k]}))
    (tmp_path / "mid" / "summary.json").write_text(json.dumps({"primary": "m", "runs": {"m": {"rank_ic": 0.05}}}))
    assert read_accuracy(tmp_path / "mid") == 0.05 and read_accuracy(tmp_path / "unknown") is None
    fake = lambda d: {"p50": lat[d.name], "kind": "fake"}  # noqa: E731
    dirs = [tmp_path / k for k in lat]
    rows, best = choose(dirs, 5.0, measure=fake)
    assert best["candidate"].endswith("mid")  # slow is more accurate but over budget
    assert [r["within"] for r in rows] == [True, True, False, True]
    _, best = choose(dirs, 1.5, measure=fake)
    assert best["candidate"].endswith("fast")
    _, best = choose([tmp_path / "unknown", tmp_path / "slow"], 3.0, measure=fake)
    assert best["candidate"].endswith("unknown") and best["rank_ic"] is None
    _, best = choose(dirs, 0.5, measure=fake)
    assert best is None


def test_cli_candidates_measures_hf_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    tiny_model(TINY_CASES[2]).save_pretrained(a)
    tiny_model(TINY_CASES[0]).save_pretrained(b)
    (b / "summary.json").write_text(json.dumps({"rank_ic": 0.03}))
    res = CliRunner().invoke(app, ["plan", "--latency-budget", "10s", "--candidates", str(a), str(b),
                                   "--prompt-tokens", "32"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "recommended:" in res.output and "0.0300" in res.output and "unknown" in res.output
    assert f"recommended: {b}" in res.output.replace("\n", "")
