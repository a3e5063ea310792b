"""The Tune grid: the trainable with its resources, the trial table, and the Tuner, fresh or
restored. One-shot grids are Tune's grid search; IMP's controls follow their chains (`tickets.chains`).
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from tickets import artifacts, chains, grid, storage
from tickets import config as config_lib
from tickets.dense import DenseRefs
from tickets.errors import last_line, trial_error
from tickets.session import Resources
from tickets.trainable import train_imp, train_ticket

# An IMP experiment started before these moved to `tickets.chains` pickled them by this module's
# path (Tune's saved searcher and callbacks): `--resume` finds them here.
ImpQueue, ChainErrors = chains.GridQueue, chains.ChainErrors


def make_trainable(spec: config_lib.Spec, dense: DenseRefs, res: Resources, board=None):
    """The spec's trainable (one-shot, or IMP with its `chains.LevelBoard`) with the dense refs bound
    and the per-trial resources."""
    if spec.pruning.mode == "imp":
        trainable = tune.with_parameters(train_imp, spec=spec.to_dict(), dense=dense, board=board)
    else:
        trainable = tune.with_parameters(train_ticket, spec=spec.to_dict(), dense=dense)
    return tune.with_resources(trainable, {"cpu": res.cpus, "gpu": res.gpus})


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
        error = trial_error(trial)
        if storage.fault_of(error, Path(trial.path).parent):  # the paragraph at the end says which
            self._row(trial, "stopped: storage fault")
        else:
            self._row(trial, f"error: {error} (traceback: {Path(trial.path) / artifacts.ERROR_FILE})")


def _cell(value) -> str:
    return value if isinstance(value, str) else config_lib.show(value)


@dataclass(frozen=True)
class GridEnd:
    """How the grid ended: each trial's dir and whether it errored, and the storage fault that
    stopped it, if one did."""

    trials: list[storage.TrialEnd]
    fault: storage.Fault | None
    storage_ok: bool = True  # the experiment dir takes writes again now (after a fault: freed space)

    @property
    def num_errors(self) -> int:
        return sum(t.errored for t in self.trials)


def run_tuner(spec: config_lib.Spec, exp: Path, dense: DenseRefs, res: Resources, resume: bool,
              verbose: bool) -> GridEnd:
    """Run (or, with `resume`, continue) the grid in `exp` until it ends, or until its storage fails."""
    imp = spec.pruning.mode == "imp"
    if resume:  # before the level board reads the chains' dirs: some may be set aside
        for note in storage.repair_state(exp):
            print(f"note: {note}")
    board = chains.level_board(spec, exp, dense.dense_hash, resume) if imp else None
    trainable = make_trainable(spec, dense, res, board)
    # Tune's tables and per-trial boxes are hundreds of lines for a small grid: the table above
    # shows what a user needs; --verbose brings Tune's own back.
    total = len(grid.trial_points(spec))
    callbacks = (([chains.ChainErrors()] if imp else [])
                 + ([] if verbose else [TrialTable(grid.table_columns(spec))])
                 + [storage.StorageWatch(exp, total)])
    storage.StorageWatch.expect(exp, total)  # also for the copy a restored experiment brings back
    if not verbose:  # Tune's newer console output prints its header boxes even at verbose=0
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Trials checkpoint every epoch by design (resume loses at most one); Tune warns each time that
    # happens within 5 s, which short epochs do all the time. Users can still set it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if resume and tune.Tuner.can_restore(str(exp)):
        # The RunConfig (trial table, verbosity) and IMP's queue come back from the experiment's saved
        # state; failed chains train again, so their controls wait for them instead of failing.
        tuner = tune.Tuner.restore(str(exp), trainable=trainable, resume_errored=True)
    else:
        points = grid.trial_points(spec)
        # Tune's grid search where the grid is the product of its axes; else the queue of its points.
        product = grid.is_product(spec)
        search = {} if product else {"search_alg": chains.GridQueue(points, imp), "num_samples": len(points)}
        tuner = tune.Tuner(
            trainable,
            param_space={key: tune.grid_search(values) for key, values in grid.axes(spec).items()} if product else {},
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
    try:
        results = tuner.fit()
    except Exception as e:
        watch = storage.watching()
        ok = watch.healthy() if watch is not None else True  # lets go of the reserve and the dir
        # Only where the grid ran and reading its results back failed (an error pickle cut short).
        if watch is None or watch.ended is None or not _reading_results(e):
            raise
        print(f"note: Tune could not read its results back ({last_line(e)}); the trials' own files are used")
        return GridEnd(watch.ended, watch.fault, ok)
    watch = storage.watching()
    ok = watch.healthy() if watch is not None else True
    if watch is None or watch.ended is None:  # restored from a state saved before the watch existed
        return GridEnd([storage.TrialEnd(Path(r.path), r.error is not None) for r in results], None, ok)
    return GridEnd(watch.ended, watch.fault, ok)


def _reading_results(error: BaseException) -> bool:
    files = [frame.filename for frame in traceback.extract_tb(error.__traceback__)]
    return any(f.endswith(("result_grid.py", "experiment_analysis.py")) for f in files)


