"""Tickets: the mask a grid point trains and the weights it starts from, and the papers' controls.

A ticket is pruned from the final dense weights (one shot to a sparsity, `make_ticket`, or to an IMP
level's per-layer counts, `make_level_ticket`), or from the weights an IMP chain's previous level
trained to (`imp_level`), then rewound; `control_ticket` owns the controls, each its own branch; a
ticket found on another data set is fitted to this model by `transfer_ticket`. Every random choice
draws from a named seed stream of the replicate (`Stream`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import keras
import numpy as np

from tickets import masks as masks_lib
from tickets import models, pruning
from tickets.config import Spec

Weights = dict[str, np.ndarray]


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from several integers: distinct streams for data order, controls, replicates."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class Stream(enum.IntEnum):
    """The seed streams of one replicate: `derive_seed(spec.seed, replicate, stream, ...)`. The
    dense run's data order is `derive_seed(spec.seed, 0)`, apart from all of these."""

    SPARSE_DATA = 1  # the sparse runs' data order and augmentation
    REINIT = 2  # random_reinit's fresh initialisation
    RANDOM_PRUNE = 3  # random_prune's masks (and, for IMP, the level)
    TRANSFER = 4  # a transferred ticket's re-initialised layers
    TWIN = 5  # an instability twin's data order and augmentation (and its BatchNorm re-estimation batches)


def stream_seed(spec: Spec, replicate: int, stream: Stream, *more: int) -> int:
    return derive_seed(spec.seed, replicate, int(stream), *more)


@dataclass
class Ticket:
    """A mask and the (masked) weights its sparse run starts from; `threshold` is the largest pruned
    magnitude (None for random masks)."""

    mask: masks_lib.Mask
    start: Weights  # all weights the sparse run starts from, already masked
    threshold: float | None


def make_ticket(spec: Spec, model: keras.Model, final: Weights, rewind: Weights, sparsity: float,
                control: str, replicate: int) -> Ticket:
    """A one-shot grid point at `sparsity`: the mask pruned from the final dense weights, and what
    `control` trains from it (`control_ticket`)."""
    mask, threshold = pruning.oneshot_mask(spec.pruning, layout(model), final, sparsity=sparsity)
    return control_ticket(spec, model, mask, threshold, rewind, control, replicate)


def make_level_ticket(spec: Spec, model: keras.Model, final: Weights, rewind: Weights, level: int,
                      control: str, replicate: int) -> Ticket:
    """A one-shot grid point at IMP level `level`: the per-layer counts IMP keeps there, pruned in one
    shot from the final dense weights (the papers' one-shot comparisons); then `control_ticket`."""
    mask, threshold = pruning.oneshot_mask(spec.pruning, layout(model), final, level=level)
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
                             seed=stream_seed(spec, replicate, Stream.REINIT))
        rewind = models.get_weights(fresh)
    elif control == "random_prune":
        extra = () if level is None else (level,)
        mask = masks_lib.random_mask_like(mask, stream_seed(spec, replicate, Stream.RANDOM_PRUNE, *extra))
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
                                            seed=stream_seed(spec, replicate, Stream.TRANSFER)))
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
