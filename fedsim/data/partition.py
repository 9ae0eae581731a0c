"""Dividing a labelled set of examples by index: stratified samples and client shards.

Pure functions over label arrays; every random choice comes from an explicit seed.

- :func:`stratified_sample` picks ``k`` indices with class proportions preserved
  (used for train/test splits and for ``limit`` subsampling);
- :func:`partition` shards ``range(N)`` over federated clients, either IID or with
  per-class Dirichlet(alpha) proportions (Hsu, Qi & Brown 2019, "Measuring the
  Effects of Non-Identical Data Distribution for Federated Visual Classification").
"""

from __future__ import annotations

import math

import numpy as np
import torch

PARTITION_SCHEMES: tuple[str, ...] = ("iid", "dirichlet")
DIRICHLET_MAX_DRAWS = 100


def as_label_array(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    """Return ``labels`` as a 1-D int64 numpy array of non-negative class ids."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(array.shape)}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and array.min() < 0:
        raise ValueError(f"labels must be >= 0, got minimum {int(array.min())}")
    return array


def _largest_remainder(counts: np.ndarray, k: int) -> np.ndarray:
    """Split ``k`` over classes proportionally to ``counts`` (integers summing to k)."""
    quotas = counts * (k / counts.sum())
    taken = np.minimum(np.floor(quotas).astype(np.int64), counts)
    leftover = k - int(taken.sum())
    # Hand out the rest by largest fractional part, ties to the lower class id.
    order = np.lexsort((np.arange(len(counts)), -(quotas - np.floor(quotas))))
    for cls in order:
        if leftover == 0:
            break
        if taken[cls] < counts[cls]:
            taken[cls] += 1
            leftover -= 1
    return taken


def stratified_sample(
    labels: np.ndarray | torch.Tensor, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Pick ``min(k, N)`` distinct indices whose class mix matches ``labels``.

    Per-class counts follow the largest-remainder rule, so they sum to exactly ``k``;
    members of each class are drawn uniformly with ``rng``. Returns sorted indices.
    """
    array = as_label_array(labels)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k >= array.size:
        return np.arange(array.size, dtype=np.int64)
    classes, counts = np.unique(array, return_counts=True)
    per_class = _largest_remainder(counts, k)
    chosen = [
        rng.choice(np.flatnonzero(array == cls), size=int(n), replace=False)
        for cls, n in zip(classes, per_class)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def stratified_split(
    labels: np.ndarray | torch.Tensor, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into ``(train, test)``, stratified by class and seeded.

    The test side holds ``round(N * test_fraction)`` examples (at least 1 and at most
    N - 1); both sides are sorted and together cover ``range(N)`` exactly once.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    array = as_label_array(labels)
    if array.size < 2:
        raise ValueError(f"need at least 2 examples to split, got {array.size}")
    n_test = min(max(round(array.size * test_fraction), 1), array.size - 1)
    test = stratified_sample(array, n_test, np.random.default_rng([seed, 0]))
    train = np.setdiff1d(np.arange(array.size, dtype=np.int64), test, assume_unique=True)
    return train, test


def _validate_partition_args(
    n: int, num_clients: int, scheme: str, alpha: float, min_size: int
) -> None:
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)):
        raise ValueError(f"num_clients must be an int >= 1, got {num_clients!r}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(f"scheme must be one of {PARTITION_SCHEMES}, got {scheme!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(f"min_size must be an int >= 0, got {min_size!r}")
    if n < num_clients * min_size:
        raise ValueError(
            f"min_size={min_size} is impossible: {n} examples cannot give each of "
            f"num_clients={num_clients} clients {min_size}; need N >= {num_clients * min_size}"
        )


def _iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(n), num_clients))


def _dirichlet_once(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    shards: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * members.size).astype(np.int64)
        for client, piece in enumerate(np.split(members, cuts)):
            shards[client].append(piece)
    return [np.concatenate(pieces) for pieces in shards]


def partition(
    labels: np.ndarray | torch.Tensor,
    num_clients: int,
    *,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Shard example indices over ``num_clients`` clients.

    Args:
        labels: class id of each example, shape ``(N,)``.
        num_clients: number of shards, >= 1.
        scheme: ``"iid"`` (seeded shuffle, near-equal sizes) or ``"dirichlet"``
            (for every class, client proportions drawn from Dirichlet(alpha); small
            alpha gives few classes per client, large alpha approaches IID).
        alpha: Dirichlet concentration, > 0 (ignored by ``"iid"``).
        seed: seed of every random choice.
        min_size: every client gets at least this many examples. Dirichlet draws are
            repeated (at most ``DIRICHLET_MAX_DRAWS`` times, same seeded stream) until
            this holds; otherwise a ValueError says what to change.

    Returns:
        ``num_clients`` sorted int64 index arrays, pairwise disjoint, covering
        ``range(N)``.
    """
    array = as_label_array(labels)
    _validate_partition_args(array.size, num_clients, scheme, alpha, min_size)
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        shards = _iid(array.size, int(num_clients), rng)
    else:
        for _ in range(DIRICHLET_MAX_DRAWS):
            shards = _dirichlet_once(array, int(num_clients), float(alpha), rng)
            if min(shard.size for shard in shards) >= min_size:
                break
        else:
            raise ValueError(
                f"dirichlet partition: no draw in {DIRICHLET_MAX_DRAWS} gave every one of "
                f"num_clients={num_clients} clients min_size={min_size} of N={array.size} "
                f"examples with alpha={alpha}; raise alpha, or lower num_clients or min_size"
            )
    return [np.sort(shard).astype(np.int64) for shard in shards]
