"""Sweep specs: frozen dataclasses loaded from YAML and validated before anything runs.

Every field has a default, so a spec only names what differs. Errors are `SpecError`s whose
message is one line naming the field and the value, e.g.
`search.sparsity: 1.2 is outside [0, 1)`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tickets.masks import SCOPES

DATASETS = ("cifar10", "imagenet", "parquet", "image_folder", "synthetic")
ARCHS = ("mobilenet_v2", "conv2", "conv4", "conv6", "lenet_300_100")
STRIDES = ("imagenet", "cifar")
OPTIMIZERS = ("sgd", "adam")
# From this image size on, ImageNet-style preprocessing (tickets.data): random-resized crops cut from
# the original image, never from a thumbnail, so such splits are never decoded ahead.
IMAGENET_STYLE = 128
SCHEDULES = ("constant", "step", "exponential", "cosine")
# Groups of prunable kernels, broadest first: a tensor in several groups takes the rate of the last
# one (`pruning.rates: {conv: 0.1, first_conv: 0.05}` prunes the first convolution at 0.05).
#   conv: every convolution (depthwise included); dense: the hidden dense layers; classifier: the
#   output layer; first_conv: the first convolution; depthwise: MobileNetV2's depthwise convolutions.
GROUPS = ("conv", "dense", "depthwise", "first_conv", "classifier")
# The groups each architecture has (`models.groups` builds their members from the model; a test
# checks the two agree), so a spec naming a group its model lacks fails before anything runs.
ARCH_GROUPS = {
    "mobilenet_v2": ("conv", "depthwise", "first_conv", "classifier"),
    "conv2": ("conv", "dense", "first_conv", "classifier"),
    "conv4": ("conv", "dense", "first_conv", "classifier"),
    "conv6": ("conv", "dense", "first_conv", "classifier"),
    "lenet_300_100": ("dense", "classifier"),
}
# A control trains a mask from a start: the ticket's (pruned from the final dense weights, rewound) or
# one pruned at initialization (`INIT_METHODS`, trained from the dense run's initialisation), either
# as it is or with one of Frankle et al. (2021)'s ablations: `shuffle` each tensor's mask (the same
# per-layer counts, random places) or `reinit` (the same mask, a fresh initialisation). A control is
# named `METHOD` or `METHOD+ABLATION`; the ticket's ablations keep their papers' names.
INIT_METHODS = ("magnitude_init", "snip", "grasp", "synflow")
GRANULARITIES = ("weight", "channel")
CHANNEL_SCOPES = ("global", "lamp", "layerwise")  # the scopes that rank channels (tickets.channels)
ABLATIONS = ("shuffle", "reinit")
TICKET_ABLATIONS = {"random_prune": "shuffle", "random_reinit": "reinit"}
CONTROLS = ("ticket", "random_reinit", "random_prune", "transfer",
            *(f"{m}{'+' + a if a else ''}" for m in INIT_METHODS for a in ("", *ABLATIONS)))
# The Tune grid's keys, also the coordinate columns of the results. `level`: an IMP chain's level,
# or a one-shot grid point that prunes to the per-layer sparsities IMP reaches at that level.
GRID_KEYS = ("sparsity", "level", "rewind_epoch", "control", "replicate")
MODES = ("oneshot", "imp")


class SpecError(ValueError):
    """A spec field holds a bad value. `str()` is the one line shown to the user."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


def show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return f"{value:g}"  # 40.0 reads as the 40 the user wrote
    return str(value)


def _fail(name: str, value: Any, reason: str) -> typing.NoReturn:
    raise SpecError(name, f"{show(value)} {reason}")


# ---------------------------------------------------------------------------------------------
# The spec. Field order is the order of the YAML in docs/spec.md.


@dataclass(frozen=True)
class SubsetSpec:
    train: int | None = None
    test: int | None = None


@dataclass(frozen=True)
class DataSpec:
    dataset: str = "cifar10"
    path: str | None = None
    image_size: int = 32
    batch_size: int = 128
    augment: bool = True
    subset: SubsetSpec | None = None
    half: str | None = None
    # Training images held out for validation (0: none): class-balanced, drawn with seeds.VALIDATION
    # (the same for every experiment seed) from the training images `half` leaves, before `subset`
    # draws from the rest. Early stopping and every "best" are chosen on it, never on the test set.
    validation: int = 0
    # Streamed splits (too large for memory; tickets.stream): images per shuffle window, and
    # `node` to read a node-local copy of each shard ($TICKETS_CACHE_DIR, else the temp dir)
    # instead of shared storage. The cache changes no number, so it is not in the dense hash.
    shuffle_buffer: int = 4096
    cache: str = "none"
    # Only the synthetic data set uses these: it has no files to count classes or images in.
    classes: int = 10
    synthetic_size: SubsetSpec = field(default_factory=lambda: SubsetSpec(train=2000, test=500))
    synthetic_noise: float = 0.075  # std of the pixel noise over each class's pattern (pixels in 0..1)


