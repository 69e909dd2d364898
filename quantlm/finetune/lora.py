"""Freezing the bottom of the trunk and peft LoRA on its top layers.

On save the adapters are merged into the trunk's weights (`merge_lora`, the default) or, with
`lora: {merge: false}`, kept apart: `TraderModel.save` writes the base weights and a peft adapter
folder (adapter/) that `peft.PeftModel.from_pretrained(trunk_lm, adapter_dir)` and `TraderModel.load`
apply.
"""

from __future__ import annotations

from quantlm.finetune.config import LoraConfig
from quantlm.finetune.model import TraderModel


def freeze_bottom(model: TraderModel, n_layers: int) -> None:
    """Freeze the token / calendar embeddings and the bottom `n_layers` decoder layers (0 = nothing)."""
    if n_layers <= 0:
        return
    layers = model.trunk.lm.model.layers
    if n_layers > len(layers):
        raise ValueError(f"freeze_bottom={n_layers} but the trunk has {len(layers)} layers")
    frozen = [model.trunk.lm.model.embed_tokens, model.trunk.weekday_emb, model.trunk.slot_emb, *layers[:n_layers]]
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)


def apply_lora(model: TraderModel, cfg: LoraConfig, n_frozen: int):
    """Inject LoRA adapters into decoder layers n_frozen.. (the top K); the trunk's own weights are frozen.

    Returns the peft model (keep it to merge later). Heads and input projections stay fully trainable.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    n_layer = len(model.trunk.lm.model.layers)
    top = list(range(n_frozen, n_layer))
    if not top:
        raise ValueError(f"LoRA needs at least one unfrozen layer (freeze_bottom={n_frozen}, layers={n_layer})")
    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), layers_to_transform=top,
                              layers_pattern="layers", bias="none")
    for p in model.trunk.parameters():
        p.requires_grad_(False)
    peft_model = get_peft_model(model.trunk.lm, peft_cfg)  # injects adapters into model.trunk.lm in place
    model.__dict__["_peft_model"] = peft_model  # not a submodule: saved apart by TraderModel.save
    return peft_model


def merge_lora(model: TraderModel, peft_model) -> None:
    """Fold the adapters into the trunk's weights (deployment: a plain model, no peft at inference)."""
    model.trunk.lm = peft_model.merge_and_unload()
    model.__dict__.pop("_peft_model", None)


def finish_lora(model: TraderModel, peft_model, merge: bool = True) -> None:
    """After training: merge the adapters (merge=True) or leave them attached for an unmerged save."""
    if peft_model is not None and merge:
        merge_lora(model, peft_model)


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
