"""Does pretraining pay? Downstream SFT RankIC against pretraining tokens, at a fixed SFT budget and fixed seeds.

    python scripts/pretrain_curve.py --quick                 # CPU-sized: ~10 minutes on 2 cores
    python scripts/pretrain_curve.py --work runs/curve       # the demo-sized market (200 stocks, 2018-2024)

Set-up (everything point in time):

- the fine-tuning store: a synthetic A-share market (`quantlm.data.synth`, seed 0); SFT trains on
  targets known by `train_end` and picks its best step on the last `valid_sessions` before it;
- the pretraining store: the fine-tuning market's bars up to the pretraining cap, plus `--extra-markets`
  other synthetic markets generated with other seeds (1, 2, ...) and the same mechanisms, their symbols
  suffixed `~m<seed>` so they never meet the fine-tuning symbols; every source is cut at the same cap:
  `valid_sessions` + label horizon sessions before `train_end` (what `quantlm run` uses), so no
  pretraining bar reaches SFT's validation block (`finetune.common.split_rows` checks it again);
- points: from scratch (SFT from a random trunk of the same shape), and pretraining for
  m x `--base-steps` steps for every m in `--multipliers` (default 1, 4, 16); tokens = steps x
  batch x (1 + 2 x window_bars). The same pretraining seed for every point;
- per point and SFT seed: `valid` = SFT's best validation RankIC (the step is picked on it, so it is
  optimistic), `test` = the RankIC of that model on the `--test-sessions` sessions after `train_end`
  (never looked at by training or selection), mean daily Spearman against the next-day open-to-open
  return (`features.labels.evaluation_labels`, fill open).

Prints one table (mean +- std over SFT seeds) and writes `curve.json` into the work folder. Finished
pretraining and SFT runs in the work folder are reused, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

QUICK = {"n_symbols": 80, "start": "2018-01-02", "end": "2021-06-30", "train_end": "2020-12-31",
         "model": {"size": "mini", "n_layer": 2, "hidden": 64, "n_head": 4, "ffn": 128, "max_bars": 32},
         "window_bars": 32, "batch_size": 16, "base_steps": 40, "sft_steps": 80, "sft_batch": 8,
         "valid_sessions": 60, "eval_every": 10, "extra_markets": 3, "seeds": [0, 1, 2], "test_sessions": 120,
         "tokenizer": {"n_coarse": 64, "n_fine": 64}}
FULL = {"n_symbols": 200, "start": "2018-01-02", "end": "2024-12-31", "train_end": "2020-12-31",
        "model": {"size": "mini", "max_bars": 64}, "window_bars": 64, "batch_size": 16, "base_steps": 200,
        "sft_steps": 300, "sft_batch": 16, "valid_sessions": 240, "eval_every": 50, "extra_markets": 15,
        "seeds": [0, 1, 2], "test_sessions": 250, "tokenizer": {"n_coarse": 256, "n_fine": 256}}


def synth_store(path: Path, n_symbols: int, start: str, end: str, seed: int):
    """A store holding the synthetic market of `seed` (created once)."""
    from quantlm.data.store import Store
    from quantlm.data.synth import SynthConfig, write_market

    store = Store(path)
    if not (path / "done").exists():
        write_market(store, SynthConfig(n_symbols=n_symbols, start=start, end=end, seed=seed))
        (path / "done").write_text("ok")
    return store


def pretraining_store(work: Path, p: dict, cap: pd.Timestamp, main) -> tuple[object, int]:
    """The pretraining corpus: the main market up to `cap` plus the extra markets (symbols suffixed); (store, bars)."""
    from quantlm.data.store import Store
    from quantlm.data.synth import SynthConfig, generate_market

    path = work / f"pretrain_store_x{p['extra_markets']}"
    store = Store(path)
    if not (path / "done").exists():
        frames = [main.bars(freq="1d", end=cap)]
        for seed in range(1, p["extra_markets"] + 1):
            bars = generate_market(SynthConfig(n_symbols=p["n_symbols"], start=p["start"], end=p["end"], seed=seed)).bars
            bars = bars[pd.DatetimeIndex(bars["ts"]) <= cap]
            frames.append(bars.assign(symbol=bars["symbol"].astype(str) + f"~m{seed}"))
        store.write_bars(pd.concat(frames, ignore_index=True), market="cn", freq="1d")
        (path / "done").write_text("ok")
    return store, len(store.bars(freq="1d"))


def pretrain_cap(main, train_end: pd.Timestamp, valid_sessions: int, horizon: int) -> pd.Timestamp:
    """The last session pretraining may read: valid_sessions + horizon sessions before train_end."""
    cal = main.calendar("1d", market="cn")
    i = int(cal.searchsorted(train_end, side="right")) - 1 - (valid_sessions + horizon)
    if i < 0:
        raise SystemExit(f"train_end {train_end.date()} leaves no session for pretraining")
    return pd.Timestamp(cal[i])


def run_pretrain(work: Path, p: dict, store, steps: int, cap: pd.Timestamp) -> Path:
    from quantlm.train.config import parse_config
    from quantlm.train.loop import pretrain

    run = work / f"pretrain_{steps}"
    if (run / "model" / "config.json").exists():
        return run / "model"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    cfg = parse_config({
        "seed": 0, "model": p["model"], "tokenizer": p["tokenizer"],
        "data": {"sources": [{"freq": "1d", "market": "cn"}], "end": str(cap.date()), "valid_fraction": 0.1,
                 "window_bars": p["window_bars"]},
        "train": {"max_steps": steps, "batch_size": p["batch_size"], "lr": 1e-3, "min_lr": 1e-4,
                  "warmup_steps": max(1, min(20, steps // 10)), "log_every": max(1, steps // 5), "eval_every": 0,
                  "eval_batches": 2, "checkpoint_every": 0},
    }, "pretrain_curve")
    pretrain(cfg, store=store.root, out=run, progress=False)
    return run / "model"


def run_sft(work: Path, p: dict, main, init: Path, name: str, seed: int, from_scratch: bool) -> dict:
    from quantlm.finetune import SFTConfig, train_sft
    from quantlm.finetune.config import parse_section

    out = work / f"sft_{name}_s{seed}"
    if (out / "metrics.json").exists() and (out / "model").exists():
        return json.loads((out / "metrics.json").read_text())
    if out.exists():
        import shutil

        shutil.rmtree(out)
    cfg = parse_section(SFTConfig, {"steps": p["sft_steps"], "batch_size": p["sft_batch"], "window_bars": p["window_bars"],
                                    "warm": 8, "valid_sessions": p["valid_sessions"], "eval_every": p["eval_every"],
                                    "text": False, "from_scratch": from_scratch, "warmup_steps": 5}, "pretrain_curve")
    train_sft(cfg, main, out, init=init, train_end=pd.Timestamp(p["train_end"]), seed=seed, progress=False)
    return json.loads((out / "metrics.json").read_text())


def test_rank_ic(model_dir: Path, main, start: pd.Timestamp, end: pd.Timestamp) -> float:
    """Mean daily Spearman of the model's scores on [start, end] against the next-day open-to-open return."""
    from quantlm.baselines.stack import mean_rank_ic
    from quantlm.features.labels import evaluation_labels
    from quantlm.finetune import score_model

    scores = score_model(model_dir, main, str(start.date()), str(end.date()))
    labels = evaluation_labels(main.bars(freq="1d"), "open")
    return mean_rank_ic(scores, labels)


