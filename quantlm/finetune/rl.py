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
reward="portfolio" (`finetune.book`): what the book earns. Per session of a sampled cross-section,
K = samples_per_state books are sampled (one action per stock each; equal weight over the buys),
each earns its excess return over the cross-section net of the dated round-trip cost of its
turnover vs the same sample's previous-session book, and every stock's sampled action in book k
gets book k's leave-one-out advantage (GRPO over K books per session).

Runs on the training core (`finetune.stagecore`): each micro-batch i (windows, known outcomes and
the uniforms the actions are drawn with) is a pure function of (seed, i), so resume is exact.
Promotion: the RL policy is `promoted` (metrics.json) only when its selected validation RankIC
beats the SFT model's with its own trading score by `promote_min_t` (2) standard errors of the paired
per-session difference AND its validation book return (`book.book_return`,
top `book_fraction` by score, net of turnover costs) is not below the SFT model's; otherwise
`quantlm run` keeps the SFT model as the distillation teacher and deployed candidate.

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

from quantlm.finetune.book import book_return, book_rewards, dense_slots, loo_advantages, sample_actions
from quantlm.finetune.common import load_policy_data, resolve_model_dir
from quantlm.finetune.config import LossConfig
from quantlm.finetune.data import FinetuneDataError, TraderData
from quantlm.finetune.model import LossWeights, TraderModel, trader_losses
from quantlm.finetune.reward import (
    REWARD_JSON,
    CrossSectionSampler,
    RewardModel,
    bar_history,
    horizon_column,
    known_returns,
    realized_outcome,
    round_trip_costs,
)
from quantlm.finetune.stagecore import CoreFields, run_on_core, unprefix

ACTIONS = [-1.0, 0.0, 1.0]  # direction classes 0 sell, 1 hold, 2 buy as positions


class RLConfig(CoreFields):
    """GRPO fine-tuning of the direction head (see the module docstring; core keys from `stagecore.CoreFields`)."""

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
    reward: Literal["model", "realized", "portfolio"] = "realized"
    outcome: Literal["sharpe", "pnl"] = "sharpe"  # realised reward (and evaluation) units
    cost: float | None = Field(None, ge=0)  # round-trip cost fraction; None: round_trip_cost_for(market, session)
    excess: bool = False  # realised reward on session excess returns (see finetune.reward)
    min_sigma: float = Field(0.005, gt=0)  # volatility floor of the realised outcome (see finetune.reward)
    clip: float | None = Field(10.0, gt=0)  # |realised outcome| cap
    aux_weight: float = Field(0.0, ge=0)  # weight of the SFT multi-task loss on the same windows
    aux_loss: LossConfig = Field(default_factory=lambda: LossConfig(direction=0.0, lm=0.0))
    valid_sessions: int = Field(60, ge=10)
    eval_every: int = Field(50, ge=1)
    select: Literal["rank_ic", "reward", "book_return", "last"] = "rank_ic"
    book_fraction: float = Field(0.2, gt=0, le=1)  # validation book: top fraction of the stocks by score
    promote_min_t: float = Field(2.0, ge=0)  # promotion: paired t-stat of RL - SFT per-session validation RankIC
    freeze_bottom: int = Field(0, ge=0)
    threads: int | None = None

    @model_validator(mode="after")
    def _check(self) -> RLConfig:
        if (self.group == "state" or self.reward == "portfolio") and self.samples_per_state < 2:
            raise ValueError("group 'state' and reward 'portfolio' need samples_per_state >= 2")
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
    return loss, {"pg": pg.detach(), "kl": kl.detach(), "entropy": ent.detach()}


