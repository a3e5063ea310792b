"""Results as pandas: one row per trial per reported epoch, read straight from the experiment dir.

Works on finished, running and interrupted experiments, without Ray or TensorFlow: it reads the
`metrics.jsonl` each trial appends to in its dir before every report, and the dense run's manifest.

Nothing here is chosen on the test set: the early-stop epoch is the epoch of least validation loss
(`data.validation`), and `early_stop_accuracy` the test accuracy at that epoch. Without a
validation split nothing is early-stopped (those columns are NaN) and only final-epoch numbers exist.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from tickets import artifacts, grid, stats
from tickets import config as config_lib
from tickets import instability as instability_lib
from tickets import rows as rows_lib
from tickets.config import GRID_KEYS


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
    spec = _spec(experiment)
    return spec.references if spec else ()


def match_mode(experiment) -> str:
    """What the experiment's spec matches by (`report.match`: final or early_stop)."""
    spec = _spec(experiment)
    return spec.report.match if spec else config_lib.ReportSpec.match


def _spec(experiment) -> config_lib.Spec | None:
    path = Path(experiment) / artifacts.SPEC_FILE
    return config_lib.load(path) if path.is_file() else None


# What `matches` decides by: (match mode, validation split) -> the column, and how the report names it.
_DECIDED_BY = {("final", True): ("val_accuracy", "final validation accuracy"),
               ("final", False): ("test_accuracy", "final test accuracy (no validation split)"),
               ("early_stop", True): ("early_stop_val_accuracy", "validation accuracy at the early stop"),
               ("early_stop", False): ("test_accuracy", "final test accuracy (no validation split to stop early on)")}

# A published point is compared only with a configuration within this factor of its weights remaining:
# about one IMP level at the papers' 20 % per level (x1.25), with room for per-layer rounding.
PUBLISHED_WITHIN = 1.3


def expected_runs(experiment) -> pd.Series | None:
    """How many runs the experiment's grid has at each (control, sparsity or level, rewind epoch):
    its replicates (an IMP chain a run per level, level 0 too with twins), from its spec; None without
    one. A run that never reported is still expected, so its point is not complete."""
    spec = _spec(experiment)
    if spec is None:
        return None
    runs = []
    for point in grid.trial_points(spec):
        if spec.pruning.mode == "imp" and grid.is_chain(point):
            first = 0 if instability_lib.wanted(spec.instability.enabled, "ticket") else 1
            runs += [(point["control"], k, point["rewind_epoch"]) for k in range(first, spec.pruning.num_levels() + 1)]
        else:
            key = "level" if "level" in point else "sparsity"
            runs.append((point["control"], point[key], point["rewind_epoch"]))
    counts = pd.Series(runs).value_counts(sort=False)
    counts.index = pd.MultiIndex.from_tuples(counts.index, names=["control", "level" if spec.search.level or
                                                                   spec.pruning.mode == "imp" else "sparsity",
                                                                   "rewind_epoch"])
    return counts


def decided_by(df: pd.DataFrame, match: str = "final") -> tuple[str, str, float]:
    """(the column `matches` compares, its name in words, the dense network's value of it)."""
    column, words = _DECIDED_BY[match, validated(df)]
    dense = _dense_final(df)
    return column, words, float(dense[column].mean()) if column in dense else math.nan


