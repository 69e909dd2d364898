"""Inference speed of the market GPT: sampled bars/s with and without the KV cache, streaming latency.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_infer.py [--threads 1]

1. Forecaster.forecast on `mini` (random weights: speed does not depend on training), S symbols x
   K samples x H bars from a context of C bars, use_cache=True vs False (full recomputation per
   token, as Kronos did), in the same run; figure: generated bars/s and the speed-up.
2. StreamingForecaster: 300 symbols, `mini` (context 256 bars), one update = one new bar per symbol
   (a [300, 2] forward pass against the batched cache). Latency p50/p99 over N updates on one CPU
   thread (target p50 < 5 ms), for the model update alone (append_ids) and for append(bars), which
   also re-tokenizes each symbol's bar tail (the tokenizer has no incremental encoder yet).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def random_walk_bars(n_symbols: int, n_bars: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.bdate_range("2015-01-01", periods=n_bars)
    frames = []
    for i in range(n_symbols):
        close = 10 * np.exp(np.cumsum(rng.normal(0, 0.02, n_bars)))
        open_ = close * np.exp(rng.normal(0, 0.005, n_bars))
        high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n_bars))
        low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n_bars))
        vol = rng.integers(1_000, 100_000, n_bars).astype(float) * 100
        frames.append(pd.DataFrame({"symbol": f"S{i:04d}", "ts": ts, "open": open_, "high": high, "low": low,
                                    "close": close, "volume": vol, "amount": vol * close, "adj_factor": np.nan}))
    return pd.concat(frames, ignore_index=True)


def make_model_dir(d: Path, bars: pd.DataFrame, max_bars: int) -> Path:
    from quantlm.model.build import model_for_tokenizer
    from quantlm.tokenize import KlineTokenizer

    tok = KlineTokenizer().fit(bars, end=bars["ts"].max())
    model_for_tokenizer("mini", tok, seed=0, max_bars=max_bars).save(d)
    tok.save(d / "tokenizer")
    return d


def pct(x: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(x) * 1e3, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--symbols", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--context", type=int, default=128, help="history bars per symbol for the forecast benchmark")
    ap.add_argument("--stream-symbols", type=int, default=300)
    ap.add_argument("--updates", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from quantlm.predict import Forecaster

    with tempfile.TemporaryDirectory() as tmp:
        bars = random_walk_bars(max(args.symbols, args.stream_symbols), 400)
        d = make_model_dir(Path(tmp) / "m", bars, max_bars=256)
        fc = Forecaster(d, device="cpu")
        print(f"torch {torch.__version__}, {args.threads} CPU thread(s); mini: "
              f"{fc.model.num_params(False) / 1e6:.2f}M params, context {fc.model.max_bars} bars")

        # 1. KV cache vs full recomputation -------------------------------------------------
        hist = bars[bars["symbol"].isin(bars["symbol"].unique()[: args.symbols])]
        hist = hist.groupby("symbol").tail(args.context)
        n_bars = args.symbols * args.samples * args.horizon
        res, paths = {}, {}
        fc.forecast(hist, 2, 2, seed=0)  # warm-up
        for use_cache in (True, False):
            t0 = time.perf_counter()
            paths[use_cache] = fc.forecast(hist, args.horizon, args.samples, seed=0, use_cache=use_cache).samples
            res[use_cache] = time.perf_counter() - t0
        same = np.allclose(paths[True], paths[False])
        print(f"\n== forecast: {args.symbols} symbols x {args.samples} samples x {args.horizon} bars, "
              f"context {args.context} bars ({n_bars} bars = {2 * n_bars} tokens sampled)")
        print(f"without KV cache (full recompute) {n_bars / res[False]:>10,.0f} bars/s   ({res[False]:.3f} s)")
        print(f"with KV cache                     {n_bars / res[True]:>10,.0f} bars/s   ({res[True]:.3f} s)"
              f"   speed-up {res[False] / res[True]:.1f}x   same paths: {same}")

        # 2. Streaming latency ---------------------------------------------------------------
        stream(fc, bars, args.stream_symbols, args.updates, with_bars=True)
        fc64 = Forecaster(make_model_dir(Path(tmp) / "m64", bars, max_bars=64), device="cpu")
        stream(fc64, bars, args.stream_symbols, args.updates, with_bars=False)


def stream(fc, bars: pd.DataFrame, n_symbols: int, updates: int, with_bars: bool) -> None:
    """Latency of StreamingForecaster updates for n_symbols (history: all but the last updates + 5 dates)."""
    from quantlm.predict import StreamingForecaster

    syms = bars["symbol"].unique()[:n_symbols]
    sb = bars[bars["symbol"].isin(syms)]
    dates = np.sort(sb["ts"].unique())
    n_hist = len(dates) - updates - 5
    sf = StreamingForecaster(fc)
    sf.start(sb[sb["ts"] < dates[n_hist]])
    enc = fc.tok.encode(sb)
    lat, lat_bars = [], []
    for u in range(updates):
        i = n_hist + u
        ids = np.stack([enc[s][i] for s in sf.symbols])
        cal = fc.tok.calendar_ids(pd.DatetimeIndex(np.full(len(syms), dates[i])))
        t0 = time.perf_counter()
        sf.append_ids(ids, cal)
        lat.append(time.perf_counter() - t0)
    kv_mb = len(syms) * fc.model.size.n_layer * 2 * fc.model.size.hidden * sf.max_tokens * 4 / 1e6
    print(f"\n== streaming: {len(syms)} symbols, mini with a {fc.model.max_bars}-bar context (static cache of "
          f"{sf.max_tokens} tokens/row = {kv_mb:.0f} MB fp32 read per update), re-encode to {sf.W} bars at the "
          f"limit ({sf.n_reencodes} re-encodes in {updates} updates)")
    steady = [x for x in lat if x < 5 * np.median(lat)]
    print(f"append_ids (model update)  p50 {pct(lat, 50):7.2f} ms   p99 {pct(lat, 99):7.2f} ms   "
          f"max {pct(lat, 100):7.2f} ms (re-encode)   p99 without re-encodes {pct(steady, 99):7.2f} ms"
          "   (target p50 < 5 ms)")
    if not with_bars:
        return
    sf2 = StreamingForecaster(fc, tokenize_history=256)
    sf2.start(sb[sb["ts"] < dates[n_hist]])
    for u in range(min(20, updates)):
        new = sb[sb["ts"] == dates[n_hist + u]]
        t0 = time.perf_counter()
        sf2.append(new)
        lat_bars.append(time.perf_counter() - t0)
    print(f"append(bars) incl. re-tokenizing 256-bar tails  p50 {pct(lat_bars, 50):7.2f} ms   "
          f"p99 {pct(lat_bars, 99):7.2f} ms   ({len(lat_bars)} updates)")


if __name__ == "__main__":
    main()