def book_pg_loss(logits: torch.Tensor, ref_logits: torch.Tensor, acts: torch.Tensor, ret: torch.Tensor,
                 cost: torch.Tensor, block: torch.Tensor, slot: torch.Tensor, n_blocks: int, n_slots: int,
                 kl_coef: float, entropy_coef: float, eps: float = 1e-6) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The portfolio-reward GRPO loss (`finetune.book`) on windows of sampled cross-sections.

    logits, ref_logits [M, P, 3] (M windows, P scored positions), acts [M, P, K] sampled classes,
    ret / cost [M, P] (NaN ret = unknown), block [M] cross-section of each window, slot [M] its place in it.
    A book's log-probability is the sum of its stocks' sampled actions' log-probabilities, so every known
    state's sampled action in book k gets book k's full advantage; the policy-gradient term is averaged over
    valid groups and samples; KL to the reference and entropy are means over known states.
    """
    M, P, K = acts.shape
    dev = logits.device
    buy = torch.zeros(n_blocks, n_slots, P, K, dtype=torch.bool, device=dev)
    buy[block, slot] = acts == 2
    r = torch.full((n_blocks, n_slots, P), float("nan"), dtype=torch.float64, device=dev)
    r[block, slot] = ret.double()
    c = torch.zeros(n_blocks, n_slots, P, dtype=torch.float64, device=dev)
    c[block, slot] = cost.double()
    rewards, valid = book_rewards(buy, r, c)  # [B, P, K], [B, P]
    adv = torch.where(valid.unsqueeze(-1), loo_advantages(rewards, eps), 0.0)
    known = torch.isfinite(ret)  # [M, P]
    wt = (known & valid[block]).double()  # [M, P]: log pi(book) = sum over its stocks
    logp = F.log_softmax(logits.float(), -1)
    logp_a = logp.gather(-1, acts)  # [M, P, K]
    n_groups = valid.sum().clamp(min=1)
    pg = -(adv[block].float() * logp_a * wt.unsqueeze(-1).float()).sum() / (n_groups * K)
    ok = known.reshape(-1)
    lp, rp = logp.reshape(-1, 3)[ok], F.log_softmax(ref_logits.float(), -1).reshape(-1, 3)[ok].detach()
    p = lp.exp()
    kl = (p * (lp - rp)).sum(-1).mean() if len(lp) else logits.sum() * 0.0
    ent = -(p * lp).sum(-1).mean() if len(lp) else logits.sum() * 0.0
    loss = pg + kl_coef * kl - entropy_coef * ent
    book = rewards[valid].mean() if valid.any() else rewards.new_zeros(())
    return loss, {"pg": pg.detach(), "kl": kl.detach(), "entropy": ent.detach(), "reward": book.detach().float()}


@torch.no_grad()
def evaluate_policy(model: TraderModel, data: TraderData, rows: np.ndarray, outcome: np.ndarray, label: np.ndarray,
                    ref_logp: np.ndarray | None, warm: int, cost: np.ndarray | None = None,
                    book_fraction: float = 0.2) -> dict[str, float]:
    """Held-out metrics of the direction policy on flat `rows` (outcome [N, 3], label ret_1 [N]); with the
    round-trip `cost` [N] also the validation book of the trading score (`book.book_return`)."""
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
    if cost is not None:
        out |= book_return(res["score"], label[rows], cost[rows], data.session[rows], data.symbol_of()[rows],
                           book_fraction)
    return out


# ---------------------------------------------------------------------- training
def paired_t(a: pd.Series, b: pd.Series) -> float:
    """t-statistic of the mean of a - b over their common index (NaN under 2 pairs or no spread)."""
    d = (a - b).dropna()
    sd = float(d.std(ddof=1)) if len(d) >= 2 else float("nan")
    return float(d.mean() / (sd / np.sqrt(len(d)))) if np.isfinite(sd) and sd > 0 else float("nan")


def promotion(before: dict, after: dict, t_stat: float = float("nan"), min_t: float = 0.0) -> tuple[bool, str]:
    """(promoted, reason): RL replaces the SFT model only when its validation RankIC is higher than the SFT
    model's (with its own trading score) by at least `min_t` standard errors of the paired per-session
    difference (`t_stat`; NaN, e.g. a store without cross-sections: higher is enough) and its
    validation book return is not lower.

    Why a t-stat: the kept RL step is the best of several evaluations on a short validation block, so a
    higher mean alone is often selection noise (on the demo market RL was promoted on +0.0005 and then
    lost out of sample in every seed)."""
    ic_rl, ic_sft = after.get("rank_ic", float("nan")), before.get("rank_ic_sft_score", float("nan"))
    bk_rl, bk_sft = after.get("book_return", float("nan")), before.get("book_return_sft_score", float("nan"))
    higher = bool(np.isfinite(ic_rl) and (not np.isfinite(ic_sft) or ic_rl > ic_sft))
    ic_ok = higher and (not np.isfinite(t_stat) or t_stat >= min_t)
    bk_ok = bool(np.isfinite(bk_rl) and (not np.isfinite(bk_sft) or bk_rl >= bk_sft))
    nums = (f"validation RankIC {ic_rl:.4f} vs SFT {ic_sft:.4f}"
            + (f" (paired t {t_stat:+.2f}, needs {min_t:g})" if np.isfinite(t_stat) else "")
            + f", book return {1e4 * bk_rl:+.1f} vs {1e4 * bk_sft:+.1f} bp/session")
    if ic_ok and bk_ok:
        return True, f"RL promoted: {nums}"
    ic_why = "RankIC not higher" if not higher else "RankIC gain not significant"
    why = " and ".join(w for w, ok in ((ic_why, ic_ok), ("book return lower", bk_ok)) if not ok)
    return False, f"RL not promoted ({why}): {nums}; the SFT model is kept"


def _validation_ics(model: TraderModel, data: TraderData, rows: np.ndarray, label: np.ndarray, warm: int) -> pd.Series:
    """Per-session validation RankIC of the model's trading score (`spec.score`) against `label` [N]."""
    from quantlm.finetune.score import predict_rows, session_rank_ics

    res = predict_rows(model, data, rows, warm=warm, keep=("direction",))
    return session_rank_ics(res["score"], label[rows], data.session[rows])