def complete_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The last report of every run that finished: a trial that wrote its ticket, or an IMP chain's
    level (a chain reports a level once it has trained it). An errored or unfinished trial's last
    epoch is not a result."""
    runs = final_rows(df)
    done = runs["status"] == "finished" if "status" in runs else pd.Series(True, index=runs.index)
    if "levels" in runs:
        done |= runs["levels"].notna()
    return runs[done.to_numpy(dtype=bool)]


def summary(df: pd.DataFrame, tolerance: float = 0.5, references: tuple[config_lib.Reference, ...] = (),
            match: str = "final", expected: pd.Series | None = None) -> pd.DataFrame:
    """One row per (control, sparsity or level, rewind_epoch), over the replicates that finished.

    `replicates` (n) counts them, `complete` says whether every run of the point finished: every run
    started, and with `expected` (`expected_runs(experiment)`) every run the grid has, reported or
    not (its points that no run reached are rows too).
    `final_accuracy` is the test accuracy at the end of training, `early_stop_accuracy` at the epoch
    of least validation loss (NaN without a validation split); each with its standard deviation
    (`_std`) and the half-width of its 95 % confidence interval (`_ci95`, mean ± ci95): NaN with one
    replicate, which has neither. `matches` is the winning-ticket test: the mean of the accuracy it
    decides by (`match_accuracy`: with a validation split the validation accuracy, final or at the
    early stop as `match` says; the test accuracy only without a split) within `tolerance`
    percentage points of the dense network's, or better, and no replicate's network cut
    (`collapsed`). `match_verdict` says the same as far as the interval allows: "matches", "falls
    short", "undecided" (the interval straddles the threshold) or, with one replicate, from the mean
    alone. `weights_remaining_total` is the share of every kernel weight of the network kept (the
    papers' axis); `weights_remaining` that of the prunable ones. With `references`
    (`references(experiment)`), a row within `PUBLISHED_WITHIN` of a published point of its control
    (in `weights_remaining_total`) gains it and `published_gap`: the early-stop accuracy minus the
    published (early-stopped) one, like with like; NaN farther from every published point and
    without a validation split.
    """
    trials = df[df["control"] != "dense"]
    keys = _keys(df)
    column, words, reference = decided_by(df, match)
    final = complete_runs(trials)
    for name in ("val_accuracy", "early_stop_val_accuracy", "instability", "val_instability", "twin_test_accuracy",
                 "interpolated_instability", "interpolated_val_instability", "channels_removed", "flops_left"):
        if name not in final:  # a frame built by hand, without the columns `load` gives
            final = final.assign(**{name: np.nan})
    started = trials.groupby(keys, observed=True, dropna=False)["trial_id"].nunique()
    seen = set(started.index)
    points = list(started.index) + [k for k in (expected.index if expected is not None else []) if k not in seen]
    out = final.groupby(keys, observed=True, dropna=False).agg(
        replicates=("trial_id", "nunique"), sparsity_mean=("sparsity", "mean"),
        weights_remaining=("weights_remaining", "mean"), weights_remaining_total=("weights_remaining_total", "mean"),
        final_val_accuracy=("val_accuracy", "mean"), early_stop_val_accuracy=("early_stop_val_accuracy", "mean"),
        early_stop_epoch=("early_stop_epoch", "mean"), epochs=("epoch", "max"),
        collapsed=("collapsed_layers", lambda c: bool((c.fillna("") != "").any())),
        emptied_branches=("emptied_branches", lambda c: bool((c.fillna("") != "").any())),
        narrowest_live_channels=("narrowest_live_channels", "min"),
        channels_removed=("channels_removed", "mean"), flops_left=("flops_left", "mean"),
        instability=("instability", "mean"), val_instability=("val_instability", "mean"),
        interpolated_instability=("interpolated_instability", "mean"),
        interpolated_val_instability=("interpolated_val_instability", "mean"),
        twin_accuracy=("twin_test_accuracy", "mean"),
    ).reindex(pd.MultiIndex.from_tuples(points, names=keys))  # a point no run finished stays, incomplete, blank
    out["replicates"] = out["replicates"].fillna(0).astype(int)
    runs = [max(started.get(at, 0), expected.get(at, 0) if expected is not None else 0) for at in out.index]
    out["complete"] = out["replicates"] >= runs
    out["collapsed"] = out["collapsed"].fillna(False).astype(bool)
    out["emptied_branches"] = out["emptied_branches"].fillna(False).astype(bool)
    groups = final.groupby(keys, observed=True, dropna=False)
    for name, source in (("final_accuracy", "test_accuracy"), ("early_stop_accuracy", "early_stop_accuracy"),
                         ("match_accuracy", column)):
        spread = {at: stats.interval(v) for at, v in groups[source]}
        for part, suffix in (("mean", ""), ("std", "_std"), ("ci95", "_ci95")):
            out[name + suffix] = [spread[at][part] if at in spread else math.nan for at in out.index]
    out = out.reset_index()
    if "sparsity" not in keys:
        out.insert(1, "sparsity", out["sparsity_mean"])
    out = out.drop(columns="sparsity_mean")
    out["dense_accuracy"] = dense_accuracy(df)
    out["dense_early_stop_accuracy"] = dense_early_stop_accuracy(df)
    # A winner is a choice: made on validation where there is a split, never on the test set then.
    threshold = reference - tolerance / 100
    out["match_on"], out["dense_match_accuracy"] = words, reference
    out["matches"] = (out["match_accuracy"] >= threshold) & ~out["collapsed"]
    out["match_verdict"] = [_match_verdict(r, threshold) for r in out.itertuples()]
    # Stable to SGD noise: also judged on validation where there is a split (the user picks a rewind
    # point by it); NaN-free only where twins trained.
    barrier = out["val_instability"] if validated(df) else out["instability"]
    out["stable"] = barrier.map(instability_lib.stable).where(barrier.notna())
    if references:
        out = _published(out, references, dense_early_stop_accuracy(df))
    return out.sort_values(keys).reset_index(drop=True)


_VERDICTS = {"at or above": "matches", "below": "falls short", "undecided": "undecided: the interval straddles it"}


def _match_verdict(row, threshold: float) -> str:
    if row.collapsed:
        return "cut network"
    said = stats.verdict(row.match_accuracy, row.match_accuracy_ci95, row.replicates, threshold)
    plain, _, one = said.partition(" (")
    return _VERDICTS.get(plain, plain) + (f" ({one}" if one else "")


def paired(df: pd.DataFrame, match: str = "final") -> pd.DataFrame:
    """Every control compared with the ticket at its grid point, and every ablation of a mask pruned at
    initialization with its own method (`snip+shuffle` against `snip`: Frankle et al. 2021's question,
    whether the places a method chose carry what it knows), replicate by replicate (same replicate:
    same data order, and for controls that start from the same weights the same start): the mean
    difference (control − `against`), its 95 % interval and the paired t-test's p-value
    (`stats.paired`) of the accuracy `matches` decides by (`decided_by`), and the mean difference of
    the final test accuracy beside it. Only runs that finished count; a pair of controls no replicate
    finished both of is left out."""
    column, words, _ = decided_by(df, match)
    final = complete_runs(df[df["control"] != "dense"])
    point = [k for k in _keys(df) if k != "control"]
    index = ["replicate", "level"] if "level" in point else ["replicate"]
    rows = []
    for at, g in final.groupby(point, observed=True, dropna=False):
        runs = {str(c): r.set_index(index) for c, r in g.groupby("control", observed=True)}
        for control, c in runs.items():
            method, ablation = config_lib.split_control(control)
            for against in ("ticket", method if method in config_lib.INIT_METHODS and ablation else None):
                if against is None or against == control or against not in runs:
                    continue
                decided = stats.paired(c[column], runs[against][column])
                if decided["n"] == 0:
                    continue
                rows.append({**dict(zip(point, at if isinstance(at, tuple) else (at,))), "control": control,
                             "against": against, "pairs": decided["n"], "difference": decided["difference"],
                             "ci95": decided["ci95"], "p_value": decided["p_value"], "on": words,
                             "test_difference": stats.paired(c["test_accuracy"], runs[against]["test_accuracy"])["difference"]})
    columns = [*point, "control", "against", "pairs", "difference", "ci95", "p_value", "on", "test_difference"]
    order = {c: i for i, c in enumerate(config_lib.CONTROLS)}
    out = pd.DataFrame(rows, columns=columns)
    return out.sort_values([*point, "control"], key=lambda v: v.map(order) if v.name == "control" else v,
                           kind="stable").reset_index(drop=True)


def _published(s: pd.DataFrame, references, dense: float) -> pd.DataFrame:
    """The nearest published point (same control, log weights remaining of the whole network) beside
    each row, as fractions, where it is within `PUBLISHED_WITHIN` of the row's weights remaining
    (NaN farther). Published accuracies are early-stopped, and gains are over the paper's
    early-stopped dense network: they are compared with this experiment's early-stopped numbers."""
    nearest = []
    for row in s.itertuples():
        points = [p for r in references if r.control == row.control for p in r.points]
        if not points or not row.weights_remaining_total > 0:
            nearest.append((np.nan, np.nan))
            continue
        p = min(points, key=lambda p: abs(np.log(p.weights_remaining / 100) - np.log(row.weights_remaining_total)))
        far = abs(np.log(p.weights_remaining / 100) - np.log(row.weights_remaining_total)) > np.log(PUBLISHED_WITHIN)
        nearest.append((np.nan, np.nan) if far else (p.weights_remaining / 100, p.accuracy(dense * 100) / 100))
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
    df = pd.concat(frames, ignore_index=True).reindex(columns=columns)  # older curves lack the interpolated_*
    return df.drop_duplicates(["trial", "level", "alpha"], keep="last").reset_index(drop=True)


def collapsed_trials(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trial (IMP: per level) whose mask cut the network: its grid point and `collapsed_layers`."""
    trials = df[(df["control"] != "dense") & (df["collapsed_layers"].fillna("") != "")]
    columns = [k for k in (*GRID_KEYS, "trial_id", "collapsed_layers") if trials[k].notna().any()]
    return trials.drop_duplicates(["trial_id", "level"])[columns].reset_index(drop=True)


def winning_tickets(df: pd.DataFrame, tolerance: float = 0.5, match: str = "final") -> pd.DataFrame:
    """Per rewind epoch, the sparsest ticket that matches the dense network: a collapsed one never
    does, nor one whose interval is too wide to say (`match_verdict` "undecided"), nor the dense
    network itself (the ticket at sparsity 0, an IMP chain's level 0)."""
    s = summary(df, tolerance, match=match)
    wins = s[(s["control"] == "ticket") & s["matches"] & ~s["match_verdict"].str.startswith("undecided")
             & (s["sparsity"] > 0)]
    idx = wins.groupby("rewind_epoch")["weights_remaining_total"].idxmin()
    return wins.loc[idx].reset_index(drop=True)
