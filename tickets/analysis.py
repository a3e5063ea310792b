"""Results as pandas: one row per trial per reported epoch, read straight from the experiment dir.

Works on finished, running and interrupted experiments, without Ray or TensorFlow: it reads the
`metrics.jsonl` each trial appends to in its dir before every report, and the dense run's manifest.

Nothing here is chosen on the test set: the early-stop epoch is the epoch of least validation loss
(`data.validation`), and `early_stop_accuracy` the test accuracy at that epoch. Without a
validation split nothing is early-stopped (those columns are NaN) and only final-epoch numbers exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tickets import artifacts
from tickets import config as config_lib
from tickets import rows as rows_lib
from tickets.config import GRID_KEYS
from tickets.instability import STABLE


def _status(trial: Path) -> str:
    if (trial / artifacts.TICKET_FILE).exists():
        return "finished"
    if artifacts.trial_failed(trial):
        return "error"
    return "incomplete"


def load(path) -> pd.DataFrame:
    """A tidy frame of an experiment dir (or of its `results.parquet` if only that is there)."""
    experiment = Path(path)
    if experiment.is_file():
        return rows_lib.upgrade_frame(pd.read_parquet(experiment))
    if not experiment.is_dir():
        raise FileNotFoundError(f"Received `path={str(path)!r}`: no such experiment dir")
    rows = []
    for trial in artifacts.trial_dirs(experiment):
        status = _status(trial)
        rows += [rows_lib.trial_row(r, trial.name, status) for r in artifacts.read_metrics(trial) if "epoch" in r]
    dense_dir = experiment / artifacts.DENSE_DIR
    manifest = artifacts.read_dense(dense_dir) if dense_dir.is_dir() else None
    rows += rows_lib.dense_rows(manifest) if manifest else []
    if not rows and (experiment / artifacts.RESULTS_FILE).exists():
        return rows_lib.upgrade_frame(pd.read_parquet(experiment / artifacts.RESULTS_FILE))
    return _last_reports(rows_lib.frame(rows))


def _last_reports(df: pd.DataFrame) -> pd.DataFrame:
    """The results frame with one row per report: a restarted trial may report an epoch (or IMP
    level) again, and its last report counts; sorted by control, grid point and epoch."""
    df = df.drop_duplicates(subset=["trial_id", "level", "epoch"], keep="last")
    order = df["control"].cat.codes
    return (df.assign(_order=order).sort_values(["_order", "sparsity", "rewind_epoch", "replicate", "level", "epoch"])
              .drop(columns="_order").reset_index(drop=True))


def write_results(experiment: Path) -> Path:
    """(Re)write `<experiment>/results.parquet` from the trial dirs; atomic rename."""
    df = load(experiment)
    out = experiment / artifacts.RESULTS_FILE
    with artifacts.atomic(out) as tmp:
        df.to_parquet(tmp, index=False)
    return out


# ---------------------------------------------------------------------------------------------
# Summaries: the papers' questions.


def _runs(df: pd.DataFrame) -> list[str]:
    """What identifies one training run: a trial, or a trial's IMP level."""
    return ["trial_id", "level"] if df["level"].notna().any() else ["trial_id"]


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The last reported epoch of every run: each trial, each IMP level, the dense run."""
    last = df.groupby(_runs(df), observed=True, dropna=False)["epoch"].transform("max")
    return df[df["epoch"] == last]


def dense_accuracy(df: pd.DataFrame) -> float:
    """The dense network's final test accuracy (a fraction), the reference every ticket is held to."""
    return float(_dense_final(df)["test_accuracy"].mean())


def dense_val_accuracy(df: pd.DataFrame) -> float:
    """The dense network's final validation accuracy; NaN without a validation split."""
    return float(_dense_final(df)["val_accuracy"].mean())


def dense_early_stop_accuracy(df: pd.DataFrame) -> float:
    """The dense network's test accuracy at its early-stop epoch (least validation loss); NaN
    without a validation split."""
    return float(_dense_final(df)["early_stop_accuracy"].mean())


