"""RL fine-tuning of the trader's direction head (GRPO-style, KL-anchored to the SFT model).

    train_rl(cfg, store, out, policy, reward, train_end, seed=0) -> run_dir   (run_dir/model: trader folder)

Policy. pi(a | bar) = softmax of the SFT trader's direction logits over a in {sell -1, hold 0, buy +1}
(position sizes, as in `finetune.reward`). The saved model is a TraderModel with spec.score =
"direction", so its trading score is P(buy) - P(sell) and `score_model` / the backtest use it as is.

Batches are real cross-sections: each step draws `batch_size` end sessions (<= the last training
session) and, for up to `max_symbols` symbols each, the window of `window_bars` bars ending there
(`reward.CrossSectionSampler`); every position past `warm` is a state, and the states of one window
position (one session) across symbols form a group.

Step (on-policy, one gradient step per batch, so the PPO ratio is 1 and clipping is moot):

    a_k ~ pi(. | s), k = 1..samples_per_state            r_k = R(s, a_k)
    A_k = (r_k - mean_G r) / (std_G r + eps)             G = the session's cross-section ("session") or the
                                                         samples of one state ("state"); std with ddof 0
    loss = -mean_k(A_k log pi(a_k | s)) + kl_coef * mean_s KL(pi(.|s) || pi_ref(.|s))
           - entropy_coef * mean_s H(pi(.|s)) + aux_weight * trader_losses(...)   (optional SFT anchor)

pi_ref is a frozen copy of the SFT model; the KL over the three actions is exact (not sampled).
R = the reward model's r(s, a) (reward="model"; its hold reward is 0) or the realised outcome
(reward="realized": (a ret_1 - |a| c) / sigma, `reward.realized_outcome`, only targets known by the
last training session). "session" grouping makes the advantage cross-sectional: a buy is rewarded
for beating the other stocks' sampled actions of that day, which is what a ranking score needs.

Point in time: the store is read up to train_end; the last `valid_sessions` sessions are held out
as in SFT. A reward model must have been trained no later than this run's last training session
(else it has seen outcomes of the validation block). Validation (before = the SFT model, and every
`eval_every` steps) on held-out bars: rank IC of P(buy) - P(sell) vs ret_1, mean realised outcome of
the greedy action and of the policy (expected over pi, exact), action shares, KL to pi_ref. The
kept step is the best by `select` ("rank_ic", "reward" = expected realised outcome, or "last").
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from quantlm.finetune.config import LossConfig, _Strict
from quantlm.finetune.data import FinetuneDataError, TraderData
from quantlm.finetune.model import LossWeights, TraderModel, numpy_batch, trader_losses
from quantlm.finetune.reward import (
    REWARD_JSON,
    CrossSectionSampler,
    RewardModel,
    bar_history,
    horizon_column,
    known_returns,
    load_policy_data,
    realized_outcome,
    resolve_model_dir,
    round_trip_costs,
)

ACTIONS = [-1.0, 0.0, 1.0]  # direction classes 0 sell, 1 hold, 2 buy as positions


class RLConfig(_Strict):
    """GRPO fine-tuning of the direction head (see the module docstring)."""

    steps: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)  # cross-sections (end sessions) per step
    max_symbols: int = Field(64, ge=2)
    window_bars: int | None = Field(None, ge=8)  # None: the policy's window
    warm: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0)
    min_lr: float = Field(1e-5, ge=0)
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    kl_coef: float = Field(0.05, ge=0)  # beta of KL(pi || pi_ref)
    entropy_coef: float = Field(0.0, ge=0)
    group: Literal["session", "state"] = "session"
    samples_per_state: int = Field(4, ge=1)
    adv_eps: float = Field(1e-6, gt=0)
    reward: Literal["model", "realized"] = "realized"
    outcome: Literal["sharpe", "pnl"] = "sharpe"  # realised reward (and evaluation) units
    cost: float | None = Field(None, ge=0)  # round-trip cost fraction; None: round_trip_cost_for(market, session)
    excess: bool = False  # realised reward on session excess returns (see finetune.reward)
    min_sigma: float = Field(0.005, gt=0)  # volatility floor of the realised outcome (see finetune.reward)
    clip: float | None = Field(10.0, gt=0)  # |realised outcome| cap
    aux_weight: float = Field(0.0, ge=0)  # weight of the SFT multi-task loss on the same windows
    aux_loss: LossConfig = Field(default_factory=lambda: LossConfig(direction=0.0, lm=0.0))
    valid_sessions: int = Field(60, ge=10)
    eval_every: int = Field(50, ge=1)
    select: Literal["rank_ic", "reward", "last"] = "rank_ic"
    freeze_bottom: int = Field(0, ge=0)
    threads: int | None = None

    @model_validator(mode="after")
    def _check(self) -> RLConfig:
        if self.group == "state" and self.samples_per_state < 2:
            raise ValueError("group 'state' needs samples_per_state >= 2")
        if self.window_bars is not None and self.warm >= self.window_bars:
            raise ValueError(f"warm ({self.warm}) must be < window_bars ({self.window_bars})")
        return self


# ---------------------------------------------------------------------- pieces
def policy_dir(path: str | Path) -> Path:
    return resolve_model_dir(path)


def rm_dir(path: str | Path) -> Path:
    return resolve_model_dir(path, REWARD_JSON)


def same_tokenizer(a: Path, b: Path) -> bool:
    """Whether two saved tokenizer folders hold the same files, byte for byte."""
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all((a / n).read_bytes() == (b / n).read_bytes()
                                                                   for n in names)


def group_advantages(r: torch.Tensor, group: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r - mean of its group) / (std of its group + eps), std with ddof 0; r [K], group [K] int ids."""
    _, inv = torch.unique(group, return_inverse=True)
    n_g = int(inv.max()) + 1 if len(inv) else 0
    count = torch.zeros(n_g, dtype=r.dtype, device=r.device).index_add_(0, inv, torch.ones_like(r))
    mean = torch.zeros_like(count).index_add_(0, inv, r) / count
    dev = r - mean[inv]
    std = torch.sqrt(torch.zeros_like(count).index_add_(0, inv, dev * dev) / count)
    return dev / (std[inv] + eps)


