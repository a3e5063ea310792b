"""Results as pandas: one row per trial per reported epoch, read straight from the experiment dir.

Works on finished, running and interrupted experiments, without Ray or TensorFlow: it reads the
`params.json` / `result.json` files Tune writes into each trial dir, and the dense run's manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tickets import artifacts

GRID = ("sparsity", "rewind_epoch", "control", "replicate")
CONTROLS = ("dense", "ticket", "random_reinit", "random_prune")
RESULTS_FILE = "results.parquet"
_METRICS = ("test_accuracy", "test_loss", "train_accuracy", "train_loss", "actual_sparsity",
            "weights_remaining", "weights_remaining_count", "threshold", "early_stop_epoch", "best_test_loss",
            "epoch_seconds", "step")


def _trial_dirs(experiment: Path) -> list[Path]:
    return sorted(p.parent for p in experiment.glob("*/params.json"))


def _status(trial: Path) -> str:
    if (trial / artifacts.TICKET_FILE).exists():
        return "finished"
    if (trial / "error.txt").exists() or (trial / "error.pkl").exists():
        return "error"
    return "incomplete"


def _read_results(path: Path) -> list[dict]:
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line still being written by a running trial
    return rows


def load(path) -> pd.DataFrame:
    """A tidy frame of an experiment dir (or of its `results.parquet` if only that is there)."""
    experiment = Path(path)
    if experiment.is_file():
        return pd.read_parquet(experiment)
    if not experiment.is_dir():
        raise FileNotFoundError(f"Received `path={str(path)!r}`: no such experiment dir")
    rows = []
    for trial in _trial_dirs(experiment):
        params = json.loads((trial / "params.json").read_text())
        status = _status(trial)
        for r in _read_results(trial / "result.json"):
            if "epoch" not in r:
                continue
            row = {k: params.get(k, r.get(k)) for k in GRID}
            row |= {"trial_id": r.get("trial_id", trial.name), "trial": trial.name, "status": status,
                    "epoch": r["epoch"], "node_id": r.get("node_id")}
            row |= {k: r.get(k, np.nan) for k in _METRICS}
            rows.append(row)
    rows += _dense_rows(experiment)
    if not rows and (experiment / RESULTS_FILE).exists():
        return pd.read_parquet(experiment / RESULTS_FILE)
    return _typed(pd.DataFrame(rows, columns=_columns()))


def _dense_rows(experiment: Path) -> list[dict]:
    manifest = artifacts.read_dense(experiment / "dense") if (experiment / "dense").is_dir() else None
    if not manifest:
        return []
    return [{"sparsity": 0.0, "rewind_epoch": np.nan, "control": "dense", "replicate": 0, "trial_id": "dense",
             "trial": "dense", "status": "finished", "epoch": m["epoch"], "node_id": None,
             "test_accuracy": m["test_accuracy"], "test_loss": m["test_loss"],
             "train_accuracy": m["train_accuracy"], "train_loss": m["train_loss"], "actual_sparsity": 0.0,
             "weights_remaining": 1.0, "step": m["step"], "epoch_seconds": m["seconds"]}
            for m in manifest["metrics"]]


def _columns() -> list[str]:
    return [*GRID, "trial_id", "trial", "status", "epoch", "node_id", *_METRICS]


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    # A restarted trial may report an epoch again: keep the last report of each.
    df = df.drop_duplicates(subset=["trial_id", "epoch"], keep="last")
    df = df.astype({"sparsity": "float64", "rewind_epoch": "float64", "replicate": "int64", "epoch": "int64",
                    "trial_id": "string", "trial": "string", "status": "string", "node_id": "string"})
    df["control"] = pd.Categorical(df["control"], categories=CONTROLS)
    for k in _METRICS:
        df[k] = pd.to_numeric(df[k], errors="coerce").astype("float64")
    order = df["control"].cat.codes
    return (df.assign(_order=order).sort_values(["_order", "sparsity", "rewind_epoch", "replicate", "epoch"])
              .drop(columns="_order").reset_index(drop=True))


def write_results(experiment: Path) -> Path:
    """(Re)write `<experiment>/results.parquet` from the trial dirs; atomic rename."""
    df = load(experiment)
    out = experiment / RESULTS_FILE
    tmp = experiment / (RESULTS_FILE + ".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(out)
    return out