@dataclass(frozen=True)
class ModelSpec:
    arch: str = "mobilenet_v2"
    width: float = 0.35
    # MobileNetV2 only. imagenet: Keras's strides (32x downsampling: 1x1 feature maps by block_14 at
    # 32 px); cifar: stride 1 in the stem and in block_1, as CIFAR adaptations do (8x downsampling).
    strides: str = "imagenet"


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "sgd"
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 4.0e-5
    nesterov: bool = False


@dataclass(frozen=True)
class ScheduleSpec:
    name: str = "cosine"
    warmup_epochs: float = 0.0
    milestones: tuple[float, ...] = ()  # step schedule: epochs at which the rate is multiplied by gamma
    gamma: float = 0.1  # step: factor per milestone; exponential: factor per epoch


@dataclass(frozen=True)
class DenseSpec:
    epochs: int = 30
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)

    def total_steps(self, steps_per_epoch: int) -> int:
        """The dense schedule's length in steps: where every run, dense or sparse, ends."""
        return self.epochs * steps_per_epoch


@dataclass(frozen=True)
class PruningSpec:
    # lamp | erk | layerwise | global: how the pruned weights spread over tensors. lamp by measurement
    # (docs/pruning.md, "Layer collapse and allocation"); global can empty whole layers of MobileNetV2.
    scope: str = "lamp"
    exclude: tuple[str, ...] = ("first_conv", "classifier")
    # weight: any weights (the papers' tickets) | channel: whole channels, so the ticket exported is a
    # thinner network (tickets.channels; scope global, lamp or layerwise allocates them).
    granularity: str = "weight"
    mode: str = "oneshot"  # oneshot: the grid's sparsity (or level) axis | imp: iterative magnitude pruning
    rate: float = 0.2  # imp and search.level: fraction of the remaining weights removed per level
    levels: int | None = None  # imp: number of levels (or derived from target_sparsity)
    target_sparsity: float | None = None  # imp: prune until at least this fraction is removed
    rates: dict[str, float] = field(default_factory=dict)  # per-group rates per level, e.g. {classifier: 0.1}
    # A layer left with this many live output channels or fewer is named (near-collapse): the
    # sweep's mask check and each trial's `narrowest_layer` say so. 0 turns the warning off.
    min_live_channels: int = 4
    # Pruning at initialization (search.control snip, grasp): the training batches their scores are
    # summed over (SNIP's paper scored one), and SynFlow's pruning rounds (its paper's 100, on an
    # exponential schedule).
    init_batches: int = 1
    synflow_rounds: int = 100

    def num_levels(self) -> int:
        if self.levels is not None:
            return self.levels
        # The first level whose remaining fraction (1 - rate)^k is at or below 1 - target.
        return max(1, math.ceil(math.log(1 - self.target_sparsity) / math.log(1 - self.rate) - 1e-9))


@dataclass(frozen=True)
class TransferSelect:
    """Which source trial gives the ticket; unset coordinates follow the target trial's grid point."""

    sparsity: float | None = None
    rewind_epoch: float | None = None
    control: str = "ticket"
    replicate: int | None = None
    trial: str | None = None  # a trial id (or dir name) of the source experiment instead


@dataclass(frozen=True)
class TransferSpec:
    source: str = ""  # written `from:` in YAML: the source experiment dir
    select: TransferSelect = field(default_factory=TransferSelect)


