"""Channel-structured pruning (`pruning.granularity: channel`): which channels of a model can be removed
whole, what a channel scores, which channels a grid point removes, and what the network then costs.

Pure numpy over a `pruning.Layout`, like `tickets.masks`: masks stay per weight, so a removed channel is
a channel every weight of which is masked -- its producer's filter, its path through depthwise
convolutions and its consumers' input slices -- and training, rewinding, IMP, the controls, transfer
and the instability analysis see an ordinary mask. `tickets.export` removes such channels physically.

A kernel's output channels are removable together (a `Group`) when they reach, possibly through
depthwise convolutions (channel by channel), only kernels fed by that kernel alone: no `Add` joins them
to another kernel's outputs, so the residual streams of MobileNetV2 keep their width and every `Add`
stays consistent. In MobileNetV2 these are the hidden channels of every inverted-residual block with an
expand convolution (expand output, its BatchNorm, the depthwise channel, the projection's input), plus
the two projections no `Add` follows (block 0's and block 16's outputs) and the last convolution's
outputs (into the classifier); in Conv-2/4/6 every layer's filters or units but the classifier's. A
group is pruned only if every kernel it touches is prunable (`pruning.exclude`), so the stem and the
classifier, excluded by the presets, keep their channels.

A channel's score is the magnitude of what scales it last before its consumers read it: its
BatchNorm's |gamma| where it has one (Network Slimming, Liu et al. 2017; the early-bird tickets of
You et al. 2020), else the mean |weight| of its filter (Li et al. 2017; Conv-2/4/6 have no BatchNorm).
After BatchNorm a filter's own magnitude says nothing of the channel's size; gamma does. The scope's
scoring functions (`masks.SCORES`: global, lamp) rank these scores as they rank weights; `layerwise`
removes the same share of every group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from tickets import masks as masks_lib

Weights = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Group:
    """The output channels of `producer`, carried channel by channel through `through` (depthwise
    kernels) into the inputs of `consumers`, removable together; `scale`, the BatchNorm gamma that
    scales them last (None: the producer's filters score them)."""

    producer: str
    through: tuple[str, ...]
    consumers: tuple[str, ...]
    size: int
    scale: str | None

    @property
    def kernels(self) -> tuple[str, ...]:
        return (self.producer, *self.through, *self.consumers)


def groups(layout) -> list[Group]:
    """Every removable channel group of a model (`pruning.Layout`), in layer order (module docstring)."""
    consumers = {n: [c for c in layout.names if n in layout.inputs[c]] for n in layout.names}
    depthwise = set(layout.groups["depthwise"])
    scales = layout.scales or {}
    out = []
    for name in layout.names:
        if name in depthwise or name in layout.groups["classifier"]:
            continue
        through, last = [], name
        while (len(consumers[last]) == 1 and consumers[last][0] in depthwise
               and layout.shapes[consumers[last][0]][-1] == 1 and len(layout.inputs[consumers[last][0]]) == 1):
            last = consumers[last][0]
            through.append(last)
        readers = consumers[last]
        if not readers or any(len(layout.inputs[c]) > 1 or c in depthwise for c in readers):
            continue  # the network's output, or channels an Add joins to others'
        out.append(Group(name, tuple(through), tuple(readers), int(layout.shapes[name][-1]), scales.get(last)))
    return out


def prunable(layout, names) -> list[Group]:
    """The groups every kernel of which is among the prunable `names`."""
    names = set(names)
    return [g for g in groups(layout) if set(g.kernels) <= names]


def _slices(shape, axis: str, size: int) -> list:
    """Index of each channel's slice of a kernel of `shape`: its outputs ("out"), its depthwise
    channel ("depthwise") or its inputs ("in": after a Flatten every position repeats the channels)."""
    ndim = len(shape)
    if axis == "out":
        return [(..., c) for c in range(size)]
    if axis == "depthwise":
        return [(slice(None), slice(None), c) for c in range(size)]
    rows = np.arange(shape[-2])
    return [(*(slice(None),) * (ndim - 2), rows[rows % size == c]) for c in range(size)]


def _members(group: Group, shapes) -> list[tuple[str, list]]:
    return ([(group.producer, _slices(shapes[group.producer], "out", group.size))]
            + [(n, _slices(shapes[n], "depthwise", group.size)) for n in group.through]
            + [(n, _slices(shapes[n], "in", group.size)) for n in group.consumers])


def live(mask: masks_lib.Mask, group: Group) -> np.ndarray:
    """Which channels of `group` a mask keeps: those some consumer still reads (a channel no consumer
    reads adds nothing to the network, whatever its producer keeps)."""
    out = np.zeros(group.size, bool)
    shapes = {n: np.shape(mask[n]) for n in group.consumers}
    for name in group.consumers:
        for c, index in enumerate(_slices(shapes[name], "in", group.size)):
            out[c] |= bool(np.asarray(mask[name])[index].any())
    return out


def scores(weights: Weights, groups_: list[Group]) -> dict[str, np.ndarray]:
    """Each group's channel scores (module docstring): |gamma|, or the mean |weight| of the filter."""
    out = {}
    for g in groups_:
        if g.scale is not None:
            if g.scale not in weights:
                raise ValueError(f"Received weights without {g.scale!r}, the BatchNorm scale of {g.producer!r}'s channels")
            out[g.producer] = np.abs(np.asarray(weights[g.scale], dtype=np.float64))
        else:
            w = np.abs(np.asarray(weights[g.producer], dtype=np.float64))
            out[g.producer] = w.reshape(-1, g.size).mean(axis=0)
    return out


def mask_of(keep: Mapping[str, np.ndarray], groups_: list[Group], shapes, base: masks_lib.Mask) -> masks_lib.Mask:
    """`base` with every weight of the channels `keep` (producer -> bool per channel) drops masked."""
    out = {n: np.array(m, dtype=bool) for n, m in base.items()}
    for g in groups_:
        for name, slices in _members(g, shapes):
            for c in np.flatnonzero(~np.asarray(keep[g.producer], bool)):
                out[name][slices[c]] = False
    return out


def floor(group: Group, min_live: int) -> int:
    """The fewest channels a group keeps: `pruning.min_live_channels`, and at least one (a thinner
    model without any channel there would have no layer)."""
    return min(group.size, max(1, min_live))


def select(weights: Weights, groups_: list[Group], shapes, scope: str, remove: int, min_live: int,
           alive: masks_lib.Mask) -> tuple[masks_lib.Mask, float]:
    """`alive` with the lowest-ranked live channels removed, one at a time, until at least `remove`
    more weights are pruned (counted exactly: groups share kernels, a producer's filters are its
    consumer's inputs), never below a group's `floor`. The rank (`_ranks`) is the scope's scoring
    function over the channel scores; ties go to the earlier group and lower index. Returns the mask
    and the largest removed channel score; ValueError when the groups cannot give that many weights."""
    current = {n: np.array(m, dtype=bool) for n, m in alive.items()}
    if remove <= 0:
        return current, 0.0
    keep = {g.producer: live(alive, g) for g in groups_}
    spare = {g.producer: max(0, int(keep[g.producer].sum()) - floor(g, min_live)) for g in groups_}
    raw = scores(weights, groups_)
    ranks = _ranks(scope, raw, keep)
    index = [(g, c) for g in groups_ for c in range(g.size)]
    values = np.concatenate([np.where(keep[g.producer], ranks[g.producer], np.inf) for g in groups_])
    members = {g.producer: _members(g, shapes) for g in groups_}
    removed, threshold = 0, 0.0
    for j in np.argsort(values, kind="stable"):
        g, c = index[j]
        if removed >= remove or not np.isfinite(values[j]):
            break
        if spare[g.producer] == 0:
            continue
        for name, slices in members[g.producer]:
            removed += int(np.count_nonzero(current[name][slices[c]]))
            current[name][slices[c]] = False
        spare[g.producer] -= 1
        threshold = max(threshold, float(raw[g.producer][c]))
    if removed < remove:
        raise ValueError(f"Received a channel mask to prune {remove:,} more weights; removing every channel "
                         f"above pruning.min_live_channels ({max(1, min_live)} per group) prunes {removed:,}")
    return current, threshold


def _ranks(scope: str, raw: dict[str, np.ndarray], keep: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Lower is removed first. global: the channel scores; lamp: LAMP over them (each group's
    strongest channel ranks highest); layerwise: a live channel's place among its group's live
    channels over their number, so every group loses the same share."""
    if scope in ("global", "lamp"):
        return masks_lib.SCORES[scope](raw, keep, 0)
    if scope != "layerwise":
        raise ValueError(f"Received `scope={scope!r}` for channels: expected global, lamp or layerwise")
    out = {}
    for p, values in raw.items():
        live_idx = np.flatnonzero(keep[p])
        rank = np.full(values.size, np.inf)
        rank[live_idx[np.argsort(values[live_idx], kind="stable")]] = (np.arange(live_idx.size) + 1) / max(live_idx.size, 1)
        out[p] = rank
    return out


def most_removable(groups_: list[Group], shapes, min_live: int) -> tuple[int, int]:
    """(weights pruned when every group keeps only its `floor`, weights of the kernels they touch): what
    channel tickets can reach, whichever channels are kept (within the few weights where groups overlap)."""
    names = {n for g in groups_ for n in g.kernels}
    current = {n: np.ones(shapes[n], bool) for n in names}
    for g in groups_:
        for name, slices in _members(g, shapes):
            for c in range(floor(g, min_live), g.size):
                current[name][slices[c]] = False
    return sum(int(m.size - m.sum()) for m in current.values()), sum(int(m.size) for m in current.values())


def shuffled(mask: masks_lib.Mask, groups_: list[Group], shapes, seed: int) -> masks_lib.Mask:
    """A random channel mask with as many live channels in every group as `mask`'s (random_prune)."""
    rng = np.random.default_rng(seed)
    keep = {}
    for g in groups_:
        n = int(live(mask, g).sum())
        chosen = np.zeros(g.size, bool)
        chosen[rng.permutation(g.size)[:n]] = True
        keep[g.producer] = chosen
    return mask_of(keep, groups_, shapes, {k: np.ones(np.shape(v), bool) for k, v in mask.items()})


def removed_share(mask: masks_lib.Mask, groups_: list[Group]) -> float:
    """The share of the groups' channels the mask removes (NaN without groups)."""
    total = sum(g.size for g in groups_)
    return float(sum(g.size - int(live(mask, g).sum()) for g in groups_) / total) if total else float("nan")


def widths(mask: masks_lib.Mask, layout) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For every kernel, which input and output channels remain once the channels no consumer reads
    are gone (every group of the layout whose kernels the mask covers): what `tickets.export` keeps."""
    shapes = layout.shapes
    ins = {n: np.ones(shapes[n][-2], bool) for n in layout.names}
    outs = {n: np.ones(shapes[n][-1] if n not in layout.groups["depthwise"] else shapes[n][-2], bool)
            for n in layout.names}
    for g in groups(layout):
        if not all(n in mask for n in g.consumers):
            continue
        kept = live(mask, g)
        outs[g.producer] = kept
        for n in g.through:
            ins[n], outs[n] = kept, kept
        for n in g.consumers:
            ins[n] = np.resize(kept, shapes[n][-2])  # after a Flatten the channels repeat per position
    return {n: (ins[n], outs[n]) for n in layout.names}


def flops(mask: masks_lib.Mask, layout) -> tuple[float, float, float]:
    """Multiply-adds per image of the network (convolutions, depthwise and dense layers): with the
    channels no consumer reads removed (what dense kernels of an exported model compute), counting
    only kept weights (what a sparse kernel would compute), and of the dense network. NaN without the
    layout's positions (a dense run from before they were stored)."""
    if layout.positions is None:
        return (float("nan"),) * 3
    thin = nonzero = dense = 0.0
    for n, (ins, outs) in widths(mask, layout).items():
        shape, at = layout.shapes[n], layout.positions[n]
        window = int(np.prod(shape[:-2]))
        if n in layout.groups["depthwise"]:
            thin += window * int(outs.sum()) * at
        else:
            thin += window * int(ins.sum()) * int(outs.sum()) * at
        nonzero += (int(np.count_nonzero(mask[n])) if n in mask else int(np.prod(shape))) * at
        dense += int(np.prod(shape)) * at
    return thin, nonzero, dense
