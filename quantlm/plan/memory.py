"""Memory, throughput and latency estimates for training / serving a decoder-only transformer.

Notation: P all parameters, T trainable parameters, L layers, h hidden, i intermediate, kv = kv_heads
x head_dim, V vocab, s sequence length, b micro-batch, d bytes of the compute dtype (4 fp32, 2 bf16 /
fp16), N GPUs. Memory is per GPU, in bytes.

Weights      full: d*P.  lora: d*P (frozen base) + d*T (adapters).  qlora: 0.5 bytes x 1.03 (NF4 +
             double-quantised block constants) per decoder linear weight, 2 bytes for the rest
             (embeddings, head, norms, biases) + 2*T adapters.
Gradients    d*T (only trainable parameters have gradients).
Optimizer    Adam: 2 fp32 moments = 8*T, plus an fp32 master copy 4*T in mixed precision (bf16/fp16).
ZeRO / FSDP  stage 1 shards the optimizer over N, stage 2 also the gradients, stage 3 (= FSDP full
             shard) also the weights. Activations are per micro-batch and never sharded.
Activations  bytes saved for backward, derived from the ops of a HF Qwen2/Llama block (SDPA
             attention: no s x s score matrix is kept; no dropout):
                 per layer = s*b*[2*norm + d*(4h + 3kv + 4i)]
                     norm = 8h bytes in fp32 (input + normalised output), 6h in 16-bit (fp32 upcast of
                            the input + 16-bit output)
                     4h   q, RoPE'd q, attention output, o_proj input (contiguous copy)
                     3kv  k, v, RoPE'd k
                     4i   gate, SiLU(gate), up, SiLU(gate)*up
             + the head: s*b*[norm + V*c] with c = 12 bytes (fp32) / 14 (16-bit): the fp32
               log-softmax kept for the loss, and at the start of backward its gradient and the
               logits' gradient (plus the 16-bit logits).
             For Llama-7B shapes in 16-bit (i = 2.69h, kv = h) this is 47.5 sbh bytes per layer against
             the 34 sbh of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
             Transformer Models": sbh(34 + 5as/h) without recomputation, for a GPT block with a 4h GELU
             MLP and dropout; its 5as/h term is the score matrix that SDPA / flash attention does not
             keep). The difference is the SwiGLU MLP (4 tensors of width i) and the fp32 RMSNorm upcasts.
             Gradient checkpointing (one checkpoint per block, as HF's): d*s*b*h per layer (its input)
             + one block recomputed during backward + the head.
             LoRA adds the r-wide adapter intermediates (d*s*b*r per target module, negligible) and
             keeps the same block activations, since gradients flow through the frozen weights.
KV cache     inference: 2 * L * kv * s * b * d (keys and values of every layer).
Inference    weights (d*P, or the 4-bit base for qlora) + KV cache + the prefill's working set of one
             block, s*b*d*(4h + 3i) (residual, normalised input, attention / MLP intermediates), plus the
             last token's fp32 logits 4*b*V.
Fits         total <= (1 - headroom) * GPU memory; headroom (default 10%) covers the CUDA context,
             allocator fragmentation and temporary buffers this model does not count.

Throughput   training FLOPs per token: full 6*M + 12*L*h*s (M = parameters used in a matmul, the
             attention term is PaLM's), LoRA / QLoRA (4 + 2*T/M)*M + 12*L*h*s: forward 2M, the input
             gradients 2M still flow through every frozen layer, weight gradients only for the adapters
             (2T). The often quoted "(2 + 4 x trainable fraction)" drops the input gradients and so is
             optimistic by ~2x. Checkpointing adds a recomputed forward (+2M + 4*L*h*s).
             tokens/s per GPU = peak * MFU / FLOPs per token; QLoRA's dequantisation costs extra, taken
             as MFU x 0.7.
Latency      one decision = one prefill of s prompt tokens (+ `decode` generated tokens):
             prefill = max(FLOPs / (peak * MFU), weight bytes / bandwidth), FLOPs = 2*M*s*b + 4*L*h*s^2*b;
             each decoded token = (weight bytes + KV cache bytes) / (bandwidth * 0.8) (memory bound).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from quantlm.plan.arch import Arch

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
LORA_TARGETS_ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
METHODS = ("full", "lora", "qlora")
GB = 1024**3

# Dense peak TFLOP/s (bf16 tensor core; fp32 = non-tensor-core), HBM bandwidth in TB/s, default MFU
# (training; inference prefill uses the same figure). From the vendors' data sheets: A100 SXM 80GB,
# H100 SXM, H200 SXM, L4. "cpu" has no fixed figure: `cpu_gpu_spec()` measures this machine.
GPUS: dict[str, dict[str, float]] = {
    "a100": {"bf16": 312.0, "fp32": 19.5, "bw": 2.039, "mfu": 0.40, "mem": 80},
    "h100": {"bf16": 989.0, "fp32": 67.0, "bw": 3.35, "mfu": 0.40, "mem": 80},
    "h200": {"bf16": 989.0, "fp32": 67.0, "bw": 4.8, "mfu": 0.40, "mem": 141},
    "l4": {"bf16": 121.0, "fp32": 30.3, "bw": 0.30, "mfu": 0.35, "mem": 24},
}


@dataclass
class PlanConfig:
    """What is planned: method, shapes of a step, precision and hardware."""

    method: str = "lora"
    lora_rank: int = 16
    lora_targets: tuple[str, ...] = LORA_TARGETS_ALL
    seq: int = 2048
    micro_batch: int = 1
    checkpointing: bool = False
    precision: str = "bf16"
    gpus: int = 1
    gpu_mem_gb: float = 80.0
    gpu: str = "a100"
    zero: int = 0  # 0-3; fsdp = 3
    fsdp: bool = False
    headroom: float = 0.10
    mfu: float | None = None  # None: the GPU table's
    decode: int = 0  # generated tokens per decision (0: the answer is scored from the prefill logits)
    infer_batch: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.precision not in DTYPE_BYTES:
            raise ValueError(f"precision must be one of {tuple(DTYPE_BYTES)}, got {self.precision!r}")
        if not 0 <= self.zero <= 3:
            raise ValueError(f"zero stage must be 0-3, got {self.zero}")
        if self.method == "qlora" and self.precision == "fp32":
            raise ValueError("qlora computes in bf16/fp16; use --precision bf16")
        if min(self.seq, self.micro_batch, self.gpus) < 1 or self.gpu_mem_gb <= 0:
            raise ValueError("seq, micro_batch, gpus and gpu memory must be positive")
        if not 0 <= self.headroom < 1:
            raise ValueError(f"headroom must be in [0, 1), got {self.headroom}")
        bad = set(self.lora_targets) - set(LORA_TARGETS_ALL)
        if bad:
            raise ValueError(f"unknown LoRA target modules {sorted(bad)} (expected some of {LORA_TARGETS_ALL})")

    @property
    def stage(self) -> int:
        return 3 if self.fsdp else self.zero


def lora_params(arch: Arch, rank: int, targets=LORA_TARGETS_ALL) -> int:
    """Adapter parameters: r * (in + out) per adapted linear map per layer."""
    h, i, q, kv = arch.hidden, arch.intermediate, arch.q_dim, arch.kv_dim
    shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    return arch.layers * sum(rank * sum(shapes[t]) for t in targets)


def trainable_params(arch: Arch, cfg: PlanConfig) -> int:
    return arch.params() if cfg.method == "full" else lora_params(arch, cfg.lora_rank, cfg.lora_targets)


def _norm_bytes(arch: Arch, d: int) -> int:
    return arch.hidden * (8 if d == 4 else 4 + d)


def layer_activation_bytes(arch: Arch, s: int, b: int, d: int) -> int:
    """Bytes one block keeps for backward (no recomputation): s*b*[2*norm + d*(4h + 3kv + 4i)]."""
    return s * b * (2 * _norm_bytes(arch, d) + d * (4 * arch.q_dim + 3 * arch.kv_dim + 4 * arch.intermediate))


def head_activation_bytes(arch: Arch, s: int, b: int, d: int) -> int:
    """Final norm + the loss's logits working set at the start of backward."""
    return s * b * (_norm_bytes(arch, d) + arch.vocab * (12 if d == 4 else 14))