@dataclass(frozen=True)
class SearchSpec:
    sparsity: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
    # One-shot instead of sparsities: prune, in one shot, to the per-layer sparsities IMP reaches at
    # level k with pruning.rate and pruning.rates (the papers' one-shot comparisons).
    level: tuple[int, ...] = ()
    rewind_epoch: tuple[float, ...] = (0.0, 1.0, 2.0)
    control: tuple[str, ...] = ("ticket",)
    replicate: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class ReferencePoint:
    """One published result, in the paper's units: percent of weights remaining and either percent
    test accuracy or, where a paper states improvements, `gain` in points over its own dense network
    (drawn relative to this experiment's dense accuracy)."""

    weights_remaining: float = 100.0
    test_accuracy: float | None = None
    gain: float | None = None
    approximate: bool = False  # read off a plot rather than stated in the text or a table

    def accuracy(self, dense: float) -> float:
        """Percent accuracy, given this experiment's dense accuracy in percent."""
        return self.test_accuracy if self.test_accuracy is not None else dense + self.gain


@dataclass(frozen=True)
class Reference:
    """Published numbers a preset's results are drawn beside (`plots.accuracy_vs_weights`, `summary`)."""

    source: str = ""  # paper, and table or figure
    control: str = "ticket"  # the curve the points belong to: ticket, random_reinit, ... or dense
    points: tuple[ReferencePoint, ...] = ()


@dataclass(frozen=True)
class ResourcesSpec:
    gpus_per_trial: float | str = "auto"
    cpus_per_trial: int | str = "auto"
    max_failures: int = 2
    max_concurrent_trials: int | None = None
    # The dense run takes one whole node (all its CPUs; on a GPU node all its GPUs) and trains there
    # data-parallel over `dense_replicas` devices: auto is every GPU the node has, or one device on a
    # CPU-only node (its cores already work on every op). A number n asks for n replicas: on CPUs, n
    # logical devices sharing the cores (how the multi-replica path runs without GPUs).
    dense_replicas: int | str = "auto"
    # float32, or a Keras mixed policy (float32 master weights, so pruned weights stay exactly 0.0 and
    # snapshots float32). auto: mixed_bfloat16 on GPUs from compute capability 8.0, mixed_float16 on
    # 7.x, float32 on CPUs and older GPUs. Like the replica count, it changes the numbers a run produces
    # but not the recipe, so neither is part of the dense hash; the dense manifest records both, every
    # trial row and results.parquet the precision.
    precision: str = "auto"


PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
BATCHNORM = ("interpolate", "reestimate")


@dataclass(frozen=True)
class InstabilitySpec:
    """Instability analysis (Frankle et al. 2020, linear mode connectivity): every `ticket` trial
    (the one at sparsity 0 is the dense network rewound; an IMP chain trains it as its level 0)
    trains a twin from the same rewound, masked weights with another data order and augmentation,
    then evaluates the straight line between the two trained copies (`tickets.instability`)."""

    enabled: bool = False
    points: int = 11  # values of alpha from 0 to 1 on the line between the copies, both ends included
    # interpolate: BatchNorm's running statistics are interpolated with every other weight, as the
    # paper's definition interpolates the whole weight vector (whether its runs re-estimated them could
    # not be checked: docs/instability.md); reestimate: recomputed at each alpha from
    # `batchnorm_batches` training batches, and the interpolated barrier is computed beside it.
    batchnorm: str = "interpolate"
    batchnorm_batches: int = 8


MATCHES = ("final", "early_stop")


@dataclass(frozen=True)
class ReportSpec:
    """How the results decide that a configuration matches the dense network (`analysis.summary`)."""

    # final: by the accuracies at the end of training; early_stop: at the epoch of least validation
    # loss (Frankle & Carbin 2019 report and match early-stopped accuracies). Either is judged on the
    # validation split where there is one, on the test set only without one.
    match: str = "final"
    # The report's deployment table: the dense network and each winning ticket exported (tickets.export)
    # and timed in LiteRT on the machine writing the report. A TensorFlow import and a TFLite conversion
    # per network (seconds each at CIFAR size): on in the paper presets, off in the smoke preset.
    deployment: bool = False


