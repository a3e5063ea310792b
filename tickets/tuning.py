"""The Tune grid: the trainable with its resources, IMP's queue of chains and controls, the
callbacks (the trial table, failed chains' errors) and the Tuner, fresh or restored."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from ray import tune
from ray.tune.search import Searcher

from tickets import artifacts
from tickets import config as config_lib
from tickets.dense import DenseRefs
from tickets.plan import grid, trial_points
from tickets.session import Resources
from tickets.trainable import train_imp, train_ticket

def make_trainable(spec: config_lib.Spec, dense: DenseRefs, res: Resources):
    """The spec's trainable (one-shot or IMP) with the dense refs bound and the per-trial resources."""
    function = train_imp if spec.pruning.mode == "imp" else train_ticket
    trainable = tune.with_parameters(function, spec=spec.to_dict(), dense=dense)
    return tune.with_resources(trainable, {"cpu": res.cpus, "gpu": res.gpus})


def chain_of(config: dict) -> tuple[float, int]:
    """The IMP ticket chain a trial belongs to (its own, for a chain)."""
    return float(config["rewind_epoch"]), int(config["replicate"])


class ImpQueue(Searcher):
    """IMP's trials in `trial_points` order, each suggested once it can train: every ticket chain at
    once, a control at level k once its chain has reported level k (its level file is written by
    then), or has failed for good (the control then fails with the chain's error). So no control
    holds a slot waiting, and controls train beside the chains instead of after them."""

    def __init__(self, points: list[dict]):
        super().__init__()
        self.points = points
        self.suggested: set[int] = set()
        self.chains: dict[str, tuple[float, int]] = {}  # trial id -> chain, for the chains suggested
        self.reached: dict[tuple[float, int], int] = {}  # chain -> the last level it reported
        self.failed: set[tuple[float, int]] = set()

    def _ready(self, point: dict) -> bool:
        chain = chain_of(point)
        return "level" not in point or point["level"] <= self.reached.get(chain, 0) or chain in self.failed

    def suggest(self, trial_id: str):
        if len(self.suggested) == len(self.points):
            return Searcher.FINISHED
        for i, point in enumerate(self.points):
            if i not in self.suggested and self._ready(point):
                self.suggested.add(i)
                if "level" not in point:
                    self.chains[trial_id] = chain_of(point)
                return dict(point)
        return None  # nothing can train yet: Tune asks again

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.chains and result.get("level"):
            chain = self.chains[trial_id]
            self.reached[chain] = max(self.reached.get(chain, 0), int(result["level"]))
            self.failed.discard(chain)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.chains and error:
            self.failed.add(self.chains[trial_id])

    def get_state(self) -> dict:
        return {"suggested": self.suggested, "chains": self.chains, "reached": self.reached, "failed": self.failed}

    def set_state(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))


class ChainErrors(tune.Callback):
    """When an IMP ticket chain fails for good, its one-line error goes beside it on the storage
    path, where its control trials look for their masks: they fail with it instead of waiting."""

    def on_trial_error(self, iteration, trials, trial, **info):
        if "level" not in trial.config:
            coordinates = dict(zip(("rewind_epoch", "replicate"), chain_of(trial.config)))
            artifacts.write_chain_error(Path(trial.path), coordinates, trial_error(trial))


def trial_error(trial) -> str:
    """A failed trial's error in one line: the last line of the traceback Tune wrote."""
    try:
        lines = [line.strip() for line in Path(trial.error_file).read_text().splitlines() if line.strip()]
    except (OSError, TypeError):
        lines = []
    return lines[-1][:300] if lines else "see its error.txt"


class TrialTable(tune.Callback):
    """One row per trial as it ends: its grid point, test accuracy and time. Tune's own tables
    (and every worker's output) stay in the log files unless --verbose."""

    def __init__(self, columns: dict[str, list]):
        self.keys, self.header = list(columns), False
        self.widths = [max([len(k), 8, *(len(_cell(v)) for v in values)]) for k, values in columns.items()]

    def _row(self, trial, outcome: str) -> None:
        if not self.header:
            self.header = True
            print("  " + "  ".join(k.ljust(w) for k, w in zip(self.keys, self.widths))
                  + "  test acc  epochs  seconds", flush=True)
        values = [trial.config.get(k, "-") for k in self.keys]
        cells = [_cell(v).ljust(w) for v, w in zip(values, self.widths)]
        print(f"  {'  '.join(cells)}  {outcome}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        accuracy = r.get("test_accuracy")
        outcome = (f"{accuracy * 100:7.2f}%  {r.get('epoch', ''):>6}  {r.get('time_total_s', 0):7.0f}"
                   if accuracy is not None else "no result")
        if r.get("instability") is not None:  # instability.enabled: the barrier between the trial and its twin
            outcome += f"  instability {r['instability'] * 100:.2f}% (twin {r['twin_test_accuracy'] * 100:.2f}%)"
        if r.get("collapsed_layers"):
            outcome += f"  (cut network: {r['collapsed_layers']})"
        self._row(trial, outcome)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial, f"error: {trial_error(trial)} (traceback: {Path(trial.path) / artifacts.ERROR_FILE})")


def _cell(value) -> str:
    return value if isinstance(value, str) else config_lib.show(value)


def table_columns(spec: config_lib.Spec) -> dict[str, list]:
    """The trial table's columns and the values they show: the grid's axes, and for IMP the control
    trials' level."""
    levels = {"level": list(range(1, spec.pruning.num_levels() + 1))} if spec.pruning.mode == "imp" else {}
    return {**grid(spec), **levels}


def run_tuner(spec: config_lib.Spec, exp: Path, dense: DenseRefs, res: Resources, resume: bool, verbose: bool):
    """Run (or, with `resume`, continue) the grid in `exp` until it ends; returns Tune's ResultGrid."""
    trainable = make_trainable(spec, dense, res)
    imp = spec.pruning.mode == "imp"
    # Tune's tables and per-trial boxes are hundreds of lines for a small grid: the table above
    # shows what a user needs; --verbose brings Tune's own back.
    callbacks = ([ChainErrors()] if imp else []) + ([] if verbose else [TrialTable(table_columns(spec))])
    if not verbose:  # Tune's newer console output prints its header boxes even at verbose=0
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Trials checkpoint every epoch by design (resume loses at most one); Tune warns each time that
    # happens within 5 s, which short epochs do all the time. Users can still set it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if resume and tune.Tuner.can_restore(str(exp)):
        # The RunConfig (trial table, verbosity) and IMP's queue come back from the experiment's saved
        # state; failed chains train again, so their controls wait for them instead of failing.
        artifacts.clear_chain_errors(exp)
        tuner = tune.Tuner.restore(str(exp), trainable=trainable, resume_errored=True)
    else:
        points = trial_points(spec)
        # One-shot grids are Tune's grid search; IMP's controls follow their chains (ImpQueue).
        search = {"search_alg": ImpQueue(points), "num_samples": len(points)} if imp else {}
        tuner = tune.Tuner(
            trainable,
            param_space={} if imp else {key: tune.grid_search(values) for key, values in grid(spec).items()},
            # Reusing workers spares each trial a process start and the TensorFlow import. The metric
            # is what Tune's own "best trial" (ResultGrid.get_best_result) would choose on: the
            # validation split, never the test set.
            tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", reuse_actors=True,
                                        max_concurrent_trials=spec.resources.max_concurrent_trials, **search),
            run_config=tune.RunConfig(
                name=exp.name, storage_path=str(exp.parent),
                failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=callbacks, verbose=None if verbose else 0))
    return tuner.fit()
