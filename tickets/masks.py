"""Pruning masks as pure functions over `dict[str, np.ndarray]`. No TensorFlow here.

A mask maps each prunable tensor's name to a boolean array of the same shape: True keeps the
weight. Sparsity `s` over `N` prunable weights always prunes exactly `round(s * N)` of them
(OpenLTH and the original LTH code prune one weight too many at the threshold).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

Weights = Mapping[str, np.ndarray]
Mask = dict[str, np.ndarray]


def ones_like(weights: Weights) -> Mask:
    return {name: np.ones(np.shape(w), dtype=bool) for name, w in weights.items()}


def _count(total: int, sparsity: float) -> int:
    if not 0 <= sparsity < 1:
        raise ValueError(f"Received `sparsity={sparsity}`: must be in [0, 1)")
    # Python's round() is half-to-even, so round(s * N) is the same on every platform.
    return int(round(sparsity * total))


def _smallest(magnitudes: np.ndarray, alive: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the k smallest live magnitudes; ties go to the lower index (stable sort)."""
    live = np.flatnonzero(alive)
    if k == 0:
        return live[:0]
    order = np.argsort(magnitudes[live], kind="stable")
    return live[order[:k]]


def _check(weights: Weights, mask: Mask | None) -> Mask:
    if not weights:
        raise ValueError("Received no prunable weights")
    if mask is None:
        return ones_like(weights)
    if set(mask) != set(weights):
        raise ValueError(f"Received a mask over {sorted(mask)} for weights {sorted(weights)}")
    for name, w in weights.items():
        if np.shape(mask[name]) != np.shape(w):
            raise ValueError(f"Received a mask of shape {np.shape(mask[name])} for {name!r} of shape {np.shape(w)}")
    return {name: np.asarray(m, dtype=bool) for name, m in mask.items()}


def magnitude_mask(weights: Weights, sparsity: float, scope: str = "global",
                   mask: Mask | None = None) -> tuple[Mask, float]:
    """Prune the smallest-magnitude weights until exactly `round(sparsity * N)` are pruned.

    `sparsity` is the total fraction of all N prunable weights removed, counting those an
    existing `mask` already removed; only its survivors compete, so the result is a subset of
    it. `global` ranks all tensors together; `layerwise` prunes the same fraction of each tensor
    (counts apportioned by largest remainder so the total is still exact).
    Returns the new mask and the magnitude threshold (largest pruned magnitude; 0.0 if none).
    """
    old = _check(weights, mask)
    sizes = [int(np.size(w)) for w in weights.values()]
    total = sum(sizes)
    pruned = [size - int(old[n].sum()) for n, size in zip(weights, sizes, strict=True)]
    target = _count(total, sparsity)
    if target < sum(pruned):
        raise ValueError(f"Received `sparsity={sparsity}` ({target} weights) below the existing mask's "
                         f"{sum(pruned)} pruned weights")
    if scope == "global":
        return _prune(weights, old, target - sum(pruned))
    if scope == "layerwise":
        more = [k - p for k, p in zip(_apportion(sizes, target), pruned, strict=True)]
        if min(more) < 0:
            raise ValueError(f"Received an existing mask that already prunes more of a tensor than "
                             f"`sparsity={sparsity}` allows layerwise")
        return _prune(weights, old, more)
    raise ValueError(f"Received `scope={scope!r}`: expected 'global' or 'layerwise'")


def prune_remaining(weights: Weights, rate: float, mask: Mask | None = None, scope: str = "global",
                    rates: Mapping[str, float] | None = None) -> tuple[Mask, float]:
    """One level of iterative magnitude pruning: remove `round(rate * survivors)` more weights.

    `global` counts survivors over all tensors, `layerwise` per tensor. Tensors named in `rates`
    are pruned at their own rate, each on its own (the papers prune the output layer at half rate).
    """
    old = _check(weights, mask)
    rates = dict(rates or {})
    for name, r in [("rate", rate), *rates.items()]:
        if not 0 <= r < 1:
            raise ValueError(f"Received `{name}={r}`: must be in [0, 1)")
    alive = [int(old[n].sum()) for n in weights]
    counts = [int(round(rates.get(n, rate) * a)) if (scope == "layerwise" or n in rates) else None
              for n, a in zip(weights, alive, strict=True)]
    shared = [i for i, c in enumerate(counts) if c is None]
    if shared:  # global scope over the tensors without their own rate
        rest = {n: weights[n] for i, n in enumerate(weights) if i in shared}
        sub, t_rest = _prune(rest, {n: old[n] for n in rest}, int(round(rate * sum(alive[i] for i in shared))))
    else:
        sub, t_rest = {}, 0.0
    own = {n: weights[n] for i, n in enumerate(weights) if i not in shared}
    sub_own, t_own = _prune(own, {n: old[n] for n in own}, [c for c in counts if c is not None]) if own else ({}, 0.0)
    merged = {**sub, **sub_own}
    return {n: merged[n] for n in weights}, max(t_rest, t_own)


