"""Live scoring latency: teacher trader vs distilled students, one new bar for each of 300 symbols.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_student.py [--symbols 300] [--updates 50] [--d-text 384]

A synthetic store (`quantlm.data.synth`, `--symbols` stocks) and freshly built models (random
weights: speed does not depend on training), sharing one fitted tokenizer:

- teacher: TraderModel on a `mini` trunk (4 layers, hidden 128), window 64 bars;
- student "mlp" (the `DistillConfig` default): StudentMLP over the last 32 bars;
- student "gpt": TraderModel on a 2-layer, hidden-64 trunk, window 32 bars.

`--d-text` is the text embedding size fed to all three (384 = the store's sentence embeddings, as
in SFT with text: true; 0 = no text inputs). One update = incremental features and tokens of the
new bar from a causal state + one batched forward pass (`quantlm.finetune.latency`); p50 / p99 in
ms over `--updates` updates on `--threads` CPU threads (target: student p50 < 5 ms, 1 thread).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def build_models(root: Path, store, d_text: int) -> dict[str, Path]:
    """Teacher, mlp and gpt student folders (random weights) under root."""
    from quantlm.finetune.data import market_bars
    from quantlm.finetune.distill import DistillConfig, build_student
    from quantlm.finetune.model import TraderModel, TraderSpec
    from quantlm.model.build import model_for_tokenizer
    from quantlm.tokenize import KlineTokenizer

    bars, _ = market_bars(store)
    tok = KlineTokenizer().fit(bars, end=bars["ts"].max())
    teacher = TraderModel(model_for_tokenizer("mini", tok, seed=0, max_bars=64), TraderSpec(d_text=d_text, window_bars=64))
    out = {"teacher": teacher.save(root / "teacher", tokenizer=tok)}
    for kind in ("mlp", "gpt"):
        student = build_student(DistillConfig(student=kind), teacher, train_end=None)
        out[f"student {kind}"] = student.save(root / kind, tokenizer=tok)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=300)
    ap.add_argument("--updates", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--d-text", type=int, default=384)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from quantlm.data.store import Store
    from quantlm.data.synth import SynthConfig, write_market
    from quantlm.finetune.latency import measure_latency

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store")
        write_market(store, SynthConfig(n_symbols=args.symbols, start="2023-01-02", end="2024-03-31", news=False))
        models = build_models(Path(tmp), store, args.d_text)
        print(f"torch {torch.__version__}, {args.threads} CPU thread(s), {args.symbols} symbols, "
              f"{args.updates} updates (+{args.warmup} warm-up), text inputs d={args.d_text}")
        print(f"{'model':<12} {'params':>10} {'context':>8} {'p50 ms':>9} {'p99 ms':>9} {'features ms':>12} {'vs teacher':>11}")
        res = {}
        for name, d in models.items():
            r = res[name] = measure_latency(d, store, args.symbols, args.updates, args.warmup, threads=args.threads)
            ratio = res["teacher"]["p50"] / r["p50"]
            print(f"{name:<12} {r['params']:>10,} {r['context_bars']:>8} {r['p50']:>9.2f} {r['p99']:>9.2f} "
                  f"{r['features_p50']:>12.3f} {ratio:>10.1f}x")
        s = res["student mlp"]
        print(f"\nstudent mlp p50 {s['p50']:.2f} ms vs target 5 ms: {'met' if s['p50'] < 5 else 'NOT met'}; "
              f"teacher / student p50 = {res['teacher']['p50'] / s['p50']:.0f}x, "
              f"p99 = {res['teacher']['p99'] / s['p99']:.0f}x")


if __name__ == "__main__":
    main()
