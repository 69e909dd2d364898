"""LoRA fine-tuning of any local Hugging Face causal LM on buy / hold / sell prompts.

- Adapters (peft LoRA) go on every linear layer inside the decoder blocks (found generically by
  `quantlm.llm.blocks`, so Qwen2, Llama, Mistral, Gemma, Phi, GPT-2 style ... need no list), in the
  blocks above the bottom `freeze_bottom` only; the base weights are frozen, so the bottom layers do
  not change at all.
- Loss on the answer tokens only: a sequence is prompt ids + answer ids (the answer word tokenised on
  its own, no special tokens, then " +35bp" when answers carry a return), labels are -100 on the
  prompt and padding.
- Training data: the store's point-in-time prompts up to `train_end` (`run_sft`), or `quantlm finetune
  export` JSON Lines (`run_sft(data=FILE)`).
- Training runs on the one training core (`quantlm.train.core`): this module keeps the loss (the
  model's cross-entropy on the answer tokens) and the batches (`sft_batch_at`: micro-batch i is a
  pure function of (seed, i), a seeded permutation per epoch, right padding); the core does AdamW
  over the trainable (LoRA) parameters only, the lr schedule (constant by default: no warmup,
  min_lr = lr), gradient accumulation, clipping, bf16 on CUDA (fp32 on CPU), logging
  (metrics.jsonl, one row per step) and checkpoints every `checkpoint_every` steps in `out/checkpoints`
  holding the trainable weights, optimizer and RNG states only (`lora_checkpoint_hooks`: the frozen
  base is reloaded from its folder), so `resume` continues bit-identically on CPU.
- Output: `adapter/` (adapter and tokenizer), `llm.json` (base folder, prompt settings, steps,
  losses) and, with merge=True, `merged/` (base + adapter as one plain model folder).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantlm.llm.serialize import ANSWERS, Examples, PromptConfig

BAR_LINE = re.compile(r"r[+-]\d+ g[+-]\d+ h-?\d+ v\d+")  # one encoded bar (quantlm.llm.serialize)


@dataclass
class CoreSettings:
    """Training-core keys shared by LoRA SFT and DPO (units: optimizer steps; lr per step)."""

    grad_accum: int = 1  # micro-batches per optimizer step
    checkpoint_every: int = 0  # steps between checkpoints in out/checkpoints; 0 = none
    keep_checkpoints: int = 1
    warmup_steps: int = 0
    min_lr: float | None = None  # cosine floor; None = lr (a constant rate)
    weight_decay: float = 0.0  # on the LoRA matrices
    grad_clip: float = 0.0  # max global grad norm; 0 = none
    mixed_precision: str = "bf16"  # on CUDA (a CPU run is fp32)

    def optim(self, steps: int, lr: float):
        """The core's OptimConfig for `steps` optimizer steps at rate `lr`."""
        from quantlm.train.optim import OptimConfig

        return OptimConfig(max_steps=steps, lr=lr, min_lr=lr if self.min_lr is None else min(self.min_lr, lr),
                           warmup_steps=self.warmup_steps, weight_decay=self.weight_decay, grad_clip=self.grad_clip,
                           grad_accum=self.grad_accum, mixed_precision=self.mixed_precision)


@dataclass
class SFTSettings(CoreSettings):
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    freeze_bottom: int = 0
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0


def answer_ids(tokenizer) -> dict[str, list[int]]:
    """Token ids of each answer, tokenised on its own."""
    return {a: tokenizer(a, add_special_tokens=False)["input_ids"] for a in ANSWERS}