def mean_std(values: list[float]) -> tuple[float, float]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return math.nan, math.nan
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized run (80 stocks, tiny model, 3 SFT seeds)")
    parser.add_argument("--work", type=Path, default=Path("runs/pretrain_curve"))
    parser.add_argument("--multipliers", default="1,4,16", help="pretraining steps = m x base steps")
    parser.add_argument("--base-steps", type=int, default=None)
    parser.add_argument("--extra-markets", type=int, default=None, help="other synthetic markets in the corpus")
    parser.add_argument("--seeds", default=None, help="SFT seeds, comma separated")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    p = dict(QUICK if args.quick else FULL)
    if args.base_steps:
        p["base_steps"] = args.base_steps
    if args.extra_markets is not None:
        p["extra_markets"] = args.extra_markets
    if args.seeds:
        p["seeds"] = [int(s) for s in args.seeds.split(",")]
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    from quantlm.features.targets import TargetConfig

    main_store = synth_store(work / "store", p["n_symbols"], p["start"], p["end"], seed=0)
    train_end = pd.Timestamp(p["train_end"])
    horizon = max(TargetConfig().horizons)
    cap = pretrain_cap(main_store, train_end, p["valid_sessions"], horizon)
    corpus, n_bars = pretraining_store(work, p, cap, main_store)
    cal = main_store.calendar("1d", market="cn")
    after = cal[cal > train_end]
    test_start, test_end = after[0], after[min(p["test_sessions"], len(after)) - 1]
    print(f"pretraining corpus: {1 + p['extra_markets']} market(s), {n_bars:,} bars up to {cap.date()}; "
          f"SFT train_end {train_end.date()}, test {test_start.date()}..{test_end.date()} "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)

    seq = 1 + 2 * p["window_bars"]
    multipliers = [int(m) for m in args.multipliers.split(",")]
    points: list[tuple[str, int, Path | None]] = [("scratch", 0, None)]
    for m in multipliers:
        points.append((f"{m}x", m * p["base_steps"], None))
    rows = []
    init_for_scratch = None
    for name, steps, _ in points:
        if steps:
            init = run_pretrain(work, p, corpus, steps, cap)
            init_for_scratch = init_for_scratch or init
        else:
            init = run_pretrain(work, p, corpus, multipliers[0] * p["base_steps"], cap)  # its shape and tokenizer
            init_for_scratch = init
        valid, test = [], []
        for seed in p["seeds"]:
            m = run_sft(work, p, main_store, init, name, seed, from_scratch=steps == 0)
            valid.append(m.get("valid_rank_ic"))
            test.append(test_rank_ic(work / f"sft_{name}_s{seed}" / "model", main_store, test_start, test_end))
        tokens = steps * p["batch_size"] * seq
        rows.append({"point": name, "pretrain_steps": steps, "pretrain_tokens": tokens, "valid": valid, "test": test,
                     "valid_mean_std": mean_std(valid), "test_mean_std": mean_std(test)})
        print(f"  {name}: done ({time.perf_counter() - t0:.0f}s)", flush=True)

    print(f"\n{'point':<8} {'pretrain steps':>14} {'tokens':>11} {'valid RankIC (best step)':>26} {'test RankIC':>18}")
    for r in rows:
        (vm, vs), (tm, ts) = r["valid_mean_std"], r["test_mean_std"]
        print(f"{r['point']:<8} {r['pretrain_steps']:>14,} {r['pretrain_tokens']:>11,} {vm:>+17.4f} ± {vs:.4f} "
              f"{tm:>+9.4f} ± {ts:.4f}")
    print(f"(mean ± std over SFT seeds {p['seeds']}; corpus {n_bars:,} bars from {1 + p['extra_markets']} markets; "
          f"{time.perf_counter() - t0:.0f}s)")
    (work / "curve.json").write_text(json.dumps({"params": {k: v for k, v in p.items()}, "cap": str(cap.date()),
                                                 "corpus_bars": n_bars, "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
