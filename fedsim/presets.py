"""Named presets: the setups of the papers' public code as run-option values.

A preset is the bottom layer of a run's configuration: :func:`fedsim.config.build_config`
starts from :func:`preset_values`, a config file overrides it, explicit options override
both, and the resolved config records the preset's name (``RunConfig.preset``). The facts
come from the papers and their reference code (``PAPERS.md`` of the project notes):

- LA-LoRA, arXiv 2602.19926, github junkangLiu0/LA-LORA (``DP_lora.py``, ``DP_LLM.py``);
- DEeR, arXiv 2410.12926, github CUHK-AIM-Group/DEeR (``main.py``, ``training_script.sh``).

What differs from the reference code, on purpose:

- **Privacy.** The budgets are ε targets, calibrated per client (``target_epsilon``: the
  noise multiplier whose PRV upper bound meets ε at ``delta``, with per-sample clipping
  and an accountant), never the reference codes' raw σ, which with correct clipping gives
  ε in the thousands (LA-LoRA) or is mis-accounted (DEeR). ε = 1 everywhere: LA-LoRA's
  headline budget, and inside both of DEeR's ranges ({1, 3, 6} and {0.1, 0.5, 1}). DEeR's
  client-level Gaussian on updates is replaced by sample-level DP-SGD at that ε (its ε
  came from a sample-level accountant anyway); add ``client_noise_multiplier`` for a
  client-level guarantee on top.
- **Data and weights stay local.** Datasets are ``imagefolder:``/``csv:`` paths the user
  lays out offline (README); pretrained weights come from the timm/transformers hub or a
  local file given with ``checkpoint``. A missing dataset fails in preflight, naming
  ``dataset``.
- Not reproduced: LoRA dropout 0.05 and AdamW weight decay 0.01 (fedsim trains with
  neither); the reference's lr decays from round 1 (lr·0.99^r, here lr·0.99^(r−1)); its
  cap "1 epoch or K steps, whichever is fewer" is K steps here; DEeR's BiomedCLIP weights
  (open_clip format) are not loaded: ``vit_base_patch16_224`` is timm's ViT-B/16.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedsim.methods.registry import DEER, LA_LORA

__all__ = ["PRESETS", "PRESET_NAMES", "Preset", "list_presets", "preset_values"]

DEFAULT_PRESET = "default"


@dataclass(frozen=True)
class Preset:
    """One named setup: run-option values and what the user must provide offline."""

    name: str
    summary: str
    source: str
    values: Mapping[str, Any] = field(default_factory=dict)
    provide: tuple[str, ...] = ()


_LA_LORA_PRIVACY = {"target_epsilon": 1.0, "delta": 1e-5, "max_grad_norm": 1.0}

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "la-lora-swin-b-cifar100",
            "LA-LoRA, Swin-B (ImageNet-22k) on CIFAR-100: Dirichlet 0.1, 8 clients, 4 per round, 101 rounds, "
            "K = 50, batch 16, AdamW 1e-4 ×0.99 per round, LoRA r = 16, α = 16 on attn.qkv/attn.proj, ε = 1.",
            "arXiv 2602.19926; junkangLiu0/LA-LORA DP_lora.py",
            {
                "methods": (LA_LORA,),
                "dataset": "imagefolder:data/cifar100",
                "model": "swin_base_patch4_window7_224.ms_in22k",
                "pretrained": True,
                "img_size": 224,
                "limit": None,
                "num_clients": 4,
                "population": 8,
                "cohort": "fixed",
                "cohort_size": 4,
                "rounds": 101,
                "local_steps": 50,
                "batch_size": 16,
                "partition": "dirichlet",
                "dirichlet_alpha": 0.1,
                "optimizer": "adamw",
                "lr": 1e-4,
                "head_lr": 1e-4,
                "b_lr_ratio": 2.0,
                "lr_decay": 0.99,
                "lora_rank": 16,
                "lora_alpha": 16.0,
                "lora_targets": ("attn.qkv", "attn.proj"),
                "smoothing": 1.0,
                "smoothing_mode": "reference",
                "eval_every": 5,
                **_LA_LORA_PRIVACY,
            },
            provide=(
                "dataset: CIFAR-100 as an ImageFolder at data/cifar100 (or --dataset imagefolder:DIR)",
                "weights: timm hub access, or --checkpoint swin_base_patch4_window7_224_22k.pth",
            ),
        ),
        Preset(
            "la-lora-roberta-mnli",
            "LA-LoRA, RoBERTa-base on MNLI: IID, 20 clients, 4 per round, 101 rounds, K = 20, batch 16, "
            "AdamW 2e-4 ×0.99 per round, LoRA r = 8, α = 16 on query/key/value/dense, max length 128, ε = 1.",
            "arXiv 2602.19926; junkangLiu0/LA-LORA DP_LLM.py",
            {
                "methods": (LA_LORA,),
                "dataset": "csv:data/mnli/train.csv",
                "model": "roberta-base",
                "pretrained": True,
                "max_length": 128,
                "limit": None,
                "num_clients": 4,
                "population": 20,
                "cohort": "fixed",
                "cohort_size": 4,
                "rounds": 101,
                "local_steps": 20,
                "batch_size": 16,
                "partition": "iid",
                "optimizer": "adamw",
                "lr": 2e-4,
                "head_lr": 2e-4,
                "b_lr_ratio": 2.0,
                "lr_decay": 0.99,
                "lora_rank": 8,
                "lora_alpha": 16.0,
                # The reference's "dense" is every dense layer; the pooler's is left out (its
                # output feeds nothing here, so its factors would get no gradient).
                "lora_targets": ("query", "key", "value", "intermediate.dense", "output.dense"),
                "smoothing": 1.0,
                "smoothing_mode": "reference",
                "eval_every": 5,
                **_LA_LORA_PRIVACY,
            },
            provide=(
                "dataset: MNLI as a CSV with columns text,label at data/mnli/train.csv (or --dataset csv:FILE)",
                "weights: transformers hub access, or --checkpoint DIR (a roberta-base directory)",
            ),
        ),
        Preset(
            "deer-vit-b16",
            "DEeR, ViT-B/16: LoRA r = 8 on q, k, v (timm's fused attn.qkv), 12 clients, Dirichlet 0.1, 50 rounds, "
            "5 local epochs, batch 128, SGD 0.01 momentum 0.9, ε = 1.",
            "arXiv 2410.12926; CUHK-AIM-Group/DEeR main.py, training_script.sh",
            {
                "methods": (DEER,),
                "dataset": "imagefolder:data/kvasir-v2",
                "model": "vit_base_patch16_224",
                "pretrained": True,
                "img_size": 224,
                "limit": None,
                "num_clients": 4,
                "population": 12,
                "cohort": "all",
                "rounds": 50,
                "local_epochs": 5.0,
                "batch_size": 128,
                "partition": "dirichlet",
                "dirichlet_alpha": 0.1,
                "optimizer": "sgd",
                "lr": 0.01,
                "head_lr": 0.01,
                "momentum": 0.9,
                "lora_rank": 8,
                "lora_alpha": 16.0,
                "lora_targets": ("attn.qkv",),
                "eval_every": 5,
                "target_epsilon": 1.0,
                "delta": 1e-5,
                "max_grad_norm": 1.0,
            },
            provide=(
                "dataset: Kvasir-v2 (8 classes) as an ImageFolder at data/kvasir-v2 (or --dataset imagefolder:DIR)",
                "weights: timm hub access, or --checkpoint a timm ViT-B/16 .pth/.safetensors",
            ),
        ),
        Preset(DEFAULT_PRESET, "The bundled default job (LA-LoRA, MiniLM, WordNet glosses; runs offline).", "fedsim"),
    )
}
"""Every preset by name."""

PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def preset_values(name: str) -> dict[str, Any]:
    """The run-option values of preset ``name``, with ``preset`` = ``name`` (a fresh dict).

    Raises ValueError naming ``preset`` for an unknown name.
    """
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is invalid: expected one of {PRESET_NAMES}")
    return {**PRESETS[name].values, "preset": name}


def list_presets() -> tuple[Preset, ...]:
    """Every preset, in ``--list-presets`` order."""
    return tuple(PRESETS.values())