def encode(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels): labels -100 everywhere but the answer's tokens.

    The answer's first word is tokenised on its own (as the scorer does), the rest (" +35bp") after it.
    """
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    word, _, rest = answer.partition(" ")
    a = tokenizer(word, add_special_tokens=False)["input_ids"]
    if rest:
        a = a + tokenizer(" " + rest, add_special_tokens=False)["input_ids"]
    return p + a, [-100] * len(p) + a


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int):
    import torch

    n = max(len(x) for x, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    return ids, mask, labels


def lora_targets(model) -> list[str]:
    """Leaf names of the linear layers inside the decoder blocks (e.g. q_proj, ..., down_proj)."""
    from quantlm.llm.blocks import block_linears

    return sorted({n.rsplit(".", 1)[-1] for n in block_linears(model)[0]})


def load_base(base, device: str = "cpu", qlora: bool = False):
    """(tokenizer, model) of a local folder through the Auto classes; a missing pad token becomes eos.

    fp32 weights; with qlora, the linear weights in 4-bit NF4 (bitsandbytes, bf16 compute) on a CUDA
    device, prepared for k-bit training by peft. QLoRA needs a CUDA GPU and bitsandbytes: elsewhere it
    raises ConfigError (a ValueError; the CLI prints it, exit 2) before loading anything.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = Path(base)
    if not (base / "config.json").exists():
        raise FileNotFoundError(f"{base}: not a Hugging Face model folder (no config.json)")
    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    if qlora:
        import importlib.util

        from quantlm.train.config import ConfigError

        if not str(device).startswith("cuda") or not torch.cuda.is_available():
            raise ConfigError("QLoRA (4-bit) needs a CUDA GPU: pass device='cuda' on a machine with one")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("QLoRA (4-bit) needs bitsandbytes: pip install bitsandbytes")
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                               bnb_4bit_use_double_quant=True)
        index = torch.device(device).index or 0
        model = AutoModelForCausalLM.from_pretrained(base, quantization_config=q, device_map={"": index})
        return tok, prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    return tok, model


def add_lora(model, s: SFTSettings):
    """peft LoRA on every linear layer of the decoder blocks >= s.freeze_bottom (full module names, so no
    family-specific layer pattern is needed); everything else frozen. The adapters' random
    initialisation is seeded by s.seed (torch's global generator), so a run is reproducible."""
    import torch
    from peft import LoraConfig, get_peft_model

    from quantlm.llm.blocks import block_linears

    names, transposed = block_linears(model, s.freeze_bottom)
    cfg = LoraConfig(r=s.lora_rank, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout, target_modules=names,
                     task_type="CAUSAL_LM", fan_in_fan_out=transposed)
    torch.manual_seed(s.seed)
    return get_peft_model(model, cfg)