def activation_bytes(arch: Arch, cfg: PlanConfig) -> int:
    d, s, b = DTYPE_BYTES[cfg.precision], cfg.seq, cfg.micro_batch
    layer = layer_activation_bytes(arch, s, b, d)
    lora = 0
    if cfg.method != "full":
        lora = arch.layers * len(cfg.lora_targets) * s * b * cfg.lora_rank * d
    if cfg.checkpointing:
        blocks = arch.layers * s * b * arch.hidden * d + layer + lora // max(arch.layers, 1)
    else:
        blocks = arch.layers * layer + lora
    return blocks + head_activation_bytes(arch, s, b, d)


def weight_bytes(arch: Arch, method: str, d: int, trainable: int = 0) -> int:
    if method == "qlora":
        lin = arch.layers * arch.linear_params_per_layer()
        return int(lin * 0.5 * 1.03) + 2 * (arch.params() - lin) + 2 * trainable
    return d * arch.params() + (d * trainable if method == "lora" else 0)


def kv_cache_bytes(arch: Arch, seq: int, batch: int, d: int) -> int:
    """2 (k and v) x layers x kv_heads x head_dim x seq x batch x bytes."""
    return 2 * arch.layers * arch.kv_dim * seq * batch * d


@dataclass
class MemoryPlan:
    """Per-GPU bytes by component (training) and for inference, with the fit verdicts."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    total: int
    usable: int
    fits: bool
    infer_weights: int
    kv_cache: int
    infer_activations: int
    infer_total: int
    infer_fits: bool
    params: int
    trainable: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def plan_memory(arch: Arch, cfg: PlanConfig) -> MemoryPlan:
    """Training memory per GPU by component and inference memory (one GPU), with fits at the headroom."""
    d = DTYPE_BYTES[cfg.precision]
    T = trainable_params(arch, cfg)
    n = cfg.gpus
    st = cfg.stage
    w = weight_bytes(arch, cfg.method, d, T if cfg.method != "full" else 0)
    g = d * T
    opt = 8 * T + (4 * T if d < 4 else 0)
    if st >= 1:
        opt = -(-opt // n)
    if st >= 2:
        g = -(-g // n)
    if st >= 3:
        w = -(-w // n)
    act = activation_bytes(arch, cfg)
    total = w + g + opt + act
    usable = int((1 - cfg.headroom) * cfg.gpu_mem_gb * GB)
    # Inference: the (merged) model in the compute dtype (4-bit base for qlora), KV cache of the prompt
    # (+ decoded tokens), and the prefill's transient working set of one block + last-token logits.
    iw = weight_bytes(arch, cfg.method, d) if cfg.method == "qlora" else d * arch.params()
    ctx = cfg.seq + cfg.decode
    kv = kv_cache_bytes(arch, ctx, cfg.infer_batch, d)
    ia = cfg.infer_batch * (cfg.seq * d * (4 * arch.hidden + 3 * arch.intermediate) + 4 * arch.vocab)
    itotal = iw + kv + ia
    notes = []
    if cfg.method != "full" and st >= 1:
        notes.append("ZeRO shards only the small adapter states under LoRA; stage 3/FSDP also shards the frozen base")
    return MemoryPlan(w, g, opt, act, total, usable, total <= usable, iw, kv, ia, itotal, itotal <= usable,
                      arch.params(), T, notes)


# ---------------------------------------------------------------------- throughput and latency
def train_flops_per_token(arch: Arch, cfg: PlanConfig) -> float:
    M, attn = arch.matmul_params(), 12 * arch.layers * arch.hidden * cfg.seq
    T = trainable_params(arch, cfg)
    if cfg.method == "full":
        f = 6 * M + attn
    else:
        f = (4 + 2 * min(T / M, 1.0)) * M + attn
    if cfg.checkpointing:
        f += 2 * M + attn / 3
    return float(f)


def gpu_spec(cfg: PlanConfig, cpu_spec: dict | None = None) -> dict:
    """Peak TFLOP/s for the precision, bandwidth TB/s and MFU of cfg.gpu ('cpu': measured)."""
    if cfg.gpu == "cpu":
        spec = cpu_spec or cpu_gpu_spec()
        peak = spec["fp32"]
    elif cfg.gpu in GPUS:
        spec = GPUS[cfg.gpu]
        peak = spec["fp32" if cfg.precision == "fp32" else "bf16"]
    else:
        raise ValueError(f"unknown GPU '{cfg.gpu}' (expected one of {', '.join([*GPUS, 'cpu'])})")
    mfu = cfg.mfu if cfg.mfu is not None else spec["mfu"]
    if cfg.method == "qlora":
        mfu *= 0.7
    return {"peak_tflops": peak, "bw_tbs": spec["bw"], "mfu": mfu}


def throughput(arch: Arch, cfg: PlanConfig, cpu_spec: dict | None = None) -> dict:
    """Training tokens/s (per GPU and all GPUs) and the latency (ms) of one decision at inference."""
    spec = gpu_spec(cfg, cpu_spec)
    flops_s = spec["peak_tflops"] * 1e12 * spec["mfu"]
    fpt = train_flops_per_token(arch, cfg)
    tok_gpu = flops_s / fpt
    d = DTYPE_BYTES[cfg.precision]
    iw = weight_bytes(arch, "qlora", d) if cfg.method == "qlora" else d * arch.params()
    M, b, s = arch.matmul_params(), cfg.infer_batch, cfg.seq
    prefill_flops = 2 * M * s * b + 4 * arch.layers * arch.hidden * s * s * b
    bw = spec["bw_tbs"] * 1e12
    prefill = max(prefill_flops / flops_s, iw / bw)
    decode = cfg.decode * (iw + kv_cache_bytes(arch, s + cfg.decode, b, d)) / (bw * 0.8)
    return {"flops_per_token": fpt, "tokens_per_s_gpu": tok_gpu, "tokens_per_s": tok_gpu * cfg.gpus,
            "prefill_ms": prefill * 1e3, "decode_ms": decode * 1e3, "latency_ms": (prefill + decode) * 1e3, **spec}


_CPU_SPEC: dict | None = None


def cpu_gpu_spec(n: int = 512, repeats: int = 5) -> dict:
    """This machine's measured fp32 matmul TFLOP/s and copy bandwidth (TB/s), cached; MFU 1.0 for the
    measured matmul rate is optimistic for a whole model, so 0.5 is used."""
    global _CPU_SPEC
    if _CPU_SPEC is None:
        import time

        import torch

        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        mm = 2 * n**3 * repeats / (time.perf_counter() - t0)
        x = torch.empty(16 * 1024 * 1024 // 4)
        y = torch.empty_like(x)
        y.copy_(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            y.copy_(x)
        bw = 2 * x.numel() * 4 * repeats / (time.perf_counter() - t0)
        _CPU_SPEC = {"fp32": mm / 1e12, "bf16": mm / 1e12, "bw": bw / 1e12, "mfu": 0.5}
    return _CPU_SPEC
