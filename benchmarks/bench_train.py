"""Training throughput of the REAL pretraining loop vs a plain Hugging Face loop: tokens/s and MFU.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_train.py --quick            # CPU, mini, < 1 min
    .venv/bin/python benchmarks/bench_train.py --device cuda --compile              # one H100 / H200

For each size (`small`, `base`; `--sizes`), in the same run:
- quantlm: `quantlm.train.core.Trainer` on a `MarketGPT` with the pretraining loss
  (`quantlm.train.loop.next_token_loss`), fed by the prefetching loader (`Prefetcher`: background
  thread, pinned memory, non_blocking copies, int8 calendar ids) from real tokenized windows
  (`quantlm.train.datasets.build_data` on a synthetic market written to a temporary store);
  bf16 autocast, SDPA, fused AdamW on CUDA (fp32 on CPU), `--compile` = torch.compile after the wrap.
- plain: `transformers.LlamaForCausalLM` of the same shape (`model.lm.config`), the same windows'
  token ids, a textbook loop (`model(input_ids, labels=input_ids).loss`, backward, clip, AdamW step),
  the same precision / SDPA / fused AdamW / `--compile`.

Both train `--steps` timed steps after as many warm-up steps (compilation happens there). Tokens per
step = batch x (seq - 1) predicted tokens; FLOPs per token = 6 N + 12 n_layer hidden L (N = matmul
weights incl. the output head, L = forward length; nanoGPT / PaLM convention). Peak: `--peak-tflops`,
else 989 TFLOP/s dense bf16 for H100 / H200, else `--cpu-peak-gflops` per thread on CPU.
Targets on one H100 / H200: small >= 1.8x the plain loop's tokens/s; base >= 45% MFU.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

HOPPER_BF16_PEAK = 989e12


def flops_per_token(n_layer: int, hidden: int, n_matmul_params: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) at forward length seq_len."""
    return 6.0 * n_matmul_params + 12.0 * n_layer * hidden * seq_len


def make_windows(root: Path, bars: int, symbols: int, years: int):
    """TokenWindows over a synthetic market: the real store -> tokenizer -> window path."""
    from quantlm.data.store import Store
    from quantlm.data.synth import SynthConfig, write_market
    from quantlm.train.config import DataConfig
    from quantlm.train.datasets import build_data

    store = Store(root / "store")
    end = 2018 + years - 1
    write_market(store, SynthConfig(n_symbols=symbols, start="2018-01-02", end=f"{end}-12-31"))
    data = DataConfig(window_bars=bars, valid_fraction=0.1)
    tok, windows, _ = build_data(store, data, {}, seed=0)
    return tok, windows


def peak_flops(device: str, args) -> float:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if device == "cuda":
        name = torch.cuda.get_device_name()
        if "H100" in name or "H200" in name:
            return HOPPER_BF16_PEAK
        raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops")
    return args.cpu_peak_gflops * 1e9 * torch.get_num_threads()


def run_quantlm(size: str, tok, windows, device: str, batch: int, bars: int, steps: int, compile_: bool,
                run_dir: Path) -> float:
    """Seconds per optimizer step of the core loop, over the `steps` steps after `steps` warm-up steps."""
    from quantlm.model.build import model_for_tokenizer
    from quantlm.train.core import Trainer, TrainStage
    from quantlm.train.loop import next_token_loss
    from quantlm.train.optim import OptimConfig

    model = model_for_tokenizer(size, tok, seed=0, max_bars=bars)
    oc = OptimConfig(max_steps=2 * steps, lr=3e-4, min_lr=3e-5, warmup_steps=0,
                     mixed_precision="bf16" if device == "cuda" else "no", compile=compile_)
    stage = TrainStage("bench", model, lambda m, b, s: (next_token_loss(m, b)[0], {}),
                       lambda i: windows.train_batch(i, batch), oc, log_every=steps, checkpoint_at_end=False,
                       tokens_per_batch=batch * 2 * bars, prefetch_depth=4)
    trainer = Trainer(stage, run_dir)
    trainer.fit()
    trainer.close()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return batch * 2 * bars / rows[-1]["tokens_per_s"]  # the second window: steps+1 .. 2 steps


def run_plain(size: str, tok, windows, device: str, batch: int, bars: int, steps: int, compile_: bool) -> float:
    """Seconds per step of a plain HF LlamaForCausalLM loop of the same shape on the same windows."""
    from contextlib import nullcontext

    from transformers import LlamaForCausalLM

    from quantlm.model.build import model_for_tokenizer

    config = model_for_tokenizer(size, tok, seed=0, max_bars=bars).lm.config
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device)
    model.train()
    if compile_:
        model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device == "cuda")

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
    t0 = 0.0
    for i in range(2 * steps):
        if i == steps:
            sync()
            t0 = time.perf_counter()
        ids = windows.train_batch(i, batch)["input_ids"].to(device)
        with amp:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    return (time.perf_counter() - t0) / steps


