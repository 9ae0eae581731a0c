"""Build the LoRA-adapted classifiers that every fedsim process trains.

`build_model(spec)` returns a `peft.PeftModel` called as `model(*inputs)`, with inputs
`(images,)` for timm and `(input_ids, attention_mask)` for text. Only the LoRA factors
and the classifier head train. The model is ready for Opacus' `GradSampleModule`
(hooks mode): batch-norm layers are frozen (`fedsim.models.batchnorm`) and windowed attention
is made per-sample exact (`fedsim.models.window_unfold`), so per-sample gradients are correct.

Related pieces live in their own modules and are re-exported here: `ModelSpec`,
`factor_parameters`/`trainable_state`/`load_trainable_state`, `tokenize`,
`neutralize_batchnorm`.
"""

from __future__ import annotations

import logging
import os

import timm
import torch
import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from timm.models import swin_transformer_v2
from transformers import PreTrainedTokenizerBase

from fedsim.models.batchnorm import neutralize_batchnorm
from fedsim.models.checkpoint import load_timm_checkpoint
from fedsim.models.lora_params import (
    factor_parameters,
    load_trainable_state,
    trainable_state,
)
from fedsim.models.spec import ModelSpec
from fedsim.models.text import (
    TextClassifier,
    build_text_backbone,
    load_tokenizer,
    tokenize,
)
from fedsim.models.window_unfold import install_window_unfold

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "ModelSpec",
    "build_base_model",
    "build_model",
    "build_tokenizer",
    "factor_parameters",
    "head_module_names",
    "load_adapter",
    "load_trainable_state",
    "lora_config",
    "neutralize_batchnorm",
    "prepare_for_dp",
    "tokenize",
    "trainable_state",
]

logger = logging.getLogger(__name__)

# LoRA on the attention projections: timm ViT/Swin fuse q, k, v into `attn.qkv`;
# BERT/RoBERTa keep query/key/value apart and call the output projection
# `attention.output.dense` (the FFN's `output.dense` is deliberately not matched).
DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "timm": ("attn.qkv", "attn.proj"),
    "text": ("query", "key", "value", "attention.output.dense"),
}


def _suffix_matches(module_name: str, target: str) -> bool:
    """peft's rule for a plain target name: the whole name or a dotted suffix."""
    return module_name == target or module_name.endswith("." + target)


def head_module_names(base: nn.Module, spec: ModelSpec) -> tuple[str, ...]:
    """Module names of the classifier head, trained in full (peft `modules_to_save`).

    timm declares its classifier per architecture (`head` for ViT, `head.fc` for Swin,
    `classifier` for MobileNet/EfficientNet); the text classifier's is `head`.
    """
    if spec.family == "text":
        return ("head",)
    declared = base.pretrained_cfg.get("classifier") if hasattr(base, "pretrained_cfg") else None
    names = (declared,) if isinstance(declared, str) else tuple(declared or ())
    if not names:
        raise ValueError(f"timm model {spec.name!r} declares no classifier module")
    for name in names:
        base.get_submodule(name)  # AttributeError if timm's declaration is stale
    return names


