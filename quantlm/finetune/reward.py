"""Reward model: which (stock, session, position) candidates turn out better, net of costs and risk.

    train_reward(cfg, store, out, policy, train_end, seed=0) -> run_dir   (run_dir/model: RewardModel folder)

Candidates. On session t (decision after t's close, trade at the open of t+1) a stock can be given a
position a from `cfg.actions` (default {-1 sell/short, 0 hold, +1 buy}; any grid containing 0).

Realised outcome of (stock, t, a), net of costs, in units of the stock's own risk (`outcome="sharpe"`):

    o(a) = (a * ret_h(t) - |a| * c) / (sigma_t * sqrt(h))

- ret_h(t) = open(t+1+h) / open(t+1) - 1 (fraction; h = cfg.horizon, default 1: the backtest label);
- c = the round-trip cost as a fraction of traded value (`cfg.cost`, default the market's cost in
  force on session t, `quantlm.features.targets.round_trip_cost_for(market, t)`: commission,
  transfer fee and slippage both ways plus sell-side stamp duty / SEC fee, no impact; the
  direction target's dead zone): one entry and one exit per decision, charged
  the same for a short as for a long (a short in a market without shorting reads as "underweight");
- sigma_t = max(exp(features[..., 6]), min_sigma): the tokenizer's causal daily volatility (EWMA of
  squared log returns of bars strictly before t), so a 1-sigma move of any stock is worth the same;
  floored (default 0.5%/day) because a listing day locked at its limit (high = low) has a near-zero
  volatility and would give outcomes of ~1000 sigma;
- the result is clipped to [-clip, clip] (default 10 sigma; None = no clip), so a few limit moves do
  not dominate rewards and advantages;
- hold is exactly 0 (no position, no cost). `outcome="pnl"` drops the division by sigma sqrt(h).
- `excess=True` replaces ret_h by its excess over the session's equal-weight mean (all stocks with a
  known ret_h that session): the outcome of an alpha-only, market-neutral book. The common market
  move is unforecastable noise in every pair that compares a position with hold or with the
  opposite position, and it is the same for every stock of a session, so the model can memorise
  each training day's direction from the cross-section's inputs.
Overfitting is the main risk: every training session is seen many times (each window position is a
cross-section), so keep `steps` small relative to the number of sessions, or freeze_bottom, and
rely on the held-out selection (on the 40-stock synthetic market the training pair accuracy reached
0.7 while held-out accuracy peaked near 0.52 after ~100 steps).
With costs linear in |a| the outcome is linear in a, so a finer grid only adds candidates in between.
The cost is a full round trip per decision (daily rebalancing of the whole position): for a
persistent signal held over several sessions this overstates costs, and with a weak signal hold
is the best action on almost every bar.

Pairs. Within one cross-section (one session; the same bars and windows for every stock) two
candidates (different stocks and/or different actions) with different outcomes are drawn uniformly;
the one with the larger outcome is the winner (exact ties, e.g. hold vs hold, are never pairs). A buy
whose return does not cover the round-trip cost loses to hold. Loss (Bradley-Terry):
-log sigmoid(r_winner - r_loser).

Model. A copy of the SFT policy (trunk, input projections, tokenizer) with a reward head on each bar's
hidden state: r(bar, a) = g(h)_a - g(h)_hold, so r(bar, hold) = 0 like the outcome (this fixes
Bradley-Terry's free offset, and rewards of different stocks and sessions are on one scale).
Training windows of `window_bars` bars end on cross-section sessions <= the last training session;
every position past `warm` is a candidate cross-section.

Point in time. The store is read up to `train_end`; the last `valid_sessions` sessions before it are
held out exactly as in SFT (`common.split_rows`): training bars and outcomes are known by the last
training session (`TraderData.targets_known`), held-out pairs come only from later sessions and
their outcomes known by `train_end`. Metrics: held-out pairwise accuracy (pairs ordered correctly;
a predicted tie counts 1/2) at the selected step (`pairwise_accuracy`; best validation accuracy,
so mildly optimistic) and at the last step (`pairwise_accuracy_last`, free of selection), split by
pair type (same stock: the action choice; same non-zero action, different stocks: pure
cross-sectional alpha), and the accuracy of the cost-only model r = -|a| c / sigma (knows costs and
risk, no alpha) on the same pairs: the bar to beat.
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
from torch import nn

from quantlm.finetune.common import load_policy_data, resolve_model_dir  # noqa: F401 (moved there; re-exported)
from quantlm.finetune.crosssection import CrossSectionSampler, bar_history  # noqa: F401 (re-exported)
from quantlm.finetune.data import FinetuneDataError, TraderData
from quantlm.finetune.model import TraderModel, _head
from quantlm.finetune.stagecore import CoreFields, run_on_core, unprefix

REWARD_JSON = "reward.json"
REWARD_WEIGHTS = "reward_head.safetensors"
REWARD_FORMAT = "quantlm.Reward/1"


class RewardConfig(CoreFields):
    """Reward-model training (see the module docstring). The seed is an argument of `train_reward`;
    mixed_precision, grad_accum, log_every, checkpoint_every come from `stagecore.CoreFields`."""

    steps: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)  # cross-sections (end sessions) per step
    max_symbols: int = Field(64, ge=2)  # windows per cross-section (a random subset of the symbols)
    window_bars: int | None = Field(None, ge=8)  # None: the policy's window
    warm: int = Field(16, ge=1)  # window positions before this are context only
    lr: float = Field(5e-4, gt=0)
    min_lr: float = Field(5e-5, ge=0)
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    pairs_per_session: int = Field(64, ge=1)  # pairs drawn per cross-section (window position of an end session)
    valid_pairs_per_session: int = Field(256, ge=1)
    valid_sessions: int = Field(60, ge=10)
    eval_every: int = Field(50, ge=1)
    actions: list[float] = Field(default_factory=lambda: [-1.0, 0.0, 1.0])  # positions (fractions of a unit)
    outcome: Literal["sharpe", "pnl"] = "sharpe"
    horizon: int = Field(1, ge=1)  # sessions held; must be one of the policy's horizons
    cost: float | None = Field(None, ge=0)  # round-trip cost fraction; None: round_trip_cost_for(market, session)
    excess: bool = False  # ret minus the session's cross-sectional mean (market-neutral outcome)
    min_sigma: float = Field(0.005, gt=0)  # floor of the daily volatility (fraction)
    clip: float | None = Field(10.0, gt=0)  # |outcome| cap (sigma units for "sharpe", fraction for "pnl")
    freeze_bottom: int = Field(0, ge=0)
    threads: int | None = None

    @model_validator(mode="after")
    def _check(self) -> RewardConfig:
        if 0.0 not in self.actions or len(set(self.actions)) != len(self.actions) or len(self.actions) < 2:
            raise ValueError(f"actions must be distinct, at least two, and include 0 (hold); got {self.actions}")
        if self.window_bars is not None and self.warm >= self.window_bars:
            raise ValueError(f"warm ({self.warm}) must be < window_bars ({self.window_bars})")
        return self


# ---------------------------------------------------------------------- outcomes and pairs
def round_trip_costs(data: TraderData, market: str, cost: float | None = None) -> np.ndarray:
    """float64 [N]: round-trip cost (fraction of traded value) of each row: `cost` if given, else the
    market's cost in force on the row's session (`round_trip_cost_for(market, session)`)."""
    if cost is not None:
        return np.full(data.n, float(cost))
    from quantlm.features.targets import round_trip_cost_for

    per_session = np.array([round_trip_cost_for(market, t) for t in data.calendar], dtype=np.float64)
    return per_session[data.session]


def realized_outcome(ret: np.ndarray, log_sigma: np.ndarray, actions: list[float], cost: float | np.ndarray,
                     kind: str = "sharpe", horizon: int = 1, min_sigma: float = 0.005,
                     clip: float | None = 10.0) -> np.ndarray:
    """float64 [N, A]: (a * ret - |a| * cost) / (sigma sqrt(h)) (kind "sharpe") or its numerator ("pnl"),
    clipped to [-clip, clip]; sigma = max(exp(log_sigma), min_sigma).

    ret [N] fractions (NaN = unknown: the whole row is NaN), log_sigma [N] log daily volatility, cost a
    round-trip fraction (scalar or [N]).
    """
    if kind not in ("sharpe", "pnl"):
        raise ValueError(f"outcome must be 'sharpe' or 'pnl', got {kind!r}")
    a = np.asarray(actions, dtype=np.float64)
    cost = np.asarray(cost, np.float64)
    out = np.asarray(ret, np.float64)[:, None] * a - np.abs(a) * (cost[:, None] if cost.ndim else cost)
    if kind == "sharpe":
        out = out / outcome_scale(log_sigma, horizon, min_sigma)[:, None]
    return out if clip is None else np.clip(out, -clip, clip)


def excess_returns(ret: np.ndarray, session: np.ndarray) -> np.ndarray:
    """ret minus the mean of the finite rets of its session (NaN stays NaN)."""
    ok = np.isfinite(ret)
    n = int(session.max()) + 1 if len(session) else 0
    total = np.bincount(session[ok], weights=ret[ok].astype(np.float64), minlength=n)
    count = np.bincount(session[ok], minlength=n)
    return ret - total[session] / np.maximum(count[session], 1)


def outcome_scale(log_sigma: np.ndarray, horizon: int = 1, min_sigma: float = 0.005) -> np.ndarray:
    """float64 [N]: max(exp(log_sigma), min_sigma) * sqrt(horizon), the risk unit of a "sharpe" outcome."""
    return np.maximum(np.exp(np.asarray(log_sigma, np.float64)), min_sigma) * np.sqrt(horizon)


def make_pairs(outcome: np.ndarray, group: np.ndarray, n_pairs: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """(winner, loser) flat indices into outcome.reshape(-1) ([K, A] -> K*A candidates).

    Per group (cross-section) with >= 2 known candidates, `n_pairs` candidate pairs are drawn
    uniformly with replacement; pairs with equal outcomes (ties, or a candidate with itself) are
    dropped, so a group gives at most n_pairs. NaN outcomes are never candidates.
    """
    A = outcome.shape[1]
    flat = outcome.reshape(-1)
    cand = np.flatnonzero(np.isfinite(flat))
    g = np.repeat(np.asarray(group), A)[cand]
    order = cand[np.argsort(g, kind="stable")]
    _, first, count = np.unique(g[np.argsort(g, kind="stable")], return_index=True, return_counts=True)
    keep = count >= 2
    f, c = np.repeat(first[keep], n_pairs), np.repeat(count[keep], n_pairs)
    i = order[f + np.minimum((rng.random(len(f)) * c).astype(np.int64), c - 1)]
    j = order[f + np.minimum((rng.random(len(f)) * c).astype(np.int64), c - 1)]
    d = flat[i] - flat[j]
    ok = d != 0
    return np.where(d > 0, i, j)[ok], np.where(d > 0, j, i)[ok]


def bradley_terry_loss(r_win: torch.Tensor, r_lose: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(r_win - r_lose) (nats per pair)."""
    return -F.logsigmoid(r_win - r_lose).mean()


