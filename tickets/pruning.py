"""What a spec's `pruning` section means for one model: which kernels are pruned, at which rates, by
which allocation, and whether a mask leaves the network able to learn.

Pure numpy over a `Layout` (a model's kernels, their shapes, groups and inputs: `models.layout`, stored
with the dense run), so the driver checks every grid point's mask right after the dense run, before
any trial trains (`check_collapse`, which prints what it finds), and trials use the very same
functions to make and check their masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from tickets import channels, grid
from tickets import masks as masks_lib
from tickets.config import GROUPS, PruningSpec, Spec

Weights = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Layout:
    """A model's prunable kernels in layer order, the members of each group (`config.GROUPS`), and the
    kernels (or "input") that feed each kernel through channel-preserving layers."""

    names: tuple[str, ...]
    groups: Mapping[str, tuple[str, ...]]
    inputs: Mapping[str, tuple[str, ...]]
    shapes: Mapping[str, tuple[int, ...]]
    # The BatchNorm gamma that scales each kernel's outputs, and each kernel's output positions
    # (None in the manifests of dense runs from before channel pruning).
    scales: Mapping[str, str] | None = None
    positions: Mapping[str, int] | None = None

    @classmethod
    def of(cls, plain: Mapping) -> Layout:
        """From `models.layout(model)` or its JSON in a dense run's manifest."""
        return cls(tuple(plain["names"]), {g: tuple(plain["groups"].get(g, ())) for g in GROUPS},
                   {n: tuple(v) for n, v in plain["inputs"].items()},
                   {n: tuple(v) for n, v in plain["shapes"].items()},
                   plain.get("scales"), plain.get("positions"))


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
    if spec.granularity == "channel":
        total = sum(int(np.size(w)) for w in weights.values())
        target = total - masks_lib.imp_kept(total, spec.rate, level) if level is not None else masks_lib.prune_count(total, sparsity)
        return channel_mask(spec, layout, final, target)
    if level is not None:
        return masks_lib.level_mask(weights, level, spec.rate, spec.scope, own_rates(spec, layout))
    return masks_lib.magnitude_mask(weights, sparsity, spec.scope)


def channel_mask(spec: PruningSpec, layout: Layout, weights: Weights, target: int,
                 previous: masks_lib.Mask | None = None) -> tuple[masks_lib.Mask, float]:
    """Whole channels removed (`tickets.channels`) until at least `target` of the prunable weights
    are pruned, `previous`'s removed channels included; returns the mask and the largest removed
    channel score."""
    names = prunable(spec, layout)
    alive = previous if previous is not None else {n: np.ones(layout.shapes[n], bool) for n in names}
    groups = channels.prunable(layout, names)
    if not groups:
        raise ValueError("Received pruning.granularity 'channel' for a model with no removable channels among "
                         "the prunable kernels (pruning.exclude)")
    pruned = sum(int(np.size(alive[n]) - np.count_nonzero(alive[n])) for n in names)
    return channels.select(weights, groups, layout.shapes, spec.scope, target - pruned, spec.min_live_channels,
                           {n: alive[n] for n in names})


def random_channels(spec: PruningSpec, layout: Layout, mask: masks_lib.Mask, seed: int) -> masks_lib.Mask:
    """random_prune for channel tickets: as many live channels per group as `mask`, chosen at random."""
    return channels.shuffled(mask, channels.prunable(layout, prunable(spec, layout)), layout.shapes, seed)


def allocation(spec: PruningSpec, layout: Layout, weights: Weights, sparsity: float | None = None,
               level: int | None = None) -> list[masks_lib.Part]:
    """How many weights a one-shot mask of this grid point keeps, and where they compete: what a
    pruning-at-initialization method's scores are selected within (`masks.select`). With scope
    `global` the method's own scores choose the per-layer counts, as in the papers (one part of every
    tensor; a tensor with its own rate, `pruning.rates`, is a part of its own). Every other scope sets
    each tensor's count, as its magnitude mask of `weights` keeps (for `lamp`, LAMP on `weights`),
    and the method's scores choose the places."""
    mask, _ = oneshot_mask(spec, layout, weights, sparsity=sparsity, level=level)
    kept = {n: int(np.count_nonzero(m)) for n, m in mask.items()}
    if spec.scope != "global":
        return [((n,), k) for n, k in kept.items()]
    own = set(own_rates(spec, layout)) if level is not None else set()
    shared = tuple(n for n in kept if n not in own)
    return ([(shared, sum(kept[n] for n in shared))] if shared else []) + [((n,), kept[n]) for n in kept if n in own]