def lora_config(spec: ModelSpec, base: nn.Module) -> LoraConfig:
    """The peft LoRA configuration for `spec` on the (not yet adapted) `base` model.

    Checks that every target suffix matches some module: peft only complains when *none*
    match, so a typo in one of several targets would silently train fewer layers.
    """
    targets = spec.target_modules or DEFAULT_TARGET_MODULES[spec.family]
    names = [name for name, _ in base.named_modules()]
    unmatched = [t for t in targets if not any(_suffix_matches(n, t) for n in names)]
    if unmatched:
        linears = [n for n, m in base.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        raise ValueError(
            f"ModelSpec.target_modules: {unmatched} match no module of {spec.family} model "
            f"{spec.name!r} (targets in use: {list(targets)}); some Linear/Conv2d modules: "
            f"{linears[:8]}"
        )
    return LoraConfig(
        r=spec.lora_rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=list(targets),
        modules_to_save=list(head_module_names(base, spec)),
        bias="none",
    )


def build_base_model(spec: ModelSpec) -> nn.Module:
    """The network without LoRA: timm model or `TextClassifier`, batch norm frozen.

    Random initialisation is seeded with `spec.init_seed` (without touching the caller's
    RNG), so this is also the `fresh_base` for `PeftModel.from_pretrained` (see
    `load_adapter`): same spec, same frozen weights, in every process. A `spec.checkpoint`
    is loaded into the seeded model (a head of another width keeps its seeded init).
    """
    kwargs = dict(spec.model_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        if spec.family == "timm":
            if spec.img_size is not None:
                kwargs["img_size"] = spec.img_size
            from_hub = spec.pretrained and spec.checkpoint is None
            base = timm.create_model(spec.name, pretrained=from_hub, num_classes=spec.num_classes, **kwargs)
            if spec.checkpoint is not None:
                load_timm_checkpoint(base, spec.checkpoint, head_module_names(base, spec))
        else:
            backbone = build_text_backbone(spec.name, spec.pretrained, kwargs, spec.checkpoint)
            base = TextClassifier(backbone, spec.num_classes)
    neutralize_batchnorm(base)
    return base


def _reject_bypassed_lora(model: nn.Module) -> None:
    """Refuse LoRA layers the architecture never calls.

    timm's SwinV2 attention with a q/v bias computes `F.linear(x, self.qkv.weight, ...)`
    instead of calling `self.qkv`, so a LoRA wrapper on `attn.qkv` would be skipped: its
    factors would never train and everyone would exchange zeros.
    """
    for name, module in model.named_modules():
        if (
            isinstance(module, swin_transformer_v2.WindowAttention)
            and isinstance(module.qkv, LoraLayer)
            and module.q_bias is not None
            and not module.qkv_bias_separate
        ):
            raise ValueError(
                f"LoRA on {name}.qkv would be bypassed: timm SwinV2 (with its q/v bias) "
                "applies F.linear to qkv.weight instead of calling qkv; set "
                "ModelSpec.target_modules to other modules, e.g. ('attn.proj',)"
            )


def prepare_for_dp(model: PeftModel) -> PeftModel:
    """Make a LoRA-injected model safe for per-sample gradients (idempotent)."""
    _reject_bypassed_lora(model)
    install_window_unfold(model.get_base_model())
    return model


def build_model(spec: ModelSpec) -> PeftModel:
    """Build the LoRA-adapted classifier described by `spec` (see module docstring)."""
    base = build_base_model(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)  # LoRA A init: identical in every process
        model = prepare_for_dp(get_peft_model(base, lora_config(spec, base)))
    groups = factor_parameters(model)
    logger.info(
        "built %s %r: %s trainable parameters (A %d, B %d, head %d tensors)",
        spec.family,
        spec.name,
        f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}",
        len(groups["A"]),
        len(groups["B"]),
        len(groups["head"]),
    )
    return model


def load_adapter(
    spec: ModelSpec, path: str | os.PathLike[str], is_trainable: bool = True
) -> PeftModel:
    """Rebuild a model saved with `model.save_pretrained(path)`, ready for DP training.

    Raises ValueError when the saved adapter's rank or scaling disagrees with `spec`.
    """
    base = build_base_model(spec)
    model = PeftModel.from_pretrained(base, str(path), is_trainable=is_trainable)
    saved = model.peft_config["default"]
    if saved.r != spec.lora_rank or float(saved.lora_alpha) != float(spec.lora_alpha):
        raise ValueError(
            f"adapter at {str(path)!r} has r={saved.r}, lora_alpha={saved.lora_alpha}; "
            f"ModelSpec says lora_rank={spec.lora_rank}, lora_alpha={spec.lora_alpha}"
        )
    return prepare_for_dp(model)


def build_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The tokenizer of a text `spec`; use with `tokenize(tok, texts, spec.max_length)`."""
    if spec.family != "text":
        raise ValueError(f"build_tokenizer needs ModelSpec.family='text', got {spec.family!r}")
    return load_tokenizer(spec.name, spec.checkpoint)
