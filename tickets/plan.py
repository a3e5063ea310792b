"""Everything checked before Ray starts or a file is written: the spec, the experiment dir, the
transfer sources, the data's size and the rewind steps, the resources of a local Ray. Bad input
raises one of `BAD_INPUT` (the CLI prints its one line and exits 2); `check_inputs` returns the `Plan`
a sweep runs."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tickets import artifacts, instability, lock
from tickets import config as config_lib
from tickets import data as data_lib
from tickets.config import SpecError
from tickets.errors import DataError, UsageError
from tickets.grid import at_init, axes, is_chain, is_product, trial_points, transfer_key
from tickets.session import Resources, local_gpus, resolve_resources

DEFAULT_PRESET = "mobilenetv2-cifar10"


def experiment_dir(args: argparse.Namespace, spec_name: str) -> Path:
    """`<storage path>/<name>`; a name is one path component, so the experiment stays inside the storage path."""
    if args.name is not None and (args.name in ("", ".", "..") or any(c in args.name for c in "/\\\0")):
        raise UsageError(f"--name: {args.name!r} must be a single directory name (no '/', no '..')")
    storage = Path(args.storage_path or os.environ.get("TUNE_RESULT_DIR") or "~/ray_results").expanduser()
    return storage.resolve() / (args.name or spec_name)


def load_spec(args: argparse.Namespace) -> tuple[config_lib.Spec, Path]:
    if args.resume and not args.spec:
        # The experiment's own spec; its name is --name, or the default preset's name.
        name = args.name or config_lib.load(DEFAULT_PRESET).name
        exp = experiment_dir(args, name)
        if not (exp / artifacts.SPEC_FILE).is_file():
            raise UsageError(f"--resume: {exp} holds no experiment ({artifacts.SPEC_FILE} missing)")
        return config_lib.load(exp / artifacts.SPEC_FILE, args.overrides), exp
    spec = config_lib.load(args.spec or DEFAULT_PRESET, args.overrides)
    return spec, experiment_dir(args, spec.name)


def check_experiment(args: argparse.Namespace, spec: config_lib.Spec, exp: Path) -> None:
    lock.check(exp)  # one live driver per experiment, --resume or not
    started = (exp / artifacts.SPEC_FILE).exists()
    if args.resume:
        if not started:
            raise UsageError(f"--resume: {exp} holds no experiment to resume")
        saved = config_lib.load(exp / artifacts.SPEC_FILE)
        if saved.spec_hash() != spec.spec_hash():
            raise UsageError(f"--resume: the spec differs from {exp / artifacts.SPEC_FILE}; resume with the same spec "
                             f"(or none), or start a new experiment with --name")
    elif started:
        raise UsageError(f"--name: experiment {exp} already exists; pass --resume to continue it "
                         f"or --name to start another")
    # The nearest existing ancestor must be writable, or the sweep would fail only after the dense run.
    probe = exp
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--storage-path: {probe} is not a writable directory")
    try:  # root passes every permission check: only a real write tells
        fd, name = tempfile.mkstemp(dir=probe, prefix=".tickets-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise UsageError(f"--storage-path: {probe} is not writable ({e.strerror})") from None
    need = int(os.environ.get("TICKETS_MIN_FREE_MB", "200"))
    free = shutil.disk_usage(probe).free
    if free < need * 2**20:
        raise UsageError(f"--storage-path: {probe} has {free / 2**20:.0f} MiB free; a sweep needs at least "
                         f"{need} MiB (TICKETS_MIN_FREE_MB)")


def source_experiment(spec: config_lib.Spec, storage: Path) -> Path:
    """The transfer source dir: as given, or relative to the storage path."""
    given = Path(spec.transfer.source).expanduser()
    for candidate in (given, storage / given):
        if (candidate / artifacts.SPEC_FILE).is_file():
            return candidate.resolve()
    raise UsageError(f"transfer.from: {spec.transfer.source!r} is not an experiment dir "
                     f"(looked in {given} and {storage / given})")


def check_transfer(spec: config_lib.Spec, storage: Path) -> dict[str, Path]:
    """The source trial dir of every transfer trial, read from disk (no Ray): checked before anything runs."""
    if spec.transfer is None:
        return {}
    source = source_experiment(spec, storage)
    theirs = config_lib.load(source / artifacts.SPEC_FILE)
    if (theirs.model.arch, theirs.model.width) != (spec.model.arch, spec.model.width):
        raise UsageError(f"transfer.from: {source} used model {theirs.model.arch} (width {theirs.model.width}); "
                         f"this spec uses {spec.model.arch} (width {spec.model.width})")
    mine, ours = (theirs.pruning.granularity, theirs.pruning.exclude), (spec.pruning.granularity, spec.pruning.exclude)
    if mine != ours and "channel" in (mine[0], ours[0]):  # random_prune and the thinned channels follow them
        raise UsageError(f"transfer.from: {source} pruned with granularity {mine[0]!r}, excluding {list(mine[1])}; "
                         f"this spec with {ours[0]!r}, excluding {list(ours[1])}: channel tickets transfer only "
                         "between specs that prune the same channels")
    sel = spec.transfer.select
    found = {}
    for point in trial_points(spec):
        if point["control"] != "transfer":
            continue
        want = {"trial": sel.trial} if sel.trial else {
            "sparsity": point["sparsity"] if sel.sparsity is None else sel.sparsity,
            "rewind_epoch": point["rewind_epoch"] if sel.rewind_epoch is None else sel.rewind_epoch,
            "control": sel.control,
            "replicate": point["replicate"] if sel.replicate is None else sel.replicate}
        trial = artifacts.find_trial(source, **want)
        if trial is None:
            shown = ", ".join(f"{k}={v}" for k, v in want.items())
            raise UsageError(f"transfer.select: {source} has no finished trial with {shown}")
        found[transfer_key(point["sparsity"], point["rewind_epoch"], point["replicate"])] = trial
    return found


def reusable_dense(spec: config_lib.Spec, exp: Path, steps: list[int], data_order: str) -> dict | None:
    """The snapshots of a finished dense run of this dense spec in `<exp>/dense`, read and checked
    before Ray starts; None when there is none to reuse. A damaged run is an error, never retrained over."""
    dense_dir = exp / artifacts.DENSE_DIR
    manifest = artifacts.read_dense(dense_dir)
    if not manifest or manifest["dense_hash"] != spec.dense_hash():
        return None
    if manifest.get("format", 1) != artifacts.FORMAT:
        print(f"dense: the run in {dense_dir} was written in format {manifest.get('format', 1)} (an older tickets), "
              f"this one writes {artifacts.FORMAT}: training it again")
        return None
    # In memory or streamed depends on the budget (TICKETS_DECODE_CACHE_MB), not the spec: the order
    # the run saw must be the one the trials will see.
    trained_on = manifest.get("runtime", {}).get("data_order", "permutation")
    if trained_on != data_order:
        print(f"dense: the run in {dense_dir} visited the data as '{trained_on}', this one would as "
              f"'{data_order}' (in-memory budget or data changed): training it again")
        return None
    if not set(steps) <= set(manifest["snapshot_steps"]):
        return None  # the grid gained rewind points: train again with all of them
    return artifacts.load_snapshots(dense_dir, steps)


def check_rewind_steps(spec: config_lib.Spec, steps_per_epoch: int) -> None:
    """A fractional rewind point that rounds to the last dense step leaves a trial nothing to train;
    only the data's steps per epoch tell (the spec alone allows any rewind_epoch < dense.epochs)."""
    total = spec.dense.total_steps(steps_per_epoch)
    for v in spec.search.rewind_epoch:
        step = config_lib.step_of(v, steps_per_epoch)
        if step >= total:
            raise SpecError("search.rewind_epoch", f"{config_lib.show(v)} is step {step} of {total} "
                            f"({steps_per_epoch} per epoch): nothing would be left to train")


