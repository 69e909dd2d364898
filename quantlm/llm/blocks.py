"""Family-agnostic access to a causal LM: its decoder blocks, their linear layers, a pad id.

Users bring families we did not build (Phi, Gemma, Mistral, GPT-2 style ...), so nothing here reads
a Qwen- or Llama-specific attribute path:

- the decoder blocks are the `torch.nn.ModuleList` whose children are all of one class and hold
  linear layers, the one with the most parameters (Qwen2 / Llama / Mistral / Gemma / Phi:
  ``model.layers``, GPT-2: ``transformer.h``, GPT-NeoX: ``gpt_neox.layers``); a model without such a
  list raises `ValueError` naming its class;
- the linear layers are `torch.nn.Linear` and transformers' `Conv1D` (GPT-2 style, weights stored
  transposed: LoRA then needs ``fan_in_fan_out``);
- the pad id is the tokenizer's pad token, else its eos token, else 0 (padding is always masked,
  so any id works; the tokenizer's vocabulary is never changed).
"""

from __future__ import annotations


def _is_linear(mod) -> bool:
    import torch

    if isinstance(mod, torch.nn.Linear):
        return True
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - old transformers
        return False
    return isinstance(mod, Conv1D)


def decoder_layers(model) -> tuple[str, list]:
    """(module path of the block list, e.g. "model.layers", [block, ...]) of a causal LM (a peft wrapper too)."""
    import torch

    best, best_size = None, -1
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.ModuleList) or len(mod) == 0:
            continue
        kinds = {type(c) for c in mod}
        if len(kinds) != 1 or not any(_is_linear(m) for m in mod[0].modules()):
            continue
        size = sum(p.numel() for p in mod.parameters())
        if size > best_size:
            best, best_size = (name, list(mod)), size
    if best is None:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}: no torch.nn.ModuleList of "
                         "identical blocks holding linear layers")
    return best


def block_linears(model, first_block: int = 0) -> tuple[list[str], bool]:
    """Full module names of the linear layers inside decoder blocks >= first_block, and whether any is a
    transposed GPT-2 `Conv1D` (LoRA's fan_in_fan_out)."""
    path, blocks = decoder_layers(model)
    if not 0 <= first_block < len(blocks):
        raise ValueError(f"freeze_bottom must be in [0, {len(blocks) - 1}] for a model of {len(blocks)} layers, "
                         f"got {first_block}")
    names, transposed = [], False
    prefix = f"{path}." if path else ""
    for i in range(first_block, len(blocks)):
        for sub, mod in blocks[i].named_modules():
            if sub and _is_linear(mod):
                names.append(f"{prefix}{i}.{sub}")
                transposed |= not _is_plain_linear(mod)
    if not names:
        raise ValueError(f"no linear layer inside the decoder layers {first_block}.. of {type(model).__name__}")
    return names, transposed


def _is_plain_linear(mod) -> bool:
    import torch

    return isinstance(mod, torch.nn.Linear)


def pad_id(tokenizer) -> int:
    """The id used for padding: pad token, else eos, else 0 (padded positions are always masked)."""
    for v in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if v is not None:
            return int(v if not isinstance(v, list) else v[0])
    return 0
