"""Tickets: the mask a grid point trains and the weights it starts from, and the papers' controls.

`for_point` is the way in: the ticket a trial trains. It is pruned from the final dense weights (one
shot, to a sparsity or to an IMP level's per-layer counts: `make_ticket`), or is its IMP chain's mask
of its level (an IMP control), or was found on another data set and is fitted to this model
(`transfer_ticket`); an IMP chain prunes each level from the weights its previous level trained to
(`imp_level`). Then it is rewound. The controls that prune at initialization instead
(`init_mask`: magnitude, SNIP, GraSP, SynFlow) train from the dense run's initialisation.
`control_ticket` owns the ablations of any of these masks, each its own branch. Every random choice
draws from a named seed stream of the replicate (`tickets.seeds`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np

from tickets import masks as masks_lib
from tickets import models, pruning, saliency, seeds
from tickets.config import CONTROLS, INIT_METHODS, Spec, split_control
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
              chain_mask: masks_lib.Mask | None = None, source: dict | None = None,
              batches: Callable[[], list] | None = None, known_mask: masks_lib.Mask | None = None
              ) -> tuple[Ticket, bool]:
    """The ticket the trial at `point` (its config) trains, and whether layers of it were
    re-initialised (a transferred ticket's classifier): a transferred `source` ticket, an IMP
    control's `chain_mask` (its chain's mask of its level), a mask pruned at initialization (its
    point is at rewind epoch 0: `rewind` is the initialisation; `batches()` the training batches
    SNIP and GraSP score on; `known_mask`, the mask a restarted trial made before, ablation
    included), or a one-shot grid point's ticket."""
    control, replicate, level = point["control"], int(point["replicate"]), point.get("level")
    method, ablation = split_control(control)
    if method in INIT_METHODS and known_mask is not None:
        start = rewind if ablation != "reinit" else control_ticket(spec, model, known_mask, None, rewind, control,
                                                                   replicate).start
        return Ticket(known_mask, masks_lib.apply(start, known_mask), None), False
    if control == "transfer":
        return transfer_ticket(spec, model, source, replicate)
    if chain_mask is not None:
        return control_ticket(spec, model, chain_mask, None, rewind, control, replicate, int(level)), False
    if method in INIT_METHODS:
        mask = init_mask(spec, model, method, rewind, batches, point.get("sparsity"), level)
        return control_ticket(spec, model, mask, None, rewind, control, replicate), False
    return make_ticket(spec, model, final, rewind, point.get("sparsity"), control, replicate, level), False


def make_ticket(spec: Spec, model: keras.Model, final: Weights, rewind: Weights, sparsity: float | None,
                control: str, replicate: int, level: int | None = None) -> Ticket:
    """A one-shot grid point: the mask pruned from the final dense weights at `sparsity`, or at IMP
    level `level` the per-layer counts IMP keeps there (the papers' one-shot comparisons), and what
    `control` trains from it (`control_ticket`)."""
    at = {"sparsity": float(sparsity)} if level is None else {"level": int(level)}
    mask, threshold = pruning.oneshot_mask(spec.pruning, layout(model), final, **at)
    return control_ticket(spec, model, mask, threshold, rewind, control, replicate)


def dense_ticket(spec: Spec, model: keras.Model, rewind: Weights) -> Ticket:
    """The dense network rewound: every prunable weight kept (an IMP chain's level 0, trained only as
    the instability analysis's dense baseline)."""
    names = pruning.prunable(spec.pruning, layout(model))
    return Ticket({n: np.ones(np.shape(rewind[n]), dtype=bool) for n in names}, dict(rewind), None)


def init_mask(spec: Spec, model: keras.Model, method: str, init: Weights, batches: Callable[[], list] | None,
              sparsity: float | None, level: int | None = None) -> masks_lib.Mask:
    """A mask pruned at initialization (`init`, the dense run's initial weights) by `method` to the
    grid point (`sparsity`, or IMP `level`'s counts), with the spec's allocation (`pruning.allocation`):
    `magnitude_init` keeps the largest |θ0|, as magnitude pruning would; SNIP and GraSP score
    `pruning.init_batches` training batches; SynFlow scores without data, in `pruning.synflow_rounds`."""
    at = {"sparsity": float(sparsity)} if level is None else {"level": int(level)}
    lay, p = layout(model), spec.pruning
    if method == "magnitude_init":
        return pruning.oneshot_mask(p, lay, init, **at)[0]
    parts = pruning.allocation(p, lay, init, **at)
    names = pruning.prunable(p, lay)
    if method == "synflow":
        return saliency.synflow_mask(model, names, init, parts, p.synflow_rounds)
    score = {"snip": saliency.snip, "grasp": saliency.grasp}[method]
    return masks_lib.select(score(model, names, init, batches()), parts)


def imp_level(spec: Spec, model: keras.Model, trained: Weights, previous: masks_lib.Mask | None,
              rewind: Weights) -> Ticket:
    """The ticket chain's next IMP level: prune `pruning.rate` of the survivors of `previous` by the
    magnitudes of the weights the previous level trained to, then rewind."""
    mask, threshold = pruning.imp_mask(spec.pruning, layout(model), trained, previous)
    return Ticket(mask, masks_lib.apply(rewind, mask), threshold)


def control_ticket(spec: Spec, model: keras.Model, mask: masks_lib.Mask, threshold: float | None,
                   rewind: Weights, control: str, replicate: int, level: int | None = None) -> Ticket:
    """What `control` trains from its method's `mask` (the ticket's, or one pruned at initialization)
    and start `rewind` (the rewound weights; the initialisation for those), each ablation its own branch:

    - none (`ticket`, `snip`, ...): the mask, the start;
    - `reinit` (`random_reinit` for the ticket): the same mask, a fresh initialisation (the
      replicate's REINIT stream);
    - `shuffle` (`random_prune` for the ticket): a random mask with exactly the method's count in
      every tensor (channel tickets: of live channels in every channel group) (the replicate's
      RANDOM_PRUNE stream; an IMP chain's `level` gets its own), the start.
    """
    _, ablation = split_control(control)
    if ablation == "reinit":
        fresh = models.build(spec.model, tuple(model.input_shape[1:]), model.output_shape[-1],
                             seed=seeds.stream_seed(spec.seed, replicate, Stream.REINIT))
        rewind = models.get_weights(fresh)
    elif ablation == "shuffle":
        extra = () if level is None else (level,)
        seed = seeds.stream_seed(spec.seed, replicate, Stream.RANDOM_PRUNE, *extra)
        if spec.pruning.granularity == "channel":  # random channels: as many in every group
            mask = pruning.random_channels(spec.pruning, layout(model), mask, seed)
        else:
            mask = masks_lib.random_mask_like(mask, seed)
        threshold = None
    elif ablation is not None or control not in CONTROLS:
        raise ValueError(f"Received `control={control!r}`: expected one of {', '.join(CONTROLS)}")
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