def check_channels(spec: config_lib.Spec, classes: int) -> None:
    """Channel tickets: every grid point must be reachable in whole channels above
    `pruning.min_live_channels`. Builds the model (Keras), for channel specs only."""
    p = spec.pruning
    if p.granularity != "channel":
        return
    from tickets import channels, models, pruning

    size = spec.data.image_size
    lay = pruning.Layout.of(models.layout(models.build(spec.model, (size, size, 3), classes, seed=0)))
    names = pruning.prunable(p, lay)
    groups = channels.prunable(lay, names)
    if not groups:
        raise SpecError("pruning.granularity", f"'channel' finds no removable channels among {spec.model.arch}'s "
                        f"prunable kernels (pruning.exclude {list(p.exclude)}): docs/pruning.md says which are")
    removable, _ = channels.most_removable(groups, lay.shapes, p.min_live_channels)
    most = removable / sum(int(np.prod(lay.shapes[n])) for n in names)
    asked = ([(f"search.sparsity[{i}]", v, f"{v:g}") for i, v in enumerate(spec.search.sparsity)]
             + [(f"search.level[{i}]", 1 - (1 - p.rate) ** k, f"{k} (sparsity {1 - (1 - p.rate) ** k:.4f})")
                for i, k in enumerate(spec.search.level)])
    if p.mode == "imp":
        k = p.num_levels()
        asked.append(("pruning.levels", 1 - (1 - p.rate) ** k, f"{k} (sparsity {1 - (1 - p.rate) ** k:.4f})"))
    for name, sparsity, shown in asked:
        if sparsity > most:
            raise SpecError(name, f"{shown} is beyond whole channels: keeping pruning.min_live_channels "
                            f"({p.min_live_channels}) in every channel group, they remove at most {most:.4f} of "
                            f"{spec.model.arch}'s prunable weights")