def grpo_loss(logits: torch.Tensor, ref_logits: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor,
              kl_coef: float, entropy_coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    """logits, ref_logits [S, 3] per state; actions [S, K] sampled; adv [S, K] -> (loss, parts)."""
    logp = F.log_softmax(logits.float(), -1)
    ref_logp = F.log_softmax(ref_logits.float(), -1).detach()
    p = logp.exp()
    pg = -(adv * logp.gather(1, actions)).mean()
    kl = (p * (logp - ref_logp)).sum(-1).mean()
    ent = -(p * logp).sum(-1).mean()
    loss = pg + kl_coef * kl - entropy_coef * ent
    return loss, {"pg": float(pg.detach()), "kl": float(kl.detach()), "entropy": float(ent.detach())}


@torch.no_grad()
def evaluate_policy(model: TraderModel, data: TraderData, rows: np.ndarray, outcome: np.ndarray, label: np.ndarray,
                    ref_logp: np.ndarray | None, warm: int) -> dict[str, float]:
    """Held-out metrics of the direction policy on flat `rows` (outcome [N, 3], label ret_1 [N])."""
    from quantlm.finetune.score import predict_rows, rank_ic

    res = predict_rows(model, data, rows, warm=warm, keep=("direction",))
    logp = torch.log_softmax(torch.from_numpy(res["direction"]).double(), -1).numpy()
    p = np.exp(logp)
    o = outcome[rows]
    act = p.argmax(-1)
    out = {"rank_ic": rank_ic(res["score"], label[rows], data.session[rows]),
           "reward_greedy": float(o[np.arange(len(rows)), act].mean()),
           "reward_policy": float((p * o).sum(-1).mean()),
           "reward_oracle": float(o.max(-1).mean()),
           "share_sell": float((act == 0).mean()), "share_hold": float((act == 1).mean()),
           "share_buy": float((act == 2).mean())}
    out["kl_ref"] = float((p * (logp - ref_logp)).sum(-1).mean()) if ref_logp is not None else 0.0
    return out


# ---------------------------------------------------------------------- training
def train_rl(cfg: RLConfig, store, out: str | Path, policy: str | Path, reward: str | Path | None, train_end,
             seed: int = 0, progress: bool = False) -> Path:
    """RL-tune the trader `policy` (reward model folder `reward` for reward="model"); returns the run folder."""
    from quantlm.finetune.lora import freeze_bottom
    from quantlm.finetune.score import predict_rows
    from quantlm.finetune.sft import lr_at, save_trader, split_rows, start_run

    t0 = time.time()
    store, out = start_run(store, out, cfg.threads, seed)
    model, tok, data, _ = load_policy_data(policy, store, train_end)
    sft_score = model.spec.score
    model.spec.score = "direction"
    model.spec.train_end = str(pd.Timestamp(train_end).date())
    W = cfg.window_bars or model.spec.window_bars
    if cfg.warm >= W or W > model.trunk.max_bars:
        raise FinetuneDataError(f"window_bars {W} must exceed warm {cfg.warm} and fit the trunk ({model.trunk.max_bars})")
    last_train, end, _ = split_rows(data, train_end, cfg.valid_sessions)
    j1 = horizon_column(data, 1)
    cost = round_trip_costs(data, model.spec.market, cfg.cost)
    logsig = data.features[:, 6]
    train_known = data.targets_known(data.calendar[last_train])
    valid_known = data.targets_known(train_end)
    spec = (ACTIONS, cost, cfg.outcome, 1, cfg.min_sigma, cfg.clip)
    out_train = realized_outcome(known_returns(data, data.calendar[last_train], j1, cfg.excess), logsig, *spec)
    out_valid = realized_outcome(known_returns(data, train_end, j1, cfg.excess), logsig, *spec)
    label = valid_known["ret"][:, j1]
    valid_rows = np.flatnonzero((data.session > last_train) & (data.session <= end) & np.isfinite(label)
                                & (bar_history(data) >= cfg.warm))
    if len(valid_rows) == 0:
        raise FinetuneDataError("no validation bars with known outcomes: raise valid_sessions")

    rm = None
    if cfg.reward == "model":
        if reward is None:
            raise ValueError("reward='model' needs a reward model folder")
        rm = RewardModel.load(reward)
        if rm.actions != ACTIONS:
            raise FinetuneDataError(f"the reward model's actions {rm.actions} are not {ACTIONS}")
        rm_last = rm.meta.get("last_train_session")
        if rm_last is None or pd.Timestamp(rm_last) > data.calendar[last_train]:
            raise FinetuneDataError(f"reward model trained up to {rm_last}, after this run's last training session "
                                    f"{data.calendar[last_train].date()}: it has seen the validation outcomes")
        if not same_tokenizer(Path(policy_dir(policy)) / "tokenizer", rm_dir(reward) / "trader" / "tokenizer"):
            raise FinetuneDataError("the reward model was built on another tokenizer than the policy's")
        for p in rm.parameters():
            p.requires_grad_(False)

    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    freeze_bottom(model, cfg.freeze_bottom)
    ref_valid = predict_rows(ref, data, valid_rows, warm=cfg.warm, keep=("direction",))
    ref_logp = torch.log_softmax(torch.from_numpy(ref_valid["direction"]).double(), -1).numpy()
    before = evaluate_policy(model, data, valid_rows, out_valid, label, ref_logp, cfg.warm)
    model.spec.score = sft_score  # the SFT model's own score, for reference
    before["rank_ic_sft_score"] = evaluate_policy(model, data, valid_rows, out_valid, label, None, cfg.warm)["rank_ic"]
    model.spec.score = "direction"

    # Realised rewards need the outcome known by the last training session; model rewards do not.
    sampler = CrossSectionSampler(data, W, last_train, cfg.max_symbols, seed)
    bos = model.trunk.special_ids["bos"]
    aux_targets = {k: train_known[k] for k in ("ret", "rank", "direction")}
    weights = LossWeights(**cfg.aux_loss.model_dump())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for m in (model, ref, rm):
        if m is not None:
            m.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator(device=device)
    K = cfg.samples_per_state
    best: dict = {}
    best_state, last = None, before
    model.train()
    with (out / "metrics.jsonl").open("w") as log:
        for step in range(cfg.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            starts, block = sampler.sample(step, cfg.batch_size)
            rows, group = sampler.groups(starts, block, cfg.warm)
            batch = numpy_batch(data.gather(starts, W, bos, aux_targets if cfg.aux_weight else None), device)
            logits = model(batch)["direction"][:, cfg.warm:].reshape(-1, 3)
            with torch.no_grad():
                ref_logits = ref(batch)["direction"][:, cfg.warm:].reshape(-1, 3)
                if rm is not None:
                    r_all = rm(batch)[:, cfg.warm:].reshape(-1, 3).double()
                else:
                    r_all = torch.from_numpy(out_train[rows].reshape(-1, 3)).to(device)
            ok = torch.isfinite(r_all[:, 0])
            row = {"step": step + 1, "lr": opt.param_groups[0]["lr"], "states": int(ok.sum())}
            if ok.sum() >= 2:
                gen.manual_seed(seed * 1_000_003 + step)
                probs = logits[ok].detach().float().softmax(-1)
                acts = torch.multinomial(probs, K, replacement=True, generator=gen)  # [S, K]
                r = r_all[ok].gather(1, acts)
                if cfg.group == "session":
                    gid = torch.from_numpy(group.reshape(-1)).to(device)[ok][:, None].expand(-1, K)
                else:
                    gid = torch.arange(len(r), device=device)[:, None].expand(-1, K)
                adv = group_advantages(r.reshape(-1), gid.reshape(-1), cfg.adv_eps).view_as(r).float()
                loss, parts = grpo_loss(logits[ok], ref_logits[ok], acts, adv, cfg.kl_coef, cfg.entropy_coef)
                if cfg.aux_weight:
                    aux, aux_parts = trader_losses(model, batch, weights)
                    loss = loss + cfg.aux_weight * aux
                    parts.update({f"aux_{k}": v for k, v in aux_parts.items()})
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                row.update(loss=float(loss.detach()), reward=float(r.mean()), **parts)
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                last = evaluate_policy(model, data, valid_rows, out_valid, label, ref_logp, cfg.warm) | {"step": step + 1}
                row.update({f"valid_{k}": v for k, v in last.items() if k != "step"})
                key = {"rank_ic": "rank_ic", "reward": "reward_policy"}.get(cfg.select)
                value = last[key] if key else float(step)
                if best_state is None or (np.isfinite(value) and not value <= best.get("_value", -np.inf)):
                    best = last | {"_value": value}
                    best_state = copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()})
                if progress:
                    print(json.dumps(row), flush=True)
            log.write(json.dumps(row) + "\n")
            log.flush()
    model.load_state_dict(best_state)
    model.eval().to("cpu")
    save_trader(model, tok, out)
    after = {k: v for k, v in best.items() if k not in ("_value", "step")}
    summary = {"before": before, "after": after, "last": {k: v for k, v in last.items() if k != "step"},
               "best_step": best["step"], "select": cfg.select, "reward": cfg.reward, "round_trip_cost": float(cost[valid_rows].mean()),
               "outcome": cfg.outcome, "train_end": str(pd.Timestamp(train_end).date()),
               "last_train_session": str(data.calendar[last_train].date()), "valid_bars": int(len(valid_rows)),
               "steps": cfg.steps, "seed": seed, "seconds": round(time.time() - t0, 1)}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "config.json").write_text(json.dumps({"rl": cfg.model_dump(), "policy": str(policy), "reward": str(reward),
                                                 "train_end": str(train_end), "seed": seed}, indent=2, default=str))
    return out
