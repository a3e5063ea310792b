"""`python -m tickets.sweep SPEC`: one dense run, then a Tune grid of sparse trials.

  1. validate the spec (bad input: one line, exit 2, nothing written, no Ray started);
  2. load the data once and train the dense network once, as Ray tasks with the per-trial
     resources; its snapshots go to `<experiment>/dense/` and into the object store, one ref
     each (a dense run already there with the same dense spec is reused);
  3. a `tune.Tuner` grid over sparsity × rewind epoch × control × replicate;
  4. `<experiment>/results.parquet` from every trial's reports plus the dense reference rows.

Exit codes: 0 every trial finished; 1 some trial errored (the others' results are kept); 2 bad input;
130 interrupted (Ctrl-C, SIGTERM) before the grid finished: continue it with --resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import pickle
import shutil
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune
from ray.tune.search import Searcher
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from tickets import analysis, artifacts, instability, pruning
from tickets import config as config_lib
from tickets import data as data_lib
from tickets.config import SpecError
from tickets.data import DataError
from tickets.trainable import DenseBoard, DenseRefs, train_imp, train_ticket, transfer_key

DEFAULT_PRESET = "mobilenetv2-cifar10"
EXIT_INTERRUPTED = 130  # the shell's code for a Ctrl-C'd command
HEAD_NODE = "node:__internal_head__"  # the resource Ray gives the head node alone


class UsageError(Exception):
    """Bad input found after parsing the spec (paths, cluster fit). Exit 2, like a SpecError."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tickets.sweep", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", help=f"YAML spec or preset name ({', '.join(config_lib.presets())}); "
                                           f"default {DEFAULT_PRESET}")
    p.add_argument("--storage-path", help="where experiments go (default ~/ray_results, as Tune does)")
    p.add_argument("--name", help="experiment name (default: the spec's name)")
    p.add_argument("--address", help="join a running Ray cluster ('auto' or host:port) instead of starting one")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field with a YAML value, e.g. --set search.sparsity=[0.5,0.9]")
    p.add_argument("--resume", action="store_true", help="continue an interrupted experiment")
    p.add_argument("--dry-run", action="store_true", help="validate and print the grid; start nothing")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    p.add_argument("--num-gpus", type=int, help="GPUs of the embedded local Ray (default: detected)")
    p.add_argument("--verbose", action="store_true",
                   help="show Tune's tables and every worker's output here (else they stay in the log files)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Input: spec, experiment dir, resources. Everything here runs before Ray starts or anything is written.


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


@dataclass(frozen=True)
class Resources:
    cpus: float  # per trial
    gpus: float
    dense_cpus: float  # the dense run: one whole node
    dense_gpus: float
    note: str = ""


def resolve_resources(spec: config_lib.Spec, nodes: list[dict]) -> Resources:
    """Per-trial CPUs and GPUs for this cluster; a request no node can ever meet is an error."""
    r = spec.resources
    max_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    note = ""
    if r.gpus_per_trial == "auto":
        gpus = 1.0 if max_gpus >= 1 else (max_gpus or 0.0)
        if not gpus:
            note = "the cluster has no GPUs: trials run on CPUs"
    else:
        gpus = float(r.gpus_per_trial)
    if r.cpus_per_trial == "auto":
        if gpus:
            # Share each GPU node's CPUs among the trials its GPUs can hold.
            cpus = min((max(1, int(n.get("CPU", 1) * gpus // n["GPU"])) for n in nodes if n.get("GPU", 0) >= gpus),
                       default=1)
        else:
            cpus = 1
    else:
        cpus = float(r.cpus_per_trial)
    if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        shape = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "no nodes"
        field = "resources.gpus_per_trial" if gpus > max_gpus else "resources.cpus_per_trial"
        value = r.gpus_per_trial if field.endswith("gpus_per_trial") else r.cpus_per_trial
        raise SpecError(field, f"{config_lib.show(value)} cannot be met by any node of this cluster ({shape}): "
                               f"trials would wait forever")
    # The dense run is the serial part of every sweep: it takes the largest node whole (the one with
    # the most GPUs when trials use GPUs), every CPU and GPU of it, while nothing else can run yet.
    node = max(nodes, key=lambda n: (n.get("GPU", 0) if gpus else 0, n.get("CPU", 0)))
    dense_gpus = node.get("GPU", 0) if gpus else 0
    if dense_gpus and r.dense_replicas != "auto":
        if r.dense_replicas > dense_gpus:
            raise SpecError("resources.dense_replicas", f"{r.dense_replicas} is more than the {dense_gpus:g} GPUs "
                                                        f"of the largest node, where the dense run trains")
        dense_gpus = r.dense_replicas  # one GPU per replica; the node's other GPUs stay free
    return Resources(cpus, gpus, node.get("CPU", 1), dense_gpus, note)


def local_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        return sum(1 for line in out.splitlines() if line.startswith("GPU "))
    return 0


def grid(spec: config_lib.Spec) -> dict[str, list]:
    """The grid's axes: sparsities or one-shot levels; IMP has neither (its chains walk the levels)."""
    s = spec.search
    axes = {"sparsity": list(s.sparsity), "level": list(s.level), "rewind_epoch": list(s.rewind_epoch),
            "control": list(s.control), "replicate": list(s.replicate)}
    return {k: v for k, v in axes.items() if v}


def trial_points(spec: config_lib.Spec) -> list[dict]:
    """Every trial's config, in the order they are queued. One shot: the grid's product. IMP: one
    ticket chain per (rewind epoch, replicate), then every other control at every level, level by
    level, each on its chain's mask of that level (Frankle & Carbin's controls)."""
    points = [{}]
    if spec.pruning.mode != "imp":
        for key, values in grid(spec).items():
            points = [{**p, key: v} for p in points for v in values]
        return points
    s = spec.search
    chains = [{"rewind_epoch": r, "control": "ticket", "replicate": i} for r in s.rewind_epoch for i in s.replicate]
    controls = [{**chain, "control": c, "level": k} for k in range(1, spec.pruning.num_levels() + 1)
                for chain in chains for c in s.control if c != "ticket"]
    return chains + controls


def print_plan(spec: config_lib.Spec, exp: Path, res: Resources | None, cluster: str) -> None:
    print(f"experiment {exp}")
    axes = " x ".join(f"{k} {v}" for k, v in grid(spec).items())
    points = trial_points(spec)
    if spec.pruning.mode == "imp":
        chains = sum("level" not in p for p in points)
        others = [c for c in spec.search.control if c != "ticket"]
        print(f"grid: {len(points)} trials = {chains} ticket chain(s) (rewind_epoch {list(spec.search.rewind_epoch)} x "
              f"replicate {list(spec.search.replicate)})"
              + (f" + {len(points) - chains} control trials ({', '.join(others)} at each level, on their chain's "
                 f"mask of that level)" if others else ""))
    else:
        print(f"grid: {len(points)} trials = {axes}")
    p = spec.pruning
    rates = "".join(f", {g} {r:g}" for g, r in p.rates.items())
    if p.mode == "imp" or spec.search.level:
        what = f"IMP: {p.num_levels()} levels per chain" if p.mode == "imp" else "one shot to IMP levels"
        deepest = p.num_levels() if p.mode == "imp" else max(spec.search.level)
        print(f"{what}, {p.rate:g} of the remaining weights pruned per level{rates} "
              f"(at level {deepest}, tensors at rate {p.rate:g} keep {(1 - p.rate) ** deepest * 100:.2f} %)")
    print(f"pruning: scope {p.scope}, excluding {', '.join(p.exclude) or 'nothing'}")
    i = spec.instability
    if i.enabled:
        twins = sum(instability.wanted(True, q["control"], q.get("sparsity")) for q in points)
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


def mask_points(spec: config_lib.Spec) -> dict[str, dict]:
    """The one-shot masks a spec's grid trains, by label: its sparsities or levels. For IMP, the mask
    of every level pruned in one shot from the dense weights, an estimate of what the chain prunes."""
    if spec.pruning.mode == "imp":
        return {f"level {k}*": {"level": k} for k in range(1, spec.pruning.num_levels() + 1)}
    if spec.search.level:
        return {f"level {k}": {"level": k} for k in spec.search.level}
    return {f"s={v:g}": {"sparsity": v} for v in spec.search.sparsity}


def check_collapse(spec: config_lib.Spec, dense_dir: Path, final: dict) -> None:
    """Before any trial trains: check the grid's masks (pruned from the dense run's `final` weights,
    with the layout its manifest stores). One line when every one leaves the network whole; where
    one cuts it, empties a residual branch or leaves a layer near collapse (at most
    `pruning.min_live_channels` live channels), say where, with the per-layer densities on a cut."""
    layout = (artifacts.read_dense(dense_dir) or {}).get("layout")
    if not layout or "inputs" not in layout:
        print("masks: not checked (the dense run predates layout records; train it again to check)")
        return
    lay = pruning.Layout.of(layout)
    masks = {label: pruning.oneshot_mask(spec.pruning, lay, final, **point)[0]
             for label, point in mask_points(spec).items()}
    health = {label: pruning.check(m, lay) for label, m in masks.items()}
    bad = {label: h.cuts for label, h in health.items() if h.cuts}
    low = spec.pruning.min_live_channels
    narrow = {label: h.narrowest_text() for label, h in health.items() if h.near_collapse(low) and not h.cuts}
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
    for line in pruning.density_table(masks, lay):
        print("  " + line)


# ---------------------------------------------------------------------------------------------
# The dense run: reused from disk when it fits, else trained once as a Ray task.


def reusable_dense(spec: config_lib.Spec, exp: Path, steps: list[int], data_order: str) -> dict | None:
    """The snapshots of a finished dense run of this dense spec in `<exp>/dense`, read and checked
    before Ray starts; None when there is none to reuse. A damaged run is an error, never retrained over."""
    dense_dir = exp / artifacts.DENSE_DIR
    manifest = artifacts.read_dense(dense_dir)
    if not manifest or manifest["dense_hash"] != spec.dense_hash():
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


def training_env(cpus: float, gpus: float, role: str) -> dict:
    """The runtime env of a task that trains. Ray keeps a worker pool per runtime env, so the task
    runs in a process that only such tasks use (never, say, the data-loading worker, whose
    `tf.data` has already started TensorFlow with its default pools); TensorFlow reads the thread
    counts from the environment whenever it starts, and `training.configure` sets the same."""
    threads = max(1, int(cpus))
    return {"env_vars": {"TICKETS_WORKER": role, "TF_NUM_INTRAOP_THREADS": str(threads),
                         "TF_NUM_INTEROP_THREADS": str(min(2, threads) if gpus else 1)}}


@ray.remote
def _load_data(spec_dict: dict):
    spec = config_lib.from_dict(spec_dict)
    return data_lib.load(spec.data, spec.seed)


def _train_dense(spec_dict: dict, dataset, out_dir: str) -> list[dict]:
    from tickets import training

    spec = config_lib.from_dict(spec_dict)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    runtime = training.configure(max(1, int(cpus)), replicas=spec.resources.dense_replicas,
                                 precision=spec.resources.precision)
    out = Path(out_dir)
    artifacts.log_dense_start(out, {"started": time.time(), "dense_hash": spec.dense_hash(),
                                    "node_id": ray.get_runtime_context().get_node_id(), **runtime.row()})
    # Each epoch's row goes to disk as it ends: the driver shows it and TensorBoard plots it.
    artifacts.clear_metrics(out)  # a retried task starts its rows afresh
    trajectory = training.train_dense(spec, dataset, on_epoch=lambda p: artifacts.append_metrics(out, vars(p)))
    trajectory.save(out, spec.dense_hash())
    return trajectory.metrics


def follow_dense(task: ray.ObjectRef, dense_dir: Path, epochs: int, check=lambda: None) -> None:
    """Wait for the dense task, printing each epoch and writing it as TensorBoard events as it ends;
    `check()` runs every second and may raise to stop waiting."""
    shown = 0
    with artifacts.DenseEvents(dense_dir) as events:
        while True:
            done, _ = ray.wait([task], timeout=1.0)
            rows = artifacts.read_metrics(dense_dir)
            if len(rows) < shown:  # the task was retried: its rows start again
                print("dense: restarted")
                shown = 0
            for row in rows[shown:]:
                val = row.get("val_loss", math.nan)
                validation = (f" | val loss {val:.4f} acc {row['val_accuracy']:.4f}" if math.isfinite(val) else "")
                print(f"dense epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} "
                      f"acc {row['train_accuracy']:.4f}{validation} | test loss {row['test_loss']:.4f} "
                      f"acc {row['test_accuracy']:.4f} ({row['seconds']:.1f}s)", flush=True)
                events.add(row)
            shown = len(rows)
            if done:
                ray.get(task)  # its error, if any, stops the sweep here
                return
            check()


def dense_task(spec: config_lib.Spec, exp: Path, res: Resources, data_ref: ray.ObjectRef,
               placement=None) -> ray.ObjectRef:
    """Start the dense run: one whole node (`placement`, when given, reserves it)."""
    options = {"num_cpus": res.dense_cpus, "num_gpus": res.dense_gpus, "max_retries": spec.resources.max_failures,
               "runtime_env": training_env(res.dense_cpus, res.dense_gpus, "dense")}
    if placement is not None:
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement)
    return ray.remote(_train_dense).options(**options).remote(spec.to_dict(), data_ref, str(exp / artifacts.DENSE_DIR))


def dense_refs(spec: config_lib.Spec, exp: Path, res: Resources, spe: int, on_disk: dict | None,
               data_ref: ray.ObjectRef, task: ray.ObjectRef | None = None, check=lambda: None) -> DenseRefs:
    """The data set and one object ref per needed snapshot, each in the object store once.

    The driver puts the snapshots itself (from `<exp>/dense`, where the dense task wrote them), so
    they live on the driver's node: losing a worker node never loses them or retrains the dense net.
    """
    steps = spec.record_steps(spe)
    dense_dir = exp / artifacts.DENSE_DIR
    if on_disk is not None:
        print(f"dense: reusing the dense run in {dense_dir}")
    else:
        print(f"dense: training {spec.dense.epochs} epochs once (snapshots at steps {steps})")
        task = task or dense_task(spec, exp, res, data_ref)
        follow_dense(task, dense_dir, spec.dense.epochs, check)
        on_disk = artifacts.load_snapshots(dense_dir, steps)
    check_collapse(spec, dense_dir, on_disk[spec.dense.epochs * spe])
    refs = {s: ray.put(w) for s, w in on_disk.items()}
    return DenseRefs(spec.dense_hash(), spe, spec.dense.epochs * spe, refs, data_ref)


def last_line(error: BaseException) -> str:
    """What went wrong, in one line: a remote error's text ends with the original exception's."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, ray.exceptions.RayError):
        return lines[-1][:300] if lines else type(error).__name__
    return f"{type(error).__name__}: {lines[-1][:300] if lines else ''}"


def overlaps(res: Resources, nodes: list[dict]) -> bool:
    """Whether trials can start beside the dense run, on a node it leaves free: it takes one node
    whole, so at least one other must hold a trial. Never on one node, where it would slow the run."""
    return sum(n.get("CPU", 0) >= res.cpus and n.get("GPU", 0) >= res.gpus for n in nodes) >= 2


class _Stopped(Exception):
    """The sweep stopped (interrupted, or no trial left to wait) before the dense run ended."""


class DenseBeside:
    """The dense run trained on a thread of the driver while the grid starts: trials placed on the
    nodes it leaves free import TensorFlow, build and trace their model, then wait on a `DenseBoard`
    for the snapshots, so they train as soon as it ends. Its node is reserved (a placement group)
    before any trial is placed, and freed for trials when it ends."""

    LOST_AFTER_S = 60  # its node lost and no whole node free for the retry (trials hold them)

    def __init__(self, spec: config_lib.Spec, exp: Path, res: Resources, spe: int, data_ref: ray.ObjectRef):
        bundle = {"CPU": res.dense_cpus, **({"GPU": res.dense_gpus} if res.dense_gpus else {})}
        self.placement = placement_group([bundle], strategy="STRICT_PACK")
        ray.get(self.placement.ready())
        # On the head node, as Ray's own controllers are: removing a worker node never takes it along.
        self.board = DenseBoard.options(resources={HEAD_NODE: 0.001}).remote()
        self.task = dense_task(spec, exp, res, data_ref, self.placement)
        self.refs = DenseRefs(spec.dense_hash(), spe, spec.dense.epochs * spe, {}, data_ref, board=self.board)
        self.error: BaseException | None = None
        self.stopping = False
        self._unplaced_since: float | None = None
        self.thread = threading.Thread(target=self._run, args=(spec, exp, res, spe, data_ref), daemon=True)
        self.thread.start()

    def _run(self, spec, exp, res, spe, data_ref) -> None:
        try:
            done = dense_refs(spec, exp, res, spe, None, data_ref, self.task, self._check)
            self.board.publish.remote(done.snapshots)
        except _Stopped:
            self.board.fail.remote("the sweep stopped before the dense run ended")
        except BaseException as e:  # noqa: BLE001 - every failure must reach the waiting trials
            self.error = e
            self.board.fail.remote(f"the dense run failed: {last_line(e)}")
        finally:
            remove_placement_group(self.placement)  # frees its node for trials; kills the run if it still runs

    def _check(self) -> None:
        if self.stopping:
            raise _Stopped()
        if placement_group_table(self.placement).get("state") == "CREATED":
            self._unplaced_since = None
            return
        self._unplaced_since = self._unplaced_since or time.monotonic()
        if time.monotonic() - self._unplaced_since > self.LOST_AFTER_S:
            raise RuntimeError(f"the dense run's node was lost and no whole node has been free for "
                               f"{self.LOST_AFTER_S} s to train it again (trials wait on the others)")

    def join(self) -> BaseException | None:
        """Once the grid has stopped (before Ray stops): the dense run's error, if it failed. A run
        still going (the grid was interrupted, or every trial failed) is stopped: the sweep says why."""
        self.stopping = True
        self.thread.join()
        return self.error


# ---------------------------------------------------------------------------------------------
# The sweep.


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


def make_trainable(spec: config_lib.Spec, dense: DenseRefs, res: Resources):
    """The spec's trainable (one-shot or IMP) with the dense refs bound and the per-trial resources."""
    function = train_imp if spec.pruning.mode == "imp" else train_ticket
    trainable = tune.with_parameters(function, spec=spec.to_dict(), dense=dense)
    return tune.with_resources(trainable, {"cpu": res.cpus, "gpu": res.gpus})


def chain_of(config: dict) -> tuple[float, int]:
    """The IMP ticket chain a trial belongs to (its own, for a chain)."""
    return float(config["rewind_epoch"]), int(config["replicate"])


class ImpQueue(Searcher):
    """IMP's trials in `trial_points` order, each suggested once it can train: every ticket chain at
    once, a control at level k once its chain has reported level k (its level file is written by
    then), or has failed for good (the control then fails with the chain's error). So no control
    holds a slot waiting, and controls train beside the chains instead of after them."""

    def __init__(self, points: list[dict]):
        super().__init__()
        self.points = points
        self.suggested: set[int] = set()
        self.chains: dict[str, tuple[float, int]] = {}  # trial id -> chain, for the chains suggested
        self.reached: dict[tuple[float, int], int] = {}  # chain -> the last level it reported
        self.failed: set[tuple[float, int]] = set()

    def _ready(self, point: dict) -> bool:
        chain = chain_of(point)
        return "level" not in point or point["level"] <= self.reached.get(chain, 0) or chain in self.failed

    def suggest(self, trial_id: str):
        if len(self.suggested) == len(self.points):
            return Searcher.FINISHED
        for i, point in enumerate(self.points):
            if i not in self.suggested and self._ready(point):
                self.suggested.add(i)
                if "level" not in point:
                    self.chains[trial_id] = chain_of(point)
                return dict(point)
        return None  # nothing can train yet: Tune asks again

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.chains and result.get("level"):
            chain = self.chains[trial_id]
            self.reached[chain] = max(self.reached.get(chain, 0), int(result["level"]))
            self.failed.discard(chain)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.chains and error:
            self.failed.add(self.chains[trial_id])

    def get_state(self) -> dict:
        return {"suggested": self.suggested, "chains": self.chains, "reached": self.reached, "failed": self.failed}

    def set_state(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))


class ChainErrors(tune.Callback):
    """When an IMP ticket chain fails for good, its one-line error goes beside it on the storage
    path, where its control trials look for their masks: they fail with it instead of waiting."""

    def on_trial_error(self, iteration, trials, trial, **info):
        if "level" not in trial.config:
            coordinates = dict(zip(("rewind_epoch", "replicate"), chain_of(trial.config)))
            artifacts.write_chain_error(Path(trial.path), coordinates, trial_error(trial))


def trial_error(trial) -> str:
    """A failed trial's error in one line: the last line of the traceback Tune wrote."""
    try:
        lines = [line.strip() for line in Path(trial.error_file).read_text().splitlines() if line.strip()]
    except (OSError, TypeError):
        lines = []
    return lines[-1][:300] if lines else "see its error.txt"


class TrialTable(tune.Callback):
    """One row per trial as it ends: its grid point, test accuracy and time. Tune's own tables
    (and every worker's output) stay in the log files unless --verbose."""

    def __init__(self, columns: dict[str, list]):
        self.keys, self.header = list(columns), False
        self.widths = [max([len(k), 8, *(len(_cell(v)) for v in values)]) for k, values in columns.items()]

    def _row(self, trial, outcome: str) -> None:
        if not self.header:
            self.header = True
            print("  " + "  ".join(k.ljust(w) for k, w in zip(self.keys, self.widths))
                  + "  test acc  epochs  seconds", flush=True)
        values = [trial.config.get(k, "-") for k in self.keys]
        cells = [_cell(v).ljust(w) for v, w in zip(values, self.widths)]
        print(f"  {'  '.join(cells)}  {outcome}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        accuracy = r.get("test_accuracy")
        outcome = (f"{accuracy * 100:7.2f}%  {r.get('epoch', ''):>6}  {r.get('time_total_s', 0):7.0f}"
                   if accuracy is not None else "no result")
        if r.get("instability") is not None:  # instability.enabled: the barrier between the trial and its twin
            outcome += f"  instability {r['instability'] * 100:.2f}% (twin {r['twin_test_accuracy'] * 100:.2f}%)"
        if r.get("collapsed_layers"):
            outcome += f"  (cut network: {r['collapsed_layers']})"
        self._row(trial, outcome)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial, f"error: {trial_error(trial)} (traceback: {Path(trial.path) / artifacts.ERROR_FILE})")


def _cell(value) -> str:
    return value if isinstance(value, str) else config_lib.show(value)


def table_columns(spec: config_lib.Spec) -> dict[str, list]:
    """The trial table's columns and the values they show: the grid's axes, and for IMP the control
    trials' level."""
    levels = {"level": list(range(1, spec.pruning.num_levels() + 1))} if spec.pruning.mode == "imp" else {}
    return {**grid(spec), **levels}


def run_tuner(spec: config_lib.Spec, exp: Path, dense: DenseRefs, res: Resources, resume: bool, verbose: bool):
    """Run (or, with `resume`, continue) the grid in `exp` until it ends; returns Tune's ResultGrid."""
    trainable = make_trainable(spec, dense, res)
    imp = spec.pruning.mode == "imp"
    # Tune's tables and per-trial boxes are hundreds of lines for a small grid: the table above
    # shows what a user needs; --verbose brings Tune's own back.
    callbacks = ([ChainErrors()] if imp else []) + ([] if verbose else [TrialTable(table_columns(spec))])
    if not verbose:  # Tune's newer console output prints its header boxes even at verbose=0
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Trials checkpoint every epoch by design (resume loses at most one); Tune warns each time that
    # happens within 5 s, which short epochs do all the time. Users can still set it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if resume and tune.Tuner.can_restore(str(exp)):
        # The RunConfig (trial table, verbosity) and IMP's queue come back from the experiment's saved
        # state; failed chains train again, so their controls wait for them instead of failing.
        artifacts.clear_chain_errors(exp)
        tuner = tune.Tuner.restore(str(exp), trainable=trainable, resume_errored=True)
    else:
        points = trial_points(spec)
        # One-shot grids are Tune's grid search; IMP's controls follow their chains (ImpQueue).
        search = {"search_alg": ImpQueue(points), "num_samples": len(points)} if imp else {}
        tuner = tune.Tuner(
            trainable,
            param_space={} if imp else {key: tune.grid_search(values) for key, values in grid(spec).items()},
            # Reusing workers spares each trial a process start and the TensorFlow import.
            tune_config=tune.TuneConfig(metric="test_accuracy", mode="max", reuse_actors=True,
                                        max_concurrent_trials=spec.resources.max_concurrent_trials, **search),
            run_config=tune.RunConfig(
                name=exp.name, storage_path=str(exp.parent),
                failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=callbacks, verbose=None if verbose else 0))
    return tuner.fit()


def write_report(exp: Path) -> None:
    from tickets import report

    try:
        written = report.write(exp)
        print(f"report: {written[-1]} (summary.csv and plots beside it)")
    except Exception as e:  # the results are safe on disk; a report problem must not fail the sweep
        print(f"note: no report written ({type(e).__name__}: {e}); "
              f"run `python -m tickets.report {exp}` to retry")


def start_ray(args: argparse.Namespace) -> tuple[bool, str, str]:
    """Connect or start Ray; returns (whether we started it, a line describing the cluster, where
    the workers' output goes). Workers' output reaches this terminal only with --verbose."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # workers inherit it: no TensorFlow banner per trial
    quiet = {"log_to_driver": args.verbose, "logging_level": logging.INFO if args.verbose else logging.WARNING}
    if ray.is_initialized():
        return False, "the Ray instance this process already runs", "that Ray's session logs"
    if args.address:
        ctx = ray.init(address=args.address, **quiet)
        return False, f"cluster at {args.address}", _logs(ctx)
    # Ray >= 2.59 (pyproject.toml requires it) turns token authentication on for local instances; the
    # token is created here, readable by this user only, before Ray starts (Ray would write it
    # world-readable first). The dashboard listens on loopback only (reach it from elsewhere through
    # an SSH tunnel). The embedded Ray is one node: it advertises a loopback address, so its traffic
    # stays on this machine (Ray replaces exactly 127.0.0.1 with the interface address, other
    # loopbacks it keeps).
    private_token(Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"))
    ctx = ray.init(num_cpus=args.num_cpus, num_gpus=args.num_gpus, include_dashboard=True,
                   dashboard_host="127.0.0.1", _node_ip_address=os.environ.get("TICKETS_NODE_IP", "127.0.0.2"),
                   **quiet)
    url = getattr(ctx, "dashboard_url", None)
    return True, f"local Ray (dashboard http://{url})" if url else "local Ray", _logs(ctx)


def _logs(ctx) -> str:
    session = getattr(ctx, "address_info", {}).get("session_dir")
    return f"{session}/logs on each node" if session else "Ray's session logs on each node"


def private_token(path: Path) -> None:
    """Ray's auth token at `path`, created with mode 600 if missing (as cluster/ray-cluster.sbatch does)."""
    if path.is_file() and path.stat().st_size:
        path.chmod(0o600)
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")


BAD_INPUT = (SpecError, UsageError, DataError, artifacts.ArtifactError)


def check_rewind_steps(spec: config_lib.Spec, steps_per_epoch: int) -> None:
    """A fractional rewind point that rounds to the last dense step leaves a trial nothing to train;
    only the data's steps per epoch tell (the spec alone allows any rewind_epoch < dense.epochs)."""
    total = spec.dense.epochs * steps_per_epoch
    for v in spec.search.rewind_epoch:
        step = config_lib.step_of(v, steps_per_epoch)
        if step >= total:
            raise SpecError("search.rewind_epoch", f"{config_lib.show(v)} is step {step} of {total} "
                            f"({steps_per_epoch} per epoch): nothing would be left to train")


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
    try:
        check_experiment(args, spec, exp)
    except UsageError as e:
        if not args.dry_run:
            raise
        print(f"note: a real run would stop here: {e}")  # a dry run writes nothing: go on checking
    sources = check_transfer(spec, exp.parent)
    info = data_lib.inspect(spec.data, spec.seed, download=not args.dry_run)
    spe = info.steps_per_epoch(spec.data.batch_size)
    check_rewind_steps(spec, spe)
    # A dry run also checks the grid's masks against a finished dense run of this spec, if there is one.
    on_disk = (reusable_dense(spec, exp, spec.record_steps(spe), data_lib.order(info.train, spec.data))
               if args.resume or args.dry_run else None)
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


def main(argv: list[str] | None = None) -> int:
    """`python -m tickets.sweep`: check the input, then run the sweep (or only print it, `--dry-run`).
    Returns the exit code: 0 all trials finished, 1 some errored, 2 bad input, 130 interrupted."""
    args = parse_args(argv)
    try:
        plan = check_inputs(args)
    except BAD_INPUT as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return dry_run(plan) if args.dry_run else run(plan)


def dry_run(plan: Plan) -> int:
    """Print what `run` would do, and check the grid's masks against a finished dense run if there is one."""
    print_plan(plan.spec, plan.exp, plan.res, plan.cluster)
    dense_dir = plan.exp / artifacts.DENSE_DIR
    if plan.on_disk is None:
        print(f"masks: checked once the dense run has trained (none of this spec in {dense_dir})")
    else:
        check_collapse(plan.spec, dense_dir, plan.on_disk[plan.spec.dense.epochs * plan.steps_per_epoch])
    return 0


def run(plan: Plan) -> int:
    """Start (or join) Ray, train the dense network once, run the grid, write the results."""
    spec, exp = plan.spec, plan.exp
    # SLURM (scancel, time limits) and other schedulers stop jobs with SIGTERM: treat it as Ctrl-C,
    # so Tune stops the trials and saves the experiment state for --resume.
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    started, cluster, logs = start_ray(plan.args)
    beside = None
    try:
        res = plan.res
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if res is None:
            try:
                res = resolve_resources(spec, nodes)
            except SpecError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            cluster = f"{cluster}, {len(nodes)} node(s)"
        print_plan(spec, exp, res, cluster)
        if res.note:
            print(f"note: {res.note}")
        exp.mkdir(parents=True, exist_ok=True)
        if not (exp / artifacts.SPEC_FILE).exists():
            (exp / artifacts.SPEC_FILE).write_text(spec.to_yaml())
        data_ref = _load_data.remote(spec.to_dict())
        if plan.on_disk is None and overlaps(res, nodes):
            beside = DenseBeside(spec, exp, res, plan.steps_per_epoch, data_ref)
            dense = beside.refs
        else:
            dense = dense_refs(spec, exp, res, plan.steps_per_epoch, plan.on_disk, data_ref)
        if plan.sources:
            refs = {t: ray.put(ticket) for t, ticket in plan.source_tickets.items()}  # one object per source trial
            dense = dataclasses.replace(dense, transfers={k: refs[t] for k, t in plan.sources.items()})
        if not plan.args.verbose:
            print(f"trials: {len(trial_points(spec))}; worker logs in {logs} (--verbose shows them here)")
        if beside:
            print("trials: the first ones start on the nodes the dense run leaves free, and train once it ends")
        trials = run_tuner(spec, exp, dense, res, plan.args.resume, plan.args.verbose)
        failed = beside.join() if beside else None
        if failed is not None:
            print(f"error: the dense run failed: {last_line(failed)}", file=sys.stderr)
        code = finish(plan, trials)
        return 1 if failed is not None and code == 0 else code
    finally:
        if beside is not None:  # also on a second Ctrl-C or an error: its thread calls Ray
            beside.join()
        if started:
            ray.shutdown()


def finish(plan: Plan, trials) -> int:
    """Results, warnings, report and the exit code, once the grid has stopped (finished or not)."""
    exp = plan.exp
    results = analysis.write_results(exp)
    # Not `trials.num_terminated`: Tune marks trials it stopped on Ctrl-C as terminated too, and
    # never creates the pending ones. A trial has finished when it has written its ticket.
    errors = trials.num_errors
    finished = sum(r.error is None and (Path(r.path) / artifacts.TICKET_FILE).exists() for r in trials)
    total = len(trial_points(plan.spec))
    unfinished = total - finished - errors
    print(f"\n{finished}/{total} trials finished; results: {results}")
    collapsed = analysis.collapsed_trials(analysis.load(results))
    if len(collapsed):
        print(f"warning: {len(collapsed)} trial(s) trained a mask that cuts the network; their accuracy is that "
              f"of a cut network, not of a ticket (collapsed_layers in the results):")
        for row in collapsed.itertuples(index=False):
            print("  " + ", ".join(f"{k} {getattr(row, k)}" for k in collapsed.columns))
    write_report(exp)
    print(f"curves: tensorboard --logdir {exp}")
    resume = f"python -m tickets.sweep --resume --name {exp.name} --storage-path {exp.parent}"
    if unfinished:  # stopped by Ctrl-C, SIGTERM or a scheduler: nothing finished is lost
        print(f"interrupted: {unfinished} trial(s) did not finish; continue with: {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if errors:
        print(f"{errors} trial(s) errored; their logs are in their trial dirs under {exp}. "
              f"Retry them with: {resume}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
