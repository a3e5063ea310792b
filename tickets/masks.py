"""Pruning masks as pure functions over `dict[str, np.ndarray]`. No TensorFlow here.

A mask maps each prunable tensor's name to a boolean array of the same shape: True keeps the
weight. Sparsity `s` over `N` prunable weights always prunes exactly `round(s * N)` of them
(OpenLTH and the original LTH code prune one weight too many at the threshold).

How the pruned weights are spread over the tensors is the `scope`:
  - `global`: one ranking of all magnitudes. Can empty whole layers: layers followed by BatchNorm
    have no meaningful weight scale (Tanaka et al. 2020, "layer collapse").
  - `layerwise`: the same fraction of every tensor.
  - `lamp`: one ranking of layer-adaptive magnitude scores (Lee et al. 2021), w_u^2 / sum of the
    squares of the tensor's weights at least as large as w_u. Every tensor's largest weight scores
    1, the most any weight can, so no tensor is emptied while there are weights to keep.
  - `erk`: Erdős–Rényi-kernel densities (Evci et al. 2020, RigL): a tensor of shape (k, k, in, out)
    keeps in proportion to (k + k + in + out) / (k * k * in * out), densities capped at 1; the
    largest weights of each tensor are kept.
`global`, `lamp` and `erk` are scoring functions over one shared selection (the `count` lowest
scores of all tensors, ties to the earlier tensor and lower index); `layerwise` sets per-tensor counts.

Pruning at initialization scores weights by other means (`tickets.saliency`: SNIP, GraSP, SynFlow);
`select` keeps the highest of such scores within parts whose counts the allocation set
(`pruning.allocation`): the same selection, another score.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

Weights = Mapping[str, np.ndarray]
Mask = dict[str, np.ndarray]
SCOPES = ("global", "layerwise", "lamp", "erk")


def ones_like(weights: Weights) -> Mask:
    return {name: np.ones(np.shape(w), dtype=bool) for name, w in weights.items()}


def prune_count(total: int, sparsity: float) -> int:
    if not 0 <= sparsity < 1:
        raise ValueError(f"Received `sparsity={sparsity}`: must be in [0, 1)")
    # Python's round() is half-to-even, so round(s * N) is the same on every platform.
    return int(round(sparsity * total))


def _smallest(magnitudes: np.ndarray, alive: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the k smallest live magnitudes; ties go to the lower index: the first k of a
    stable sort, as a set, found by partition in linear time (SynFlow selects a hundred times)."""
    live = np.flatnonzero(alive)
    if k == 0:
        return live[:0]
    if k >= live.size:
        return live
    values = magnitudes[live]
    kth = np.partition(values, k - 1)[k - 1]
    if not np.isfinite(kth):  # NaN sorts last in a sort but breaks the comparisons below
        return live[np.argsort(values, kind="stable")[:k]]
    below = live[values < kth]
    return np.concatenate([below, live[values == kth][: k - below.size]])


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


# ---------------------------------------------------------------------------------------------
# Scores: higher keeps. Each sees the surviving weights (`alive`) and how many of them will be kept.

Scores = dict[str, np.ndarray]


def magnitude_scores(weights: Weights, alive: Mask, keep: int) -> Scores:
    return {n: np.abs(np.asarray(w, dtype=np.float64)) for n, w in weights.items()}


