"""Tests for fedsim.data (loaders, sources, partition) and scripts/make_wordnet_subset.py."""

from __future__ import annotations

import csv
import importlib.util
import socket
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.data.loaders import ImageData, TextData, load_dataset, prepare_images, subset
from fedsim.data.partition import partition, stratified_split
from fedsim.data.sources import DATASET_NAMES, FASHION_MNIST_DEFAULT_DIR, FASHION_MNIST_ENV
from tests.support import REPO_ROOT

WORDNET_CLASSES = ("animal", "artifact", "body", "food", "location", "person", "plant",
                   "substance")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any socket creation fail, so a loader that reaches out is caught."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _is_cover(shards: list[np.ndarray], n: int) -> bool:
    joined = np.concatenate(shards)
    return joined.size == n and np.array_equal(np.sort(joined), np.arange(n))


def _mean_label_entropy(shards: list[np.ndarray], labels: np.ndarray) -> float:
    entropies = []
    for shard in shards:
        counts = np.bincount(labels[shard], minlength=labels.max() + 1)
        p = counts[counts > 0] / counts.sum()
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


# ----------------------------------------------------------------- bundled text dataset


def test_bundled_wordnet_loads_offline_balanced(no_network: None) -> None:
    splits = load_dataset("wordnet-supersenses")
    assert splits.modality == "text"
    assert isinstance(splits.train, TextData) and isinstance(splits.test, TextData)
    assert splits.train.classes == WORDNET_CLASSES
    total = torch.bincount(torch.cat([splits.train.labels, splits.test.labels]))
    assert total.tolist() == [600] * 8
    assert torch.bincount(splits.test.labels).tolist() == [120] * 8
    assert all(isinstance(t, str) and t and '"' not in t[:1] for t in splits.train.texts)


def test_split_disjoint_and_seeded() -> None:
    a = load_dataset("wordnet-supersenses", seed=1)
    b = load_dataset("wordnet-supersenses", seed=1)
    c = load_dataset("wordnet-supersenses", seed=2)
    assert not set(a.train.texts) & set(a.test.texts)
    assert len(set(a.train.texts) | set(a.test.texts)) == 4800
    assert a.test.texts == b.test.texts and torch.equal(a.test.labels, b.test.labels)
    assert a.test.texts != c.test.texts


def test_stratified_split_is_cover_and_stratified() -> None:
    labels = np.repeat(np.arange(3), [7, 13, 80])
    train, test = stratified_split(labels, 0.2, seed=0)
    assert _is_cover([train, test], labels.size) and test.size == 20
    # quotas 1.4, 2.6, 16.0: floors 1, 2, 16, the spare one to the largest remainder
    assert np.bincount(labels[test]).tolist() == [1, 3, 16]


def test_limit_is_stratified_and_capped() -> None:
    splits = load_dataset("wordnet-supersenses", limit=80)
    assert len(splits.train) == 80 and len(splits.test) == 20
    assert torch.bincount(splits.train.labels).tolist() == [10] * 8


# ----------------------------------------------------------------------------- images


def test_digits_shape_and_normalization() -> None:
    splits = load_dataset("digits", seed=0)
    assert splits.modality == "image" and isinstance(splits.train, ImageData)
    n_train, n_test = len(splits.train), len(splits.test)
    assert n_train + n_test == 1797
    assert splits.train.images.shape == (n_train, 1, 8, 8)
    assert splits.train.images.dtype == torch.float32
    assert splits.train.labels.dtype == torch.int64
    assert splits.train.classes == tuple(str(i) for i in range(10))
    assert abs(float(splits.train.images.mean())) < 1e-4
    assert abs(float(splits.train.images.std()) - 1.0) < 1e-3
    # the test split uses the train statistics: close to, not exactly, standard
    assert abs(float(splits.test.images.mean())) < 0.1
    assert abs(float(splits.test.images.std()) - 1.0) < 0.1


