"""Which images a run uses: class-balanced subsets, the validation hold-out and the CIFAR-10a/b
halves, as indices into a split's labels. Plain numpy, no TensorFlow; every draw is seeded by a
named stream (`tickets.seeds`), so the same spec always picks the same images."""

from __future__ import annotations

import numpy as np

from tickets import seeds
from tickets.errors import DataError


def balanced_subset(labels: np.ndarray, n: int, seed: int, field_name: str) -> np.ndarray:
    """`n` indices, as equal per class as possible, the same for the same seed."""
    classes = np.unique(labels)
    per_class = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    rng = np.random.default_rng(seed)
    chosen = []
    for c, k in zip(classes, per_class, strict=True):
        members = np.flatnonzero(labels == c)
        if k > len(members):
            raise DataError(f"{field_name}: {n} needs {k} images of class {c}; the data has {len(members)}")
        chosen.append(members[rng.permutation(len(members))[:k]])
    return np.sort(np.concatenate(chosen))


def hold_out(labels: np.ndarray, n: int, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(the indices left to train on, `n` class-balanced validation indices), drawn from the fixed
    VALIDATION stream; by index, so a streamed split stays on its shards."""
    if n >= len(labels):
        raise DataError(f"data.validation: {n} is not below the {len(labels)} training images"
                        f"{f' ({where})' if where else ''}: nothing would be left to train on")
    held = balanced_subset(labels, n, seeds.VALIDATION, "data.validation")
    rest = np.setdiff1d(np.arange(len(labels)), held, assume_unique=True)
    return rest, held


def half_indices(labels: np.ndarray, half: str) -> np.ndarray:
    """CIFAR-10a (`a`) or 10b (`b`): disjoint halves with half of every class's images each."""
    rng = np.random.default_rng(seeds.HALF_SPLIT)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = members[rng.permutation(len(members))]
        cut = len(order) // 2
        chosen.append(order[:cut] if half == "a" else order[cut:])
    return np.sort(np.concatenate(chosen))
