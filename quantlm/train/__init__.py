"""Training: the core every stage runs on (core.py: accelerate Trainer; optim.py: AdamW, schedule, best
state; prefetch.py: background batches; sampler.py: the one window sampler), and pretraining (config.py,
datasets.py: time-split token windows, loop.py).

`pretrain(cfg, ...)` imports torch / accelerate, so it loads lazily.
"""

from quantlm.train.config import ConfigError, PretrainConfig, load_config, parse_config

__all__ = ["ConfigError", "PretrainConfig", "load_config", "parse_config", "pretrain"]


def __getattr__(name: str):
    if name == "pretrain":
        from quantlm.train.loop import pretrain

        return pretrain
    raise AttributeError(name)