def imp_mask(spec: PruningSpec, layout: Layout, trained: Weights,
             previous: masks_lib.Mask | None) -> tuple[masks_lib.Mask, float]:
    """The next IMP level: `pruning.rate` (or a group's own rate) of the survivors of `previous`,
    ranked by the weights the previous level trained to."""
    weights = {n: trained[n] for n in prunable(spec, layout)}
    if spec.granularity == "channel":
        alive = sum(int(np.count_nonzero(m)) for m in previous.values()) if previous else sum(
            int(np.size(w)) for w in weights.values())
        total = sum(int(np.size(w)) for w in weights.values())
        return channel_mask(spec, layout, trained, total - alive + int(round(spec.rate * alive)), previous)
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


@dataclass(frozen=True)
class Health:
    """What a mask leaves of the network (`check`)."""

    cuts: dict[str, str]  # kernel -> why the signal stops there for good: the network is cut
    branches: dict[str, str]  # kernel -> why, where a residual connection carries the signal past it
    narrowest: tuple[str, int, int] | None  # (kernel, live, all output channels) of the narrowest live layer

    def near_collapse(self, min_live_channels: int) -> bool:
        return self.narrowest is not None and self.narrowest[1] <= min_live_channels

    def narrowest_text(self) -> str:
        return "" if self.narrowest is None else f"{self.narrowest[0]} ({self.narrowest[1]} of {self.narrowest[2]} live)"


def check(mask: masks_lib.Mask, layout: Layout) -> Health:
    """Follow the signal from the input through the masked network.

    A kernel left with no weights, or one that signal reaches but does not pass (its kept weights
    connect no live input channel to an output), stops the signal. That is a cut -- the network
    cannot learn, and the layers after it are not listed -- unless a residual connection carries
    the signal around it: then every path from it reaches a join (a kernel fed by several) that
    still gets live input, and it is an emptied branch (the block is skipped). An output layer with
    outputs no signal reaches is a cut too (their logits no longer depend on the input).
    `narrowest` is the non-output layer with the fewest live output channels (near-collapse).
    """
    return _health(mask, layout, _signal(mask, layout))


def collapsed(mask: masks_lib.Mask, layout: Layout) -> dict[str, str]:
    """Where the mask cuts the network, with why (`check`); empty when the network is whole."""
    return check(mask, layout).cuts


