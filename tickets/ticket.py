"""Tickets: the mask a grid point trains and the weights it starts from, and the papers' controls.

`for_point` is the way in: the ticket a trial trains. It is pruned from the final dense weights (one
shot, to a sparsity or to an IMP level's per-layer counts: `make_ticket`), or is its IMP chain's mask
of its level (an IMP control), or was found on another data set and is fitted to this model
(`transfer_ticket`); an IMP chain prunes each level from the weights its previous level trained to
(`imp_level`). Then it is rewound; `control_ticket` owns the controls, each its own branch. Every
random choice draws from a named seed stream of the replicate (`tickets.seeds`).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from tickets import masks as masks_lib
from tickets import models, pruning, seeds
from tickets.config import Spec
from tickets.seeds import Stream

Weights = dict[str, np.ndarray]


@dataclass
class Ticket:
    """A mask and the (masked) weights its sparse run starts from; `threshold` is the largest pruned
    magnitude (None for random masks)."""

    mask: masks_lib.Mask
    start: Weights  # all weights the sparse run starts from, already masked
    threshold: float | None


def for_point(spec: Spec, model: keras.Model, point: dict, final: Weights, rewind: Weights,
              chain_mask: masks_lib.Mask | None = None, source: dict | None = None) -> tuple[Ticket, bool]:
    """The ticket the trial at `point` (its config) trains, and whether layers of it were
    re-initialised (a transferred ticket's classifier): a transferred `source` ticket, an IMP
    control's `chain_mask` (its chain's mask of its level), or a one-shot grid point."""
    control, replicate, level = point["control"], int(point["replicate"]), point.get("level")
    if control == "transfer":
        return transfer_ticket(spec, model, source, replicate)
    if chain_mask is not None:
        return control_ticket(spec, model, chain_mask, None, rewind, control, replicate, int(level)), False
    return make_ticket(spec, model, final, rewind, point.get("sparsity"), control, replicate, level), False


def make_ticket(spec: Spec, model: keras.Model, final: Weights, rewind: Weights, sparsity: float | None,
                control: str, replicate: int, level: int | None = None) -> Ticket:
    """A one-shot grid point: the mask pruned from the final dense weights at `sparsity`, or at IMP
    level `level` the per-layer counts IMP keeps there (the papers' one-shot comparisons), and what
    `control` trains from it (`control_ticket`)."""
    at = {"sparsity": float(sparsity)} if level is None else {"level": int(level)}
    mask, threshold = pruning.oneshot_mask(spec.pruning, layout(model), final, **at)
    return control_ticket(spec, model, mask, threshold, rewind, control, replicate)


def imp_level(spec: Spec, model: keras.Model, trained: Weights, previous: masks_lib.Mask | None,
              rewind: Weights) -> Ticket:
    """The ticket chain's next IMP level: prune `pruning.rate` of the survivors of `previous` by the
    magnitudes of the weights the previous level trained to, then rewind."""
    mask, threshold = pruning.imp_mask(spec.pruning, layout(model), trained, previous)
    return Ticket(mask, masks_lib.apply(rewind, mask), threshold)


def control_ticket(spec: Spec, model: keras.Model, mask: masks_lib.Mask, threshold: float | None,
                   rewind: Weights, control: str, replicate: int, level: int | None = None) -> Ticket:
    """What `control` trains from the ticket's `mask` (the papers' controls, each its own branch):

    - `ticket`: the mask, the rewound weights;
    - `random_reinit`: the same mask, a fresh initialisation (the replicate's REINIT stream);
    - `random_prune`: a random mask with exactly the ticket's count in every tensor (the replicate's
      RANDOM_PRUNE stream; an IMP chain's `level` gets its own), the rewound weights.
    """
    if control == "random_reinit":
        fresh = models.build(spec.model, tuple(model.input_shape[1:]), model.output_shape[-1],
                             seed=seeds.stream_seed(spec.seed, replicate, Stream.REINIT))
        rewind = models.get_weights(fresh)
    elif control == "random_prune":
        extra = () if level is None else (level,)
        mask = masks_lib.random_mask_like(mask, seeds.stream_seed(spec.seed, replicate, Stream.RANDOM_PRUNE, *extra))
        threshold = None
    elif control != "ticket":
        raise ValueError(f"Received `control={control!r}`: expected ticket, random_reinit or random_prune")
    return Ticket(mask, masks_lib.apply(rewind, mask), threshold)


def layout(model: keras.Model) -> pruning.Layout:
    return pruning.Layout.of(models.layout(model))


def transfer_ticket(spec: Spec, model: keras.Model, source: dict, replicate: int) -> tuple[Ticket, bool]:
    """A ticket found on another data set (`artifacts.load_ticket` output) fitted to `model`.

    Weights whose shape differs here (the classifier, when the class count differs) are
    re-initialised and left dense. Returns the ticket and whether that happened.
    """
    fresh = models.get_weights(models.build(spec.model, tuple(model.input_shape[1:]), model.output_shape[-1],
                                            seed=seeds.stream_seed(spec.seed, replicate, Stream.TRANSFER)))
    names = pruning.prunable(spec.pruning, layout(model))
    start, mask, reinit = {}, {}, False
    for name, value in fresh.items():
        theirs = source["start"].get(name)
        if theirs is not None and theirs.shape == value.shape:
            start[name] = theirs
        else:
            start[name], reinit = value, True
        if name in names:
            m = source["mask"].get(name)
            mask[name] = m if m is not None and m.shape == value.shape else np.ones(value.shape, dtype=bool)
    return Ticket(mask, masks_lib.apply(start, mask), None), reinit