def _dense_final(df: pd.DataFrame) -> pd.DataFrame:
    dense = final_rows(df[df["control"] == "dense"])
    if dense.empty:
        raise ValueError("Received results without dense reference rows (control == 'dense')")
    return dense


def validated(df: pd.DataFrame) -> bool:
    """Whether the experiment held out a validation split: only then is anything early-stopped."""
    return bool(df["val_loss"].notna().any())


def _keys(df: pd.DataFrame) -> list[str]:
    if df["level"].notna().any():  # IMP: replicates share levels; their sparsities match to the weight
        return ["control", "level", "rewind_epoch"]
    return ["control", "sparsity", "rewind_epoch"]


def references(experiment) -> tuple[config_lib.Reference, ...]:
    """The published reference points the experiment's spec carries (none for most specs)."""
    path = Path(experiment) / artifacts.SPEC_FILE
    return config_lib.load(path).references if path.is_file() else ()


def summary(df: pd.DataFrame, tolerance: float = 0.5,
            references: tuple[config_lib.Reference, ...] = ()) -> pd.DataFrame:
    """One row per (control, sparsity or level, rewind_epoch) over replicates.

    `final_accuracy` is the test accuracy at the end of training; `early_stop_accuracy` the test
    accuracy at the epoch of least validation loss (NaN without a validation split). `matches` is
    the winning-ticket test: mean final accuracy within `tolerance` percentage points of the dense
    network's final accuracy, or better, and no replicate's network cut (`collapsed`: a mask that
    cuts the network measures a cut network, not a ticket). It picks winners, so with a validation
    split it compares validation accuracies (`final_val_accuracy`); only without one the test's. `weights_remaining_total` is the
    share of every kernel weight of the network kept (the papers' axis); `weights_remaining` that of
    the prunable ones. With `references` (`references(experiment)`), each row gains the published
    point of its control nearest in `weights_remaining_total` (log scale) and `published_gap`: the
    early-stop accuracy minus the published (early-stopped) one, like with like; NaN without a
    validation split, where there is no early-stopped accuracy to compare.
    """
    trials = df[df["control"] != "dense"]
    dense = dense_accuracy(df)
    final = final_rows(trials)
    for column in ("val_accuracy", "instability", "val_instability", "twin_test_accuracy"):
        if column not in final:  # a frame built by hand, without the columns `load` gives
            final = final.assign(**{column: np.nan})
    keys = _keys(df)
    out = final.groupby(keys, observed=True, dropna=False).agg(
        replicates=("trial_id", "nunique"), sparsity_mean=("sparsity", "mean"),
        weights_remaining=("weights_remaining", "mean"), weights_remaining_total=("weights_remaining_total", "mean"),
        final_accuracy=("test_accuracy", "mean"), final_accuracy_std=("test_accuracy", "std"),
        final_val_accuracy=("val_accuracy", "mean"),
        early_stop_accuracy=("early_stop_accuracy", "mean"), early_stop_accuracy_std=("early_stop_accuracy", "std"),
        early_stop_epoch=("early_stop_epoch", "mean"), epochs=("epoch", "max"),
        collapsed=("collapsed_layers", lambda c: bool((c.fillna("") != "").any())),
        emptied_branches=("emptied_branches", lambda c: bool((c.fillna("") != "").any())),
        narrowest_live_channels=("narrowest_live_channels", "min"),
        instability=("instability", "mean"), val_instability=("val_instability", "mean"),
        twin_accuracy=("twin_test_accuracy", "mean"),
    ).reset_index()
    for column in ("final_accuracy_std", "early_stop_accuracy_std"):
        out[column] = out[column].fillna(0.0).where(out[column.removesuffix("_std")].notna())
    if "sparsity" not in keys:
        out.insert(1, "sparsity", out["sparsity_mean"])
    out = out.drop(columns="sparsity_mean")
    out["dense_accuracy"] = dense
    out["dense_early_stop_accuracy"] = dense_early_stop_accuracy(df)
    # A winner is a choice: made on validation where there is a split, never on the test set then.
    on, reference = ("final_val_accuracy", dense_val_accuracy(df)) if validated(df) else ("final_accuracy", dense)
    out["matches"] = (out[on] >= reference - tolerance / 100) & ~out["collapsed"]
    # Stable to SGD noise: an error barrier under the paper's 2 % -- also judged on validation where
    # there is a split (the user picks a rewind point by it); NaN-free only where twins trained.
    barrier = out["val_instability"] if validated(df) else out["instability"]
    out["stable"] = (barrier < STABLE).where(barrier.notna())
    if references:
        out = _published(out, references, dense_early_stop_accuracy(df))
    return out.sort_values(keys).reset_index(drop=True)


