"""Benchmark the K-line tokenizer: encode throughput vs a pandas baseline, and held-out reconstruction.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tokenize.py [--quick]

Data: simulated bars (quantlm.tokenize.simulate: GARCH-t returns, gaps, shadows, volume), 300
symbols x 10 years of daily bars and 50 symbols x 1 year of China A-share 1-minute bars (240 a day).
The tokenizer is fitted on the first 70% of the period; reconstruction is measured on the rest.
Baseline, measured in the same run: the same features written plainly with pandas
(groupby().shift, groupby().ewm(adjust=False)) and np.digitize, without the variance winsorising
and floor, which `ewm` cannot express (its tokens agree with ours on most bars; printed).
Throughput is the best of `--repeat` runs of `KlineTokenizer.encode(bars)` on a DataFrame (symbol
split included) in CPU seconds of this process: numba kernels are single-threaded, so this is one
core even on a busy shared machine; wall-clock figures are printed beside them.
Reconstruction: teacher-forced (each bar from its true state) and free-running decode(encode(bars))
over windows (20 days / 240 minutes, each from the true state before it) and over the whole
held-out period (scale and price-level errors then compound as random walks).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from quantlm.tokenize import KlineTokenizer
from quantlm.tokenize.evaluate import free_running_errors, teacher_forced_errors
from quantlm.tokenize.simulate import simulate_bars


def pandas_baseline(tok: KlineTokenizer, bars: pd.DataFrame) -> dict[str, np.ndarray]:
    """The same tokens, written the obvious way with pandas groupby / ewm and np.digitize."""
    g = bars.groupby("symbol", sort=False)
    prev_close = g["close"].shift(1).fillna(bars["open"])
    first = g.cumcount() == 0
    r = np.log(bars["close"] / prev_close)
    gap = np.log(bars["open"] / prev_close)
    park = np.log(bars["high"] / bars["low"]) ** 2 / (4 * np.log(2))
    x = r.pow(2).groupby(bars["symbol"], sort=False).shift(1).where(~first, park)
    var = x.groupby(bars["symbol"], sort=False).transform(lambda s: s.ewm(alpha=tok.alpha_var, adjust=False).mean())
    sig = np.sqrt(var)
    lv = np.log1p(bars["volume"])
    y = lv.groupby(bars["symbol"], sort=False).shift(1).where(~first, lv)
    level = y.groupby(bars["symbol"], sort=False).transform(lambda s: s.ewm(alpha=tok.alpha_volume, adjust=False).mean())
    feats = {
        "ret": (r / sig).to_numpy(), "gap": (gap / sig).to_numpy(), "vol": (lv - level).to_numpy(),
        "upper": (np.log(bars["high"] / np.maximum(bars["open"], bars["close"])) / sig).to_numpy(),
        "lower": (np.log(np.minimum(bars["open"], bars["close"]) / bars["low"]) / sig).to_numpy(),
    }
    b = {k: np.digitize(v, tok.edges[k], right=True) for k, v in feats.items()}
    rc, vc, rf, vf, ng, nu, nl = tok.shape
    coarse = tok.coarse_offset + (b["ret"] // rf) * vc + b["vol"] // vf
    sub = (b["ret"] % rf) * vf + b["vol"] % vf
    fine = tok.fine_offset + ((sub * ng + b["gap"]) * nu + b["upper"]) * nl + b["lower"]
    ids = np.stack([coarse, fine], axis=1)
    return {str(s): ids[idx] for s, idx in g.indices.items()}


def best_time(fn, repeat: int) -> tuple[float, float]:
    """Best (CPU seconds of this process, wall seconds) over `repeat` calls.

    CPU time is the figure for "one core": the benchmark machine may be shared, and wall time then
    includes time spent descheduled. Both are printed.
    """
    cpu, wall = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return min(cpu), min(wall)


def run(name: str, bars: pd.DataFrame, repeat: int, free_symbols: int | None, window: int) -> None:
    ts = np.sort(bars["ts"].unique())
    fit_end = pd.Timestamp(ts[int(0.7 * len(ts))])
    t0 = time.perf_counter()
    tok = KlineTokenizer().fit(bars, end=fit_end)
    t_fit = time.perf_counter() - t0
    n = len(bars)
    tok.encode(bars)  # warm-up (numba cache load)
    t_ours, w_ours = best_time(lambda: tok.encode(bars), repeat)
    t_feat, w_feat = best_time(lambda: tok.features(bars), repeat)
    t_base, w_base = best_time(lambda: pandas_baseline(tok, bars), max(1, repeat // 2))
    ours, base = tok.encode(bars), pandas_baseline(tok, bars)
    agree = np.mean(np.concatenate([(ours[s] == base[s]).all(axis=1) for s in ours]))
    print(f"\n== {name}: {bars['symbol'].nunique()} symbols, {n:,} bars, fit on ts <= {fit_end.date()} ({t_fit:.2f} s)")
    print("                       M bars/s (CPU)   ms (CPU)   M bars/s (wall)")
    for label, c, w in (("encode (ours)", t_ours, w_ours), ("features (ours)", t_feat, w_feat),
                        ("pandas + digitize", t_base, w_base)):
        print(f"{label:22s} {n / c / 1e6:12.2f} {c * 1e3:12.0f} {n / w / 1e6:14.2f}")
    print(f"encode speed-up vs baseline: {t_base / t_ours:.1f}x CPU, {w_base / w_ours:.1f}x wall "
          f"(baseline tokens equal to ours on {agree:.1%} of bars)")
    tf = teacher_forced_errors(tok, bars, fit_end)
    fr = free_running_errors(tok, bars, fit_end, max_symbols=free_symbols)
    fw = free_running_errors(tok, bars, fit_end, window=window, max_symbols=free_symbols)
    print(f"held-out reconstruction, MAE / std of log return (std {tf['ret_std']:.5f}, {tf['n_bars']:,} bars):")
    print("                           ret     gap   upper   lower  logvol(MAE, ln units)")
    print(f"teacher-forced        {tf['ret']:7.4f} {tf['gap']:7.4f} {tf['upper']:7.4f} {tf['lower']:7.4f} {tf['logvol']:7.4f}"
          f"   (coarse token only: ret {tf['ret_coarse_only']:.4f})")
    for label, e in ((f"free-running {window:>4d} bars", fw), ("free-running, all", fr)):
        print(f"{label:21s} {e['ret']:7.4f} {e['gap']:7.4f} {e['upper']:7.4f} {e['lower']:7.4f} {e['logvol']:7.4f}"
              f"   ({e['n_bars']:,} bars; mean |log close drift| {e['log_close_drift']:.4f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a tenth of the data")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    k = 10 if args.quick else 1
    daily = simulate_bars(n_symbols=300 // k, n_bars=2520, freq="1d", seed=0, start="2014-01-01")
    run("daily, 10 years", daily, args.repeat, free_symbols=None, window=20)
    del daily
    minute = simulate_bars(n_symbols=50 // k, n_bars=252 * 240, freq="1min", seed=1, start="2023-01-02")
    run("1-minute, 1 year", minute, args.repeat, free_symbols=10, window=240)


if __name__ == "__main__":
    main()