@dataclass(frozen=True)
class Spec:
    """A whole sweep: data, model, dense training, pruning, the grid, resources. Frozen and hashable
    (`spec_hash`, `dense_hash`); `load` and `from_dict` return only validated specs."""

    name: str = "tickets"
    seed: int = 0
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    dense: DenseSpec = field(default_factory=DenseSpec)
    pruning: PruningSpec = field(default_factory=PruningSpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    transfer: TransferSpec | None = None
    instability: InstabilitySpec = field(default_factory=InstabilitySpec)
    report: ReportSpec = field(default_factory=ReportSpec)
    references: tuple[Reference, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = _plain(dataclasses.asdict(self))
        if d["transfer"] is not None:
            d["transfer"] = {("from" if k == "source" else k): v for k, v in d["transfer"].items()}
        return d

    def _hashed(self) -> dict[str, Any]:
        """`to_dict` less what changes no number and may change on --resume: where shards are read
        from, the near-collapse warning's threshold (weight tickets') and the report's deployment table."""
        d = self.to_dict()
        d["data"].pop("cache")
        d["report"].pop("deployment")
        if d["pruning"]["granularity"] == "weight":  # the hashes of specs from before it existed
            d["pruning"].pop("granularity")
            d["pruning"].pop("min_live_channels")  # a warning's threshold; for channel tickets, their floor
        return d

    def dense_dict(self) -> dict[str, Any]:
        """The fields the dense trajectory depends on: equal dicts give equal dense runs."""
        d = self._hashed()
        return {k: d[k] for k in ("seed", "data", "model", "dense")}

    def dense_hash(self) -> str:
        return _hash(self.dense_dict())

    def spec_hash(self) -> str:
        return _hash(self._hashed())

    def record_steps(self, steps_per_epoch: int) -> list[int]:
        """Steps at which the dense run keeps snapshots: init, every rewind point, final."""
        rewinds = {step_of(r, steps_per_epoch) for r in self.search.rewind_epoch}
        return sorted({0, self.dense.total_steps(steps_per_epoch)} | rewinds)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# YAML keys that are not Python identifiers.
_ALIASES = {TransferSpec: {"from": "source"}}


def step_of(epoch: float, steps_per_epoch: int) -> int:
    """Fractional epochs become step counts (0.5 = half an epoch of steps)."""
    return int(round(epoch * steps_per_epoch))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Building dataclasses from plain YAML data, with types checked field by field.


def _did_you_mean(key: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, name)
            except SpecError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, dict):
            _fail(name, value, f"must be a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}")
        return _build(tp, value, name)
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if value is None:
            return {}
        if not isinstance(value, dict):
            _fail(name, value, "must be a mapping")
        return {_coerce(key_type, k, name): _coerce(value_type, v, f"{name}.{k}") for k, v in value.items()}
    if origin is tuple:
        item_type = typing.get_args(tp)[0]
        if value is None:
            return ()  # `--set search.sparsity=null`: no values
        if not isinstance(value, (list, tuple)):
            value = [value]  # a scalar where a list is expected means a one-point grid
        return tuple(_coerce(item_type, v, f"{name}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            _fail(name, value, "must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            _fail(name, value, "must be an integer")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            return float(value)  # PyYAML reads 5e-4 (no dot) as a string; the user meant the number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(name, value, "must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(name, value, "must be a string")
        return value
    raise TypeError(f"unsupported spec type {tp!r} for {name}")  # a bug in this module, not input


def _build(cls: type, raw: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    aliases = _ALIASES.get(cls, {})
    raw = {aliases.get(k, k): v for k, v in raw.items()}
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise SpecError(where, f"unknown field{_did_you_mean(str(key), names)}; "
                                   f"known: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in raw:
            kwargs[name] = _coerce(hints[name], raw[name], f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# Validation of values (types are already right when this runs).


def _one_of(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        _fail(name, value, f"is not one of {', '.join(options)}{_did_you_mean(value, options)}")


def _grid(name: str, values: tuple) -> None:
    if not values:
        _fail(name, [], "is empty: a grid axis needs at least one value")
    if len(set(values)) != len(values):
        _fail(name, list(values), "has repeated values")


def validate(spec: Spec) -> Spec:
    """The spec, unchanged, when every value is usable; else a `SpecError` naming the first bad field.

    One check per section, in the order of the YAML; each sees the sections before it.
    """
    if not spec.name or any(c in spec.name for c in "/\\ \t\n") or spec.name.startswith("."):
        _fail("name", spec.name, "must be a non-empty name without slashes or spaces")
    if spec.seed < 0:
        _fail("seed", spec.seed, "must be >= 0")
    for check in (_check_data, _check_model, _check_dense, _check_pruning, _check_search, _check_transfer,
                  _check_resources, _check_instability, _check_report, _check_references):
        check(spec)
    return spec


def _check_data(spec: Spec) -> None:
    d = spec.data
    _one_of("data.dataset", d.dataset, DATASETS)
    if d.dataset in ("parquet", "image_folder") and not d.path:
        _fail("data.path", d.path, f"must name a directory when data.dataset is {d.dataset!r}")
    if d.image_size < 8:
        _fail("data.image_size", d.image_size, "must be >= 8")
    if d.batch_size < 1:
        _fail("data.batch_size", d.batch_size, "must be >= 1")
    if d.half is not None:
        _one_of("data.half", d.half, ("a", "b"))
    if d.classes < 2:
        _fail("data.classes", d.classes, "must be >= 2")
    if d.synthetic_noise < 0:
        _fail("data.synthetic_noise", d.synthetic_noise, "must be >= 0")
    if d.shuffle_buffer < 1:
        _fail("data.shuffle_buffer", d.shuffle_buffer, "must be >= 1")
    _one_of("data.cache", d.cache, ("none", "node"))
    for part in ("train", "test"):
        for where, sub in (("subset", d.subset), ("synthetic_size", d.synthetic_size)):
            n = getattr(sub, part) if sub else None
            if n is not None and n < 1:
                _fail(f"data.{where}.{part}", n, "must be >= 1")
    if d.validation < 0:
        _fail("data.validation", d.validation, "must be >= 0 (training images held out; 0: none)")
    if d.subset and d.subset.train is not None and d.subset.train < d.batch_size:
        _fail("data.subset.train", d.subset.train, f"is smaller than data.batch_size ({d.batch_size})")


def _check_model(spec: Spec) -> None:
    m = spec.model
    _one_of("model.arch", m.arch, ARCHS)
    if not 0 < m.width <= 4:
        _fail("model.width", m.width, "is outside (0, 4]")
    _one_of("model.strides", m.strides, STRIDES)
    if m.strides != "imagenet" and m.arch != "mobilenet_v2":
        _fail("model.strides", m.strides, f"applies to mobilenet_v2 only; model.arch is {m.arch!r}")
    if m.arch == "mobilenet_v2" and spec.data.image_size < 32:
        _fail("data.image_size", spec.data.image_size, "is below 32, the smallest input MobileNetV2 accepts")


def _check_dense(spec: Spec) -> None:
    e = spec.dense
    if e.epochs < 1:
        _fail("dense.epochs", e.epochs, "must be >= 1")
    _one_of("dense.optimizer.name", e.optimizer.name, OPTIMIZERS)
    if not e.optimizer.learning_rate > 0:
        _fail("dense.optimizer.learning_rate", e.optimizer.learning_rate, "must be > 0")
    if not 0 <= e.optimizer.momentum < 1:
        _fail("dense.optimizer.momentum", e.optimizer.momentum, "is outside [0, 1)")
    if e.optimizer.weight_decay < 0:
        _fail("dense.optimizer.weight_decay", e.optimizer.weight_decay, "must be >= 0")
    _one_of("dense.schedule.name", e.schedule.name, SCHEDULES)
    if not 0 <= e.schedule.warmup_epochs < e.epochs:
        _fail("dense.schedule.warmup_epochs", e.schedule.warmup_epochs,
              f"is outside [0, dense.epochs ({e.epochs}))")
    for i, ms in enumerate(e.schedule.milestones):
        if not 0 < ms < e.epochs:
            _fail(f"dense.schedule.milestones[{i}]", ms, f"is outside (0, dense.epochs ({e.epochs}))")
    if not 0 < e.schedule.gamma <= 1:
        _fail("dense.schedule.gamma", e.schedule.gamma, "is outside (0, 1]")


def split_control(control: str) -> tuple[str, str | None]:
    """(the mask's method, the ablation) of a control name: `snip+shuffle` is ("snip", "shuffle"),
    `random_prune` the ticket's ("ticket", "shuffle"), `ticket` ("ticket", None)."""
    if control in TICKET_ABLATIONS:
        return "ticket", TICKET_ABLATIONS[control]
    method, _, ablation = control.partition("+")
    return method, ablation or None


def _check_group(name: str, group: str, arch: str) -> None:
    _one_of(name, group, GROUPS)
    if group not in ARCH_GROUPS[arch]:
        _fail(name, group, f"is not a group of {arch} (its groups: {', '.join(ARCH_GROUPS[arch])})")


def _check_pruning(spec: Spec) -> None:
    p, arch = spec.pruning, spec.model.arch
    _one_of("pruning.scope", p.scope, SCOPES)
    for i, g in enumerate(p.exclude):
        _check_group(f"pruning.exclude[{i}]", g, arch)
    if {"conv", "dense", "classifier"} & set(ARCH_GROUPS[arch]) <= set(p.exclude):
        _fail("pruning.exclude", list(p.exclude), f"leaves no weights of {arch} to prune")
    _one_of("pruning.mode", p.mode, MODES)
    _one_of("pruning.granularity", p.granularity, GRANULARITIES)
    if p.granularity == "channel" and p.scope not in CHANNEL_SCOPES:
        _fail("pruning.scope", p.scope, f"does not allocate channels (pruning.granularity 'channel'): use one of "
                                        f"{', '.join(CHANNEL_SCOPES)}")
    if p.granularity == "channel" and p.rates:
        _fail("pruning.rates", dict(p.rates), "set per-layer rates of weights; pruning.granularity 'channel' removes "
                                              "whole channels at one rate (pruning.rate)")
    if not 0 < p.rate < 1:
        _fail("pruning.rate", p.rate, "is outside (0, 1)")
    for group, rate in p.rates.items():
        _check_group("pruning.rates", group, arch)
        if group in p.exclude:
            _fail("pruning.rates", group, "is in pruning.exclude: remove it there for its rate to apply")
        if not 0 <= rate < 1:
            _fail(f"pruning.rates.{group}", rate, "is outside [0, 1)")
    if p.levels is not None and not 1 <= p.levels <= 100:
        _fail("pruning.levels", p.levels, "is outside [1, 100]")
    if p.target_sparsity is not None and not 0 < p.target_sparsity < 1:
        _fail("pruning.target_sparsity", p.target_sparsity, "is outside (0, 1)")
    if p.mode == "imp" and p.levels is None and p.target_sparsity is None:
        _fail("pruning.levels", None, "must be set (or pruning.target_sparsity) when pruning.mode is 'imp'")
    if p.mode == "imp" and p.levels is not None and p.target_sparsity is not None:
        _fail("pruning.target_sparsity", p.target_sparsity, "conflicts with pruning.levels: set one of them")
    if p.min_live_channels < 0:
        _fail("pruning.min_live_channels", p.min_live_channels, "must be >= 0")
    if p.init_batches < 1:
        _fail("pruning.init_batches", p.init_batches, "must be >= 1: SNIP and GraSP score on training batches")
    if p.synflow_rounds < 1:
        _fail("pruning.synflow_rounds", p.synflow_rounds, "must be >= 1")


def _check_search(spec: Spec) -> None:
    s, p, epochs = spec.search, spec.pruning, spec.dense.epochs
    imp, by_level = p.mode == "imp", bool(s.level)
    if imp and s.sparsity:
        _fail("search.sparsity", list(s.sparsity), "conflicts with pruning.mode 'imp': IMP levels set the "
                                                   "sparsity (pruning.rate, pruning.levels); remove search.sparsity")
    if imp and by_level:
        _fail("search.level", list(s.level), "conflicts with pruning.mode 'imp': each IMP trial walks the levels "
                                             "(pruning.levels); remove search.level")
    if by_level and s.sparsity:
        _fail("search.level", list(s.level), "conflicts with search.sparsity: a one-shot grid prunes to "
                                             "sparsities or to IMP levels; set one of them")
    if not imp and not by_level and p.rates:
        _fail("pruning.rates", dict(p.rates), "apply per level: in one-shot mode use search.level (the per-layer "
                                              "sparsities IMP reaches at level k), or pruning.mode 'imp'")
    axes = ("rewind_epoch", "control", "replicate") + (() if imp else ("level",) if by_level else ("sparsity",))
    for axis in axes:
        _grid(f"search.{axis}", getattr(s, axis))
    for i, v in enumerate(s.sparsity):
        if not 0 <= v < 1:
            _fail(f"search.sparsity[{i}]" if len(s.sparsity) > 1 else "search.sparsity", v, "is outside [0, 1)")
    for i, v in enumerate(s.level):
        if not 1 <= v <= 100:
            _fail(f"search.level[{i}]" if len(s.level) > 1 else "search.level", v, "is outside [1, 100]")
    for i, v in enumerate(s.rewind_epoch):
        name = f"search.rewind_epoch[{i}]" if len(s.rewind_epoch) > 1 else "search.rewind_epoch"
        if v < 0:
            _fail(name, v, "must be >= 0")
        if v > epochs:
            _fail(name, v, f"is past dense.epochs ({epochs})")
        if v == epochs:
            _fail(name, v, f"equals dense.epochs ({epochs}): nothing would be left to train")
    for i, c in enumerate(s.control):
        name = f"search.control[{i}]"
        named = {f"ticket+{a}": paper for paper, a in TICKET_ABLATIONS.items()}
        if c in named:
            _fail(name, c, f"is the papers' {named[c]}: use that name")
        _one_of(name, c, CONTROLS)
        method = split_control(c)[0]
        if method in INIT_METHODS and imp:
            _fail(name, c, "prunes at initialization, in one shot; pruning.mode 'imp' prunes iteratively from "
                           "trained weights: use a one-shot grid (search.sparsity or search.level)")
        if method in INIT_METHODS and 0 not in s.rewind_epoch:
            _fail(name, c, f"prunes at initialization and trains from it (rewind epoch 0), which search.rewind_epoch "
                           f"{list(s.rewind_epoch)} lacks: add 0")
        if method in INIT_METHODS and p.granularity == "channel":
            _fail(name, c, "prunes at initialization, where channels do not rank: every BatchNorm gamma is 1 "
                           "and SNIP, GraSP and SynFlow score single weights; use pruning.granularity weight")
    shuffled = [c for c in s.control if split_control(c)[0] in INIT_METHODS and split_control(c)[1] == "shuffle"]
    if len(shuffled) > 1 and p.scope != "global":
        _fail("search.control", shuffled, f"are the same random masks under pruning.scope {p.scope!r}: every method "
                                          "pruning at initialization keeps that allocation's per-layer counts, and a "
                                          "shuffle keeps only the counts; keep one (or use scope global)")
    if imp and "ticket" not in s.control:
        _fail("search.control", list(s.control), "has no 'ticket': IMP controls train the ticket chain's masks "
                                                 "level by level, so the ticket chain must run too")
    for i, r in enumerate(s.replicate):
        if r < 0:
            _fail(f"search.replicate[{i}]", r, "must be >= 0")


def _check_transfer(spec: Spec) -> None:
    t, s = spec.transfer, spec.search
    if t is None:
        if "transfer" in s.control:
            _fail("search.control", list(s.control), "has 'transfer' but the spec has no transfer section")
        return
    if not t.source:
        _fail("transfer.from", t.source, "must name the source experiment dir")
    if "transfer" not in s.control:
        _fail("search.control", list(s.control), "has no 'transfer': add it to train the transferred tickets")
    if spec.pruning.mode == "imp" or s.level:
        _fail("transfer.from", t.source, "needs a one-shot grid over search.sparsity (not IMP levels)")
    _one_of("transfer.select.control", t.select.control, CONTROLS[:3])


def _check_instability(spec: Spec) -> None:
    i, s = spec.instability, spec.search
    if i.points < 2:
        _fail("instability.points", i.points, "must be >= 2: the line between the two copies includes both ends")
    _one_of("instability.batchnorm", i.batchnorm, BATCHNORM)
    if i.batchnorm_batches < 1:
        _fail("instability.batchnorm_batches", i.batchnorm_batches, "must be >= 1")
    if i.enabled and "ticket" not in s.control:
        _fail("instability.enabled", i.enabled, f"has nothing to analyse: search.control {list(s.control)} has no "
                                                "'ticket' (only tickets, the one at sparsity 0 the dense network, twin)")


def _check_report(spec: Spec) -> None:
    _one_of("report.match", spec.report.match, MATCHES)
    if spec.report.match == "early_stop" and not spec.data.validation:
        _fail("report.match", spec.report.match, "needs a validation split to stop early on (data.validation); "
                                                 "or set report.match=final")


def _check_resources(spec: Spec) -> None:
    r = spec.resources
    if isinstance(r.gpus_per_trial, str):
        _one_of("resources.gpus_per_trial", r.gpus_per_trial, ("auto",))
    elif not (r.gpus_per_trial == 0 or 0 < r.gpus_per_trial <= 1 or float(r.gpus_per_trial).is_integer()):
        _fail("resources.gpus_per_trial", r.gpus_per_trial, "must be 'auto', 0, a fraction of 1 or a whole number")
    elif r.gpus_per_trial < 0:
        _fail("resources.gpus_per_trial", r.gpus_per_trial, "must be >= 0")
    if isinstance(r.cpus_per_trial, str):
        _one_of("resources.cpus_per_trial", r.cpus_per_trial, ("auto",))
    elif r.cpus_per_trial < 1:
        _fail("resources.cpus_per_trial", r.cpus_per_trial, "must be >= 1")
    if r.max_failures < 0:
        _fail("resources.max_failures", r.max_failures, "must be >= 0")
    if r.max_concurrent_trials is not None and r.max_concurrent_trials < 1:
        _fail("resources.max_concurrent_trials", r.max_concurrent_trials, "must be >= 1")
    if isinstance(r.dense_replicas, str):
        _one_of("resources.dense_replicas", r.dense_replicas, ("auto",))
    elif r.dense_replicas < 1:
        _fail("resources.dense_replicas", r.dense_replicas, "must be 'auto' or >= 1")
    _one_of("resources.precision", r.precision, PRECISIONS)


def _check_references(spec: Spec) -> None:
    for i, ref in enumerate(spec.references):
        name = f"references[{i}]"
        if not ref.source.strip():
            _fail(f"{name}.source", ref.source, "must cite the paper and the table or figure the points come from")
        _one_of(f"{name}.control", ref.control, ("dense", *CONTROLS))
        if not ref.points:
            _fail(f"{name}.points", [], "is empty")
        for j, point in enumerate(ref.points):
            if not 0 < point.weights_remaining <= 100:
                _fail(f"{name}.points[{j}].weights_remaining", point.weights_remaining, "is outside (0, 100] (percent)")
            if (point.test_accuracy is None) == (point.gain is None):
                _fail(f"{name}.points[{j}]", "test_accuracy/gain", "needs exactly one of test_accuracy and gain")
            if point.test_accuracy is not None and not 0 <= point.test_accuracy <= 100:
                _fail(f"{name}.points[{j}].test_accuracy", point.test_accuracy, "is outside [0, 100] (percent)")


# ---------------------------------------------------------------------------------------------
# Loading: a file or a preset, then `--set` overrides, then validation.


def preset_dir() -> Path:
    """Where the presets live: installed with the package, or `search_spaces/` of a checkout."""
    try:
        installed = Path(str(resources.files("tickets.search_spaces")))
        if installed.is_dir():
            return installed
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "search_spaces"


def presets() -> list[str]:
    """The preset names `load` accepts, as installed with the package."""
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def resolve_spec_path(spec: str) -> Path:
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SpecError("SPEC", f"{spec!r} is not a file")
        return path
    preset = preset_dir() / f"{spec}.yaml"
    if preset.is_file():
        return preset
    raise SpecError("SPEC", f"{spec!r} is neither a YAML file nor a preset{_did_you_mean(spec, presets())}; "
                            f"presets: {', '.join(presets())}")


def read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(str(path), f"is not valid YAML{where}: {problem}") from None
    except OSError as e:
        raise SpecError(str(path), f"cannot be read: {e.strerror}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(str(path), f"must hold a mapping of spec fields, not a {type(raw).__name__}")
    return raw


def apply_override(raw: dict, assignment: str) -> dict:
    """`a.b.c=VALUE` (VALUE parsed as YAML) applied to a copy of `raw`; the path must be a spec field."""
    if "=" not in assignment:
        raise SpecError("--set", f"{assignment!r} is not KEY=VALUE")
    key, text = assignment.split("=", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise SpecError(f"--set {key}", f"{text!r} is not a valid YAML value") from None
    parts = key.strip().split(".")
    cls: Any = Spec
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
        if part not in names:
            where = ".".join(parts[: i + 1])
            raise SpecError(f"--set {where}", f"no such field{_did_you_mean(part, names)}")
        hint = typing.get_type_hints(cls)[part]
        inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        cls = hint if dataclasses.is_dataclass(hint) else (inner[0] if inner else None)
    out = json.loads(json.dumps(raw))  # deep copy of plain YAML data
    node = out
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return out


def from_dict(raw: dict) -> Spec:
    """A validated Spec from a plain dict (a parsed YAML file); raises SpecError naming the field."""
    spec = _build(Spec, raw)
    search = raw.get("search") or {}
    if (spec.pruning.mode == "imp" or spec.search.level) and "sparsity" not in search:
        # IMP and level grids have no sparsity axis: the default sparsities must not count as "set".
        spec = dataclasses.replace(spec, search=dataclasses.replace(spec.search, sparsity=()))
    return validate(spec)


def load(spec: str | Path, overrides: typing.Sequence[str] = ()) -> Spec:
    """Load a spec file or preset name, apply `--set` overrides, validate. Raises `SpecError`."""
    raw = read_yaml(resolve_spec_path(str(spec)))
    for assignment in overrides:
        raw = apply_override(raw, assignment)
    return from_dict(raw)
