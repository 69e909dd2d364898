"""The training core: schedule, optimizer groups, best state, prefetching, exact resume, 2 processes = accumulation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from quantlm.train.core import Trainer, TrainStage  # noqa: E402
from quantlm.train.optim import BestState, OptimConfig, decay_groups, lr_at  # noqa: E402
from quantlm.train.prefetch import Prefetcher, compact_ints  # noqa: E402
from tests.conftest import make_bars  # noqa: E402

ROOT = Path(__file__).parents[2]


def test_lr_schedule_and_decay_groups():
    oc = OptimConfig(max_steps=10, lr=1.0, min_lr=0.1, warmup_steps=2)
    assert lr_at(0, oc) == 0.5 and lr_at(1, oc) == 1.0
    assert lr_at(2, oc) == pytest.approx(1.0) and lr_at(10, oc) == pytest.approx(0.1)
    assert lr_at(6, oc) == pytest.approx(0.1 + 0.5 * 0.9)  # half way through the cosine
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    m[1].weight.requires_grad_(False)
    decay, no_decay = decay_groups(m, 0.1)
    assert [p.shape for p in decay["params"]] == [(4, 3)] and decay["weight_decay"] == 0.1
    assert {tuple(p.shape) for p in no_decay["params"]} == {(4,)} and len(no_decay["params"]) == 2
    assert no_decay["weight_decay"] == 0.0


def test_best_state_keeps_the_best_copy():
    best = BestState("valid_ic", "max")
    w = {"w": torch.ones(2)}
    assert best.update(1, {"valid_ic": float("nan")}, w)  # the first evaluation is always kept
    w["w"] += 1
    assert best.update(2, {"valid_ic": 0.1}, w) and best.metrics["step"] == 2
    w["w"] += 1
    assert not best.update(3, {"valid_ic": 0.05}, w) and not best.update(4, {"valid_ic": float("nan")}, w)
    assert torch.equal(best.state["w"], torch.full((2,), 2.0))  # a copy, not the live tensor
    low = BestState("valid_loss", "min")
    low.update(1, {"valid_loss": 2.0}, w)
    assert low.update(2, {"valid_loss": 1.0}, w) and not low.update(3, {"valid_loss": 1.5}, w)


def test_prefetcher_order_dtypes_and_errors():
    def make(i):
        time.sleep(0.002 * (i % 3))  # uneven build times: the order must not follow them
        return {"x": np.full((2, 3), i, np.int64), "calendar_ids": np.array([[-1, 0], [6, 239]])}

    got = list(Prefetcher(make, range(7), "cpu", depth=2))
    assert [int(b["x"][0, 0]) for b in got] == list(range(7))
    assert got[0]["x"].dtype == torch.int64 and got[0]["calendar_ids"].dtype == torch.int16
    assert compact_ints(torch.tensor([-1, 6])).dtype == torch.int8
    assert compact_ints(torch.tensor([0, 70000])).dtype == torch.int32

    def bad(i):
        if i == 2:
            raise ValueError("row 2 is broken")
        return {"x": np.zeros(1)}

    it = iter(Prefetcher(bad, range(5), "cpu"))
    next(it), next(it)
    with pytest.raises(ValueError, match="row 2"):
        next(it)


def _toy_stage(grad_accum: int = 2) -> TrainStage:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))

    def batch_at(i: int) -> dict:
        x = np.random.default_rng([7, i]).normal(size=(8, 4)).astype(np.float32)
        return {"x": x, "y": (x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32))[:, None]}

    def loss_fn(m, b, step):
        err = ((m(b["x"]) - b["y"]) ** 2).mean()
        return err, {"mse": err}

    held = {k: torch.from_numpy(v) for k, v in batch_at(10**6).items()}
    return TrainStage("toy", model, loss_fn, batch_at,
                      OptimConfig(max_steps=12, lr=3e-2, min_lr=3e-3, warmup_steps=2, grad_accum=grad_accum),
                      evaluate=lambda m: {"valid_mse": float(loss_fn(m, held, 0)[0])}, select="valid_mse",
                      select_mode="min", eval_every=4, log_every=3, checkpoint_every=5)


def _run(run_dir, stop_after=None, resume=False):
    trainer = Trainer(_toy_stage(), run_dir)
    result = trainer.fit(resume=resume, stop_after=stop_after)
    state = trainer.full_state_dict()
    trainer.close()
    return result, state


def test_core_resume_is_bit_identical_with_dropout_accumulation_and_best_state(tmp_path):
    straight, w_a = _run(tmp_path / "a")
    stopped, _ = _run(tmp_path / "b", stop_after=7)  # checkpoints at 5 and 7 (the stop)
    assert not stopped.finished and stopped.best == {}
    resumed, w_b = _run(tmp_path / "b", resume=True)
    assert resumed.state["step"] == 7 and resumed.finished
    assert straight.best == resumed.best and straight.best["step"] in (4, 8, 12)
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 4, 6, 8, 9, 12]
    rows_b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == [3, 4, 6, 7, 8, 9, 12]  # 7: the stopped run's last row
    assert {"loss", "mse", "lr"} <= set(rows[0]) and "valid_mse" in rows[1]
    with pytest.raises(ValueError, match="already holds checkpoints"):
        _run(tmp_path / "a")


def test_two_processes_equal_one_process_with_accumulation(tmp_path):
    """DDP over 2 gloo processes (batch B each) = 1 process with grad_accum 2 (batch B): the same global
    batch, so the same loss curve and weights; tolerance 1e-5 relative (all-reduce summation order).
    `accelerate launch --cpu` alone starts ONE process (accelerate 1.15 needs mpirun for multi-CPU), so the
    2 processes come from `--multi_gpu` with ACCELERATE_USE_CPU=true: DDP over gloo on the CPU."""
    from safetensors.torch import load_file

    from quantlm.data.store import Store

    store = tmp_path / "store"
    Store(store).write_bars(make_bars(symbols=[f"S{i}" for i in range(6)], periods=160, seed=1), market="cn",
                            freq="1d")
    script = str(ROOT / "tests" / "train" / "ddp_pretrain.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "true"}
    with socket.socket() as sock:  # a free rendezvous port: other test processes may run beside this one
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no",
                "--dynamo_backend", "no"]
    two = subprocess.run([*launcher, script, str(store), str(tmp_path / "ddp"), "4", "1"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    from tests.train.ddp_pretrain import main

    main(str(store), str(tmp_path / "one"), 4, 2)

    def losses(run):
        return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]

    a, b = losses(tmp_path / "ddp"), losses(tmp_path / "one")
    assert len(a) == len(b) == 5
    np.testing.assert_allclose(a, b, rtol=1e-5)
    wa = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
