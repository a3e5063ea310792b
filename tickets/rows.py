"""The results' row layout, defined once.

A trial reports one row per epoch (an IMP chain one per level): the metrics of that epoch
(`epoch_metrics`) beside what the trial's mask and process are (the trainable's base metrics), and,
with `instability.enabled`, the instability columns in its final row. The dense run's epochs become
reference rows (`dense_rows`, control "dense"). `analysis.load` turns both into the results frame,
whose columns are `COLUMNS`. Every row, and the dense manifest, carries `artifacts.FORMAT`; rows of an
older format are brought to this layout by `upgrade`, the one place that knows the history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

from tickets.config import GRID_KEYS

# The numeric columns of a trial row (as the trainable reports them) and of the dense rows.
NUMERIC = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_accuracy", "train_loss",
           "actual_sparsity", "weights_remaining", "weights_remaining_count", "weights_remaining_total",
           "threshold", "early_stop_epoch", "early_stop_accuracy", "best_val_loss", "narrowest_live_channels",
           "epoch_seconds", "step", "instability", "val_instability", "twin_test_accuracy", "twin_val_accuracy")
# Text columns: where a mask cuts the network, the residual branches it empties, its narrowest layer,
# and how BatchNorm was treated along the instability path.
TEXT = ("collapsed_layers", "emptied_branches", "narrowest_layer", "instability_batchnorm")
COLUMNS = (*GRID_KEYS, "trial_id", "trial", "status", "epoch", "node_id", *NUMERIC, *TEXT,
           "classifier_reinitialised", "precision", "format")


@dataclass(frozen=True)
class EarlyStop:
    """The epoch of least validation loss so far and the test accuracy at that epoch: chosen on the
    validation split, never on the test set. Without a validation split nothing is chosen (epoch None)."""

    epoch: int | None = None
    val_loss: float = math.inf
    test_accuracy: float = math.nan

    def after(self, p) -> EarlyStop:
        """After epoch `p` (a `training.Progress`, or anything with its epoch, val_loss and test_accuracy)."""
        return EarlyStop(p.epoch, p.val_loss, p.test_accuracy) if p.val_loss < self.val_loss else self

    def row(self) -> dict:
        """The columns every report carries (NaN where nothing was chosen)."""
        return {"early_stop_epoch": math.nan if self.epoch is None else self.epoch,
                "early_stop_accuracy": self.test_accuracy,
                "best_val_loss": self.val_loss if self.epoch is not None else math.nan}


def epoch_metrics(progress, early_stop) -> dict:
    """What a trial reports of one epoch (a `training.Progress`) and its early stop so far."""
    return {"epoch": progress.epoch, "step": progress.step, "test_accuracy": progress.test_accuracy,
            "test_loss": progress.test_loss, "val_accuracy": progress.val_accuracy, "val_loss": progress.val_loss,
            "train_accuracy": progress.train_accuracy, "train_loss": progress.train_loss,
            **early_stop.row(), "epoch_seconds": progress.seconds}


def upgrade(row: dict) -> dict:
    """A row as this format writes it. Format 1 (rows written before rows carried a format) predates
    mixed precision: every such run trained in float32."""
    if row.get("format", 1) < 2:
        row = {**row, "precision": row.get("precision") or "float32", "format": 1}
    return row


def trial_row(raw: dict, trial: str, status: str) -> dict:
    """One results row from a trial's reported row (`metrics.jsonl`)."""
    r = upgrade(raw)
    row = {k: r.get(k) for k in GRID_KEYS}
    row |= {"trial_id": r.get("trial_id", trial), "trial": trial, "status": status, "epoch": r["epoch"],
            "node_id": r.get("node_id")}
    row |= {k: r.get(k, math.nan) for k in NUMERIC}
    row |= {k: r.get(k) or "" for k in TEXT}
    row |= {"classifier_reinitialised": bool(r.get("classifier_reinitialised", False)),
            "precision": r["precision"], "format": r["format"]}
    return row


def dense_rows(manifest: dict) -> list[dict]:
    """The dense run's epochs as reference rows (control "dense", sparsity 0), with the early stop
    the trials' rows carry: the epoch of least validation loss so far (none without a validation split)."""
    rows, stop = [], EarlyStop()
    precision = manifest.get("runtime", {}).get("precision") or "float32"
    for m in manifest["metrics"]:
        stop = stop.after(SimpleNamespace(epoch=m["epoch"], val_loss=m.get("val_loss", math.nan),
                                          test_accuracy=m["test_accuracy"]))
        rows.append({
            "sparsity": 0.0, "rewind_epoch": math.nan, "control": "dense", "replicate": 0, "trial_id": "dense",
            "trial": "dense", "status": "finished", "epoch": m["epoch"], "node_id": None,
            **{k: m.get(k, math.nan) for k in ("test_accuracy", "test_loss", "val_accuracy", "val_loss",
                                                "train_accuracy", "train_loss", "step")},
            "actual_sparsity": 0.0, "weights_remaining": 1.0, "weights_remaining_total": 1.0,
            "epoch_seconds": m["seconds"], **stop.row(),
            **{k: "" for k in TEXT}, "precision": precision, "format": manifest.get("format", 1)})
    return rows
