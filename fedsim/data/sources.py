"""Where a dataset's examples come from: one reader per source, before any tensor is made.

``read_named(name)`` reads the examples of a dataset name (see :mod:`fedsim.data.loaders`
for the names) as :class:`RawData`: one labelled pool to split, or an official
``(train, test)`` pair. Files are read from this machine only: the bundled WordNet
glosses, scikit-learn's digits, Fashion-MNIST from a local directory, an ImageFolder, a
CSV.
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

import numpy as np

__all__ = [
    "DATASET_NAMES",
    "FASHION_MNIST_DEFAULT_DIR",
    "FASHION_MNIST_ENV",
    "IMAGEFOLDER_FALLBACK_SIZE",
    "RawData",
    "read_named",
]

LOG = logging.getLogger(__name__)

DATASET_NAMES: tuple[str, ...] = (
    "wordnet-supersenses",
    "digits",
    "fashion-mnist",
    "imagefolder:<dir>",
    "csv:<file.csv>",
)
IMAGEFOLDER_FALLBACK_SIZE = 32
FASHION_MNIST_ENV = "FEDSIM_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
BUNDLED_WORDNET = "wordnet_supersenses.csv.gz"


@dataclass(frozen=True)
class RawData:
    """Labelled examples before tensors: uint8 or [0, 1] float images, or texts."""

    inputs: np.ndarray | tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]

    def take(self, idx: np.ndarray) -> RawData:
        if isinstance(self.inputs, tuple):
            inputs: np.ndarray | tuple[str, ...] = tuple(self.inputs[i] for i in idx.tolist())
        else:
            inputs = self.inputs[idx]
        return RawData(inputs, self.labels[idx], self.classes)


def _texts_from_rows(rows: Iterable[dict[str, str]], fieldnames: list[str] | None,
                     source: str) -> RawData:
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
    return RawData(tuple(texts), np.array([ids[n] for n in names], dtype=np.int64), classes)


def _read_csv_stream(stream: io.TextIOBase, source: str) -> RawData:
    reader = csv.DictReader(stream)
    return _texts_from_rows(reader, reader.fieldnames, source)


def _read_csv_file(path: Path) -> RawData:
    if not path.is_file():
        raise FileNotFoundError(f"csv dataset {path} not found: give an existing CSV file "
                                "with columns text,label, e.g. csv:/data/reviews.csv")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as stream:
        return _read_csv_stream(stream, str(path))


def _read_bundled_wordnet() -> RawData:
    resource = resources.files("fedsim").joinpath("datasets").joinpath(BUNDLED_WORDNET)
    if not resource.is_file():
        raise FileNotFoundError(
            f"bundled dataset fedsim/datasets/{BUNDLED_WORDNET} is missing from this "
            "installation: reinstall fedsim, or rebuild it with "
            "`python scripts/make_wordnet_subset.py` (needs apt package wordnet-base)"
        )
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8", newline="") as stream:
        return _read_csv_stream(stream, f"fedsim/datasets/{BUNDLED_WORDNET}")


def _read_digits() -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return RawData(images, bunch.target.astype(np.int64), tuple(str(c) for c in range(10)))


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


def _read_fashion_mnist(directory: Path) -> tuple[RawData, RawData]:
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
        splits.append(RawData(images, labels, FASHION_MNIST_CLASSES))
    return splits[0], splits[1]


def _read_imagefolder(root: Path) -> RawData:
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
    return RawData(np.ascontiguousarray(arrays), labels, tuple(folder.classes))


# --------------------------------------------------------------------------- assembly


def read_named(name: str) -> RawData | tuple[RawData, RawData]:
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
