"""The dense run and its hand-off to the trials.

The data set is loaded by one Ray task and the dense network trained by another, on one whole node;
the driver follows its epochs, checks the grid's masks on its final weights, and puts each snapshot
into the object store once (`DenseRefs`). On a multi-node cluster it trains beside the starting grid
(`DenseBeside`): trials on the other nodes warm up and wait on a `DenseBoard` for the snapshots.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from tickets import artifacts, pruning
from tickets import config as config_lib
from tickets import data as data_lib
from tickets.session import HEAD_NODE, Resources, training_env


@dataclass(frozen=True)
class DenseRefs:
    """The dense run as the trials see it: one object ref per snapshot, plus the data set."""

    dense_hash: str
    steps_per_epoch: int
    total_steps: int
    snapshots: dict  # step -> ObjectRef of dict[str, np.ndarray]; empty while `board` is set
    data: ray.ObjectRef  # tickets.data.Dataset, loaded once per sweep
    transfers: dict = field(default_factory=dict)  # transfer_key(...) -> ObjectRef of a loaded source ticket
    board: object = None  # a DenseBoard while the dense run still trains: trials warm up, then wait there

    def published(self, answer: ray.ObjectRef) -> DenseRefs:
        """These refs with the snapshots in, from the board's `answer` (it raises if the run failed)."""
        return dataclasses.replace(self, snapshots=ray.get(answer), board=None)


@ray.remote(num_cpus=0)
class DenseBoard:
    """Where trials that started beside the dense run (on resources it does not use) wait for its
    snapshots, already warmed up; the driver publishes the refs, or why there will be none."""

    def __init__(self):
        self._published = asyncio.Event()
        self._refs, self._error = None, None

    async def publish(self, refs: dict) -> None:
        self._refs = refs
        self._published.set()

    async def fail(self, message: str) -> None:
        self._error = message
        self._published.set()

    async def wait(self) -> dict:
        await self._published.wait()
        if self._error is not None:
            raise RuntimeError(self._error)
        return self._refs


def transfer_key(sparsity: float, rewind_epoch: float, replicate: int) -> str:
    return f"{float(sparsity):g}|{float(rewind_epoch):g}|{int(replicate)}"



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
    lay = pruning.Layout.of(artifacts.read_dense(dense_dir)["layout"])
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


# No CPU reserved: the trials' actors start (importing TensorFlow, building their model) while the
# data set is read, and wait for it in `ray.get`. Reserving one kept a trial that takes every CPU
# of the node from starting until the data was in the object store (a sweep of 4 two-CPU trials on
# 2 CPUs, dense run reused: 88 -> 75 s).
@ray.remote(num_cpus=0)
def load_data(spec_dict: dict):
    spec = config_lib.from_dict(spec_dict)
    return data_lib.load(spec.data, spec.seed)


def _train_dense(spec_dict: dict, dataset, out_dir: str) -> list[dict]:
    from tickets import training
    from tickets import runtime as runtime_lib

    spec = config_lib.from_dict(spec_dict)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    runtime = runtime_lib.configure(max(1, int(cpus)), replicas=spec.resources.dense_replicas,
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
               data_ref: ray.ObjectRef) -> DenseRefs:
    """The data set and one object ref per needed snapshot, each in the object store once: the
    dense run's snapshots from `on_disk` (a finished run reused), else trained now, first."""
    announce(spec, exp, spe, on_disk)
    if on_disk is None:
        on_disk = trained(spec, exp, spe, dense_task(spec, exp, res, data_ref))
    return put_snapshots(spec, exp, spe, on_disk, data_ref)


def announce(spec: config_lib.Spec, exp: Path, spe: int, on_disk: dict | None) -> None:
    """The sweep's dense line, printed by the driver's main thread before the run starts."""
    dense_dir = exp / artifacts.DENSE_DIR
    if on_disk is not None:
        print(f"dense: reusing the dense run in {dense_dir}")
    else:
        print(f"dense: training {spec.dense.epochs} epochs once (snapshots at steps {spec.record_steps(spe)})")


def trained(spec: config_lib.Spec, exp: Path, spe: int, task: ray.ObjectRef, check=lambda: None) -> dict:
    """The snapshots of the dense run `task` trains, once it has ended (`check` is called while waiting)."""
    dense_dir = exp / artifacts.DENSE_DIR
    follow_dense(task, dense_dir, spec.dense.epochs, check)
    return artifacts.load_snapshots(dense_dir, spec.record_steps(spe))


def put_snapshots(spec: config_lib.Spec, exp: Path, spe: int, on_disk: dict, data_ref: ray.ObjectRef) -> DenseRefs:
    """The grid's masks checked, then each snapshot put in the object store by the driver itself (so
    they live on its node: losing a worker node never loses them or retrains the dense net)."""
    check_collapse(spec, exp / artifacts.DENSE_DIR, on_disk[spec.dense.epochs * spe])
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
        announce(spec, exp, spe, None)
        self.task = dense_task(spec, exp, res, data_ref, self.placement)
        self.refs = DenseRefs(spec.dense_hash(), spe, spec.dense.epochs * spe, {}, data_ref, board=self.board)
        self.error: BaseException | None = None
        self.stopping = False
        self._unplaced_since: float | None = None
        self.thread = threading.Thread(target=self._run, args=(spec, exp, spe, data_ref), daemon=True)
        self.thread.start()

    def _run(self, spec, exp, spe, data_ref) -> None:
        try:
            done = put_snapshots(spec, exp, spe, trained(spec, exp, spe, self.task, self._check), data_ref)
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
