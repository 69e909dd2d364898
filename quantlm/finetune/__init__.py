"""Post-training: market GPT -> trader (SFT with heads, LoRA, text), reward model, RL, distillation.

Python API (each also a `quantlm finetune ...` command):

    train_sft(cfg: SFTConfig, store, out, init, train_end, seed=0) -> run_dir   (run_dir/model: trader folder)
    score_model(model_dir, store, start, end) -> DataFrame(ts, symbol, score)
"""

from quantlm.finetune.config import ConfigError, LoraConfig, LossConfig, SFTConfig
from quantlm.finetune.data import FinetuneDataError, TraderData, build_trader_data
from quantlm.finetune.model import TraderModel, TraderSpec
from quantlm.finetune.score import predict_rows, rank_ic, score_model
from quantlm.finetune.sft import train_sft

__all__ = [
    "ConfigError",
    "FinetuneDataError",
    "LoraConfig",
    "LossConfig",
    "SFTConfig",
    "TraderData",
    "TraderModel",
    "TraderSpec",
    "build_trader_data",
    "predict_rows",
    "rank_ic",
    "score_model",
    "train_sft",
]
