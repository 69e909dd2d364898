"""Validate the memory model against measured peak memory of tiny HF models on this CPU.

Measurement: `torch.profiler` with `profile_memory=True` records every CPU tensor allocation and
free of the profiled region (c10's CPU allocator, i.e. tensor memory only: no Python objects, no
allocator caching, no RSS noise). The running sum of those events in time order, maximised, is the
peak tensor memory allocated *during* the region; tensors alive before it (weights, Adam moments
after a first step, the KV-free model for inference) are counted by summing their sizes. So:

    training peak  = bytes(weights) + bytes(Adam states) + max over the step of allocated bytes
                     (measured on the 2nd step, gradients set to None before it, as `zero_grad()`)
    inference peak = bytes(weights) + max over one forward with use_cache=True (KV cache + working set)

The estimate compared is the planner's total for the same config (fp32, one CPU, ZeRO 0):
weights + gradients + optimizer + activations, and for inference weights + KV cache + working set.
The training sum is an upper bound by construction (gradients and the forward's activations are
never all alive at once), so its error is positive. Measured on the 3 TINY_CASES (torch 2.13 CPU,
transformers, fp32): training +9.5% .. +14.9%, inference within a few % (see `quantlm plan
--validate`). `TOLERANCE` is the accepted relative error of each total.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantlm.plan.arch import Arch, arch_from_config
from quantlm.plan.memory import PlanConfig, plan_memory

TOLERANCE = 0.25  # |estimate - measured| / measured for the totals


@dataclass(frozen=True)
class TinyCase:
    family: str  # qwen2 | llama
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    seq: int
    batch: int


TINY_CASES = (
    TinyCase("qwen2", 2, 128, 4, 2, 384, 512, 128, 2),
    TinyCase("llama", 3, 96, 4, 4, 256, 384, 192, 2),
    TinyCase("qwen2", 4, 64, 4, 1, 192, 256, 256, 1),
)


def tiny_model(case: TinyCase):
    """A freshly initialised tiny Qwen2 / Llama causal LM (fp32, SDPA attention, no dropout)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    Cfg, Model = (Qwen2Config, Qwen2ForCausalLM) if case.family == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    cfg = Cfg(vocab_size=case.vocab, hidden_size=case.hidden, intermediate_size=case.intermediate,
              num_hidden_layers=case.layers, num_attention_heads=case.heads, num_key_value_heads=case.kv_heads,
              max_position_embeddings=max(512, case.seq), tie_word_embeddings=False, attn_implementation="sdpa")
    return Model(cfg).eval()


def _peak_during(fn) -> int:
    """Peak tensor bytes allocated (net) during fn(), from the profiler's memory events."""
    import warnings

    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    cur = peak = 0
    for _, n in events:
        cur += n
        peak = max(peak, cur)
    return peak


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_case(case: TinyCase) -> dict:
    """Measured and estimated peak bytes of one training step (full, fp32, AdamW) and one forward."""
    import torch

    model = tiny_model(case)
    arch: Arch = arch_from_config(model.config.to_dict(), name=f"tiny-{case.family}")
    x = torch.randint(0, case.vocab, (case.batch, case.seq))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()

    step()
    weights = _nbytes(model.parameters())
    states = _nbytes(v for st in opt.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0)
    train_measured = weights + states + _peak_during(step)
    model.eval()
    opt.zero_grad(set_to_none=True)

    def forward() -> None:
        with torch.inference_mode():
            model(input_ids=x, use_cache=True, logits_to_keep=1)

    infer_measured = weights + _peak_during(forward)
    cfg = PlanConfig(method="full", seq=case.seq, micro_batch=case.batch, precision="fp32", gpus=1,
                     gpu_mem_gb=1.0, gpu="cpu", infer_batch=case.batch)
    est = plan_memory(arch, cfg)
    return {
        "case": f"{case.family} L{case.layers} h{case.hidden} kv{case.kv_heads} i{case.intermediate} "
                f"V{case.vocab} s{case.seq} b{case.batch}",
        "train_measured": train_measured, "train_estimate": est.total,
        "train_error": est.total / train_measured - 1,
        "infer_measured": infer_measured, "infer_estimate": est.infer_total,
        "infer_error": est.infer_total / infer_measured - 1,
        "estimate": {"weights": est.weights, "gradients": est.gradients, "optimizer": est.optimizer,
                     "activations": est.activations, "kv_cache": est.kv_cache},
    }


def validate(cases=TINY_CASES) -> list[dict]:
    """measure_case for each tiny config (a few seconds in all on 2 CPU cores)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(min(old, 2))
    try:
        return [measure_case(c) for c in cases]
    finally:
        torch.set_num_threads(old)
