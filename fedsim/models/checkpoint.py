"""Pretrained weights from a local file or directory (``--checkpoint PATH``), loaded before LoRA.

- timm: a ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` file, read with timm's own reader
  (``weights_only``: no pickled code runs; a ``model`` / ``state_dict`` wrapper is
  unwrapped) and passed through the architecture's ``checkpoint_filter_fn`` when timm has
  one: that is what maps Microsoft's original Swin release
  (``swin_base_patch4_window7_224_22k.pth``) and original ViT files onto timm's names and
  resizes position tables to the model's image and window size.
- text: a transformers checkpoint directory (``config.json`` + weights + tokenizer files).

Every backbone tensor must load: a missing or differently shaped one is a
:class:`CheckpointError` listing them (a half-loaded backbone trains, and looks like a bad
hyper-parameter). The classifier head is the exception: a head of another width (e.g. the
21,841 ImageNet-22k classes against CIFAR-100's 100) or no head in the file is expected
when the number of classes differs, and that head keeps its fresh (seeded) initialisation.
Keys the model does not have are logged and skipped.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from fedsim.errors import BAD_INPUT, FedsimError

__all__ = ["TIMM_SUFFIXES", "CheckpointError", "CheckpointLoad", "load_text_backbone", "load_timm_checkpoint", "match_state_dict"]

logger = logging.getLogger(__name__)

TIMM_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".bin", ".safetensors")
SHOWN = 8  # keys listed per kind in a message
IGNORED_MISSING_TEXT = ("pooler.",)  # the text classifier mean-pools: the pooler's output is unused


class CheckpointError(FedsimError, ValueError):
    """A checkpoint that cannot be (fully) loaded; the message names the path and the keys (exit 2: bad input)."""

    exit_code = BAD_INPUT


def _listing(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > SHOWN else ''})"


@dataclass(frozen=True)
class CheckpointLoad:
    """How a checkpoint's keys met the model's.

    ``loaded``: model tensors taken from the file; ``head_reset``: head tensors left at their
    fresh init (missing from the file, or of another shape); ``missing`` / ``mismatched``:
    backbone tensors the file lacks / has with another shape (either is an error);
    ``unexpected``: file keys the model does not have (skipped).
    """

    path: str
    loaded: tuple[str, ...]
    head_reset: tuple[str, ...]
    missing: tuple[str, ...]
    mismatched: tuple[str, ...]
    unexpected: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return bool(self.loaded) and not self.missing and not self.mismatched

    def message(self) -> str:
        """One paragraph for the log or the error: counts, then the keys of each kind."""
        parts = [f"checkpoint {self.path}: {len(self.loaded)} tensors loaded"]
        if self.head_reset:
            parts.append(
                f"classifier head re-initialised: {_listing(self.head_reset)} "
                "(expected when the checkpoint's number of classes differs from the dataset's)"
            )
        if self.missing:
            parts.append(f"missing from the file: {_listing(self.missing)}")
        if self.mismatched:
            parts.append(f"shape differs: {_listing(self.mismatched)}")
        if self.unexpected:
            parts.append(f"unexpected (skipped): {_listing(self.unexpected)}")
        if not self.loaded:
            parts.append("no key matches this model: is it a checkpoint of this architecture?")
        return "; ".join(parts)


def match_state_dict(
    model_state: Mapping[str, torch.Tensor], file_state: Mapping[str, torch.Tensor], head_names: Sequence[str], path: str,
) -> tuple[dict[str, torch.Tensor], CheckpointLoad]:
    """The tensors to load and the report: a pure comparison of names and shapes."""

    def is_head(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in head_names)

    to_load: dict[str, torch.Tensor] = {}
    head_reset, missing, mismatched = [], [], []
    for key, tensor in model_state.items():
        if key not in file_state:
            (head_reset if is_head(key) else missing).append(key)
        elif tuple(file_state[key].shape) != tuple(tensor.shape):
            if is_head(key):
                head_reset.append(key)
            else:
                mismatched.append(f"{key} file {tuple(file_state[key].shape)} model {tuple(tensor.shape)}")
        else:
            to_load[key] = file_state[key]
    unexpected = sorted(k for k in file_state if k not in model_state)
    return to_load, CheckpointLoad(path, tuple(sorted(to_load)), tuple(head_reset), tuple(missing), tuple(mismatched), tuple(unexpected))


def _timm_filter(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The architecture's ``checkpoint_filter_fn`` (timm's name remapping), if its module has one."""
    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    return state if filter_fn is None else filter_fn(state, model)


def load_timm_checkpoint(model: nn.Module, path: str, head_names: Sequence[str]) -> CheckpointLoad:
    """Load the timm weights at ``path`` into ``model`` (in place, before LoRA); the report.

    Raises CheckpointError when the file is absent or unreadable, or when a backbone tensor
    is missing or of another shape.
    """
    from timm.models import load_state_dict

    file = Path(path).expanduser()
    if not file.is_file() or file.suffix not in TIMM_SUFFIXES:
        raise CheckpointError(f"checkpoint {path}: expected an existing timm weights file ({', '.join(TIMM_SUFFIXES)})")
    try:
        state = _timm_filter(model, load_state_dict(str(file), use_ema=False, weights_only=True))
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: unreadable as timm weights ({exc})") from None
    to_load, report = match_state_dict(model.state_dict(), state, head_names, str(path))
    if not report.ok:
        raise CheckpointError(report.message())
    model.load_state_dict(to_load, strict=False)
    (logger.warning if report.unexpected else logger.info)("%s", report.message())
    return report


def load_text_backbone(path: str, model_kwargs: Mapping[str, object]) -> nn.Module:
    """``AutoModel.from_pretrained`` of a local transformers directory, every encoder tensor loaded.

    Raises CheckpointError when ``path`` is no checkpoint directory, or when encoder weights
    are missing (the pooler, unused by mean pooling, excepted) or of another shape.
    """
    from transformers import AutoModel

    directory = Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"checkpoint {path}: expected a transformers checkpoint directory (with config.json)")
    model, info = AutoModel.from_pretrained(str(directory), output_loading_info=True, **model_kwargs)
    missing = tuple(sorted(k for k in info.get("missing_keys", ()) if not k.startswith(IGNORED_MISSING_TEXT)))
    mismatched = tuple(sorted(f"{k} file {tuple(a)} model {tuple(b)}" for k, a, b in info.get("mismatched_keys", ())))
    unexpected = tuple(sorted(info.get("unexpected_keys", ())))
    loaded = tuple(sorted(set(model.state_dict()) - set(info.get("missing_keys", ()))))
    report = CheckpointLoad(str(path), loaded, (), missing, mismatched, unexpected)
    if not report.ok:
        raise CheckpointError(report.message())
    (logger.warning if unexpected else logger.info)("%s", report.message())
    return model