def test_prepare_images_resizes_and_repeats_channels() -> None:
    images = torch.randn(5, 1, 8, 8)
    out = prepare_images(images, 16)
    assert out.shape == (5, 3, 16, 16) and out.dtype == torch.float32
    assert torch.equal(out[:, 0], out[:, 2])
    rgb = prepare_images(torch.randn(2, 3, 32, 32), 24, channels=3)
    assert rgb.shape == (2, 3, 24, 24)
    with pytest.raises(ValueError, match="channels"):
        prepare_images(torch.randn(2, 3, 8, 8), 8, channels=1)
    with pytest.raises(ValueError, match="img_size"):
        prepare_images(images, 0)


def _write_pngs(root: Path, sizes: dict[str, list[tuple[int, int]]]) -> None:
    from PIL import Image

    colours = {"blue": (0, 0, 255), "red": (255, 0, 0)}
    for cls, cls_sizes in sizes.items():
        (root / cls).mkdir(parents=True)
        for i, size in enumerate(cls_sizes):
            Image.new("RGB", size, colours[cls]).save(root / cls / f"{i}.png")


def test_imagefolder_native_size(tmp_path: Path) -> None:
    _write_pngs(tmp_path, {"blue": [(12, 10)] * 5, "red": [(12, 10)] * 5})
    splits = load_dataset(f"imagefolder:{tmp_path}", test_fraction=0.2, seed=0)
    assert splits.train.classes == ("blue", "red")
    assert splits.train.images.shape == (8, 3, 10, 12)  # (N, C, H, W), PIL size is (W, H)
    assert torch.bincount(splits.test.labels).tolist() == [1, 1]
    red_minus_blue = (splits.train.images[:, 0] - splits.train.images[:, 2]).mean(dim=(1, 2))
    assert torch.equal(red_minus_blue > 0, splits.train.labels == 1)


def test_imagefolder_mixed_sizes_resized_to_32(tmp_path: Path) -> None:
    _write_pngs(tmp_path, {"blue": [(12, 10), (40, 40)], "red": [(7, 9), (20, 30)]})
    splits = load_dataset(f"imagefolder:{tmp_path}", test_fraction=0.5)
    assert splits.train.images.shape[1:] == (3, 32, 32)


def test_imagefolder_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")


def test_fashion_mnist_missing_dir_says_how(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_fashion_mnist_with_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    directory = Path(FASHION_MNIST_DEFAULT_DIR)
    if not (directory / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{directory} absent (apt-get install dataset-fashion-mnist)")
    monkeypatch.setenv(FASHION_MNIST_ENV, str(directory))
    splits = load_dataset("fashion-mnist", limit=200, seed=3)
    assert splits.train.images.shape == (200, 1, 28, 28)
    assert splits.test.images.shape == (50, 1, 28, 28)
    assert torch.bincount(splits.train.labels).tolist() == [20] * 10
    assert splits.train.classes[9] == "Ankle boot"


# -------------------------------------------------------------------------------- csv


def test_csv_loader(tmp_path: Path) -> None:
    path = tmp_path / "toy.csv"
    rows = [(f"{label} text {i}, with comma", label) for label in ("zeta", "alpha", "mid")
            for i in range(10)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "text"])
        writer.writerows((label, text) for text, label in rows)
    splits = load_dataset(f"csv:{path}", test_fraction=0.3, seed=0)
    assert splits.modality == "text" and splits.train.classes == ("alpha", "mid", "zeta")
    assert len(splits.train) == 21 and len(splits.test) == 9
    for data in (splits.train, splits.test):
        for text, label in zip(data.texts, data.labels.tolist()):
            assert text.startswith(data.classes[label] + " text")


def test_csv_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("sentence,label\nhello,a\nbye,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="text"):
        load_dataset(f"csv:{path}")


# -------------------------------------------------------------------------- partition


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partition_is_disjoint_cover(scheme: str) -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=1000)
    shards = partition(labels, 7, scheme=scheme, alpha=0.5, seed=1)
    assert len(shards) == 7
    assert _is_cover(shards, labels.size)
    assert all(np.all(np.diff(s) > 0) and s.dtype == np.int64 for s in shards)
    again = partition(torch.from_numpy(labels), 7, scheme=scheme, alpha=0.5, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(shards, again))


def test_iid_near_equal() -> None:
    sizes = [s.size for s in partition(np.zeros(103, dtype=np.int64), 10)]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_small_alpha_more_skewed() -> None:
    labels = np.repeat(np.arange(10), 200)
    skewed = partition(labels, 20, scheme="dirichlet", alpha=0.05, seed=0)
    flat = partition(labels, 20, scheme="dirichlet", alpha=100.0, seed=0)
    assert _mean_label_entropy(skewed, labels) < _mean_label_entropy(flat, labels) - 0.5


def test_dirichlet_min_size_honoured() -> None:
    labels = np.repeat(np.arange(10), 100)
    first_draw = partition(labels, 10, scheme="dirichlet", alpha=0.3, min_size=1, seed=0)
    shards = partition(labels, 10, scheme="dirichlet", alpha=0.3, min_size=45, seed=0)
    assert min(s.size for s in first_draw) < 45  # so the redraw path is exercised
    assert min(s.size for s in shards) >= 45 and _is_cover(shards, labels.size)
    with pytest.raises(ValueError, match="min_size"):
        partition(labels, 10, scheme="dirichlet", alpha=0.01, min_size=99, seed=0)
    with pytest.raises(ValueError, match="min_size"):
        partition(labels, 10, min_size=101)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_clients": 0}, "num_clients"),
        ({"num_clients": 2.5}, "num_clients"),
        ({"scheme": "pathological"}, "scheme"),
        ({"scheme": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"scheme": "dirichlet", "alpha": float("nan")}, "alpha"),
        ({"min_size": -1}, "min_size"),
    ],
)
def test_partition_bad_inputs(kwargs: dict, field: str) -> None:
    args = {"num_clients": 3, **kwargs}
    with pytest.raises(ValueError, match=field):
        partition(np.arange(30) % 3, **args)