def sft_batch_at(data: list[tuple[list[int], list[int]]], batch_size: int, seed: int, pad: int
                 ) -> Callable[[int], dict[str, Any]]:
    """Micro-batch i as a pure function of (seed, i): epoch e = i // (n // batch_size) visits the examples
    in the order of np.random.default_rng([seed, e]).permutation(n); right padded by `collate`."""
    n = len(data)
    size = min(batch_size, n)
    per_epoch = n // size

    def batch_at(i: int) -> dict[str, Any]:
        order = np.random.default_rng([seed, i // per_epoch]).permutation(n)
        j = (i % per_epoch) * size
        ids, mask, labels = collate([data[k] for k in order[j:j + size]], pad)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return batch_at


def lora_checkpoint_hooks(accelerator) -> None:
    """Checkpoints hold the trainable parameters only (`trainable.safetensors`), not the frozen base:
    accelerate's save / load pre-hooks write and read them and take the model out of its own lists."""
    from safetensors.torch import load_file, save_file

    def save(models: list, weights: list, output_dir: str) -> None:
        if accelerator.is_main_process:
            raw = accelerator.unwrap_model(models[0])
            save_file({k: v.detach().cpu().contiguous() for k, v in raw.named_parameters() if v.requires_grad},
                      str(Path(output_dir) / "trainable.safetensors"))
        weights.clear()

    def load(models: list, input_dir: str) -> None:
        import torch

        raw = accelerator.unwrap_model(models[0])
        saved = load_file(str(Path(input_dir) / "trainable.safetensors"))
        params = {k: v for k, v in raw.named_parameters() if v.requires_grad}
        if set(saved) != set(params):
            raise ValueError(f"{input_dir}: the checkpoint's trainable parameters differ from this model's "
                             f"({len(saved)} saved, {len(params)} here): resume with the same settings")
        with torch.no_grad():
            for k, v in params.items():
                v.copy_(saved[k].to(v.device))
        models.clear()

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def fit_lora(name: str, model, loss_fn, batch_at: Callable[[int], dict[str, Any]], optim, s: CoreSettings,
             out: Path | None, extra_state: dict, resume: bool = False, stop_after: int | None = None,
             log=None) -> tuple[list[float], bool]:
    """Train the peft `model` on the core in run folder `out` (a temporary one when None);
    returns (loss per optimizer step, finished). The model is left in eval mode on the core's device.

    extra_state goes into each checkpoint's trainer.json; a resume with different extra_state
    (settings, example count) is refused before anything trains.
    """
    from quantlm.train.config import ConfigError
    from quantlm.train.core import Trainer, TrainStage, list_checkpoints

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(out) if out is not None else Path(tmp)
        extra = json.loads(json.dumps(extra_state, default=str))
        if resume and list_checkpoints(run_dir):
            saved = json.loads((list_checkpoints(run_dir)[-1] / "trainer.json").read_text())
            differ = sorted(k for k in extra if saved.get(k) != extra[k])
            if differ:
                raise ConfigError(f"--resume: {run_dir} was trained with other {', '.join(differ)} "
                                 f"(checkpoint {saved.get(differ[0])!r}, now {extra[differ[0]]!r})")
        stage = TrainStage(name=name, model=model, loss_fn=loss_fn, batch_at=batch_at, optim=optim, log_every=1,
                           checkpoint_every=s.checkpoint_every, checkpoint_at_end=False,
                           keep_checkpoints=s.keep_checkpoints, extra_state=extra)
        trainer = Trainer(stage, run_dir)
        try:
            lora_checkpoint_hooks(trainer.accelerator)
            result = trainer.fit(resume=resume, stop_after=stop_after)
        finally:
            trainer.close()
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    losses = [float(r["loss"]) for r in rows if "loss" in r]
    model.eval()
    if log and losses:
        for k in sorted({*range(0, len(losses), 10), len(losses) - 1}):
            log(f"{name} step {k + 1}/{optim.max_steps} loss {losses[k]:.4f}")
    return losses, result.finished


def train(model, tokenizer, ex: Examples, s: SFTSettings, log=None, out: Path | None = None, resume: bool = False,
          stop_after: int | None = None) -> list[float]:
    """Train `model` (a peft model) for s.steps optimizer steps on the labelled examples, on the core
    (see the module doc); returns the loss of each step (all steps, also those before a resume)."""
    from quantlm.llm.blocks import pad_id

    data = [encode(tokenizer, p, a) for p, a in zip(ex.prompt, ex.answer) if a is not None]
    if not data:
        raise ValueError("no labelled example to train on")

    def loss_fn(m, batch: dict, step: int):
        loss = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        return loss, {}

    extra = {"settings": asdict(s), "examples": len(data)}
    losses, _ = fit_lora("llm-sft", model, loss_fn, sft_batch_at(data, s.batch_size, s.seed, pad_id(tokenizer)),
                         s.optim(s.steps, s.lr), s, out, extra, resume=resume, stop_after=stop_after, log=log)
    return losses


def prompt_stats(tokenizer, ex: Examples, sample: int = 200) -> dict:
    """Token costs measured with `tokenizer` on up to `sample` prompts (spread evenly): tokens_per_bar
    (mean tokens of one encoded bar line with its newline), prompt_tokens_mean / _max, bars_mean."""
    from quantlm.llm.serialize import n_tokens, tokens_per_bar

    if len(ex) == 0:
        return {"tokens_per_bar": 0.0, "prompt_tokens_mean": 0.0, "prompt_tokens_max": 0, "bars_mean": 0.0}
    idx = np.unique(np.linspace(0, len(ex) - 1, min(sample, len(ex))).astype(int))
    lines = [[x for x in ex.prompt[i].splitlines() if BAR_LINE.fullmatch(x)] for i in idx]
    sizes = [n_tokens(tokenizer, ex.prompt[i]) for i in idx]
    return {"tokens_per_bar": round(float(np.mean([tokens_per_bar(tokenizer, x) for x in lines if x])), 3),
            "prompt_tokens_mean": round(float(np.mean(sizes)), 1), "prompt_tokens_max": int(max(sizes)),
            "bars_mean": round(float(np.mean([len(x) for x in lines])), 2)}


def run_sft(base, store, train_end, out, settings: SFTSettings | None = None, prompt: PromptConfig | None = None,
            start=None, merge: bool = False, device: str = "cpu", log=None, data=None, qlora: bool = False,
            resume: bool = False, stop_after: int | None = None) -> dict:
    """Fine-tune `base` on labelled prompts and write `out` (see the module doc); returns llm.json's content.

    Examples: the store's point-in-time prompts of decision sessions start..train_end whose labels are
    known by train_end, or, with `data` (a `quantlm finetune export` JSON Lines file), that file's
    lines (store and train_end then unused). llm.json records the measured token costs
    (`prompt_stats`) under "tokens".

    Training runs on the core with `out` as its run folder (metrics.jsonl, tb/, checkpoints/).
    `device` is where the base is loaded (QLoRA: the CUDA device); training runs on the core's device
    (CUDA when present, unless ACCELERATE_USE_CPU=1). resume: continue from the newest checkpoint in
    out/checkpoints (same inputs and settings; refused otherwise). stop_after: end at that step with a
    checkpoint and write no adapter (returns {"finished": False, "step": N}).
    """
    from quantlm.llm.serialize import examples_from_jsonl, store_examples

    s, cfg = settings or SFTSettings(), prompt or PromptConfig()
    if merge and qlora:
        from quantlm.train.config import ConfigError

        raise ConfigError("merge a QLoRA adapter into the full-precision base: load it without qlora and merge")
    out = Path(out)
    t0 = time.time()
    tok, model = load_base(base, device, qlora=qlora)
    if data is not None:
        ex = examples_from_jsonl(data, tok, cfg)
    else:
        if store is None or train_end is None:
            raise ValueError("give a store and train_end, or a JSON Lines file (data=)")
        ex = store_examples(store, tok, start=start, cfg=cfg, train_end=train_end)
    stats = prompt_stats(tok, ex)
    if log:
        log(f"{len(ex)} examples; {stats['tokens_per_bar']:.2f} tokens per bar, prompts "
            f"{stats['prompt_tokens_mean']:.0f} tokens on average (max {stats['prompt_tokens_max']}, "
            f"limit {cfg.max_prompt_tokens}), {stats['bars_mean']:.1f} bars")
    model = add_lora(model, s)
    losses = train(model, tok, ex, s, log=log, out=out, resume=resume, stop_after=stop_after)
    if stop_after is not None and stop_after < s.steps:
        return {"finished": False, "step": stop_after}
    model.save_pretrained(out / "adapter")
    tok.save_pretrained(out / "adapter")
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        tok.save_pretrained(out / "merged")
    counts = {a: sum((x or "").split(" ")[0] == a for x in ex.answer) for a in ANSWERS}
    info = {"base": str(Path(base).resolve()), "train_end": None if data is not None else str(train_end),
            "data": None if data is None else str(Path(data).resolve()), "prompt": cfg.to_dict(),
            "settings": asdict(s), "examples": len(ex), "answers": counts, "tokens": stats,
            "first_loss": losses[0], "last_loss": float(np.mean(losses[-10:])),
            "seconds": round(time.time() - t0, 2), "merged": merge, "qlora": qlora, "device": str(device),
            "train_device": str(next(model.parameters()).device), "resumed": resume}
    (out / "llm.json").write_text(json.dumps(info, indent=2, default=str))
    return info
