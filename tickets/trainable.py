"""The Tune trainable: one grid point (sparsity, rewind epoch, control, replicate) per trial.

fetch the two dense snapshots it needs → mask → rewind → masked training, reporting every epoch
with a checkpoint, so a restarted trial continues from its last finished epoch.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
from ray import tune

from tickets import artifacts
from tickets import config as config_lib
from tickets import masks as masks_lib

# Keys of the grid; also the column names of the coordinates in results.
GRID_KEYS = ("sparsity", "rewind_epoch", "control", "replicate")


@dataclass(frozen=True)
class DenseRefs:
    """The dense run as the trials see it: one object ref per snapshot, plus the data set."""

    dense_hash: str
    steps_per_epoch: int
    total_steps: int
    snapshots: dict  # step -> ObjectRef of dict[str, np.ndarray]
    data: ray.ObjectRef  # tickets.data.Dataset, loaded once per sweep


def _assigned_cpus() -> int:
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    return max(1, int(math.ceil(cpus)))


def train_ticket(config: dict, spec: dict, dense: DenseRefs) -> None:
    # Imports that start TensorFlow come after the thread counts are known.
    from tickets import models, training

    training.configure(_assigned_cpus())
    spec_obj = config_lib.from_dict(spec)
    sparsity, rewind_epoch = float(config["sparsity"]), float(config["rewind_epoch"])
    control, replicate = str(config["control"]), int(config["replicate"])
    rewind_step = training.step_of(rewind_epoch, dense.steps_per_epoch)

    data = ray.get(dense.data)
    final, rewind = ray.get([dense.snapshots[dense.total_steps], dense.snapshots[rewind_step]])
    model = models.build(spec_obj.model, data.input_shape, data.num_classes, seed=spec_obj.seed)
    ticket = training.make_ticket(spec_obj, model, final, rewind, sparsity, control, replicate)
    summary = masks_lib.report(ticket.mask, ticket.threshold)

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved = artifacts.load_state(Path(d))
        if any(not np.array_equal(saved["mask"][k], ticket.mask[k]) for k in ticket.mask):
            raise RuntimeError("the checkpoint's mask differs from the one recomputed from the dense run")
        resume = training.SparseState(saved["step"], saved["weights"], saved["optimizer"],
                                      saved["best_test_loss"], saved["best_epoch"])

    base = {
        "sparsity": sparsity, "rewind_epoch": rewind_epoch, "control": control, "replicate": replicate,
        "rewind_step": rewind_step, "actual_sparsity": summary["sparsity"],
        "weights_remaining": summary["weights_remaining"], "weights_remaining_count": summary["remaining"],
        "prunable_weights": summary["total"],
        "threshold": summary["threshold"] if summary["threshold"] is not None else float("nan"),
        "dense_hash": dense.dense_hash, "node_id": ray.get_runtime_context().get_node_id(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "resumed_from_step": resume.step if resume else -1,
    }
    seed = training.derive_seed(spec_obj.seed, replicate, 1)
    state = None
    for progress, state in training.train_sparse(spec_obj, data, model, ticket, rewind_step, seed, resume):
        metrics = {**base, "epoch": progress.epoch, "step": progress.step,
                   "test_accuracy": progress.test_accuracy, "test_loss": progress.test_loss,
                   "train_accuracy": progress.train_accuracy, "train_loss": progress.train_loss,
                   "early_stop_epoch": state.best_epoch, "best_test_loss": state.best_test_loss,
                   "epoch_seconds": progress.seconds}
        with tempfile.TemporaryDirectory() as d:
            artifacts.save_state(Path(d), state.step, state.weights, state.optimizer, ticket.mask,
                                 state.best_test_loss, state.best_epoch)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
    state = state or resume  # restarted after its last epoch's checkpoint: nothing left to train
    if state is not None:
        artifacts.save_ticket(Path(tune.get_context().get_trial_dir()) / artifacts.TICKET_FILE,
                              ticket.mask, ticket.start, state.weights,
                              {**{k: base[k] for k in GRID_KEYS}, "rewind_step": rewind_step,
                               "spec_hash": spec_obj.spec_hash(), "dense_hash": dense.dense_hash})