def _published(s: pd.DataFrame, references, dense: float) -> pd.DataFrame:
    """The nearest published point (same control, log weights remaining of the whole network) beside
    each row, as fractions. Published accuracies are early-stopped, and gains are over the paper's
    early-stopped dense network: they are compared with this experiment's early-stopped numbers."""
    nearest = []
    for row in s.itertuples():
        points = [p for r in references if r.control == row.control for p in r.points]
        if not points or not row.weights_remaining_total > 0:
            nearest.append((np.nan, np.nan))
            continue
        p = min(points, key=lambda p: abs(np.log(p.weights_remaining / 100) - np.log(row.weights_remaining_total)))
        nearest.append((p.weights_remaining / 100, p.accuracy(dense * 100) / 100))
    s = s.copy()
    s["published_weights_remaining"] = [w for w, _ in nearest]
    s["published_accuracy"] = [a for _, a in nearest]
    s["published_gap"] = s["early_stop_accuracy"] - s["published_accuracy"]
    return s


def curves(experiment) -> pd.DataFrame:
    """Every instability path of an experiment (`instability.enabled`): one row per trial (IMP: per
    level) and alpha, with its grid point -- alpha, test and validation loss and accuracy along the
    line between the trial's two trained copies."""
    frames = []
    for trial in artifacts.trial_dirs(Path(experiment)):
        rows = artifacts.read_metrics(trial)
        for row in rows:
            if "instability" not in row:
                continue
            path = artifacts.curve_file(trial, row.get("level") if row.get("levels") else None)
            if path.is_file():
                curve = pd.read_csv(path)
                for k in (*GRID_KEYS, "trial_id"):
                    curve.insert(0, k, row.get(k))
                frames.append(curve.assign(trial=trial.name))
    columns = [*GRID_KEYS, "trial_id", "trial", *artifacts.CURVE_COLUMNS]
    if not frames:
        return pd.DataFrame(columns=columns)
    df = pd.concat(frames, ignore_index=True)
    return df.drop_duplicates(["trial", "level", "alpha"], keep="last")[columns].reset_index(drop=True)


def collapsed_trials(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trial (IMP: per level) whose mask cut the network: its grid point and `collapsed_layers`."""
    trials = df[(df["control"] != "dense") & (df["collapsed_layers"].fillna("") != "")]
    columns = [k for k in (*GRID_KEYS, "trial_id", "collapsed_layers") if trials[k].notna().any()]
    return trials.drop_duplicates(["trial_id", "level"])[columns].reset_index(drop=True)


def winning_tickets(df: pd.DataFrame, tolerance: float = 0.5) -> pd.DataFrame:
    """Per rewind epoch, the sparsest ticket that matches the dense network (a collapsed one never does)."""
    s = summary(df, tolerance)
    wins = s[(s["control"] == "ticket") & s["matches"]]
    idx = wins.groupby("rewind_epoch")["weights_remaining_total"].idxmin()
    return wins.loc[idx].reset_index(drop=True)
