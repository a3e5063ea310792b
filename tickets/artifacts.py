"""Files a sweep leaves on disk: weight snapshots, trial checkpoints and tickets.

Plain `.npz` and JSON, readable with numpy alone: no Ray, no TensorFlow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tickets import masks as masks_lib

TICKET_FILE = "ticket.npz"
METRICS_FILE = "metrics.jsonl"  # each trial's own rows, one JSON object per report
SPEC_FILE = "spec.yaml"  # the experiment's resolved spec
DENSE_DIR = "dense"  # the dense run: step_<n>.npz snapshots and manifest.json


def append_metrics(trial_dir: Path, row: dict) -> None:
    trial_dir.mkdir(parents=True, exist_ok=True)  # Tune creates it lazily: not yet, for a first report
    with open(trial_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(trial_dir: Path) -> list[dict]:
    rows = []
    path = trial_dir / METRICS_FILE
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line still being written, or cut short when its worker was killed
    return rows


class ArtifactError(ValueError):
    """A file the sweep wrote earlier is missing, truncated or corrupted; the message names it."""


def save_weights(path: Path, weights: dict[str, np.ndarray]) -> None:
    """Write to a temporary name and rename, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)  # a trial dir Tune has not created yet
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **weights)
    tmp.replace(path)


def load_weights(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # zipfile, pickle and OS errors all mean the same: unusable file
        raise ArtifactError(f"{path}: cannot be read as saved weights ({type(e).__name__}: {e})") from None


def save_ticket(path: Path, mask: dict, start: dict, final: dict, info: dict) -> None:
    """The mask, the weights the sparse run started from (masked) and its final weights."""
    arrays = {f"mask/{k}": np.asarray(v, dtype=bool) for k, v in mask.items()}
    arrays |= {f"start/{k}": v for k, v in start.items()}
    arrays |= {f"final/{k}": v for k, v in final.items()}
    arrays["info"] = np.array(json.dumps(info))
    path.parent.mkdir(parents=True, exist_ok=True)  # a trial dir Tune has not created yet
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def load_ticket(path) -> dict:
    """A saved ticket as {"mask": {...}, "start": {...}, "final": {...}, "info": {...}}."""
    out: dict = {"mask": {}, "start": {}, "final": {}}
    try:
        with np.load(path) as f:
            for key in f.files:
                if key == "info":
                    out["info"] = json.loads(str(f[key]))
                else:
                    part, name = key.split("/", 1)
                    out[part][name] = f[key].astype(bool) if part == "mask" else f[key]
    except Exception as e:
        raise ArtifactError(f"{path}: cannot be read as a ticket ({type(e).__name__}: {e})") from None
    return out


def save_state(directory: Path, step: int, weights: dict, optimizer: list, mask: dict,
               best_test_loss: float, best_epoch: int) -> None:
    """A trial checkpoint: weights, optimizer variables (in order), mask, position."""
    np.savez(directory / "weights.npz", **weights)
    np.savez(directory / "optimizer.npz", *optimizer)
    masks_lib.save(directory / "mask.npz", mask)
    (directory / "state.json").write_text(json.dumps(
        {"step": step, "best_test_loss": best_test_loss, "best_epoch": best_epoch}))


def load_state(directory: Path) -> dict:
    try:
        meta = json.loads((directory / "state.json").read_text())
        with np.load(directory / "optimizer.npz") as f:
            optimizer = [f[f"arr_{i}"] for i in range(len(f.files))]
        mask = masks_lib.load(directory / "mask.npz")
    except Exception as e:
        raise ArtifactError(f"{directory}: checkpoint cannot be read ({type(e).__name__}: {e})") from None
    return {**meta, "weights": load_weights(directory / "weights.npz"), "optimizer": optimizer, "mask": mask}


def read_dense(directory: Path) -> dict | None:
    """The manifest of a finished dense run in `directory`, or None when there is none.

    A manifest that names snapshots which are missing is an error, never a silent retrain.
    """
    path = directory / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        steps = [int(s) for s in manifest["snapshot_steps"]]
    except Exception as e:
        raise ArtifactError(f"{path}: cannot be read as a dense-run manifest ({type(e).__name__}: {e})") from None
    for step in steps:
        if not (directory / f"step_{step}.npz").is_file():
            raise ArtifactError(f"{directory / f'step_{step}.npz'}: missing, but {path} lists it")
    return manifest


def find_trial(experiment: Path, **coordinates) -> Path | None:
    """The finished trial dir of `experiment` whose params match `coordinates` (None: no such trial).

    `trial=` matches a trial id or dir name instead. Reads `params.json` files only: no Ray.
    """
    trial = coordinates.pop("trial", None)
    for params_file in sorted(experiment.glob("*/params.json")):
        directory = params_file.parent
        if not (directory / TICKET_FILE).exists():
            continue
        if trial is not None:
            if trial in directory.name:
                return directory
            continue
        params = json.loads(params_file.read_text())
        if all(_same(params.get(k), v) for k, v in coordinates.items()):
            return directory
    return None


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) < 1e-9
    return a == b
