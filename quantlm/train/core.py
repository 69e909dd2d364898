"""The training core every stage runs on (pretraining, SFT; reward / RL / distillation port onto it).

How a stage uses it:

    from quantlm.train.core import TrainStage, Trainer
    from quantlm.train.optim import OptimConfig

    stage = TrainStage(
        name="sft",
        model=model,                                  # an nn.Module; the core prepares it (DDP / FSDP / DeepSpeed)
        loss_fn=lambda model, batch, step: (loss, {"direction": d_loss}),   # logs: tensors (or floats)
        # `model` there is a ModelView: model(...) runs the prepared (DDP) module, model.spec etc. read the raw one
        batch_at=lambda i: sampler.batch(i),          # micro-batch i on the host, a pure function of i
        optim=OptimConfig(max_steps=200, lr=1e-3, ...),
        evaluate=lambda model: {"valid_rank_ic": ...}, select="valid_rank_ic",   # optional
        eval_every=50, log_every=10, checkpoint_every=100)
    trainer = Trainer(stage, run_dir)
    result = trainer.fit(resume=False)                # best weights restored into the model if `select`
    state = trainer.full_state_dict()                 # collective under FSDP / ZeRO-3; then save your folder
    trainer.close()

What the core handles, so a stage does not:
- Data: micro-batch i is `batch_at(i)` with i = (step * grad_accum + micro) * world_size + rank, so
  the global batch of optimizer step s is micro-batches [s*A*W, (s+1)*A*W) whatever the split between
  processes (W) and accumulation (A): 2 processes x 1 micro-batch and 1 process x 2 micro-batches
  train on the same data. Batches are built ahead by `quantlm.train.prefetch.Prefetcher` (one
  thread, bounded queue, order = f(i); pinned + non_blocking on CUDA). `batch_at` must not use
  torch's global RNG.
- Optimizer (`optim.make_optimizer`: AdamW, decay on matrices only, fused on CUDA) and the
  schedule (`optim.lr_at`, set on the param groups before every optimizer step, so it needs no
  scheduler state and resumes from the step alone).
- Gradient accumulation with `accelerator.accumulate` (no gradient all-reduce on the first A-1
  micro-batches; the loss is divided by A by `accelerator.backward`), clipping with
  `accelerator.clip_grad_norm_` on the sync micro-batch (DeepSpeed clips inside its engine).
- Mixed precision: `accelerator.autocast()` around `loss_fn`; bf16, or fp16 with accelerate's grad
  scaler. On CPU a run is plain fp32 unless `optim.cpu_autocast` is set.
- Distribution: `accelerate launch --config_file configs/accelerate/<cpu|multi_gpu|fsdp|deepspeed_zero2>.yaml`
  (or `--cpu --num_processes 2` for gloo on CPU); the model and optimizer go through `prepare`.
- torch.compile (`optim.compile`): the model is compiled AFTER accelerate wraps it in DDP, as the
  PyTorch docs recommend (TorchDynamo's DDPOptimizer then splits graphs at DDP bucket boundaries so
  all-reduce overlaps backward); `unwrap_model` strips both layers.
- Evaluation every `eval_every` steps and at max_steps (model in eval mode, no grad); with `select`
  the best weights are kept once, here (`optim.BestState`), saved in checkpoints and restored at the end.
- Atomic checkpoints (`checkpoints/step_N/`: accelerate state = model, optimizer, scaler, RNG states;
  best.pt; trainer.json written last; temp folder + os.replace; newest `keep_checkpoints` kept) and
  exact resume: on CPU a resumed run ends bit-identical to an uninterrupted one.
- Training forwards build no KV cache: `use_cache` is False on every transformers config inside the
  model during `fit` (restored after).
- Logging: metrics.jsonl + TensorBoard (tb/) + MLflow when `mlflow=True` and mlflow is importable,
  rich progress bar, all on the main process. Losses stay device tensors, summed across micro-steps;
  the only host syncs are on log steps (every `log_every` optimizer steps).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from quantlm.train.config import ConfigError
from quantlm.train.optim import BestState, OptimConfig, lr_at, make_optimizer
from quantlm.train.prefetch import Prefetcher

LossFn = Callable[[torch.nn.Module, dict[str, Any], int], tuple[torch.Tensor, dict[str, Any]]]


@dataclass
class TrainStage:
    """What a stage hands the core (see the module docstring)."""

    name: str
    model: torch.nn.Module
    loss_fn: LossFn  # (ModelView of the prepared model, device batch, optimizer step) -> (scalar loss, logs with the same keys each call)
    batch_at: Callable[[int], dict[str, Any]]  # global micro-batch index -> host batch
    optim: OptimConfig
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None  # called on every process
    select: str | None = None  # evaluate() key whose best value's weights are restored at the end
    select_mode: Literal["max", "min"] = "max"
    eval_every: int = 0  # optimizer steps; 0 = only at max_steps
    log_every: int = 10  # optimizer steps
    checkpoint_every: int = 0  # optimizer steps; 0 = only at the end (if checkpoint_at_end)
    checkpoint_at_end: bool = True
    keep_checkpoints: int = 2
    tokens_per_batch: int | None = None  # tokens in one micro-batch (for tokens/s)
    flops_per_token: float | None = None  # training FLOPs per token (for TFLOP/s)
    prefetch_depth: int = 2
    extra_state: dict[str, Any] = field(default_factory=dict)  # saved in each trainer.json
    start_info: dict[str, Any] = field(default_factory=dict)  # logged as step 0 {"event": "start", ...} of a fresh run


@dataclass
class TrainResult:
    step: int  # optimizer steps done
    finished: bool  # step == max_steps (False after stop_after)
    best: dict[str, Any]  # metrics of the restored best evaluation (+ "step"); {} without `select`
    last: dict[str, Any]  # the last metrics row written
    state: dict[str, Any]  # trainer.json of the checkpoint resumed from ({} for a fresh run)


class ModelView:
    """What `loss_fn` and `evaluate` receive: calls go to the prepared model (DDP / FSDP / compiled), so
    gradients are synchronised, and attribute reads (model.spec, model.trunk, ...) go to the raw module."""

    def __init__(self, prepared: torch.nn.Module, raw: torch.nn.Module) -> None:
        self.__dict__["_prepared"], self.__dict__["_raw"] = prepared, raw

    def __call__(self, *args, **kwargs):
        return self._prepared(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._raw, name)


class RunLog:
    """metrics.jsonl + TensorBoard (+ MLflow), main process only; rows are {"step": N, ...}."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None = None, mlflow: bool = False,
                 name: str = "train") -> None:
        """A fresh metrics.jsonl, or on resume the existing one without rows after `resume_step` (steps the
        interrupted run did past its last checkpoint are done again)."""
        self.enabled, self.writer, self.mlflow = enabled, None, None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "metrics.jsonl"
        kept = []
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
        self.path.write_text("".join(line + "\n" for line in kept))
        self.writer = SummaryWriter(str(run_dir / "tb"))
        if mlflow:
            try:
                import mlflow as mlf
            except ImportError:
                mlf = None
            if mlf is not None:
                self.mlflow = mlf
                mlf.start_run(run_name=name)

    def write(self, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        scalars = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics(scalars, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.mlflow is not None:
            self.mlflow.end_run()


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (trainer.json present), oldest first."""
    d = Path(run_dir) / "checkpoints"
    return sorted(p for p in d.glob("step_*") if (p / "trainer.json").exists()) if d.exists() else []


def save_checkpoint(accelerator, run_dir: Path, step: int, keep: int, extra: dict,
                    best: BestState | None = None) -> Path:
    """Atomic: accelerate state (+ best.pt) into checkpoints/.tmp-step_N, trainer.json last, then os.replace."""
    ckdir = Path(run_dir) / "checkpoints"
    final, tmp = ckdir / f"step_{step:08d}", ckdir / f".tmp-step_{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, **extra}
        if best is not None and best.state is not None:
            torch.save(best.state, tmp / "best.pt")
            state["best"] = best.metrics
        (tmp / "trainer.json").write_text(json.dumps(state, indent=2, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def use_cpu() -> bool:
    """CPU training: no CUDA here, or ACCELERATE_USE_CPU set (`accelerate launch --cpu`)."""
    from accelerate.utils import parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


def process_state():
    """accelerate's PartialState; on CPU under a multi-process launcher (LOCAL_RANK / WORLD_SIZE set)
    it is MULTI_CPU with gloo, which accelerate only chooses when told cpu=True."""
    from accelerate import PartialState

    return PartialState(cpu=use_cpu())


def make_accelerator(optim: OptimConfig):
    """An Accelerator for this stage: mixed precision per `optim` (fp32 on CPU unless cpu_autocast)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    state = process_state()
    mp = optim.mixed_precision if (state.device.type != "cpu" or optim.cpu_autocast) else "no"
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision", mp) != mp and state.num_processes == 1:
        AcceleratorState._reset_state()  # a later stage in the same process asks for another precision
    return Accelerator(cpu=use_cpu(), mixed_precision=mp, gradient_accumulation_steps=optim.grad_accum,
                       step_scheduler_with_optimizer=False)


class Trainer:
    """Runs one TrainStage (see the module docstring); `fit` then `full_state_dict` then `close`."""

    def __init__(self, stage: TrainStage, run_dir: str | Path, progress: bool = False, mlflow: bool = False) -> None:
        self.stage, self.run_dir = stage, Path(run_dir)
        self.accelerator = acc = make_accelerator(stage.optim)
        self.main = acc.is_main_process
        optimizer = make_optimizer(stage.model, stage.optim, fused=acc.device.type == "cuda")
        self.model, self.optimizer = acc.prepare(stage.model, optimizer)
        if stage.optim.compile:
            self.model = torch.compile(self.model)  # after the DDP / FSDP wrap (see the module docstring)
        self.raw = acc.unwrap_model(self.model)
        self.view = self.raw if self.model is self.raw else ModelView(self.model, self.raw)
        self.best = BestState(stage.select, stage.select_mode) if stage.select else None
        self.progress, self.mlflow = progress, mlflow
        self.log: RunLog | None = None

    # ------------------------------------------------------------------ helpers
    def micro_index(self, step: int, micro: int) -> int:
        acc = self.accelerator
        return (step * self.stage.optim.grad_accum + micro) * acc.num_processes + acc.process_index

    def _evaluate(self) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad(), self.accelerator.autocast():
            metrics = dict(self.stage.evaluate(self.view))
        self.model.train()
        return metrics

    def _checkpoint(self, step: int, tokens: int) -> None:
        extra = {"tokens": tokens, "stage": self.stage.name,
                 "sampler": {"kind": "stateless", "next_micro_batch": self.micro_index(step, 0)},
                 **self.stage.extra_state}
        save_checkpoint(self.accelerator, self.run_dir, step, self.stage.keep_checkpoints, extra, self.best)

    def _restore(self, resume: bool) -> dict:
        ckpts = list_checkpoints(self.run_dir)
        if resume and not ckpts:
            raise ConfigError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}")
        if not resume and ckpts:
            raise ConfigError(f"{self.run_dir} already holds checkpoints: pass --resume or choose another --out")
        if not resume:
            return {}
        self.accelerator.load_state(str(ckpts[-1]))
        state = json.loads((ckpts[-1] / "trainer.json").read_text())
        if self.best is not None and (ckpts[-1] / "best.pt").exists():
            self.best.state = torch.load(ckpts[-1] / "best.pt", map_location="cpu", weights_only=True)
            self.best.metrics = state["best"]
        return state

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train to optim.max_steps (or stop at `stop_after` with a checkpoint, schedule unchanged)."""
        st, acc, oc = self.stage, self.accelerator, self.stage.optim
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        state = self._restore(resume)
        step, tokens = int(state.get("step", 0)), int(state.get("tokens", 0))
        last_step = min(oc.max_steps, stop_after) if stop_after is not None else oc.max_steps
        self.log = RunLog(self.run_dir, self.main, step if resume else None, mlflow=self.mlflow, name=st.name)
        if not resume and st.start_info:
            self.log.write(0, event="start", **st.start_info)
        tokens_per_step = (st.tokens_per_batch or 0) * oc.grad_accum * acc.num_processes
        indices = [self.micro_index(s, m) for s in range(step, last_step) for m in range(oc.grad_accum)]
        bar = progress_bar(self.progress and self.main)
        task = bar.add_task(st.name, total=oc.max_steps, completed=step, info="")
        sums: dict[str, torch.Tensor] = {}
        last_row: dict[str, Any] = {}
        n_logged, t0, tok_window = 0, time.perf_counter(), 0
        self.model.train()
        caches = _no_kv_cache(self.raw)
        prefetch = Prefetcher(st.batch_at, indices, acc.device, st.prefetch_depth)
        batches = iter(prefetch)
        try:
            with bar:
                while step < last_step:
                    lr = lr_at(step, oc)
                    for g in self.optimizer.param_groups:
                        g["lr"] = lr
                    for _ in range(oc.grad_accum):
                        batch = next(batches)
                        with acc.accumulate(self.model):
                            with acc.autocast():
                                loss, logs = st.loss_fn(self.view, batch, step)
                            acc.backward(loss)
                            if acc.sync_gradients and oc.grad_clip > 0:
                                acc.clip_grad_norm_(self.model.parameters(), oc.grad_clip)
                            self.optimizer.step()
                            self.optimizer.zero_grad(set_to_none=True)
                        _accumulate(sums, {"loss": loss, **logs}, oc.grad_accum)
                    step += 1
                    n_logged += 1
                    tokens += tokens_per_step
                    tok_window += tokens_per_step
                    row: dict[str, Any] = {}
                    if step % st.log_every == 0 or step == last_step:
                        row = self._means(sums, n_logged) | {"lr": lr}
                        if tokens_per_step:
                            tps = tok_window / max(time.perf_counter() - t0, 1e-9)
                            row |= {"tokens_per_s": tps, "tokens": tokens}
                            if st.flops_per_token:
                                row["tflops"] = tps * st.flops_per_token / 1e12
                        bar.update(task, completed=step, info=f"loss {row['loss']:.4f}")
                        sums, n_logged, t0, tok_window = {}, 0, time.perf_counter(), 0
                    if st.evaluate is not None and ((st.eval_every and step % st.eval_every == 0)
                                                    or step == oc.max_steps):
                        metrics = self._evaluate()
                        row |= metrics
                        if self.best is not None:
                            self.best.update(step, metrics, self.raw.state_dict())
                    if row:
                        self.log.write(step, **row)
                        last_row = {"step": step, **row}
                    if (st.checkpoint_every and step % st.checkpoint_every == 0) or (
                            step == last_step and (st.checkpoint_at_end or step < oc.max_steps)):
                        self._checkpoint(step, tokens)
        finally:
            prefetch.close()
            for config, value in caches:
                config.use_cache = value
        finished = step >= oc.max_steps
        best: dict[str, Any] = {}
        if finished and self.best is not None and self.best.state is not None:
            self.raw.load_state_dict(self.best.state)
            best = dict(self.best.metrics)
        return TrainResult(step, finished, best, last_row, state)

    def _means(self, sums: dict[str, torch.Tensor], n_steps: int) -> dict[str, float]:
        """Mean per optimizer step of each logged value, averaged over processes: the one host sync."""
        if not sums:
            return {}
        keys = sorted(sums)
        vec = torch.stack([sums[k].to(self.accelerator.device) for k in keys]) / max(n_steps, 1)
        vec = self.accelerator.reduce(vec, reduction="mean").cpu()
        return {k: float(v) for k, v in zip(keys, vec, strict=True)}

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights on the CPU (collective: call on every process; gathers FSDP / ZeRO-3 shards)."""
        full = self.accelerator.get_state_dict(self.model)
        return {k: v.detach().cpu() for k, v in full.items()} if full is not None else {}

    def close(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.log is not None:
            self.log.close()
        self.accelerator.end_training()


def _no_kv_cache(model: torch.nn.Module) -> list[tuple[Any, bool]]:
    """Set use_cache=False on every transformers config inside `model` (a training forward never needs
    a KV cache); returns (config, old value) pairs to restore."""
    seen, out = set(), []
    for m in model.modules():
        config = getattr(m, "config", None)
        if config is not None and id(config) not in seen and isinstance(getattr(config, "use_cache", None), bool):
            seen.add(id(config))
            out.append((config, config.use_cache))
            config.use_cache = False
    return out


def _accumulate(sums: dict[str, torch.Tensor], logs: dict[str, Any], grad_accum: int) -> None:
    """sums[k] += value / grad_accum, kept on the value's device (no host sync)."""
    for k, v in logs.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().float().reshape(())
        else:
            v = torch.tensor(float(v))
        prev = sums.get(k)
        if prev is not None and prev.device != v.device:
            v = v.to(prev.device)
        sums[k] = v / grad_accum if prev is None else prev + v / grad_accum


def progress_bar(enabled: bool):
    """A rich progress bar (disabled: a no-op with the same interface)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=not enabled)
