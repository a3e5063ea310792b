"""What a spec's `pruning` section means for one model: which kernels are pruned, at which rates, by
which allocation, and whether a mask leaves the network able to learn.

Pure numpy over a `Layout` (a model's kernels, their shapes, groups and inputs: `models.layout`, stored
with the dense run), so the driver checks every grid point's mask right after the dense run, before
any trial trains, and trials use the very same functions to make their masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from tickets import masks as masks_lib
from tickets.config import GROUPS, PruningSpec

Weights = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Layout:
    """A model's prunable kernels in layer order, the members of each group (`config.GROUPS`), and the
    kernels (or "input") that feed each kernel through channel-preserving layers."""

    names: tuple[str, ...]
    groups: Mapping[str, tuple[str, ...]]
    inputs: Mapping[str, tuple[str, ...]]
    shapes: Mapping[str, tuple[int, ...]]

    @classmethod
    def of(cls, plain: Mapping) -> Layout:
        """From `models.layout(model)` or its JSON in a dense run's manifest."""
        return cls(tuple(plain["names"]), {g: tuple(plain["groups"].get(g, ())) for g in GROUPS},
                   {n: tuple(v) for n, v in plain["inputs"].items()},
                   {n: tuple(v) for n, v in plain["shapes"].items()})


def prunable(spec: PruningSpec, layout: Layout) -> list[str]:
    """The kernels this spec prunes, in layer order: all but the excluded groups."""
    skip = {name for g in spec.exclude for name in layout.groups[g]}
    return [n for n in layout.names if n not in skip]


def own_rates(spec: PruningSpec, layout: Layout) -> dict[str, float]:
    """Per-tensor rates from `pruning.rates`; the most specific group wins (`config.GROUPS` order)."""
    names = set(prunable(spec, layout))
    out = {}
    for group in GROUPS:
        if group in spec.rates:
            out |= {n: spec.rates[group] for n in layout.groups[group] if n in names}
    return out


def oneshot_mask(spec: PruningSpec, layout: Layout, final: Weights, sparsity: float | None = None,
                 level: int | None = None) -> tuple[masks_lib.Mask, float]:
    """The one-shot mask of a grid point, from the final dense weights: exactly round(s·N) weights
    pruned at `sparsity`, or at `level` the per-tensor counts IMP reaches there (`masks.level_mask`)."""
    weights = {n: final[n] for n in prunable(spec, layout)}
    if level is not None:
        return masks_lib.level_mask(weights, level, spec.rate, spec.scope, own_rates(spec, layout))
    return masks_lib.magnitude_mask(weights, sparsity, spec.scope)


def imp_mask(spec: PruningSpec, layout: Layout, trained: Weights,
             previous: masks_lib.Mask | None) -> tuple[masks_lib.Mask, float]:
    """The next IMP level: `pruning.rate` (or a group's own rate) of the survivors of `previous`,
    ranked by the weights the previous level trained to."""
    weights = {n: trained[n] for n in prunable(spec, layout)}
    return masks_lib.prune_remaining(weights, spec.rate, previous, spec.scope, own_rates(spec, layout))


# ---------------------------------------------------------------------------------------------
# Collapse: a mask that cuts the network.


def live_outputs(mask: masks_lib.Mask, layout: Layout) -> dict[str, np.ndarray]:
    """For every kernel (pruned or not), which of its output channels carry signal from the input:
    a channel is live when a kept weight connects it to a live input channel. A channel with no
    live input is a constant after BatchNorm, not a feature. Kernels absent from `mask` are dense."""
    return {name: out for name, (_, out) in _signal(mask, layout).items()}


def _signal(mask: masks_lib.Mask, layout: Layout) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(live input channels, live output channels) of every kernel, in layer order."""
    signal: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in layout.names:
        m = np.asarray(mask[name], bool) if name in mask else np.ones(layout.shapes[name], bool)
        sources = [signal[s][1] for s in layout.inputs[name] if s != "input"]
        fan_in = m.shape[-2]  # input channels (dense: input units)
        if "input" in layout.inputs[name] or not sources:
            live_in = np.ones(fan_in, bool)
        else:
            live_in = np.logical_or.reduce(sources)  # Add joins aligned channels
            if live_in.size != fan_in:  # Flatten: each spatial position repeats the channels
                live_in = np.tile(live_in, fan_in // live_in.size)
        if name in layout.groups["depthwise"]:  # (kh, kw, channels, multiplier): channel c feeds only itself
            live_out = (live_in[:, None] & m.any(axis=(0, 1))).reshape(-1)
        else:
            connects = m.reshape(-1, m.shape[-2], m.shape[-1]).any(axis=0)  # (in, out)
            live_out = (live_in[:, None] & connects).any(axis=0)
        signal[name] = (live_in, live_out)
    return signal


def collapsed(mask: masks_lib.Mask, layout: Layout) -> dict[str, str]:
    """Where the mask cuts the network, with why: a kernel left with no weights, or one that signal
    reaches but does not pass (its kept weights connect no live input channel to an output; with a
    residual around it, the block is skipped) -- the layers after such a cut are not listed -- and an
    output layer with outputs no signal reaches (their logits no longer depend on the input).
    Empty when the network is whole."""
    return _cuts(mask, layout, _signal(mask, layout))


def _cuts(mask: masks_lib.Mask, layout: Layout, signal: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, str]:
    out = {}
    for name, (live_in, live_out) in signal.items():
        if name in mask and not np.any(mask[name]):
            out[name] = f"no weights left (0 of {int(np.size(mask[name])):,})"
        elif live_in.any() and not live_out.any():
            out[name] = f"no signal passes (its kept weights connect none of {int(live_in.sum()):,} live inputs)"
        if name in layout.groups["classifier"] and not live_out.all():
            out[name] = f"{int((~live_out).sum())} of {live_out.size} outputs receive no signal from the input"
    return out


def density_table(points: Mapping[str, masks_lib.Mask], layout: Layout) -> list[str]:
    """Per-layer density (%) of each mask, one column per grid point; `!` marks a layer that cuts the
    network and `*` one with output channels no signal reaches. Lines for the sweep's output."""
    names = list(next(iter(points.values())))
    width = max(len(n) for n in names)
    lines = [f"{'layer':<{width}} {'weights':>9} " + " ".join(f"{p:>9}" for p in points)]
    signals = {p: _signal(m, layout) for p, m in points.items()}
    cuts = {p: _cuts(m, layout, signals[p]) for p, m in points.items()}
    for name in names:
        cells = []
        for point, m in points.items():
            flag = "!" if name in cuts[point] else "*" if not signals[point][name][1].all() else " "
            cells.append(f"{100 * np.count_nonzero(m[name]) / m[name].size:8.2f}{flag}")
        lines.append(f"{name:<{width}} {int(np.prod(layout.shapes[name])):>9,} " + " ".join(cells))
    return lines
