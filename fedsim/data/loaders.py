"""Datasets for fedsim: loading, splitting, subsetting and model-ready images.

Every loader returns a :class:`DatasetSplits` of in-memory tensors (the datasets are
small enough to share across simulated clients). Names accepted by
:func:`load_dataset`:

``wordnet-supersenses``
    The bundled text set (8 WordNet noun supersenses x 600 definitions, see
    ``fedsim/datasets/WORDNET_LICENSE.txt``); works offline after ``pip install``.
``digits``
    scikit-learn's 8x8 handwritten digits (ships inside scikit-learn), 1 channel.
``fashion-mnist``
    IDX files from ``$FEDSIM_FASHION_MNIST_DIR`` (default
    ``/usr/share/datasets/fashion-mnist``, Debian package ``dataset-fashion-mnist``);
    the official 60k/10k train/test split, 1x28x28.
``imagefolder:<dir>``
    torchvision ``ImageFolder`` layout (one sub-folder per class). Grayscale if every
    image is grayscale, else RGB. Native size if all images share one size, else every
    image is resized (bilinear) to ``IMAGEFOLDER_FALLBACK_SIZE`` square.
``csv:<file>``
    a CSV (optionally ``.gz``) with columns ``text,label``; class ids are the sorted
    distinct label strings.

Except for fashion-mnist, the train/test split is stratified and seeded. ``limit``
keeps at most ``limit`` train and ``max(limit // 4, 1)`` test examples (stratified,
seeded). Images are scaled to [0, 1], then standardized per channel with the mean and
standard deviation of the (limited) train split.

The readers of each source live in :mod:`fedsim.data.sources`; client shards in
:mod:`fedsim.data.partition`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from fedsim.data.partition import stratified_sample, stratified_split
from fedsim.data.sources import RawData, read_named

__all__ = [
    "DatasetSplits",
    "ImageData",
    "TextData",
    "load_dataset",
    "prepare_images",
    "subset",
]

LOG = logging.getLogger(__name__)

MODALITIES: tuple[str, ...] = ("image", "text")


# --------------------------------------------------------------------------- containers


def _check_labels(labels: torch.Tensor, n: int, classes: tuple[str, ...], what: str) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
        raise ValueError(f"{what}.labels must be a 1-D int64 tensor")
    if labels.shape[0] != n:
        raise ValueError(f"{what}.labels has {labels.shape[0]} entries, expected {n}")
    if not classes:
        raise ValueError(f"{what}.classes must name at least one class")
    if n and not (0 <= int(labels.min()) and int(labels.max()) < len(classes)):
        raise ValueError(f"{what}.labels must lie in [0, {len(classes) - 1}] (one per class)")


@dataclass(frozen=True)
class ImageData:
    """Images with integer labels.

    Attributes:
        images: ``(N, C, H, W)`` float32, standardized.
        labels: ``(N,)`` int64 class ids into ``classes``.
        classes: class names.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != torch.float32:
            raise ValueError(
                f"ImageData.images must be float32 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        _check_labels(self.labels, self.images.shape[0], self.classes, "ImageData")

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class TextData:
    """Texts with integer labels.

    Attributes:
        texts: the N input strings.
        labels: ``(N,)`` int64 class ids into ``classes``.
        classes: class names.
    """

    texts: tuple[str, ...]
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.texts, tuple):
            raise ValueError(f"TextData.texts must be a tuple of str, got {type(self.texts)}")
        _check_labels(self.labels, len(self.texts), self.classes, "TextData")

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DatasetSplits:
    """A train and a test split of one modality (``"image"`` or ``"text"``)."""

    train: ImageData | TextData
    test: ImageData | TextData
    modality: str

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        expected = ImageData if self.modality == "image" else TextData
        for field in ("train", "test"):
            if not isinstance(getattr(self, field), expected):
                raise ValueError(f"{field} must be {expected.__name__} for modality "
                                 f"{self.modality!r}")


Data = TypeVar("Data", ImageData, TextData)


def subset(data: Data, indices: np.ndarray) -> Data:
    """Return the examples of ``data`` at ``indices`` (same type, same classes)."""
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"indices must be a 1-D integer array, got {idx.dtype} {idx.shape}")
    n = len(data)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"indices must lie in [0, {n - 1}], got [{idx.min()}, {idx.max()}]")
    index = torch.from_numpy(idx.astype(np.int64))
    if isinstance(data, ImageData):
        return ImageData(data.images[index], data.labels[index], data.classes)
    if isinstance(data, TextData):
        return TextData(tuple(data.texts[i] for i in idx.tolist()), data.labels[index],
                        data.classes)
    raise ValueError(f"data must be ImageData or TextData, got {type(data).__name__}")


def prepare_images(images: torch.Tensor, img_size: int, channels: int = 3) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` images to ``img_size`` square and match ``channels``.

    Resizing is bilinear with antialiasing (skipped when the size already matches);
    one-channel images are repeated to ``channels`` (timm models want 3).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ValueError(f"img_size must be an int >= 1, got {img_size!r}")
    in_channels = images.shape[1]
    if in_channels != channels and in_channels != 1:
        raise ValueError(
            f"channels={channels} cannot be made from {in_channels}-channel images; "
            f"allowed: channels={in_channels}, or 1-channel input repeated"
        )
    out = images.float()
    if tuple(out.shape[-2:]) != (img_size, img_size):
        out = F.interpolate(out, size=(img_size, img_size), mode="bilinear",
                            align_corners=False, antialias=True)
    if out.shape[1] != channels:
        out = out.expand(-1, channels, -1, -1)
    return out.contiguous()


# --------------------------------------------------------------------------- assembly


def _unit_float(images: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    return tensor.float()


def _image_splits(train: RawData, test: RawData) -> DatasetSplits:
    train_x, test_x = _unit_float(train.inputs), _unit_float(test.inputs)
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return DatasetSplits(
        train=ImageData((train_x - mean) / std, torch.from_numpy(train.labels), train.classes),
        test=ImageData((test_x - mean) / std, torch.from_numpy(test.labels), test.classes),
        modality="image",
    )


def _text_splits(train: RawData, test: RawData) -> DatasetSplits:
    return DatasetSplits(
        train=TextData(train.inputs, torch.from_numpy(train.labels), train.classes),
        test=TextData(test.inputs, torch.from_numpy(test.labels), test.classes),
        modality="text",
    )


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    limit: int | None = None,
) -> DatasetSplits:
    """Load dataset ``name`` (see the module docstring) as train/test splits.

    Args:
        name: one of ``DATASET_NAMES``.
        seed: seeds the stratified split and the ``limit`` subsampling.
        test_fraction: share of examples in the test split, in (0, 1); unused by
            fashion-mnist, which has an official split.
        limit: if given (>= 1), keep at most ``limit`` train and
            ``max(limit // 4, 1)`` test examples, stratified and seeded.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise ValueError(f"limit must be None or an int >= 1, got {limit!r}")
    raw = read_named(name)
    if isinstance(raw, tuple):
        train, test = raw
    else:
        train_idx, test_idx = stratified_split(raw.labels, test_fraction, seed)
        train, test = raw.take(train_idx), raw.take(test_idx)
    if limit is not None:
        train_rng, test_rng = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
        train = train.take(stratified_sample(train.labels, limit, train_rng))
        test = test.take(stratified_sample(test.labels, max(limit // 4, 1), test_rng))
    LOG.info("dataset %s: %d train / %d test examples, %d classes", name, len(train.labels),
             len(test.labels), len(train.classes))
    if isinstance(train.inputs, tuple):
        return _text_splits(train, test)
    return _image_splits(train, test)