def _prune(weights: Weights, old: Mask, count: int | list[int]) -> tuple[Mask, float]:
    """Remove the `count` smallest surviving magnitudes: one count over all tensors, or one per tensor."""
    names = list(weights)  # insertion order fixes the tie-break across tensors
    flat = {n: np.abs(np.asarray(weights[n], dtype=np.float64)).ravel() for n in names}
    alive = {n: np.asarray(old[n], dtype=bool).ravel() for n in names}
    new = {n: alive[n].copy() for n in names}
    dropped = []
    if isinstance(count, int):
        magnitudes = np.concatenate([flat[n] for n in names])
        drop = _smallest(magnitudes, np.concatenate([alive[n] for n in names]), count)
        offsets = np.cumsum([0] + [flat[n].size for n in names])
        for i, n in enumerate(names):
            new[n][drop[(drop >= offsets[i]) & (drop < offsets[i + 1])] - offsets[i]] = False
        dropped.append(magnitudes[drop])
    else:
        for n, k in zip(names, count, strict=True):
            drop = _smallest(flat[n], alive[n], k)
            new[n][drop] = False
            dropped.append(flat[n][drop])
    dropped = np.concatenate(dropped) if dropped else np.zeros(0)
    threshold = float(dropped.max()) if dropped.size else 0.0
    return {n: new[n].reshape(np.shape(weights[n])) for n in names}, threshold


def _apportion(sizes: list[int], total: int) -> list[int]:
    """Split `total` over tensors in proportion to `sizes`, rounding so the parts sum to `total`."""
    n = sum(sizes)
    exact = [total * s / n for s in sizes]
    parts = [int(np.floor(e)) for e in exact]
    # Largest remainder first; ties to the earlier tensor, so the split is deterministic.
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def random_mask_like(mask: Mask, seed: int, within: Mask | None = None) -> Mask:
    """A random mask keeping the same number of weights in each tensor as `mask` (seeded).

    With `within`, the kept weights are drawn from its survivors only (nested, for IMP).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name in mask:
        m = np.asarray(mask[name], dtype=bool)
        pool = np.flatnonzero(within[name]) if within is not None else np.arange(m.size)
        if int(m.sum()) > pool.size:
            raise ValueError(f"Received `within` keeping {pool.size} weights of {name!r}; the mask keeps {int(m.sum())}")
        keep = np.zeros(m.size, dtype=bool)
        keep[pool[rng.permutation(pool.size)[: int(m.sum())]]] = True
        out[name] = keep.reshape(m.shape)
    return out


def apply(weights: Weights, mask: Mask) -> dict[str, np.ndarray]:
    """Weights with pruned entries set to exactly zero; tensors not in `mask` pass through."""
    return {n: (np.where(mask[n], w, np.zeros_like(w)) if n in mask else w) for n, w in weights.items()}


def report(mask: Mask, threshold: float | None = None) -> dict:
    """Per-tensor and overall counts and fractions of a mask."""
    layers = {}
    for name, m in mask.items():
        total, kept = int(np.size(m)), int(np.count_nonzero(m))
        layers[name] = {"total": total, "remaining": kept, "pruned": total - kept,
                        "sparsity": (total - kept) / total if total else 0.0}
    total = sum(v["total"] for v in layers.values())
    kept = sum(v["remaining"] for v in layers.values())
    return {"total": total, "remaining": kept, "pruned": total - kept,
            "sparsity": (total - kept) / total if total else 0.0,
            "weights_remaining": kept / total if total else 1.0,
            "threshold": threshold, "layers": layers}


def save(path, mask: Mask) -> None:
    np.savez_compressed(path, **{k: np.asarray(v, dtype=bool) for k, v in mask.items()})


def load(path) -> Mask:
    with np.load(path) as f:
        return {k: f[k].astype(bool) for k in f.files}
