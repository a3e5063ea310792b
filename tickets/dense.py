"""The dense run and its hand-off to the trials.

The data set is loaded by one Ray task and the dense network trained by another, on one whole node;
the driver follows its epochs, checks the grid's masks on its final weights, and puts each snapshot
into the object store once (`DenseRefs`). On a multi-node cluster the same run trains beside the
starting grid instead (`tickets.beside`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from tickets import artifacts, pruning, rows, worker
from tickets import config as config_lib
from tickets import data as data_lib
from tickets.session import Resources, training_env


@dataclass(frozen=True)
class DenseRefs:
    """The dense run as the trials see it: one object ref per snapshot, plus the data set."""

    dense_hash: str
    steps_per_epoch: int
    total_steps: int
    snapshots: dict  # step -> ObjectRef of dict[str, np.ndarray]; empty while `board` is set
    data: ray.ObjectRef  # tickets.data.Dataset, loaded once per sweep
    transfers: dict = field(default_factory=dict)  # grid.transfer_key(...) -> ObjectRef of a loaded source ticket
    board: object = None  # a beside.DenseBoard while the dense run still trains: trials warm up, then wait there

    @classmethod
    def of(cls, spec: config_lib.Spec, spe: int, snapshots: dict, data: ray.ObjectRef, board=None) -> DenseRefs:
        return cls(spec.dense_hash(), spe, spec.dense.total_steps(spe), snapshots, data, board=board)

    @property
    def final(self) -> ray.ObjectRef:
        """The ref of the dense run's final weights, which one-shot masks are pruned from."""
        return self.snapshots[self.total_steps]

    def published(self, answer: ray.ObjectRef) -> DenseRefs:
        """These refs with the snapshots in, from the board's `answer` (it raises if the run failed)."""
        return dataclasses.replace(self, snapshots=ray.get(answer), board=None)


# No CPU reserved: the trials' actors start (importing TensorFlow, building their model) while the
# data set is read, and wait for it in `ray.get`. Reserving one kept a trial that takes every CPU
# of the node from starting until the data was in the object store (docs/performance.md, "Start-up
# cuts and `--quick`").
@ray.remote(num_cpus=0)
def load_data(spec_dict: dict):
    spec = config_lib.from_dict(spec_dict)
    return data_lib.load(spec.data, spec.seed)


def _train_dense(spec_dict: dict, dataset, out_dir: str) -> list[dict]:
    spec = config_lib.from_dict(spec_dict)
    runtime = worker.start(spec.resources.precision, replicas=spec.resources.dense_replicas)
    from tickets import training  # the training stack: after `worker.start` has sized TensorFlow

    out = Path(out_dir)
    artifacts.log_dense_start(out, {"started": time.time(), "dense_hash": spec.dense_hash(),
                                    "node_id": ray.get_runtime_context().get_node_id(), **runtime.row()})
    # Each epoch's row goes to disk as it ends: the driver shows it and TensorBoard plots it.
    artifacts.clear_metrics(out)  # a retried task starts its rows afresh
    trajectory = training.train_dense(spec, dataset, on_epoch=lambda p: artifacts.append_metrics(out, vars(p)))
    trajectory.save(out, spec.dense_hash())
    return trajectory.metrics


def follow_dense(task: ray.ObjectRef, dense_dir: Path, total_epochs: int, check=lambda: None) -> None:
    """Wait for the dense task, printing each epoch and writing it as TensorBoard events as it ends;
    `check()` runs every second and may raise to stop waiting."""
    shown = 0
    with artifacts.DenseEvents(dense_dir, rows.CURVES) as events:
        while True:
            done, _ = ray.wait([task], timeout=1.0)
            epochs = artifacts.read_metrics(dense_dir)
            if len(epochs) < shown:  # the task was retried: its rows start again
                print("dense: restarted")
                shown = 0
            for row in epochs[shown:]:
                val = row.get("val_loss", math.nan)
                validation = (f" | val loss {val:.4f} acc {row['val_accuracy']:.4f}" if math.isfinite(val) else "")
                print(f"dense epoch {row['epoch']}/{total_epochs}: train loss {row['train_loss']:.4f} "
                      f"acc {row['train_accuracy']:.4f}{validation} | test loss {row['test_loss']:.4f} "
                      f"acc {row['test_accuracy']:.4f} ({row['seconds']:.1f}s)", flush=True)
                events.add(row)
            shown = len(epochs)
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
    pruning.check_collapse(spec, layout(exp), on_disk[spec.dense.total_steps(spe)])
    refs = {s: ray.put(w) for s, w in on_disk.items()}
    return DenseRefs.of(spec, spe, refs, data_ref)


def layout(exp: Path) -> pruning.Layout:
    """The model's layout the dense run stored in its manifest: masks are checked without Keras."""
    return pruning.Layout.of(artifacts.read_dense(exp / artifacts.DENSE_DIR)["layout"])
