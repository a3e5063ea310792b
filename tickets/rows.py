"""The results' row layout, defined once: its columns and their types, and how rows of an older
format become this one.

A trial reports one row per epoch (an IMP chain one per level): the metrics of that epoch
(`epoch_metrics`) beside what the trial's mask and process are (the trial's base metrics), and,
with `instability.enabled`, the instability columns in its final row. The dense run's epochs become
reference rows (`dense_rows`, control "dense"). `frame` turns both into the results frame, whose
columns are `COLUMNS`. Every row, and the dense manifest, carries `artifacts.FORMAT`; rows and
frames of an older format are brought to this layout by `upgrade` and `upgrade_frame`, from
`FORMAT_1`, the one statement of that history.
"""

from __future__ import annotations

import math
import os
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd

from tickets import artifacts
from tickets.config import CONTROLS, GRID_KEYS
from tickets.early_stop import EarlyStop

# What every epoch of a run, dense or sparse, measures: the curves TensorBoard draws for both.
CURVES = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_accuracy", "train_loss")
# The numeric columns of a trial row (as the trainable reports them) and of the dense rows.
NUMERIC = (*CURVES, "actual_sparsity", "weights_remaining", "weights_remaining_count", "weights_remaining_total",
           "threshold", "early_stop_epoch", "early_stop_accuracy", "early_stop_val_accuracy", "best_val_loss",
           "narrowest_live_channels", "channels_removed", "flops_left",
           "epoch_seconds", "step", "instability", "val_instability", "interpolated_instability",
           "interpolated_val_instability", "twin_test_accuracy", "twin_val_accuracy", "levels")
# Text columns: where a mask cuts the network, the residual branches it empties, its narrowest layer,
# and how BatchNorm was treated along the instability path.
TEXT = ("collapsed_layers", "emptied_branches", "narrowest_layer", "instability_batchnorm")
COLUMNS = (*GRID_KEYS, "trial_id", "trial", "status", "epoch", "node_id", *NUMERIC, *TEXT,
           "classifier_reinitialised", "precision", "format")
# What a reported row carries for the record only (who wrote it, when, in which format): not a
# metric Tune sees, and dropped when the row is reported again (`as_reported`).
RECORD_ONLY = ("trial_id", "pid", "time", "format")
# What rows written before they carried a format (format 1) lack: they predate mixed precision, so
# every such run trained in float32.
FORMAT_1 = {"precision": "float32", "format": 1}


def early_stop_columns(stop: EarlyStop) -> dict:
    """The early-stop columns every report carries (NaN where nothing was chosen)."""
    return {"early_stop_epoch": math.nan if stop.epoch is None else stop.epoch,
            "early_stop_accuracy": stop.test_accuracy, "early_stop_val_accuracy": stop.val_accuracy,
            "best_val_loss": stop.val_loss if stop.epoch is not None else math.nan}


def epoch_metrics(progress, early_stop: EarlyStop) -> dict:
    """What a trial reports of one epoch (a `training.Progress`) and its early stop so far."""
    return {"epoch": progress.epoch, "step": progress.step, **{k: getattr(progress, k) for k in CURVES},
            **early_stop_columns(early_stop), "epoch_seconds": progress.seconds}


def recorded(metrics: dict, trial_id: str) -> dict:
    """A trial's row as its `metrics.jsonl` keeps it: the metrics, and who wrote them when, in which format."""
    return {**metrics, **dict(zip(RECORD_ONLY, (trial_id, os.getpid(), time.time(), artifacts.FORMAT), strict=True))}


def as_reported(row: dict) -> dict:
    """A recorded row less what `recorded` added: the metrics as they were reported."""
    return {k: v for k, v in row.items() if k not in RECORD_ONLY}


def upgrade(row: dict) -> dict:
    """A row as this format writes it."""
    if row.get("format", 1) < 2:
        row = {**row, "precision": row.get("precision") or FORMAT_1["precision"], "format": FORMAT_1["format"]}
    return row


def upgrade_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A results.parquet of an older format with this format's columns: those it lacks are empty
    (NaN, "", no level), or what `FORMAT_1` says they were."""
    if "format" in df and (df["format"] >= artifacts.FORMAT).all():
        return df
    for column in COLUMNS:
        if column in df:
            continue
        if column == "level":
            df[column] = pd.Series([pd.NA] * len(df), dtype="Int64")
        elif column in TEXT or column == "precision":
            df[column] = pd.Series([FORMAT_1.get(column, "")] * len(df), dtype="string")
        elif column == "format":
            df[column] = FORMAT_1["format"]
        else:
            df[column] = np.nan
    return df


def trial_row(raw: dict, trial: str, status: str) -> dict:
    """One results row from a trial's recorded row (`metrics.jsonl`)."""
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
    precision = manifest.get("runtime", {}).get("precision") or FORMAT_1["precision"]
    for m in manifest["metrics"]:
        stop = stop.after(SimpleNamespace(epoch=m["epoch"], val_loss=m.get("val_loss", math.nan),
                                          val_accuracy=m.get("val_accuracy", math.nan),
                                          test_accuracy=m["test_accuracy"]))
        rows.append({
            "sparsity": 0.0, "rewind_epoch": math.nan, "control": "dense", "replicate": 0, "trial_id": "dense",
            "trial": "dense", "status": "finished", "epoch": m["epoch"], "node_id": None,
            **{k: m.get(k, math.nan) for k in (*CURVES, "step")},
            "actual_sparsity": 0.0, "weights_remaining": 1.0, "weights_remaining_total": 1.0,
            "channels_removed": 0.0, "flops_left": 1.0, "epoch_seconds": m["seconds"], **early_stop_columns(stop),
            **{k: "" for k in TEXT}, "precision": precision, "format": manifest.get("format", FORMAT_1["format"])})
    return rows


def frame(rows: list[dict]) -> pd.DataFrame:
    """Results rows (`trial_row`, `dense_rows`) as the results frame: `COLUMNS`, each of its type."""
    df = pd.DataFrame(rows, columns=list(COLUMNS)).astype({"level": "Int64"})
    df = df.astype({"sparsity": "float64", "rewind_epoch": "float64", "replicate": "int64", "epoch": "int64",
                    "format": "int64", "trial_id": "string", "trial": "string", "status": "string",
                    "node_id": "string", "classifier_reinitialised": "bool", "precision": "string",
                    **{k: "string" for k in TEXT}})
    df["control"] = pd.Categorical(df["control"], categories=("dense", *CONTROLS))
    for k in NUMERIC:
        df[k] = pd.to_numeric(df[k], errors="coerce").astype("float64")
    return df
