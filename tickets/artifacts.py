"""Files a sweep leaves on disk: the one owner of every name and format in an experiment dir.

    <experiment>/spec.yaml                 the resolved spec
    <experiment>/results.parquet           every trial's reports plus the dense rows (analysis)
    <experiment>/dense/step_<n>.npz        dense snapshots; manifest.json, written last, lists them
    <experiment>/dense/runs.jsonl          one line per dense training started
    <experiment>/dense/metrics.jsonl       the dense run's per-epoch rows, as it trains
    <experiment>/<trial>/metrics.jsonl     each trial's reports; ticket.npz marks it finished
    <experiment>/<trial>/level_<k>.npz     an IMP trial's ticket at level k (a chain's, or a control's)
    <experiment>/<trial>/instability.csv   the instability path (alpha, loss and accuracy); IMP: instability_level_<k>.csv
    <experiment>/<trial>/twin.npz          the instability twin's training state, while it trains; IMP: twin_level_<k>.npz

Plain `.npz`, JSON and Parquet, readable with numpy and pandas alone: no Ray, no TensorFlow.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from tickets import masks as masks_lib

# The format of what a sweep writes: every trial row and the dense manifest carry it (`rows.upgrade`
# reads older rows). 1: before it was recorded; 2: since rows carry it (2026-12); 3: since training
# segments stop at their last batch (2026-12-01; before, the learning-rate schedule ran a step ahead
# per segment and train accuracy counted a batch too many), so a format-2 dense run is trained again.
FORMAT = 3
TICKET_FILE = "ticket.npz"
METRICS_FILE = "metrics.jsonl"  # each trial's own rows, one JSON object per report
SPEC_FILE = "spec.yaml"  # the experiment's resolved spec
DENSE_DIR = "dense"  # the dense run: step_<n>.npz snapshots and manifest.json
MANIFEST_FILE = "manifest.json"
DENSE_RUNS_LOG = "runs.jsonl"  # one line per dense training started: how often it really ran
RESULTS_FILE = "results.parquet"
ERROR_FILE = "error.txt"  # Tune writes a failed trial's traceback there
PARAMS_FILE = "params.json"  # Tune writes a trial's config there


def snapshot_file(dense_dir: Path, step: int) -> Path:
    return dense_dir / f"step_{step}.npz"


def level_file(trial_dir: Path, level: int) -> Path:
    return trial_dir / f"level_{level}.npz"


def curve_file(trial_dir: Path, level: int | None = None) -> Path:
    """The instability path of a trial (or of an IMP chain's level)."""
    return trial_dir / ("instability.csv" if level is None else f"instability_level_{level}.csv")


def twin_file(trial_dir: Path, level: int | None = None) -> Path:
    return trial_dir / ("twin.npz" if level is None else f"twin_level_{level}.npz")


@contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to, renamed onto `path` when the block succeeds:
    a crash never leaves a half-written file under the real name. The suffix is kept, so
    `np.savez` and `to_parquet` write exactly there."""
    # A trial dir Tune has not created yet, but never the experiment dir: a removed or unmounted one
    # must fail the write (a storage fault), not be quietly made again elsewhere.
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def append_metrics(trial_dir: Path, row: dict) -> None:
    trial_dir.mkdir(exist_ok=True)  # Tune creates it lazily: not yet, for a first report (as `atomic`)
    with open(trial_dir / METRICS_FILE, "a+b") as f:
        # A line cut short (a full disk, a killed worker) stays a line of its own: the next row
        # starts on a new line instead of joining it and being lost with it.
        cut = f.seek(0, os.SEEK_END) > 0 and f.seek(-1, os.SEEK_END) >= 0 and f.read(1) != b"\n"
        f.write((("\n" if cut else "") + json.dumps(row) + "\n").encode())


def clear_metrics(trial_dir: Path) -> None:
    (trial_dir / METRICS_FILE).unlink(missing_ok=True)


def read_metrics(trial_dir: Path) -> list[dict]:
    rows = []
    path = trial_dir / METRICS_FILE
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line still being written, or cut short (a killed worker, a full disk)
    return rows


class DenseEvents:
    """The dense run's epochs as TensorBoard events in `<experiment>/dense`: its metrics `tags`
    (`rows.CURVES`) under the names Tune gives the trials' metrics, so `tensorboard --logdir
    <experiment>` draws dense and sparse runs on the same charts. A new training of the dense run
    replaces the events of an earlier one."""

    def __init__(self, dense_dir: Path, tags: tuple[str, ...]):
        self.dense_dir, self.tags = dense_dir, tags

    def __enter__(self) -> "DenseEvents":
        from tensorboardX import SummaryWriter  # Ray Tune's own TensorBoard writer

        # purge_step: TensorBoard drops what an interrupted earlier run wrote from epoch 1 on.
        self.writer = SummaryWriter(str(self.dense_dir), purge_step=1, flush_secs=5)
        return self

    def add(self, row: dict) -> None:
        for tag in self.tags:
            if tag in row and np.isfinite(row[tag]):  # val_*: only with a validation split
                self.writer.add_scalar(f"ray/tune/{tag}", row[tag], global_step=row["epoch"])
        self.writer.flush()

    def __exit__(self, *exc) -> None:
        self.writer.close()


class ArtifactError(ValueError):
    """A file the sweep wrote earlier is missing, truncated or corrupted; the message names it."""


def save_weights(path: Path, weights: dict[str, np.ndarray]) -> None:
    with atomic(path) as tmp:
        np.savez(tmp, **weights)


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
    with atomic(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def load_ticket(path, parts=("mask", "start", "final")) -> dict:
    """A saved ticket as {"mask": {...}, "start": {...}, "final": {...}, "info": {...}}, with only
    the weights of `parts` read."""
    out: dict = {part: {} for part in parts}
    try:
        with np.load(path) as f:
            for key in f.files:
                if key == "info":
                    out["info"] = json.loads(str(f[key]))
                    continue
                part, name = key.split("/", 1)
                if part in out:
                    out[part][name] = f[key].astype(bool) if part == "mask" else f[key]
    except Exception as e:
        raise ArtifactError(f"{path}: cannot be read as a ticket ({type(e).__name__}: {e})") from None
    return out


def save_state(directory: Path, step: int, weights: dict, optimizer: list, mask: dict, early_stop: dict) -> None:
    """A trial checkpoint: weights, optimizer variables (in order), mask, position, and the early
    stop chosen so far (`early_stop.EarlyStop` as a dict)."""
    np.savez(directory / "weights.npz", **weights)
    np.savez(directory / "optimizer.npz", *optimizer)
    masks_lib.save(directory / "mask.npz", mask)
    (directory / "state.json").write_text(json.dumps({"step": step, "early_stop": early_stop}))


def earlier_checkpoints(checkpoint: Path) -> list[Path]:
    """The checkpoints its trial saved before `checkpoint` (Tune numbers them in order), newest first."""
    return sorted((p for p in checkpoint.parent.glob("checkpoint_*") if p.name < checkpoint.name), reverse=True)


def readable_state(checkpoints: list[Path]) -> tuple[dict | None, Path | None]:
    """The first of `checkpoints` that can be read, and its state: (None, None) when none can."""
    for checkpoint in checkpoints:
        try:
            return load_state(checkpoint), checkpoint
        except ArtifactError:
            continue
    return None, None


def state_or_earlier(checkpoint: Path) -> tuple[dict | None, Path | None, ArtifactError | None]:
    """A trial checkpoint's state, the checkpoint it came from, and None; where it cannot be read,
    the state of the newest readable checkpoint its trial saved before it (None, None: none can),
    and why it could not."""
    try:
        return load_state(checkpoint), checkpoint, None
    except ArtifactError as e:
        return (*readable_state(earlier_checkpoints(checkpoint)), e)


def load_state(directory: Path) -> dict:
    try:
        meta = json.loads((directory / "state.json").read_text())
        with np.load(directory / "optimizer.npz") as f:
            optimizer = [f[f"arr_{i}"] for i in range(len(f.files))]
        mask = masks_lib.load(directory / "mask.npz")
    except Exception as e:
        raise ArtifactError(f"{directory}: checkpoint cannot be read ({type(e).__name__}: {e})") from None
    return {**meta, "weights": load_weights(directory / "weights.npz"), "optimizer": optimizer, "mask": mask}


# The line as its BatchNorm mode evaluated it; with `reestimate`, the accuracies with the statistics
# interpolated too (`interpolated_*`; NaN otherwise, where the first columns are those).
CURVE_COLUMNS = ("alpha", "test_loss", "test_accuracy", "val_loss", "val_accuracy",
                 "interpolated_test_accuracy", "interpolated_val_accuracy")


def save_curve(path: Path, curve: dict) -> None:
    """The instability path as CSV (`CURVE_COLUMNS`, one row per alpha; NaN without a validation
    split): `pandas.read_csv(path)` or `numpy.genfromtxt(path, delimiter=",", names=True)`."""
    table = np.column_stack([np.asarray(curve[c], dtype=np.float64) for c in CURVE_COLUMNS])
    with atomic(path) as tmp:
        np.savetxt(tmp, table, delimiter=",", header=",".join(CURVE_COLUMNS), comments="", fmt="%.9g")


def save_twin(path: Path, step: int, weights: dict, optimizer: list, progress: dict) -> None:
    """An instability twin's state at an epoch boundary (weights, optimizer variables in order) and
    the metrics of the epoch that ended there: a restarted trial continues the twin from it."""
    arrays = {f"weights/{k}": v for k, v in weights.items()}
    arrays |= {f"optimizer/{i}": v for i, v in enumerate(optimizer)}
    arrays["info"] = np.array(json.dumps({"step": step, "progress": progress}))
    with atomic(path) as tmp:
        np.savez(tmp, **arrays)


def load_twin(path: Path) -> dict | None:
    """A saved twin as {"step", "progress", "weights", "optimizer"}; None when there is none."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            out = json.loads(str(f["info"]))
            out["weights"] = {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith("weights/")}
            out["optimizer"] = [f[f"optimizer/{i}"] for i in range(sum(k.startswith("optimizer/") for k in f.files))]
    except Exception as e:
        raise ArtifactError(f"{path}: cannot be read as an instability twin ({type(e).__name__}: {e})") from None
    return out


def save_dense(directory: Path, snapshots: dict[int, dict], manifest: dict) -> None:
    """`step_<n>.npz` per snapshot, then `manifest.json` (which lists them), so a dense run whose
    save was cut short has no manifest and is never taken for a finished one."""
    for step, weights in snapshots.items():
        save_weights(snapshot_file(directory, step), weights)
    with atomic(directory / MANIFEST_FILE) as tmp:
        tmp.write_text(json.dumps({**manifest, "format": FORMAT, "snapshot_steps": sorted(snapshots)}, indent=1))


def load_snapshots(directory: Path, steps) -> dict[int, dict[str, np.ndarray]]:
    return {s: load_weights(snapshot_file(directory, s)) for s in steps}


def log_dense_start(directory: Path, record: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / DENSE_RUNS_LOG, "a") as f:
        f.write(json.dumps(record) + "\n")


def dense_starts(directory: Path) -> int:
    """How many times the dense network of this experiment started training."""
    path = directory / DENSE_RUNS_LOG
    return len(path.read_text().splitlines()) if path.exists() else 0


def read_dense(directory: Path) -> dict | None:
    """The manifest of a finished dense run in `directory`, or None when there is none.

    A manifest that names snapshots which are missing is an error, never a silent retrain.
    """
    path = directory / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        steps = [int(s) for s in manifest["snapshot_steps"]]
    except Exception as e:
        raise ArtifactError(f"{path}: cannot be read as a dense-run manifest ({type(e).__name__}: {e})") from None
    for step in steps:
        if not snapshot_file(directory, step).is_file():
            raise ArtifactError(f"{snapshot_file(directory, step)}: missing, but {path} lists it")
    return manifest


def trial_dirs(experiment: Path) -> list[Path]:
    """Every trial dir of `experiment` that has reported (the dense dir is not a trial)."""
    return sorted(p.parent for p in experiment.glob(f"*/{METRICS_FILE}") if p.parent.name != DENSE_DIR)


def trial_failed(trial_dir: Path) -> bool:
    """Tune left an error file: the trial raised (its traceback is in `error.txt`)."""
    return (trial_dir / ERROR_FILE).exists() or (trial_dir / "error.pkl").exists()


def find_trial(experiment: Path, **coordinates) -> Path | None:
    """The finished trial dir of `experiment` whose params match `coordinates` (None: no such trial).

    `trial=` matches a trial id or dir name instead. Reads `params.json` files only: no Ray.
    """
    trial = coordinates.pop("trial", None)
    for directory, params in trial_params(experiment).items():
        if not (directory / TICKET_FILE).exists():
            continue
        if trial is not None:
            if trial in directory.name:
                return directory
            continue
        if all(_same(params.get(k), v) for k, v in coordinates.items()):
            return directory
    return None


def trial_params(experiment: Path) -> dict[Path, dict]:
    """Every trial dir of `experiment` that Tune has started, with its config (`params.json`), in name
    order; a dir whose params cannot be read (a trial starting as this reads) is left out."""
    found = {}
    for params_file in sorted(experiment.glob(f"*/{PARAMS_FILE}")):
        try:
            found[params_file.parent] = json.loads(params_file.read_text())
        except (OSError, ValueError):
            continue
    return found


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) < 1e-9
    return a == b