def pairwise_accuracy(reward: np.ndarray, win: np.ndarray, lose: np.ndarray) -> float:
    """Fraction of pairs with reward[win] > reward[lose] (flat indices; a predicted tie counts 1/2)."""
    if len(win) == 0:
        return float("nan")
    d = reward.reshape(-1)[win] - reward.reshape(-1)[lose]
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


# ---------------------------------------------------------------------- model
class RewardModel(nn.Module):
    """A trader copy (trunk + inputs) with a reward head: r(bar, a) for every action, r(bar, hold) = 0."""

    def __init__(self, trader: TraderModel, actions: list[float], meta: dict | None = None) -> None:
        super().__init__()
        self.trader, self.actions = trader, [float(a) for a in actions]
        self.meta = dict(meta or {})
        self.hold = self.actions.index(0.0)
        self.head = _head(trader.trunk.size.hidden, len(self.actions))
        nn.init.normal_(self.head[-1].weight, std=0.02)
        nn.init.zeros_(self.head[-1].bias)

    def from_hidden(self, bar_hidden: torch.Tensor) -> torch.Tensor:
        """[..., H] -> rewards [..., A] (the hold column is 0)."""
        g = self.head(bar_hidden).float()
        return g - g[..., self.hold:self.hold + 1]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rewards [B, n, A] for every bar of a batch of windows (TraderModel inputs)."""
        bar_h, _ = self.trader.hidden(batch["input_ids"], batch["calendar_ids"], batch["features"],
                                      batch.get("text"), batch.get("text_weight"), batch.get("factors"))
        return self.from_hidden(bar_h)

    reward = forward

    @torch.no_grad()
    def reward_rows(self, data: TraderData, rows: np.ndarray, warm: int = 16, batch_size: int = 128,
                    window: int | None = None) -> np.ndarray:
        """float64 [len(rows), A]: rewards of the flat `rows` of `data` (each with >= warm bars of context)."""
        from quantlm.finetune.score import predict_rows

        if len(rows) == 0:
            return np.zeros((0, len(self.actions)))
        h = predict_rows(self.trader, data, rows, warm=warm, batch_size=batch_size, window=window,
                         keep=("bar_hidden",))["bar_hidden"]
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        out = self.from_hidden(torch.from_numpy(h).to(dev)).cpu().double().numpy()
        self.train(was)
        return out

    def save(self, directory: str | Path, tokenizer=None) -> Path:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.trader.save(d / "trader", tokenizer=tokenizer)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(d / REWARD_WEIGHTS))
        (d / REWARD_JSON).write_text(json.dumps({"format": REWARD_FORMAT, "actions": self.actions, **self.meta}, indent=2))
        return d

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> RewardModel:
        from safetensors.torch import load_file

        d = resolve_model_dir(directory, REWARD_JSON)
        meta = json.loads((d / REWARD_JSON).read_text())
        if meta.pop("format", None) != REWARD_FORMAT:
            raise ValueError(f"{d / REWARD_JSON}: unknown format")
        model = cls(TraderModel.load(d / "trader"), meta.pop("actions"), meta)
        model.head.load_state_dict(load_file(str(d / REWARD_WEIGHTS)))
        return model.to(device)


def known_returns(data: TraderData, when, column: int, excess: bool = False) -> np.ndarray:
    """ret[:, column] known by the close of `when` (NaN otherwise), optionally as session excess returns."""
    ret = data.targets_known(when)["ret"][:, column].astype(np.float64)
    return excess_returns(ret, data.session) if excess else ret


def horizon_column(data: TraderData, h: int) -> int:
    if h not in data.horizons:
        raise FinetuneDataError(f"horizon {h} is not one of the policy's horizons {data.horizons}")
    return data.horizons.index(h)


# ---------------------------------------------------------------------- training
def train_reward(cfg: RewardConfig, store, out: str | Path, policy: str | Path, train_end, seed: int = 0,
                 progress: bool = False, resume: bool = False, stop_after: int | None = None) -> Path:
    """Train a reward model initialised from the trader `policy`; returns the run folder (model in run/model).

    Runs on the training core: resume continues from the newest checkpoint in out/checkpoints
    (bit-identical on CPU); stop_after ends the run at that step with a checkpoint and no model.
    """
    from quantlm.finetune.common import save_trader, split_rows, start_run
    from quantlm.finetune.lora import freeze_bottom

    t0 = time.time()
    store, out = start_run(store, out, cfg.threads, seed)
    policy_model, tok, data, _ = load_policy_data(policy, store, train_end)
    W = cfg.window_bars or policy_model.spec.window_bars
    if cfg.warm >= W or W > policy_model.trunk.max_bars:
        raise FinetuneDataError(f"window_bars {W} must exceed warm {cfg.warm} and fit the trunk ({policy_model.trunk.max_bars})")
    jh = horizon_column(data, cfg.horizon)
    last_train, end, _ = split_rows(data, train_end, cfg.valid_sessions)
    cost = round_trip_costs(data, policy_model.spec.market, cfg.cost)
    logsig = data.features[:, 6]
    spec = (cfg.actions, cost, cfg.outcome, cfg.horizon, cfg.min_sigma, cfg.clip)
    out_train = realized_outcome(known_returns(data, data.calendar[last_train], jh, cfg.excess), logsig, *spec)
    out_valid = realized_outcome(known_returns(data, train_end, jh, cfg.excess), logsig, *spec)
    valid_rows = np.flatnonzero((data.session > last_train) & (data.session <= end) & np.isfinite(out_valid[:, 0])
                                & (bar_history(data) >= cfg.warm))  # as in training: >= warm bars of history
    vw, vl = make_pairs(out_valid[valid_rows], data.session[valid_rows], cfg.valid_pairs_per_session,
                        np.random.default_rng([seed, 1]))
    if len(vw) == 0:
        raise FinetuneDataError("no held-out pairs: raise valid_sessions")
    A = len(cfg.actions)
    a = np.asarray(cfg.actions)
    vinfo = _pair_types(valid_rows, A, a, vw, vl)
    base = realized_outcome(np.zeros(len(valid_rows)), logsig[valid_rows], cfg.actions, cost[valid_rows], cfg.outcome,
                            cfg.horizon, cfg.min_sigma, cfg.clip)  # the cost-only model (no alpha)

    model = RewardModel(copy.deepcopy(policy_model), cfg.actions,
                        {"outcome": cfg.outcome, "horizon": cfg.horizon, "cost": cfg.cost, "excess": cfg.excess, "min_sigma": cfg.min_sigma,
                         "clip": cfg.clip, "market": policy_model.spec.market,
                         "train_end": str(pd.Timestamp(train_end).date()),
                         "last_train_session": str(data.calendar[last_train].date()), "policy": str(policy)})
    freeze_bottom(model.trader, cfg.freeze_bottom)
    sampler = CrossSectionSampler(data, W, last_train, cfg.max_symbols, seed)
    bos = model.trader.trunk.special_ids["bos"]

    def pairs_at(i: int):
        """(window starts, winner, loser) of micro-batch i: a pure function of (seed, i)."""
        starts, block = sampler.sample(i, cfg.batch_size)
        rows, group = sampler.groups(starts, block, cfg.warm)
        w, lo = make_pairs(out_train[rows].reshape(-1, A), group.reshape(-1), cfg.pairs_per_session,
                           np.random.default_rng([seed, i, 2]))
        return starts, w, lo

    def batch_at(i: int) -> dict[str, np.ndarray]:
        starts, w, lo = pairs_at(i)
        return {**data.gather(starts, W, bos), "win": w, "lose": lo}

    def loss_fn(m, batch: dict[str, torch.Tensor], step: int):
        r = m(batch)[:, cfg.warm:].reshape(-1)
        rw, rl = r[batch["win"].long()], r[batch["lose"].long()]
        if len(rw) == 0:  # no pair with different outcomes: a zero loss that keeps the graph
            return r.sum() * 0.0, {"train_accuracy": r.new_zeros(()), "pairs": r.new_zeros(())}
        return bradley_terry_loss(rw, rl), {"train_accuracy": ((rw - rl) > 0).float().mean(),
                                            "pairs": torch.tensor(float(len(rw)))}

    def evaluate() -> dict[str, float]:
        r = model.reward_rows(data, valid_rows, warm=cfg.warm, window=W)
        res = {"pairwise_accuracy": pairwise_accuracy(r, vw, vl)}
        for name, m in vinfo.items():
            res[f"pairwise_accuracy_{name}"] = pairwise_accuracy(r, vw[m], vl[m])
        res["bt_loss"] = float(bradley_terry_loss(torch.from_numpy(r.reshape(-1)[vw]), torch.from_numpy(r.reshape(-1)[vl])))
        return res

    model.train()
    result = run_on_core("reward", model, cfg, out, loss_fn, batch_at, evaluate, "pairwise_accuracy",
                         cfg.eval_every, progress=progress, resume=resume, stop_after=stop_after)
    if not result.finished:
        return out  # stopped early: a checkpoint to resume from, no model yet
    n_micro = cfg.steps * cfg.grad_accum
    n_pairs = sum(len(pairs_at(i)[1]) for i in range(n_micro))
    save_trader(model, tok, out)  # out/model, atomically (RewardModel.save has the same signature)
    best, last = unprefix(result.best), unprefix(result.last)
    summary = {**best, "best_step": result.best["step"],
               "pairwise_accuracy_last": last["pairwise_accuracy"],
               "baseline_cost_only_accuracy": pairwise_accuracy(base, vw, vl),
               "pairs_train": int(n_pairs), "pairs_valid": int(len(vw)),
               **{f"pairs_valid_{k}": int(m.sum()) for k, m in vinfo.items()},
               "valid_rows": int(len(valid_rows)), "last_train_session": str(data.calendar[last_train].date()),
               "first_valid_session": str(data.calendar[data.session[valid_rows].min()].date()),
               "train_end": str(pd.Timestamp(train_end).date()), "round_trip_cost": float(cost[valid_rows].mean()), "outcome": cfg.outcome,
               "steps": cfg.steps, "seed": seed, "seconds": round(time.time() - t0, 1)}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "config.json").write_text(json.dumps({"reward": cfg.model_dump(), "policy": str(policy),
                                                 "train_end": str(train_end), "seed": seed}, indent=2, default=str))
    from quantlm.model.card import refresh_run_card

    refresh_run_card(out, "reward", out / "model" / "trader")  # the model card records this stage's config and metrics
    return out


def _pair_types(rows: np.ndarray, A: int, actions: np.ndarray, win: np.ndarray, lose: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of the pair types: same_symbol (same bar, different actions), same_action (same non-zero
    action, different stocks: the cross-sectional part)."""
    same_bar = rows[win // A] == rows[lose // A]
    same_act = (win % A == lose % A) & (actions[win % A] != 0)
    return {"same_symbol": same_bar, "same_action": same_act & ~same_bar}

