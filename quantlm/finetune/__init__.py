"""Post-training: market GPT -> trader (SFT with heads, LoRA, text), reward model, RL, distillation.

Python API (each also a `quantlm finetune ...` command):

    train_sft(cfg: SFTConfig, store, out, init, train_end, seed=0) -> run_dir   (run_dir/model: trader folder)
    score_model(model_dir, store, start, end) -> DataFrame(ts, symbol, score)
    train_distill(cfg: DistillConfig, store, out, teacher, train_end, seed=0) -> run_dir   (run_dir/model: student)
    measure_latency(model_dir, store, n_symbols=300, n_updates=50) -> {"p50": ms, "p99": ms, ...}
"""

from quantlm.finetune.config import ConfigError, LoraConfig, LossConfig, SFTConfig
from quantlm.finetune.data import FinetuneDataError, TraderData, build_trader_data
from quantlm.finetune.distill import DistillConfig, train_distill
from quantlm.finetune.latency import IncrementalFeatures, LiveScorer, measure_latency
from quantlm.finetune.model import TraderModel, TraderSpec
from quantlm.finetune.score import predict_rows, rank_ic, score_model
from quantlm.finetune.sft import train_sft
from quantlm.finetune.student import StudentMLP, StudentSpec, load_scorer

__all__ = [
    "ConfigError",
    "DistillConfig",
    "FinetuneDataError",
    "IncrementalFeatures",
    "LiveScorer",
    "LoraConfig",
    "LossConfig",
    "StudentMLP",
    "StudentSpec",
    "SFTConfig",
    "TraderData",
    "TraderModel",
    "TraderSpec",
    "build_trader_data",
    "load_scorer",
    "measure_latency",
    "predict_rows",
    "rank_ic",
    "score_model",
    "train_distill",
    "train_sft",
]

# Reward model and RL (finetune.reward, finetune.rl):
#     train_reward(cfg: RewardConfig, store, out, policy, train_end, seed=0) -> run_dir   (run_dir/model: RewardModel)
#     train_rl(cfg: RLConfig, store, out, policy, reward, train_end, seed=0) -> run_dir   (run_dir/model: trader folder)
from quantlm.finetune.reward import RewardConfig, RewardModel, train_reward  # noqa: E402
from quantlm.finetune.rl import RLConfig, train_rl  # noqa: E402

__all__ += ["RLConfig", "RewardConfig", "RewardModel", "train_reward", "train_rl"]

# JSON Lines examples (finetune.jsonl):
#     export_jsonl(store, path, tokenizer_or_model_dir, start, end, window_bars=64, ...) -> rows written
#     read_jsonl(path) -> JsonlExamples        train_sft_jsonl(cfg, path, out, init, valid_fraction=0.1) -> run_dir
from quantlm.finetune.jsonl import JsonlError, JsonlExamples, export_jsonl, read_jsonl, train_sft_jsonl  # noqa: E402

__all__ += ["JsonlError", "JsonlExamples", "export_jsonl", "read_jsonl", "train_sft_jsonl"]
