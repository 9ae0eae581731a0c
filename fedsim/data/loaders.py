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

:func:`partition` (client shards) lives in :mod:`fedsim.data.partition` and is re-exported.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from fedsim.data.partition import partition, stratified_sample, stratified_split

__all__ = [
    "DATASET_NAMES",
    "DatasetSplits",
    "ImageData",
    "TextData",
    "load_dataset",
    "partition",
    "prepare_images",
    "subset",
]

LOG = logging.getLogger(__name__)

DATASET_NAMES: tuple[str, ...] = (
    "wordnet-supersenses",
    "digits",
    "fashion-mnist",
    "imagefolder:<dir>",
    "csv:<file.csv>",
)
MODALITIES: tuple[str, ...] = ("image", "text")
IMAGEFOLDER_FALLBACK_SIZE = 32
FASHION_MNIST_ENV = "FEDSIM_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
BUNDLED_WORDNET = "wordnet_supersenses.csv.gz"


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


# --------------------------------------------------------------------------- raw readers


@dataclass(frozen=True)
class _Raw:
    """Labelled examples before tensors: uint8 or [0, 1] float images, or texts."""

    inputs: np.ndarray | tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]

    def take(self, idx: np.ndarray) -> _Raw:
        if isinstance(self.inputs, tuple):
            inputs: np.ndarray | tuple[str, ...] = tuple(self.inputs[i] for i in idx.tolist())
        else:
            inputs = self.inputs[idx]
        return _Raw(inputs, self.labels[idx], self.classes)


def _texts_from_rows(rows: Iterable[dict[str, str]], fieldnames: list[str] | None,
                     source: str) -> _Raw:
    missing = {"text", "label"} - set(fieldnames or [])
    if missing:
        raise ValueError(f"{source}: CSV must have columns text,label; missing "
                         f"{sorted(missing)} (found {fieldnames})")
    texts: list[str] = []
    names: list[str] = []
    for line, row in enumerate(rows, start=2):
        label = (row.get("label") or "").strip()
        if not label:
            raise ValueError(f"{source}: line {line} has an empty label")
        texts.append(row.get("text") or "")
        names.append(label)
    classes = tuple(sorted(set(names)))
    ids = {name: i for i, name in enumerate(classes)}
    return _Raw(tuple(texts), np.array([ids[n] for n in names], dtype=np.int64), classes)


def _read_csv_stream(stream: io.TextIOBase, source: str) -> _Raw:
    reader = csv.DictReader(stream)
    return _texts_from_rows(reader, reader.fieldnames, source)


def _read_csv_file(path: Path) -> _Raw:
    if not path.is_file():
        raise FileNotFoundError(f"csv dataset {path} not found: give an existing CSV file "
                                "with columns text,label, e.g. csv:/data/reviews.csv")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as stream:
        return _read_csv_stream(stream, str(path))


def _read_bundled_wordnet() -> _Raw:
    resource = resources.files("fedsim").joinpath("datasets").joinpath(BUNDLED_WORDNET)
    if not resource.is_file():
        raise FileNotFoundError(
            f"bundled dataset fedsim/datasets/{BUNDLED_WORDNET} is missing from this "
            "installation: reinstall fedsim, or rebuild it with "
            "`python scripts/make_wordnet_subset.py` (needs apt package wordnet-base)"
        )
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8", newline="") as stream:
        return _read_csv_stream(stream, f"fedsim/datasets/{BUNDLED_WORDNET}")


def _read_digits() -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return _Raw(images, bunch.target.astype(np.int64), tuple(str(c) for c in range(10)))


def _read_idx_gz(path: Path) -> np.ndarray:
    """Read a gzip IDX file of unsigned bytes (the MNIST format) into an array."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).copy()
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: IDX header says {dims}, file holds {body.size} bytes")
    return body.reshape(dims)


def _read_fashion_mnist(directory: Path) -> tuple[_Raw, _Raw]:
    how = (f"install it with `apt-get install dataset-fashion-mnist` or set "
           f"{FASHION_MNIST_ENV} to a directory holding the four *-ubyte.gz IDX files")
    splits = []
    for prefix in ("train", "t10k"):
        images_path = directory / f"{prefix}-images-idx3-ubyte.gz"
        labels_path = directory / f"{prefix}-labels-idx1-ubyte.gz"
        for path in (images_path, labels_path):
            if not path.is_file():
                raise FileNotFoundError(f"fashion-mnist file {path} not found: {how}")
        images = _read_idx_gz(images_path)[:, None, :, :]
        labels = _read_idx_gz(labels_path).astype(np.int64)
        splits.append(_Raw(images, labels, FASHION_MNIST_CLASSES))
    return splits[0], splits[1]


def _read_imagefolder(root: Path) -> _Raw:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise FileNotFoundError(f"imagefolder {root} not found: give a directory with one "
                                "sub-folder of images per class, e.g. imagefolder:/data/pets")
    folder = ImageFolder(str(root), loader=lambda p: p)
    pictures = []
    for path, _ in folder.samples:
        with Image.open(path) as img:
            img.load()
            pictures.append(img.copy())
    gray = all(img.mode in ("1", "L", "LA") for img in pictures)
    pictures = [img.convert("L" if gray else "RGB") for img in pictures]
    if len({img.size for img in pictures}) > 1:
        side = IMAGEFOLDER_FALLBACK_SIZE
        LOG.info("imagefolder %s: mixed image sizes, resizing all to %dx%d", root, side, side)
        pictures = [img.resize((side, side), Image.Resampling.BILINEAR) for img in pictures]
    arrays = np.stack([np.asarray(img, dtype=np.uint8) for img in pictures])
    arrays = arrays[:, None] if gray else arrays.transpose(0, 3, 1, 2)
    labels = np.array([target for _, target in folder.samples], dtype=np.int64)
    return _Raw(np.ascontiguousarray(arrays), labels, tuple(folder.classes))


# --------------------------------------------------------------------------- assembly


def _unit_float(images: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    return tensor.float()


def _image_splits(train: _Raw, test: _Raw) -> DatasetSplits:
    train_x, test_x = _unit_float(train.inputs), _unit_float(test.inputs)
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return DatasetSplits(
        train=ImageData((train_x - mean) / std, torch.from_numpy(train.labels), train.classes),
        test=ImageData((test_x - mean) / std, torch.from_numpy(test.labels), test.classes),
        modality="image",
    )


def _text_splits(train: _Raw, test: _Raw) -> DatasetSplits:
    return DatasetSplits(
        train=TextData(train.inputs, torch.from_numpy(train.labels), train.classes),
        test=TextData(test.inputs, torch.from_numpy(test.labels), test.classes),
        modality="text",
    )


def _read_named(name: str) -> _Raw | tuple[_Raw, _Raw]:
    """Read dataset ``name``: one pool to split, or an official ``(train, test)`` pair."""
    if name == "wordnet-supersenses":
        return _read_bundled_wordnet()
    if name == "digits":
        return _read_digits()
    if name == "fashion-mnist":
        return _read_fashion_mnist(
            Path(os.environ.get(FASHION_MNIST_ENV, FASHION_MNIST_DEFAULT_DIR)))
    kind, sep, location = name.partition(":")
    if sep and location and kind == "imagefolder":
        return _read_imagefolder(Path(location).expanduser())
    if sep and location and kind == "csv":
        return _read_csv_file(Path(location).expanduser())
    raise ValueError(f"name must be one of {', '.join(DATASET_NAMES)}; got {name!r}")


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
    raw = _read_named(name)
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
