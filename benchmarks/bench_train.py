"""Training throughput of the market GPT: tokens/s and model-FLOPs utilisation (MFU), vs a plain baseline.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train.py [--threads 1] [--steps 10]

CPU (always): `mini` MarketGPT (calendar embeddings on, SDPA) beside a plain
transformers.LlamaForCausalLM of the same shape trained in the same run, plus the FPA regulariser's
overhead (eager attention + probability hooks) vs FPA off. GPU (when CUDA is available): `small`
and `base`, bf16 autocast, torch.compile, fused AdamW, batch 64 x 513 tokens, beside the plain
Llama baseline compiled the same way; targets: small >= 2.5M tokens/s, base >= 45% MFU on one H100.

FLOPs per token = 6 N + 12 n_layer hidden T (N = weights in matmuls incl. the output head; the
second term is attention scores and values, nanoGPT/PaLM convention). Peak FLOP/s assumed:
CPU: --cpu-peak-gflops per thread (default 80 GFLOP/s: 2.5 GHz x 2 AVX2 FMA units x 8 fp32 lanes x 2);
H100 SXM: 989 TFLOP/s dense bf16.
"""

from __future__ import annotations

import argparse
import time

import torch

H100_BF16_PEAK = 989e12


def flops_per_token(n_layer: int, hidden: int, n_matmul_params: int, seq_len: int) -> float:
    return 6.0 * n_matmul_params + 12.0 * n_layer * hidden * seq_len


def time_interleaved(step_fns: dict, steps: int, warmup: int, sync) -> dict[str, float]:
    """Median seconds per step of each candidate; candidates alternate step by step, so a busy shared
    machine slows them alike and the ratios stay fair."""
    for _ in range(warmup):
        for fn in step_fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in step_fns}
    for _ in range(steps):
        for k, fn in step_fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def make_step(model, ids, cal, opt, autocast, loss_fn):
    def step():
        with autocast():
            loss = loss_fn(model, ids, cal)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def market_loss(fpa=None):
    from quantlm.model.build import lm_loss

    def f(model, ids, cal):
        loss = lm_loss(model(ids, cal).logits, ids)[0]
        p = fpa.penalty(0) if fpa is not None else None
        return loss if p is None else loss + p
    return f


def plain_loss(model, ids, cal):
    return model(input_ids=ids, labels=ids).loss


def bench(size: str, device: str, batch: int, n_bars: int, steps: int, warmup: int, dtype, compile_: bool,
          peak: float, variants=("quantlm", "plain_llama"), fpa_lambda: float = 0.01) -> dict:
    """Train steps of each variant on the same random batch: quantlm (MarketGPT), plain_llama
    (transformers LlamaForCausalLM, same config), quantlm_fpa (MarketGPT with FPA on)."""
    from contextlib import nullcontext

    from transformers import LlamaForCausalLM

    from quantlm.model.build import build_model
    from quantlm.model.fpa import FPA

    vocab = 528  # 16 special + 256 coarse + 256 fine, the default KlineTokenizer
    seq = 1 + 2 * n_bars
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(16, vocab, (batch, seq), generator=g).to(device)
    cal = torch.randint(0, 5, (batch, seq, 2), generator=g).to(device)

    def autocast():
        return torch.autocast(device, dtype=dtype) if dtype is not None else nullcontext()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    fns, ref = {}, None
    for name in variants:
        model = build_model(size, vocab, seed=0, max_bars=n_bars).to(device)
        ref = ref or model
        if name == "plain_llama":
            m, loss_fn = LlamaForCausalLM(model.lm.config).to(device), plain_loss
        elif name == "quantlm_fpa":
            m, loss_fn = model, market_loss(FPA(model, fpa_lambda))
        else:
            m, loss_fn = model, market_loss()
        m.train()
        if compile_:
            m.compile()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=device == "cuda")
        fns[name] = make_step(m, ids, cal, opt, autocast, loss_fn)
    n_matmul = ref.num_params(non_embedding=True) + ref.lm.lm_head.weight.numel()
    fpt = flops_per_token(ref.size.n_layer, ref.size.hidden, n_matmul, seq)
    results = {"params": ref.num_params(non_embedding=False), "flops_per_token": fpt}
    for name, dt in time_interleaved(fns, steps, warmup, sync).items():
        tps = batch * seq / dt
        results[name] = {"s_per_step": dt, "tokens_per_s": tps, "mfu": tps * fpt / peak}
    return results


def row(label: str, r: dict, base: dict | None = None) -> str:
    s = f"{label:<42} {r['tokens_per_s']:>12,.0f} tok/s   MFU {100 * r['mfu']:6.2f}%"
    if base is not None:
        s += f"   ratio vs baseline {r['tokens_per_s'] / base['tokens_per_s']:.2f}x"
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--bars", type=int, default=64, help="window length in bars (tokens = 1 + 2 bars)")
    ap.add_argument("--cpu-peak-gflops", type=float, default=80.0, help="assumed CPU peak per thread, GFLOP/s fp32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu_peak = args.cpu_peak_gflops * 1e9 * args.threads
    print(f"torch {torch.__version__}; CPU threads {args.threads}; assumed CPU peak {cpu_peak / 1e9:.0f} GFLOP/s fp32; "
          f"H100 peak {H100_BF16_PEAK / 1e12:.0f} TFLOP/s bf16 dense")
    print(f"\n== CPU, mini, batch {args.batch} x {1 + 2 * args.bars} tokens, fp32, AdamW, median of {args.steps} steps")
    r = bench("mini", "cpu", args.batch, args.bars, args.steps, 3, None, False, cpu_peak,
              variants=("quantlm", "plain_llama", "quantlm_fpa"))
    print(f"params {r['params'] / 1e6:.2f}M, {r['flops_per_token'] / 1e6:.1f} MFLOP/token")
    print(row("plain transformers LlamaForCausalLM (baseline)", r["plain_llama"]))
    print(row("quantlm MarketGPT mini (SDPA)", r["quantlm"], r["plain_llama"]))
    print(row("quantlm MarketGPT mini, FPA on (eager + hooks)", r["quantlm_fpa"], r["plain_llama"]))
    print(f"FPA overhead: {100 * (r['quantlm']['tokens_per_s'] / r['quantlm_fpa']['tokens_per_s'] - 1):.1f}% "
          "more time per step than FPA off")

    if not torch.cuda.is_available():
        print("\n== GPU: skipped (CUDA not available). Targets on one H100: small >= 2.5M tok/s, base >= 45% MFU.")
        return
    print(f"\n== GPU ({torch.cuda.get_device_name()}), bf16 autocast, torch.compile, fused AdamW, batch 64 x 513")
    torch.backends.cuda.matmul.allow_tf32 = True
    for size, target in (("small", "target >= 2.5M tok/s"), ("base", "target >= 45% MFU")):
        g = bench(size, "cuda", 64, 256, 20, 5, torch.bfloat16, True, H100_BF16_PEAK)
        print(f"{size}: params {g['params'] / 1e6:.1f}M ({target})")
        print(row(f"  plain LlamaForCausalLM {size} (baseline)", g["plain_llama"]))
        print(row(f"  quantlm MarketGPT {size}", g["quantlm"], g["plain_llama"]))
    g = bench("small", "cuda", 64, 256, 10, 3, torch.bfloat16, False, H100_BF16_PEAK, variants=("quantlm", "quantlm_fpa"))
    print(row("  MarketGPT small, FPA off (no compile)", g["quantlm"]))
    print(row("  MarketGPT small, FPA on (eager, no compile)", g["quantlm_fpa"], g["quantlm"]))


if __name__ == "__main__":
    main()
