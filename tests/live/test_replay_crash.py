"""Crash-only design: `quantlm live replay` killed with SIGKILL (at a chosen bar, and at random wall-clock
moments) and re-run with the same --out ends in the same positions, cash and equity as an
uninterrupted run, with no order applied twice and no client id reused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from quantlm.data.store import Store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from quantlm.data.synth import SynthConfig, write_market

    root = tmp_path_factory.mktemp("crash")
    store = Store(root / "store")
    write_market(store, SynthConfig(n_symbols=20, start="2022-01-04", end="2022-08-31"))
    bars = store.bars()
    rng = np.random.default_rng(0)
    bars[["symbol", "ts"]].assign(score=rng.normal(size=len(bars))).to_csv(root / "scores.csv", index=False)
    cfg = {"history_days": 40, "primary": {"signals": str(root / "scores.csv"), "name": "signals"},
           "strategy": {"topk": 5, "n_drop": 2},
           "risk": {"review_threshold": 150_000.0, "review_mode": "approve"}}  # some orders go through review
    (root / "live.yaml").write_text(yaml.safe_dump(cfg))
    return root


def replay(root: Path, out: Path, crash_after: int = 0, wait: bool = True) -> subprocess.Popen:
    env = dict(os.environ, QUANTLM_LIVE_CRASH_AFTER=str(crash_after) if crash_after else "")
    cmd = [sys.executable, "-m", "quantlm.cli", "live", "replay", "--config", str(root / "live.yaml"),
           "--store", str(root / "store"), "--start", "2022-04-01", "--end", "2022-07-29", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        proc.wait(timeout=300)
    return proc


def final_state(out: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    m = json.loads((out / "metrics.json").read_text())
    return m, pd.read_csv(out / "fills.csv"), pd.read_csv(out / "orders.csv")


def test_kill_9_at_several_points_resumes_to_the_same_end(setup, tmp_path):
    root = setup
    clean = replay(root, tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr
    want, want_fills, want_orders = final_state(tmp_path / "clean")
    out = tmp_path / "crashed"
    for k in (3, 17, 40):  # SIGKILL inside the k-th bar's transaction of each run
        p = replay(root, out, crash_after=k)
        assert p.returncode == -signal.SIGKILL, p.stderr
    done = replay(root, out)
    assert done.returncode == 0, done.stderr
    got, fills, orders = final_state(out)
    assert got["positions"] == want["positions"]
    assert got["metrics"]["final_cash"] == pytest.approx(want["metrics"]["final_cash"], rel=1e-12)
    assert got["metrics"]["final_equity"] == pytest.approx(want["metrics"]["final_equity"], rel=1e-12)
    assert fills["fill_id"].is_unique and len(fills) == len(want_fills)
    assert orders["client_id"].is_unique and len(orders) == len(want_orders)


def test_random_wall_clock_kills_then_resume(setup, tmp_path):
    root = setup
    assert replay(root, tmp_path / "clean").returncode == 0
    want, _, _ = final_state(tmp_path / "clean")
    out = tmp_path / "crashed"
    rng = np.random.default_rng(7)
    for _ in range(3):
        p = replay(root, out, wait=False)
        time.sleep(float(rng.uniform(2.0, 5.0)))  # start-up included: some kills land before any bar
        p.send_signal(signal.SIGKILL)
        p.wait()
    done = replay(root, out)
    assert done.returncode == 0, done.stderr
    got, fills, _ = final_state(out)
    assert got["positions"] == want["positions"]
    assert got["metrics"]["final_equity"] == pytest.approx(want["metrics"]["final_equity"], rel=1e-12)
    assert fills["fill_id"].is_unique