@pytest.mark.parametrize(
    ("name", "kwargs", "field"),
    [
        ("mnist", {}, "name"),
        ("digits", {"test_fraction": 1.5}, "test_fraction"),
        ("digits", {"limit": 0}, "limit"),
    ],
)
def test_load_dataset_bad_inputs(name: str, kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field) as info:
        load_dataset(name, **kwargs)
    if field == "name":
        assert all(valid in str(info.value) for valid in DATASET_NAMES)


# ----------------------------------------------------------------------------- subset


def test_subset_keeps_type_and_rows() -> None:
    images = ImageData(torch.arange(24, dtype=torch.float32).view(6, 1, 2, 2),
                       torch.tensor([0, 1, 0, 1, 0, 1]), ("a", "b"))
    part = subset(images, np.array([1, 4]))
    assert isinstance(part, ImageData) and part.classes == ("a", "b")
    assert torch.equal(part.images, images.images[[1, 4]])
    assert part.labels.tolist() == [1, 0]
    texts = TextData(("x", "y", "z"), torch.tensor([0, 1, 1]), ("a", "b"))
    assert subset(texts, np.array([2, 0])).texts == ("z", "x")
    with pytest.raises(ValueError, match="indices"):
        subset(texts, np.array([3]))


# ----------------------------------------------------------------------- build script


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "make_wordnet_subset", REPO_ROOT / "scripts" / "make_wordnet_subset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_keeps_definition_drops_examples() -> None:
    script = _load_script()
    gloss = ' a domestic animal; kept clause; "the dog barked"; "another example"  \n'
    assert script.definition_of(gloss) == "a domestic animal; kept clause"


def test_script_balanced_sample_drops_ambiguous() -> None:
    script = _load_script()
    rows = [(f"{name} {i}", lex) for lex, name in script.SUPERSENSES.items() for i in range(3)]
    rows += [("shared gloss", 5), ("shared gloss", 20), ("animal 0", 5), ("other", 3)]
    sample = script.balanced_sample(rows, per_class=3, seed=0)
    assert Counter(label for _, label in sample) == {n: 3 for n in script.SUPERSENSES.values()}
    assert "shared gloss" not in {text for text, _ in sample}
    assert "other" not in {text for text, _ in sample}
    assert len({text for text, _ in sample}) == len(sample) == 24
    with pytest.raises(ValueError, match="per_class"):
        script.balanced_sample(rows, per_class=4, seed=0)