def bench_size(size: str, tok, windows, args, peak: float, work: Path) -> dict:
    from quantlm.model.build import model_for_tokenizer

    bars = (args.seq - 1) // 2
    ref = model_for_tokenizer(size, tok, seed=0, max_bars=bars)
    n_matmul = ref.num_params(non_embedding=True) + ref.lm.lm_head.weight.numel()
    tokens = args.batch * 2 * bars  # predicted tokens per step
    out = {"size": size, "params": ref.num_params(non_embedding=False), "tokens_per_step": tokens}
    n_layer, hidden = ref.size.n_layer, ref.size.hidden
    del ref
    for name in ("plain", "quantlm"):
        if name == "plain":
            dt = run_plain(size, tok, windows, args.device, args.batch, bars, args.steps, args.compile)
            fwd_len = 2 * bars + 1
        else:
            run_dir = work / f"run-{size}"
            shutil.rmtree(run_dir, ignore_errors=True)
            dt = run_quantlm(size, tok, windows, args.device, args.batch, bars, args.steps, args.compile, run_dir)
            fwd_len = 2 * bars
        fpt = flops_per_token(n_layer, hidden, n_matmul, fwd_len)
        out[name] = {"s_per_step": dt, "tokens_per_s": tokens / dt, "mfu": tokens / dt * fpt / peak}
        if args.device == "cuda":
            torch.cuda.empty_cache()
    out["ratio"] = out["quantlm"]["tokens_per_s"] / out["plain"]["tokens_per_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", default=None, help="comma-separated model sizes (default small,base; mini with --quick)")
    ap.add_argument("--batch", type=int, default=64, help="windows per step")
    ap.add_argument("--seq", type=int, default=513, help="tokens per window (1 + 2 x bars)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (after as many warm-up steps)")
    ap.add_argument("--compile", action="store_true", help="torch.compile both loops")
    ap.add_argument("--symbols", type=int, default=100, help="synthetic market size for the windows")
    ap.add_argument("--years", type=int, default=6)
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: mini, batch 4, seq 65, 5 steps, small market")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--cpu-peak-gflops", type=float, default=80.0, help="assumed fp32 peak per CPU thread")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.seq, args.steps, args.symbols, args.years = 4, 65, 5, 12, 2
        args.sizes = args.sizes or "mini"
    args.sizes = args.sizes or "small,base"
    if args.device == "cpu":
        args.compile = False
    bars = (args.seq - 1) // 2
    if args.seq != 1 + 2 * bars or bars % 4:
        print(f"note: seq {args.seq} -> {1 + 2 * bars} tokens; the forward length 2 x bars = {2 * bars} is a "
              f"multiple of 8 only when bars is a multiple of 4")
    peak = peak_flops(args.device, args)
    work = Path(tempfile.mkdtemp(prefix="bench_train-"))
    try:
        t0 = time.perf_counter()
        tok, windows = make_windows(work, bars, args.symbols, args.years)
        print(f"torch {torch.__version__}, device {args.device}"
              f"{' (' + torch.cuda.get_device_name() + ')' if args.device == 'cuda' else ''}, "
              f"peak {peak / 1e12:.2f} TFLOP/s, batch {args.batch} x {1 + 2 * bars} tokens, {args.steps} timed steps, "
              f"compile {args.compile}; windows: {windows.n_windows()['train']:,} from {args.symbols} symbols "
              f"({time.perf_counter() - t0:.0f} s to build)")
        results = [bench_size(s, tok, windows, args, peak, work) for s in args.sizes.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'size':<6} {'params':>8} {'loop':<8} {'s/step':>9} {'tokens/s':>12} {'MFU':>7}")
    for r in results:
        for name in ("plain", "quantlm"):
            x = r[name]
            print(f"{r['size']:<6} {r['params'] / 1e6:>7.1f}M {name:<8} {x['s_per_step']:>9.4f} "
                  f"{x['tokens_per_s']:>12,.0f} {100 * x['mfu']:>6.2f}%")
    for r in results:
        goal = {"small": "target >= 1.8x", "base": "target MFU >= 45%"}.get(r["size"], "")
        where = " on one H100 / H200" if args.device == "cpu" and goal else ""
        print(f"{r['size']}: quantlm / plain tokens/s = {r['ratio']:.2f}x, quantlm MFU {100 * r['quantlm']['mfu']:.1f}%"
              + (f"  ({goal}{where})" if goal else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    assert all(math.isfinite(r["ratio"]) for r in results)


if __name__ == "__main__":
    main()
