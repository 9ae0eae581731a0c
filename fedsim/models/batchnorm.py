"""Remove batch statistics from a model before DP training.

A batch-norm layer in train mode normalises each sample with the mean and variance of
the whole batch, so one sample's output (and gradient) depends on every other sample.
Per-sample gradients then stop being per-sample, per-sample clipping no longer bounds
one record's influence, and the DP guarantee is void. Its running statistics are also
updated from the raw data and then shared in the model, a second leak.

Opacus' ModuleValidator looks validators up by exact type, so timm's `BatchNormAct2d`
(a BatchNorm2d subclass fused with an activation) is never flagged: a timm CNN
validates clean while it mixes samples. We therefore freeze every batch-norm
layer to a `Frozen*` variant: it normalises with the (pretrained) running statistics
only, in train and eval mode alike, and holds no trainable parameters.
"""

from __future__ import annotations

import logging

import torch.nn as nn
from timm.layers import freeze_batch_norm_2d
from torch.nn.modules.batchnorm import _BatchNorm

logger = logging.getLogger(__name__)


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """All layers that would compute batch statistics in train mode (torch and timm)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


def neutralize_batchnorm(model: nn.Module) -> int:
    """Replace, in place, every batch-norm layer of `model` by a frozen equivalent.

    Covers `BatchNorm2d`, `SyncBatchNorm` and timm's `BatchNormAct2d`/`SyncBatchNormAct`
    (via `timm.layers.freeze_batch_norm_2d`, which keeps the activation of the fused
    variant). Parameter and buffer names are unchanged, so pretrained checkpoints still
    load. Returns how many layers were frozen.

    Raises ValueError for batch-norm layers without a frozen equivalent (1-D/3-D), or when
    `model` itself is a batch-norm layer (it cannot be replaced in place).
    """
    if isinstance(model, _BatchNorm):
        raise ValueError(
            f"neutralize_batchnorm needs a container module, got a bare {type(model).__name__}; "
            "wrap it or call timm.layers.freeze_batch_norm_2d on it directly"
        )
    frozen = 0
    for name, layer in batchnorm_layers(model):
        replacement = freeze_batch_norm_2d(layer)
        if replacement is layer:
            raise ValueError(
                f"layer {name!r} of type {type(layer).__name__} computes batch statistics and "
                "has no frozen equivalent (supported: BatchNorm2d, SyncBatchNorm, "
                "BatchNormAct2d, SyncBatchNormAct); per-sample gradients would mix samples"
            )
        replacement.train(layer.training)
        model.set_submodule(name, replacement)
        frozen += 1
    if frozen:
        logger.info("froze %d batch-norm layers to running statistics", frozen)
    return frozen
