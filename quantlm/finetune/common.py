"""Helpers every post-training stage shares (SFT, reward, RL, distillation).

- `start_run`: torch threads, the Store, the run folder, the seed.
- `split_rows`: the time split of a stage: training sessions, then the `valid_sessions` validation
  block before `train_end`; with `pretrained_through` it refuses an init model whose pretraining
  reached into that block (minus the label horizon).
- `pretrained_through`: the last date a pretrained model folder was trained on (its tokenizer's fit_end).
- `load_policy_data` / `resolve_model_dir`: a trader folder with its TraderData up to train_end.
- `save_trader`: out/model written atomically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.finetune.data import FinetuneDataError, TraderData


def start_run(store, out: str | Path, threads: int | None, seed: int | None = None):
    """Common start of every post-training stage: torch threads, the Store, the run folder, the seed."""
    import torch

    from quantlm.data.store import Store

    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if seed is not None:
        torch.manual_seed(seed)
    return (store if isinstance(store, Store) else Store(store)), out


def label_horizon(data: TraderData) -> int:
    """Sessions after a bar the longest target needs (max of the return horizons and the direction's)."""
    return int(max([*data.horizons, data.direction_horizon]))


def pretrained_through(init: str | Path) -> pd.Timestamp | None:
    """The last bar date a pretrained model folder's weights were trained on: its tokenizer's fit_end
    (pretraining fits the tokenizer on exactly the bars its training windows may use, ts <= split);
    None without one."""
    path = Path(init) / "tokenizer" / "tokenizer.json"
    if not path.exists():
        return None
    fit_end = json.loads(path.read_text()).get("fit_end")
    return pd.Timestamp(fit_end) if fit_end else None


def split_rows(data: TraderData, train_end, valid_sessions: int, pretrained_until=None,
               ) -> tuple[int, int, np.ndarray]:
    """(last training session index, train_end session index, validation rows).

    The validation block is the last `valid_sessions` sessions up to train_end; training uses
    sessions <= last_train = end - valid_sessions. `pretrained_until` (the last date the init model
    was pretrained on) must lie at least label_horizon sessions before the validation block, i.e.
    on or before session last_train - horizon; otherwise the pretrained weights have seen the bars
    the validation labels are made of and FinetuneDataError is raised.
    """
    end = data.session_index(train_end)
    last_train = end - valid_sessions
    if last_train < 1:
        raise FinetuneDataError(f"train_end {pd.Timestamp(train_end).date()} leaves no training sessions before "
                                f"the {valid_sessions} validation sessions")
    if pretrained_until is not None:
        h = label_horizon(data)
        limit = last_train - h
        seen = data.session_index(pretrained_until)
        if seen > limit:
            first_valid = data.calendar[last_train + 1].date()
            allowed = data.calendar[limit].date() if limit >= 0 else "before the first session"
            raise FinetuneDataError(
                f"the init model was pretrained on bars up to {pd.Timestamp(pretrained_until).date()}, which reaches "
                f"into this stage's validation block (from {first_valid}, the last {valid_sessions} sessions up to "
                f"train_end {pd.Timestamp(train_end).date()}); with the label horizon of {h} sessions pretraining "
                f"must end by {allowed}: pretrain with an earlier data.split / data.end, or move train_end later")
    # Validation bars need their h=1 target known by train_end: session <= end - 2.
    valid = np.flatnonzero((data.session > last_train) & (data.session <= end - 2))
    return last_train, end, valid


def resolve_model_dir(path: str | Path, marker: str = "trader.json") -> Path:
    """A model folder, or a run folder whose model/ is one (a trader folder of either layout for the default marker)."""
    from quantlm.finetune.model import is_trader_folder

    p = Path(path)
    for d in (p, p / "model"):
        if (d / marker).exists() or (marker == "trader.json" and is_trader_folder(d)):
            return d
    raise FileNotFoundError(f"{p} is neither a model folder nor a run folder with model/ (no {marker})")


def load_policy_data(policy: str | Path, store, train_end, targets=None, rank_target: str | None = None):
    """(TraderModel, tokenizer, TraderData up to train_end, SFT run config or {}) for a trader folder.

    The target config and rank target are the SFT run's (its config.json next to model/) unless given.
    """
    from quantlm.features.targets import TargetConfig
    from quantlm.finetune.data import build_trader_data
    from quantlm.finetune.model import TraderModel
    from quantlm.tokenize import KlineTokenizer

    d = resolve_model_dir(policy)
    model, tok = TraderModel.load(d), KlineTokenizer.load(d / "tokenizer")
    run_cfg = d.parent / "config.json"
    sft = json.loads(run_cfg.read_text()).get("sft", {}) if run_cfg.exists() else {}
    if targets is None:
        targets = TargetConfig.model_validate(sft["targets"]) if "targets" in sft else \
            TargetConfig(horizons=model.spec.horizons)
    data = build_trader_data(store, tok, targets, text=model.spec.d_text > 0, text_half_life=model.spec.text_half_life,
                             market=model.spec.market, end=train_end,
                             rank_target=rank_target or sft.get("rank_target", "return"), factors=model.spec.factors)
    if list(data.horizons) != list(model.spec.horizons):
        raise FinetuneDataError(f"target horizons {data.horizons} differ from the policy's {model.spec.horizons}")
    return model, tok, data, sft


def save_trader(model, tok, out: Path) -> Path:
    """Write out/model atomically (temp folder, then rename); `model` has save(path, tokenizer=)."""
    tmp = out / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp, tokenizer=tok)
    shutil.rmtree(out / "model", ignore_errors=True)
    tmp.rename(out / "model")
    return out / "model"
