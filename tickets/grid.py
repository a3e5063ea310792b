"""The grid a spec sweeps: its axes, every trial's point in the order trials are queued, the masks the
driver checks before any trial trains, and the keys that name a point's parts (an IMP chain, a
transfer source). Plain data over `config.Spec`: no Ray, no TensorFlow.

One-shot grids are the product of their axes (sparsity or level × rewind epoch × control ×
replicate), less the points of controls that prune at initialization at rewind epochs other than 0
(they train from the initialisation: rewind epoch 0 is their one point). IMP grids have no sparsity
axis: one ticket chain per (rewind epoch, replicate) walks the levels, and each other control is a
trial of its own at each level, on its chain's mask of that level (Frankle & Carbin's controls).
"""

from __future__ import annotations

from tickets.config import INIT_METHODS, Spec, split_control


def axes(spec: Spec) -> dict[str, list]:
    """The grid's axes: sparsities or one-shot levels; IMP has neither (its chains walk the levels)."""
    s = spec.search
    values = {"sparsity": list(s.sparsity), "level": list(s.level), "rewind_epoch": list(s.rewind_epoch),
              "control": list(s.control), "replicate": list(s.replicate)}
    return {k: v for k, v in values.items() if v}


def trial_points(spec: Spec) -> list[dict]:
    """Every trial's config, in the order they are queued. One shot: the grid's product. IMP: one
    ticket chain per (rewind epoch, replicate), then every other control at every level, level by
    level, each on its chain's mask of that level."""
    points = [{}]
    if spec.pruning.mode != "imp":
        for key, values in axes(spec).items():
            points = [{**p, key: v} for p in points for v in values]
        return [p for p in points if p["rewind_epoch"] == 0 or not at_init(p["control"])]
    s = spec.search
    chains = [{"rewind_epoch": r, "control": "ticket", "replicate": i} for r in s.rewind_epoch for i in s.replicate]
    controls = [{**chain, "control": c, "level": k} for k in range(1, spec.pruning.num_levels() + 1)
                for chain in chains for c in s.control if c != "ticket"]
    return chains + controls


def is_product(spec: Spec) -> bool:
    """Whether the grid is the whole product of its axes (Tune's grid search runs it as it is)."""
    if spec.pruning.mode == "imp":
        return False
    size = 1
    for values in axes(spec).values():
        size *= len(values)
    return size == len(trial_points(spec))


def at_init(control: str) -> bool:
    """Whether a control prunes at initialization (and trains from it)."""
    return split_control(control)[0] in INIT_METHODS


def is_chain(point: dict) -> bool:
    """Whether a point of an IMP grid (a trial's config) is a ticket chain, which walks the levels
    itself, rather than a control at one level."""
    return "level" not in point


def chain_of(point: dict) -> tuple[float, int]:
    """The IMP ticket chain a point belongs to (its own, for a chain): (rewind epoch, replicate)."""
    return float(point["rewind_epoch"]), int(point["replicate"])


def transfer_key(sparsity: float, rewind_epoch: float, replicate: int) -> str:
    """What names a transfer trial's source ticket: the grid point less its control."""
    return f"{float(sparsity):g}|{float(rewind_epoch):g}|{int(replicate)}"


def mask_points(spec: Spec) -> dict[str, dict]:
    """The one-shot masks a spec's grid trains, by label: its sparsities or levels. For IMP, the mask
    of every level pruned in one shot from the dense weights, an estimate of what the chain prunes."""
    if spec.pruning.mode == "imp":
        return {f"level {k}*": {"level": k} for k in range(1, spec.pruning.num_levels() + 1)}
    if spec.search.level:
        return {f"level {k}": {"level": k} for k in spec.search.level}
    return {f"s={v:g}": {"sparsity": v} for v in spec.search.sparsity}


def table_columns(spec: Spec) -> dict[str, list]:
    """The trial table's columns and the values they show: the grid's axes, and for IMP the control
    trials' level."""
    levels = {"level": list(range(1, spec.pruning.num_levels() + 1))} if spec.pruning.mode == "imp" else {}
    return {**axes(spec), **levels}