def print_plan(spec: config_lib.Spec, exp: Path, res: Resources | None, cluster: str) -> None:
    print(f"experiment {exp}")
    shown = " x ".join(f"{k} {v}" for k, v in axes(spec).items())
    points = trial_points(spec)
    if spec.pruning.mode == "imp":
        chains = sum(is_chain(p) for p in points)
        others = [c for c in spec.search.control if c != "ticket"]
        print(f"grid: {len(points)} trials = {chains} ticket chain(s) (rewind_epoch {list(spec.search.rewind_epoch)} x "
              f"replicate {list(spec.search.replicate)})"
              + (f" + {len(points) - chains} control trials ({', '.join(others)} at each level, on their chain's "
                 f"mask of that level)" if others else ""))
    else:
        early = [c for c in spec.search.control if at_init(c)]
        print(f"grid: {len(points)} trials = {shown}"
              + (f", less {', '.join(early)} at rewind epochs other than 0 (pruned at initialization, they "
                 f"train from it)" if not is_product(spec) else ""))
    p = spec.pruning
    rates = "".join(f", {g} {r:g}" for g, r in p.rates.items())
    if p.mode == "imp" or spec.search.level:
        what = f"IMP: {p.num_levels()} levels per chain" if p.mode == "imp" else "one shot to IMP levels"
        deepest = p.num_levels() if p.mode == "imp" else max(spec.search.level)
        print(f"{what}, {p.rate:g} of the remaining weights pruned per level{rates} "
              f"(at level {deepest}, tensors at rate {p.rate:g} keep {(1 - p.rate) ** deepest * 100:.2f} %)")
    whole = (f", whole channels (at least {max(1, p.min_live_channels)} per group)"
             if p.granularity == "channel" else "")
    print(f"pruning: scope {p.scope}, excluding {', '.join(p.exclude) or 'nothing'}{whole}")
    early = sorted({config_lib.split_control(c)[0] for c in spec.search.control if at_init(c)})
    if early:
        batches = f"{p.init_batches} training batch{'es' if p.init_batches > 1 else ''}"
        how = {"magnitude_init": "magnitude_init by |w|", "snip": f"snip on {batches}",
               "grasp": f"grasp on {batches}", "synflow": f"synflow in {p.synflow_rounds} rounds, data-free"}
        print(f"pruning at initialization: {'; '.join(how[m] for m in early)}; "
              + ("the methods' own scores choose the per-layer counts" if p.scope == "global" else
                 f"per-layer counts as {p.scope} allocates them, places by the methods' scores"))
    i = spec.instability
    if i.enabled:
        twins = sum(instability.wanted(True, q["control"]) for q in points)
        print(f"instability: a twin for {twins} of the {len(points)} trials (another data order; "
              f"{'every IMP level, ' if spec.pruning.mode == 'imp' else ''}doubling their training) and evaluate "
              f"the line between the copies at {i.points} points, BatchNorm statistics {i.batchnorm}d")
    if spec.transfer:
        print(f"transfer: tickets from {spec.transfer.source}")
    m = spec.model
    shape = f" (width {m.width:g}, {m.strides} strides)" if m.arch == "mobilenet_v2" else ""
    print(f"model {m.arch}{shape} on {spec.data.dataset}, {spec.dense.epochs} dense epochs, "
          f"one dense run shared by all trials")
    if res:
        replicas = spec.resources.dense_replicas
        devices = (f"{replicas} replicas" if replicas != "auto" else
                   "one replica per GPU" if res.dense_gpus else "one device")
        print(f"dense run: one whole node, {res.dense_cpus:g} CPU, {res.dense_gpus:g} GPU ({devices}); "
              f"each trial: {res.cpus:g} CPU, {res.gpus:g} GPU; precision {spec.resources.precision}")
    print(f"cluster: {cluster}")