def train_rl(cfg: RLConfig, store, out: str | Path, policy: str | Path, reward: str | Path | None, train_end,
             seed: int = 0, progress: bool = False, resume: bool = False, stop_after: int | None = None) -> Path:
    """RL-tune the trader `policy` (reward model folder `reward` for reward="model"); returns the run folder.

    Runs on the training core: resume continues from the newest checkpoint in out/checkpoints
    (bit-identical on CPU); stop_after ends the run at that step with a checkpoint and no model.
    """
    from quantlm.finetune.common import save_trader, split_rows, start_run
    from quantlm.finetune.lora import freeze_bottom
    from quantlm.finetune.score import predict_rows

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
    ret_train = train_known["ret"][:, j1].astype(np.float64)  # the book's next-period return, known by last_train
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
        rm.requires_grad_(False).eval()

    ref = copy.deepcopy(model).eval().requires_grad_(False)
    freeze_bottom(model, cfg.freeze_bottom)
    ref_valid = predict_rows(ref, data, valid_rows, warm=cfg.warm, keep=("direction",))
    ref_logp = torch.log_softmax(torch.from_numpy(ref_valid["direction"]).double(), -1).numpy()
    ev = (valid_rows, out_valid, label, ref_logp, cfg.warm, cost, cfg.book_fraction)
    before = evaluate_policy(model, data, *ev)
    model.spec.score = sft_score  # the SFT model with its own score: what it would trade
    own = evaluate_policy(model, data, valid_rows, out_valid, label, None, cfg.warm, cost, cfg.book_fraction)
    before |= {"rank_ic_sft_score": own["rank_ic"], "book_return_sft_score": own["book_return"],
               "book_turnover_sft_score": own["book_turnover"]}
    sft_ics = _validation_ics(model, data, valid_rows, label, cfg.warm)
    model.spec.score = "direction"

    sampler = CrossSectionSampler(data, W, last_train, cfg.max_symbols, seed)
    bos = model.trunk.special_ids["bos"]
    aux_targets = {k: train_known[k] for k in ("ret", "rank", "direction")}
    weights = LossWeights(**cfg.aux_loss.model_dump())
    K, P = cfg.samples_per_state, W - cfg.warm

    def batch_at(i: int) -> dict:
        """Micro-batch i: windows of random cross-sections, their known outcomes, the action uniforms."""
        starts, block = sampler.sample(i, cfg.batch_size)
        rows, group = sampler.groups(starts, block, cfg.warm)
        slot, n_blocks, n_slots = dense_slots(block)
        u = np.random.default_rng([seed, i, 3]).random((len(starts), P, K))
        return {**data.gather(starts, W, bos, aux_targets if cfg.aux_weight else None),
                "outcome": out_train[rows], "ret1": ret_train[rows], "cost": cost[rows], "group": group,
                "block": block, "slot": slot, "u": u, "n_blocks": n_blocks, "n_slots": n_slots}

    def loss_fn(m, batch: dict, step: int):
        logits = m(batch)["direction"][:, cfg.warm:]  # [M, P, 3]
        with torch.no_grad():
            ref_logits = ref(batch)["direction"][:, cfg.warm:]
            acts = sample_actions(logits.detach().float().softmax(-1), batch["u"].float())  # [M, P, K]
        if cfg.reward == "portfolio":
            loss, parts = book_pg_loss(logits, ref_logits, acts, batch["ret1"], batch["cost"], batch["block"].long(),
                                       batch["slot"].long(), batch["n_blocks"], batch["n_slots"], cfg.kl_coef,
                                       cfg.entropy_coef, cfg.adv_eps)
        else:
            with torch.no_grad():
                r_all = (rm(batch)[:, cfg.warm:] if rm is not None else batch["outcome"]).reshape(-1, 3).double()
            ok = torch.isfinite(r_all[:, 0])  # states with a known outcome
            if not bool(ok.any()):
                zero = logits.sum() * 0.0
                return zero, {"pg": zero.detach(), "kl": zero.detach(), "entropy": zero.detach(), "reward": zero.detach()}
            flat_acts = acts.reshape(-1, K)[ok]
            r = r_all[ok].gather(1, flat_acts)  # [S, K]
            if cfg.group == "session":
                gid = batch["group"].reshape(-1)[ok].long()[:, None].expand(-1, K)
            else:
                gid = torch.arange(len(r), device=r.device)[:, None].expand(-1, K)
            adv = group_advantages(r.reshape(-1), gid.reshape(-1), cfg.adv_eps).view_as(r).float()
            loss, parts = grpo_loss(logits.reshape(-1, 3)[ok], ref_logits.reshape(-1, 3)[ok], flat_acts, adv,
                                    cfg.kl_coef, cfg.entropy_coef)
            parts["reward"] = r.mean() if len(r) else r.new_zeros(())
        if cfg.aux_weight:
            aux, aux_parts = trader_losses(m, batch, weights)
            loss = loss + cfg.aux_weight * aux
            parts.update({f"aux_{k}": v for k, v in aux_parts.items()})
        return loss, parts

    def evaluate() -> dict[str, float]:
        return evaluate_policy(model, data, *ev)

    def to_device(device) -> None:
        for mod in (ref, rm):
            if mod is not None:
                mod.to(device)

    select = {"rank_ic": "rank_ic", "reward": "reward_policy", "book_return": "book_return"}.get(cfg.select)
    model.train()
    result = run_on_core("rl", model, cfg, out, loss_fn, batch_at, evaluate, select, cfg.eval_every,
                         progress=progress, resume=resume, stop_after=stop_after, to_device=to_device)
    if not result.finished:
        return out  # stopped early: a checkpoint to resume from, no model yet
    save_trader(model, tok, out)
    last = unprefix(result.last)
    after, best_step = (unprefix(result.best), result.best["step"]) if select else (last, result.last["step"])
    t_stat = paired_t(_validation_ics(model, data, valid_rows, label, cfg.warm), sft_ics)  # model: the kept step
    promoted, reason = promotion(before, after, t_stat, cfg.promote_min_t)
    summary = {"before": before, "after": after, "last": last, "best_step": best_step, "select": cfg.select,
               "promoted": promoted, "promotion_reason": reason, "promotion_t": t_stat if np.isfinite(t_stat) else None,
               "reward": cfg.reward, "round_trip_cost": float(cost[valid_rows].mean()),
               "outcome": cfg.outcome, "train_end": str(pd.Timestamp(train_end).date()),
               "last_train_session": str(data.calendar[last_train].date()), "valid_bars": int(len(valid_rows)),
               "steps": cfg.steps, "seed": seed, "seconds": round(time.time() - t0, 1)}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "config.json").write_text(json.dumps({"rl": cfg.model_dump(), "policy": str(policy), "reward": str(reward),
                                                 "train_end": str(train_end), "seed": seed}, indent=2, default=str))
    from quantlm.model.card import refresh_run_card

    refresh_run_card(out, "rl")  # the model card records this stage's config and metrics
    return out