def _ascending(w: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Flat indices of the live weights by increasing magnitude, ties by index (pruned first)."""
    flat = np.abs(np.asarray(w, dtype=np.float64)).ravel()
    return live[np.argsort(flat[live], kind="stable")]


def lamp_scores(weights: Weights, alive: Mask, keep: int) -> Scores:
    """LAMP (Lee et al. 2021): w_u^2 / sum over the tensor's survivors v >= u (by magnitude) of w_v^2."""
    out = {}
    for n, w in weights.items():
        score = np.zeros(np.size(w))
        order = _ascending(w, np.flatnonzero(np.ravel(alive[n])))
        if order.size:
            sq = np.square(np.asarray(w, dtype=np.float64).ravel()[order])
            suffix = np.cumsum(sq[::-1])[::-1]
            score[order] = np.divide(sq, suffix, out=np.zeros_like(sq), where=suffix > 0)
            score[order[-1]] = 1.0  # also for an all-zero tensor: its largest weight is never ranked below another's
        out[n] = score.reshape(np.shape(w))
    return out


def erk_keep(shapes: Mapping[str, tuple], alive: Mapping[str, int], keep: int) -> dict[str, float]:
    """How many weights each tensor keeps under Erdős–Rényi-kernel densities (real-valued, summing to
    `keep`): proportional to n * sum(shape) / prod(shape) = sum(shape), each capped at its survivors."""
    raw = {n: float(sum(s)) for n, s in shapes.items()}
    capped: dict[str, float] = {n: 0.0 for n in shapes if alive[n] == 0}
    while True:  # water-filling: tensors whose share would exceed their survivors keep them all
        free = [n for n in shapes if n not in capped]
        budget = keep - sum(capped.values())
        eps = budget / sum(raw[n] for n in free) if free else 0.0
        over = [n for n in free if eps * raw[n] > alive[n]]
        if not over:
            return {**capped, **{n: eps * raw[n] for n in free}}
        capped |= {n: float(alive[n]) for n in over}


def erk_scores(weights: Weights, alive: Mask, keep: int) -> Scores:
    """Rank j (0 = largest) of each survivor within its tensor, over the tensor's ERK share:
    -j / share. One selection over all tensors then keeps about `share` of each, exactly `keep` in all."""
    shapes = {n: np.shape(w) for n, w in weights.items()}
    shares = erk_keep(shapes, {n: int(np.count_nonzero(alive[n])) for n in weights}, keep)
    out = {}
    for n, w in weights.items():
        score = np.full(np.size(w), -np.inf)
        order = _ascending(w, np.flatnonzero(np.ravel(alive[n])))
        if order.size and shares[n] > 0:
            score[order] = -np.arange(order.size - 1, -1, -1) / shares[n]
        out[n] = score.reshape(shapes[n])
    return out


SCORES: dict[str, Callable[[Weights, Mask, int], Scores]] = {
    "global": magnitude_scores, "lamp": lamp_scores, "erk": erk_scores}


def magnitude_mask(weights: Weights, sparsity: float, scope: str = "global",
                   mask: Mask | None = None) -> tuple[Mask, float]:
    """Prune the lowest-scoring weights until exactly `round(sparsity * N)` are pruned.

    `sparsity` is the total fraction of all N prunable weights removed, counting those an
    existing `mask` already removed; only its survivors compete, so the result is a subset of
    it. `scope` spreads the count over the tensors (module docstring); `layerwise` apportions
    counts by largest remainder so the total is still exact.
    Returns the new mask and the magnitude threshold (largest pruned magnitude; 0.0 if none).
    """
    old = _check(weights, mask)
    sizes = [int(np.size(w)) for w in weights.values()]
    total = sum(sizes)
    pruned = [size - int(old[n].sum()) for n, size in zip(weights, sizes, strict=True)]
    target = prune_count(total, sparsity)
    if target < sum(pruned):
        raise ValueError(f"Received `sparsity={sparsity}` ({target} weights) below the existing mask's "
                         f"{sum(pruned)} pruned weights")
    if scope == "layerwise":
        more = [k - p for k, p in zip(_apportion(sizes, sparsity, target), pruned, strict=True)]
        if min(more) < 0:
            raise ValueError(f"Received an existing mask that already prunes more of a tensor than "
                             f"`sparsity={sparsity}` allows layerwise")
        return _prune(weights, old, more)
    return _prune(weights, old, target - sum(pruned), _scores(scope, weights, old, total - target))


def _scores(scope: str, weights: Weights, alive: Mask, keep: int) -> Scores:
    if scope not in SCORES:
        raise ValueError(f"Received `scope={scope!r}`: expected one of {', '.join(SCOPES)}")
    return SCORES[scope](weights, alive, keep)


def prune_remaining(weights: Weights, rate: float, mask: Mask | None = None, scope: str = "global",
                    rates: Mapping[str, float] | None = None) -> tuple[Mask, float]:
    """One level of iterative magnitude pruning: remove `round(rate * survivors)` more weights.

    `layerwise` counts survivors per tensor; the other scopes count them over all tensors and
    spread the count by their scores. Tensors named in `rates` are pruned at their own rate, each
    on its own (the papers prune convolutions and the output layer at their own rates).
    """
    return _by_rate(weights, _check(weights, mask), rate, scope, rates, lambda alive, r: int(round(r * alive)))


def level_mask(weights: Weights, level: int, rate: float, scope: str = "global",
               rates: Mapping[str, float] | None = None) -> tuple[Mask, float]:
    """In one shot, the mask of IMP level `level`: the counts IMP keeps there, `n_k = n_{k-1} −
    round(rate · n_{k-1})` per tensor with its own rate (every tensor when `layerwise`) and over the
    other tensors together, selected once from `weights` (the papers' one-shot comparisons)."""
    return _by_rate(weights, _check(weights, None), rate, scope, rates, lambda n, r: n - imp_kept(n, r, level))


def imp_kept(n: int, rate: float, level: int) -> int:
    """Of `n` weights, how many IMP keeps at `level`: `n_k = n_{k-1} − round(rate · n_{k-1})`."""
    for _ in range(level):
        n -= int(round(rate * n))
    return n


def _by_rate(weights: Weights, old: Mask, rate: float, scope: str, rates: Mapping[str, float] | None,
             removed: Callable[[int, float], int]) -> tuple[Mask, float]:
    """Remove `removed(survivors, rate)` weights from each tensor with its own rate (every tensor when
    `layerwise`), and `removed(survivors, rate)` from the other tensors together, by the scope's scores."""
    rates = dict(rates or {})
    for name, r in [("rate", rate), *rates.items()]:
        if not 0 <= r < 1:
            raise ValueError(f"Received `{name}={r}`: must be in [0, 1)")
    alive = {n: int(old[n].sum()) for n in weights}
    own = [n for n in weights if n in rates or scope == "layerwise"]
    shared = [n for n in weights if n not in own]
    parts, thresholds = {}, [0.0]
    if own:
        sub, t = _prune({n: weights[n] for n in own}, {n: old[n] for n in own},
                        [removed(alive[n], rates.get(n, rate)) for n in own])
        parts |= sub
        thresholds.append(t)
    if shared:
        pool, pool_old = {n: weights[n] for n in shared}, {n: old[n] for n in shared}
        survivors = sum(alive[n] for n in shared)
        count = removed(survivors, rate)
        sub, t = _prune(pool, pool_old, count, _scores(scope, pool, pool_old, survivors - count))
        parts |= sub
        thresholds.append(t)
    return {n: parts[n] for n in weights}, max(thresholds)


def _prune(weights: Weights, old: Mask, count: int | list[int], scores: Scores | None = None) -> tuple[Mask, float]:
    """Remove the `count` lowest-scoring survivors over all tensors (by magnitude unless `scores`
    are given), or the given count of smallest magnitudes per tensor."""
    names = list(weights)  # insertion order fixes the tie-break across tensors
    flat = {n: np.abs(np.asarray(weights[n], dtype=np.float64)).ravel() for n in names}
    alive = {n: np.asarray(old[n], dtype=bool).ravel() for n in names}
    new = {n: alive[n].copy() for n in names}
    dropped = []
    if isinstance(count, int):
        ranked = np.concatenate([np.ravel(scores[n]) if scores is not None else flat[n] for n in names])
        drop = _smallest(ranked, np.concatenate([alive[n] for n in names]), count)
        offsets = np.cumsum([0] + [flat[n].size for n in names])
        for i, n in enumerate(names):
            mine = drop[(drop >= offsets[i]) & (drop < offsets[i + 1])] - offsets[i]
            new[n][mine] = False
            dropped.append(flat[n][mine])
    else:
        for n, k in zip(names, count, strict=True):
            drop = _smallest(flat[n], alive[n], k)
            new[n][drop] = False
            dropped.append(flat[n][drop])
    dropped = np.concatenate(dropped) if dropped else np.zeros(0)
    threshold = float(dropped.max()) if dropped.size else 0.0
    return {n: new[n].reshape(np.shape(weights[n])) for n in names}, threshold


def _apportion(sizes: list[int], share: float, total: int) -> list[int]:
    """Split `total` = round(share · Σ sizes) over tensors, each part within 1 of `share · size`.

    Rounding `share · size` itself (not `total`'s proportional split, which carries the total's
    rounding into every part) keeps each tensor's fraction the asked-for one: the floors sum to at
    most `share · Σ sizes`, so `total` is reached by adding one to at most every tensor."""
    exact = [share * s for s in sizes]
    parts = [int(np.floor(e)) for e in exact]
    assert 0 <= total - sum(parts) <= len(parts), (sizes, share, total)
    # Largest remainder first; ties to the earlier tensor, so the split is deterministic.
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


Part = tuple[tuple[str, ...], int]  # tensors ranked together, and how many of their weights to keep


def select(scores: Scores, parts: list[Part], alive: Mask | None = None) -> Mask:
    """Keep, in each part, its count of the highest-scoring surviving weights (`alive`; all when None):
    the lowest are pruned, ties to the earlier tensor and the lower index, as every selection here.
    Scores may be signed (GraSP's); a survivor's score must be finite."""
    old = _check(scores, alive)
    out: Mask = {}
    for names, keep in parts:
        survivors = sum(int(old[n].sum()) for n in names)
        if not 0 <= keep <= survivors:
            raise ValueError(f"Received a part {list(names)[:3]} to keep {keep} of {survivors} surviving weights")
        bad = [n for n in names if not np.isfinite(np.asarray(scores[n])[old[n]]).all()]
        if bad:
            raise ValueError(f"Received scores that are not finite for {bad[:3]}")
        part, _ = _prune({n: scores[n] for n in names}, {n: old[n] for n in names}, survivors - keep,
                         {n: np.asarray(scores[n], dtype=np.float64) for n in names})
        out |= part
    missing = set(scores) - set(out)
    if missing:
        raise ValueError(f"Received parts that leave out {sorted(missing)[:3]}")
    return {n: out[n] for n in scores}


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
    """A mask as a compressed `.npz` of bool arrays, one per tensor name."""
    np.savez_compressed(path, **{k: np.asarray(v, dtype=bool) for k, v in mask.items()})


def load(path) -> Mask:
    """The mask `save` wrote."""
    with np.load(path) as f:
        return {k: f[k].astype(bool) for k in f.files}