BAD_INPUT = (SpecError, UsageError, DataError, artifacts.ArtifactError)


@dataclass
class Plan:
    """A checked sweep: everything `run` needs, all read before Ray starts or a file is written."""

    args: argparse.Namespace
    spec: config_lib.Spec
    exp: Path
    steps_per_epoch: int
    on_disk: dict | None  # the snapshots of a reusable dense run, by step
    sources: dict[str, Path]  # transfer_key -> the source trial dir of each transfer trial
    source_tickets: dict[Path, dict]  # each source trial's ticket, read once
    res: Resources | None  # None when joining a cluster: resolved against its nodes
    cluster: str  # what a dry run says it would start or join


def check_inputs(args: argparse.Namespace) -> Plan:
    """Everything that can be wrong with the input: spec, paths, transfer sources, data, rewind
    steps, resources. Raises one of BAD_INPUT; starts nothing and writes nothing."""
    spec, exp = load_spec(args)
    early = [c for c in spec.search.control if at_init(c)]
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if early and backend != "tensorflow":
        raise UsageError(f"search.control: {', '.join(early)} score(s) with TensorFlow's gradients; KERAS_BACKEND is "
                         f"{backend!r}: unset it, or leave these controls out")
    try:
        check_experiment(args, spec, exp)
    except UsageError as e:
        if not args.dry_run:
            raise
        print(f"note: a real run would stop here: {e}")  # a dry run writes nothing: go on checking
    sources = check_transfer(spec, exp.parent)
    info = data_lib.survey(spec.data, spec.seed, download=not args.dry_run)
    spe = info.steps_per_epoch(spec.data.batch_size)
    check_rewind_steps(spec, spe)
    check_channels(spec, info.num_classes)
    # A finished dense run of this spec in <exp>/dense is reused: one --resume continues, or one copied
    # into a new experiment to run another grid on it. A dry run checks the grid's masks against it.
    on_disk = reusable_dense(spec, exp, spec.record_steps(spe), data_lib.order_label(info.train, spec.data))
    source_tickets = {t: artifacts.load_ticket(t / artifacts.TICKET_FILE) for t in set(sources.values())}
    res, cluster = None, f"would join {args.address} (resources resolved there)"
    if not args.address:
        cpus, gpus = args.num_cpus or os.cpu_count() or 1, args.num_gpus if args.num_gpus is not None else local_gpus()
        res = resolve_resources(spec, [{"CPU": cpus, "GPU": gpus}])
        cluster = f"would start local Ray with {cpus} CPU, {gpus} GPU"
    held = f" / {len(info.validation)} validation (held out of train)" if info.validation is not None else ""
    print(f"data: {len(info.train)} train{held} / {len(info.test)} test images, {info.num_classes} classes, "
          f"from {info.source}; {spe} steps per epoch; {data_lib.describe(info, spec.data)}")
    return Plan(args, spec, exp, spe, on_disk, sources, source_tickets, res, cluster)
