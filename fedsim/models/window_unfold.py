"""Per-sample gradients through windowed attention (timm Swin), without renaming anything.

Opacus (hooks mode) computes the per-sample gradient of a linear layer from the layer's
input and output gradient, taking dimension 0 of the input as the sample index. timm's
Swin `WindowAttention` folds the windows of each image into that dimension: `attn.qkv`
and `attn.proj` see inputs of shape (B * nW, N, C). Opacus then returns one "sample"
per window: B * nW gradients, scaled by B * nW instead of B for mean losses, which is
silently wrong (and crashes the DP optimizer when the head, seeing B rows, also trains).

A linear layer acts on the last dimension only, token by token, so reshaping its input
(B * nW, N, C) -> (B, nW * N, C) and its output back is exact: the same numbers come out,
but every row of dimension 0 is now one image and Opacus' per-sample sum over tokens
covers all of that image's windows. timm's `window_partition` orders windows
batch-major (index b * nW + w), which is what makes the reshape group by image.

The reshape is done with a forward-pre-hook / forward-hook pair on each LoRA-wrapped
linear inside a known window-attention module; parameter and module names are untouched,
so peft checkpoints keep their keys. The true batch size B comes from a forward pre-hook
on the base model, held in a `BatchSizeProbe` owned by that model (not a global).

Every other LoRA layer gets a guard: in training with autograd on, an input whose first
dimension is not B means per-sample gradients would silently be per-something-else, so it
raises instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from timm.models import swin_transformer, swin_transformer_v2, swin_transformer_v2_cr

logger = logging.getLogger(__name__)

# Attention modules whose inputs are windows folded batch-major into dimension 0
# (each of these files partitions with x.view(B, ...).permute(0, 1, 3, 2, 4, 5)).
WINDOW_ATTENTION_TYPES: tuple[type[nn.Module], ...] = (
    swin_transformer.WindowAttention,
    swin_transformer_v2.WindowAttention,
    swin_transformer_v2_cr.WindowMultiHeadAttention,
)

# Attribute on the base model that holds this module's state; its presence makes
# installation idempotent.
STATE_ATTR = "_fedsim_window_unfold"


def windows_per_sample(rows: int, batch_size: int) -> int:
    """Number of windows each sample was split into, given the folded leading dimension.

    A non-multiple means the layer's dimension 0 is not batch-major windows at all, and
    reshaping would mix samples, so it is an error rather than a guess.
    """
    if batch_size < 1 or rows % batch_size != 0:
        raise RuntimeError(
            f"cannot unfold windows: leading dimension {rows} is not a multiple of the "
            f"batch size {batch_size}"
        )
    return rows // batch_size


def unfold_windows(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(B * nW, N, ..., C) -> (B, nW * N * ..., C): one row per sample, tokens concatenated.

    Exact for token-wise layers (a linear acts on the last dimension only).
    """
    windows_per_sample(x.shape[0], batch_size)
    return x.reshape(batch_size, -1, x.shape[-1])


def fold_windows(y: torch.Tensor, leading_shape: torch.Size) -> torch.Tensor:
    """Inverse of `unfold_windows` for the layer output: restore (B * nW, N, ..., C_out)."""
    return y.reshape(*leading_shape, y.shape[-1])


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The model's first tensor input (images or input_ids): its dim 0 is the batch."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


