"""Planning: memory per GPU, throughput and latency of a decoder-only transformer, validated on tiny
models here, and the choice of a model by measured latency (`quantlm plan`)."""

from quantlm.plan.arch import SIZES, Arch, arch_from_config, resolve_arch
from quantlm.plan.memory import MemoryPlan, PlanConfig, plan_memory, throughput

__all__ = ["SIZES", "Arch", "MemoryPlan", "PlanConfig", "arch_from_config", "plan_memory", "resolve_arch",
           "throughput"]
