"""What a spec's `pruning` section means for one model: which kernels are pruned, at which rates, by
which allocation, and whether a mask leaves the network able to learn.

Pure numpy over a `Layout` (a model's prunable kernels and their groups, `models.layout`, also stored
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
    """A model's prunable kernels in layer order, and the members of each group (`config.GROUPS`)."""

    names: tuple[str, ...]
    groups: Mapping[str, tuple[str, ...]]

    @classmethod
    def of(cls, plain: Mapping) -> Layout:
        """From `models.layout(model)` or its JSON in a dense run's manifest."""
        return cls(tuple(plain["names"]), {g: tuple(plain["groups"].get(g, ())) for g in GROUPS})


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


def collapsed(mask: masks_lib.Mask, layout: Layout) -> dict[str, str]:
    """Tensors that cut the network, with why: a kernel left with no weights (no signal passes the
    layer; with a residual around it, the block is skipped), or an output layer with outputs that
    keep no weight (those classes' logits no longer depend on the input). Empty when none."""
    out = {}
    for name, m in mask.items():
        kept, total = int(np.count_nonzero(m)), int(np.size(m))
        if kept == 0:
            out[name] = f"no weights left (0 of {total:,})"
        elif name in layout.groups["classifier"]:
            dead, units = masks_lib.dead_units(m)
            if dead:
                out[name] = f"{dead} of {units} outputs keep no weight"
    return out


def density_table(points: Mapping[str, masks_lib.Mask], layout: Layout) -> list[str]:
    """Per-layer density (%) of each mask, one column per grid point; `!` marks a collapsed layer and
    `*` a layer with output channels that keep no weight. Lines for the sweep's output."""
    names = list(next(iter(points.values())))
    width = max(len(n) for n in names)
    lines = [f"{'layer':<{width}} {'weights':>9} " + " ".join(f"{p:>9}" for p in points)]
    for name in names:
        cells = []
        for m in points.values():
            kept = int(np.count_nonzero(m[name]))
            dead, _ = masks_lib.dead_units(m[name], depthwise=name in layout.groups["depthwise"])
            flag = "!" if kept == 0 or name in collapsed({name: m[name]}, layout) else "*" if dead else " "
            cells.append(f"{100 * kept / m[name].size:8.2f}{flag}")
        lines.append(f"{name:<{width}} {next(iter(points.values()))[name].size:>9,} " + " ".join(cells))
    return lines