class BatchSizeProbe:
    """Remembers the batch size of the forward pass in progress on the model it hooks.

    Hooks are bound methods of this object, so `copy.deepcopy(model)` copies the probe
    along with the model and the copy's hooks point at the copy's probe.
    """

    def __init__(self) -> None:
        self.batch_size: int | None = None

    def record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the base model: read B from the first tensor input."""
        first = _first_tensor(args, kwargs)
        self.batch_size = None if first is None or first.dim() == 0 else int(first.shape[0])

    def clear(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        """Forward hook on the base model: B is only meaningful during its forward."""
        self.batch_size = None


def _needs_exact_per_sample(module: nn.Module) -> bool:
    """Per-sample gradients can only be taken in train mode with autograd recording."""
    return module.training and torch.is_grad_enabled()


@dataclass
class LoraBatchHooks:
    """Hook pair for one LoRA layer: unfold windows (if `unfold`) or guard dimension 0."""

    name: str
    probe: BatchSizeProbe
    unfold: bool
    _pending: list[torch.Size | None] = field(default_factory=list, init=False, repr=False)

    def before(self, module: nn.Module, args: tuple) -> tuple | None:
        """Forward pre-hook: reshape the input to one row per sample when needed."""
        x = args[0]
        batch_size = self.probe.batch_size
        if batch_size is None or x.shape[0] == batch_size:
            if batch_size is None and self.unfold and _needs_exact_per_sample(module):
                raise RuntimeError(
                    f"LoRA layer {self.name!r} folds windows into the batch dimension but the "
                    "batch size is unknown: call the model itself (model(images)), not a "
                    "sub-forward such as forward_features, when training"
                )
            self._pending.append(None)
            return None
        if not self.unfold:
            if _needs_exact_per_sample(module):
                raise RuntimeError(
                    f"LoRA layer {self.name!r} received dimension 0 of size {x.shape[0]} for "
                    f"a batch of {batch_size}: the model folds something into the batch "
                    "dimension, and per-sample gradients would be silently wrong"
                )
            self._pending.append(None)
            return None
        self._pending.append(x.shape[:-1])
        return (unfold_windows(x, batch_size), *args[1:])

    def after(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        """Forward hook: give the caller back the folded shape it expects."""
        leading_shape = self._pending.pop()
        if leading_shape is None:
            return None
        return fold_windows(output, leading_shape)


@dataclass
class WindowUnfoldState:
    """What `install_window_unfold` attached to a base model (kept for idempotence)."""

    probe: BatchSizeProbe
    layers: dict[str, LoraBatchHooks]
    handles: list[torch.utils.hooks.RemovableHandle]

    @property
    def unfolded(self) -> int:
        return sum(hooks.unfold for hooks in self.layers.values())


def _is_window_linear(root: nn.Module, name: str, module: nn.Module) -> bool:
    """A token-wise LoRA linear directly inside a batch-major window-attention module."""
    parent_name = name.rpartition(".")[0]
    parent = root.get_submodule(parent_name) if parent_name else root
    return isinstance(module, LoraLinear) and isinstance(parent, WINDOW_ATTENTION_TYPES)


def install_window_unfold(base_model: nn.Module) -> int:
    """Attach the batch-size probe and per-layer hooks to a LoRA-injected model.

    `base_model` is the model peft injected LoRA layers into (`PeftModel.get_base_model()`).
    Call it after injection: hooks must sit on the peft wrappers, whose children
    `lora_A`/`lora_B` are what Opacus hooks. Idempotent. Returns the number of LoRA layers
    whose window folding is undone.
    """
    existing = getattr(base_model, STATE_ATTR, None)
    if existing is not None:
        return existing.unfolded
    probe = BatchSizeProbe()
    handles = [
        base_model.register_forward_pre_hook(probe.record, with_kwargs=True),
        base_model.register_forward_hook(probe.clear, with_kwargs=True),
    ]
    layers: dict[str, LoraBatchHooks] = {}
    for name, module in base_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        hooks = LoraBatchHooks(name, probe, _is_window_linear(base_model, name, module))
        handles.append(module.register_forward_pre_hook(hooks.before))
        handles.append(module.register_forward_hook(hooks.after))
        layers[name] = hooks
    state = WindowUnfoldState(probe, layers, handles)
    setattr(base_model, STATE_ATTR, state)
    logger.debug("window unfold: %d of %d LoRA layers", state.unfolded, len(layers))
    return state.unfolded


def remove_window_unfold(base_model: nn.Module) -> None:
    """Detach everything `install_window_unfold` attached (no-op if nothing was)."""
    state = getattr(base_model, STATE_ATTR, None)
    if state is None:
        return
    for handle in state.handles:
        handle.remove()
    delattr(base_model, STATE_ATTR)