def _health(mask: masks_lib.Mask, layout: Layout, signal: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Health:
    stops = {}
    for name, (live_in, live_out) in signal.items():
        if name in mask and not np.any(mask[name]):
            stops[name] = f"no weights left (0 of {int(np.size(mask[name])):,})"
        elif live_in.any() and not live_out.any():
            stops[name] = f"no signal passes (its kept weights connect none of {int(live_in.sum()):,} live inputs)"
    consumers: dict[str, list[str]] = {n: [] for n in layout.names}
    for name in layout.names:
        for source in layout.inputs[name]:
            if source != "input":
                consumers[source].append(name)

    def skipped(name: str) -> bool:
        if not consumers[name]:
            return False  # the signal ends here: nothing carries it on
        return all(signal[c][0].any() if len(layout.inputs[c]) > 1 else skipped(c) for c in consumers[name])

    cuts, branches = {}, {}
    for name, why in stops.items():
        if skipped(name):
            branches[name] = f"{why}; a residual connection carries the signal past it"
        else:
            cuts[name] = why
    for name in layout.groups["classifier"]:
        live_out = signal[name][1]
        if not live_out.all():
            cuts[name] = f"{int((~live_out).sum())} of {live_out.size} outputs receive no signal from the input"
    live = [(int(out.sum()), out.size, name) for name, (_, out) in signal.items()
            if name not in layout.groups["classifier"] and out.any()]
    narrowest = min(live) if live else None
    return Health(cuts, branches, (narrowest[2], narrowest[0], narrowest[1]) if narrowest else None)


def kept_total(mask: masks_lib.Mask, layout: Layout) -> tuple[int, int]:
    """(kept, all) kernel weights of the whole network -- convolutions, depthwise and dense layers,
    excluded ones included (they stay dense): what the papers' weights-remaining axis counts."""
    sizes = {n: int(np.prod(layout.shapes[n])) for n in layout.names}
    kept = sum(int(np.count_nonzero(mask[n])) if n in mask else size for n, size in sizes.items())
    return kept, sum(sizes.values())


def density_table(points: Mapping[str, masks_lib.Mask], layout: Layout) -> list[str]:
    """Per-layer density (%) of each mask, one column per grid point; `!` marks a layer that cuts the
    network, `~` an emptied residual branch and `*` a layer with output channels no signal reaches.
    Lines for the sweep's output."""
    names = list(next(iter(points.values())))
    width = max(len(n) for n in names)
    lines = [f"{'layer':<{width}} {'weights':>9} " + " ".join(f"{p:>9}" for p in points)]
    signals = {p: _signal(m, layout) for p, m in points.items()}
    health = {p: _health(m, layout, signals[p]) for p, m in points.items()}
    for name in names:
        cells = []
        for point, m in points.items():
            flag = ("!" if name in health[point].cuts else "~" if name in health[point].branches else
                    "*" if not signals[point][name][1].all() else " ")
            cells.append(f"{100 * np.count_nonzero(m[name]) / m[name].size:8.2f}{flag}")
        lines.append(f"{name:<{width}} {int(np.prod(layout.shapes[name])):>9,} " + " ".join(cells))
    return lines


# ---------------------------------------------------------------------------------------------
# The grid's masks, checked by the driver right after the dense run.


def check_collapse(spec: Spec, lay: Layout, final: Weights) -> None:
    """Before any trial trains: check the grid's masks, pruned from the dense run's `final` weights
    (`lay`: the layout its manifest stores), and print what they find. One line when every one
    leaves the network whole; where one cuts it, empties a residual branch or leaves a layer near
    collapse (at most `pruning.min_live_channels` live channels), say where, with the per-layer
    densities on a cut."""
    if spec.pruning.granularity == "channel" and lay.scales is None:
        print("masks: not checked before training: the dense run's manifest predates channel tickets (no "
              "BatchNorm scales); each trial checks the mask it trains")
        return
    masks = {label: oneshot_mask(spec.pruning, lay, final, **point)[0]
             for label, point in grid.mask_points(spec).items()}
    health = {label: check(m, lay) for label, m in masks.items()}
    bad = {label: h.cuts for label, h in health.items() if h.cuts}
    low = spec.pruning.min_live_channels
    # Channel tickets keep pruning.min_live_channels in a group by design: warn only below that.
    warn = low - 1 if spec.pruning.granularity == "channel" else low
    narrow = {label: h.narrowest_text() for label, h in health.items() if h.near_collapse(warn) and not h.cuts}
    branches = {label: h.branches for label, h in health.items() if h.branches}
    scope = spec.pruning.scope
    if not bad:
        print(f"masks: no grid point cuts the network (scope {scope}, checked on the final dense weights)")
    for label, emptied in branches.items():
        print(f"masks: {label} empties residual branches (the skip carries the signal, the block is skipped): "
              + "; ".join(emptied))
    for label, text in narrow.items():
        print(f"warning: {label} leaves a layer near collapse: {text} (pruning.min_live_channels {low})")
    if spec.pruning.mode == "imp" and (bad or narrow or branches):
        print("  (* IMP levels pruned in one shot from the dense weights: an estimate of the chain's masks)")
    if not bad:
        return
    advice = ("pruning.scope lamp or erk never empties a layer" if scope == "global" else
              "lower the sparsity, or keep the output layer dense (pruning.exclude: [classifier])")
    print(f"warning: pruning.scope {scope!r} collapses layers at {len(bad)} of {len(masks)} grid points; those "
          f"trials train a cut network (expect chance accuracy): {advice}.")
    for label, layers in bad.items():
        print(f"  {label}: " + "; ".join(f"{n} {why}" for n, why in layers.items()))
    if spec.pruning.mode == "imp":  # many levels: show the first that collapses and the last
        first = next(iter(bad))
        masks = {k: m for k, m in masks.items() if k in (first, list(masks)[-1])}
    print("per-layer density (%) of each grid point's mask; ! collapsed, ~ emptied residual branch, "
          "* some output channels keep no weight:")
    for line in density_table(masks, lay):
        print("  " + line)
