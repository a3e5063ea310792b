"""The Tune trainables.

One-shot (`train_ticket`), one grid point (sparsity or level, rewind epoch, control, replicate) per
trial: fetch the two dense snapshots it needs → mask → rewind → masked training, reporting every
epoch with a checkpoint, so a restarted trial continues from its last finished epoch.

IMP (`train_imp`): a ticket chain per (rewind epoch, replicate) prunes `rate` of the survivors →
rewinds → retrains, level after level, one report and one checkpoint per level
(`train_imp_chain`); each control at each level is a trial of its own that trains the chain's
mask of that level (`train_ticket`), queued once the chain has written it (`tuning.ImpQueue`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
from ray import tune

from tickets import artifacts
from tickets import config as config_lib
from tickets import instability
from tickets import masks as masks_lib
from tickets import rows as rows_lib
from tickets.dense import DenseRefs, transfer_key


@dataclass
class _Trial:
    spec: config_lib.Spec
    data: object
    model: object
    rewind_epoch: float
    rewind_step: int
    control: str
    replicate: int
    seed: int  # the sparse runs' data order
    runtime: object  # runtime_lib.Runtime: threads and precision this trial's process trains with
    dense: DenseRefs  # with the snapshots in
    beside_dense: bool  # started while the dense run trained: warmed up, then waited for it
    waited: float  # seconds spent waiting for the snapshots


_TRIALS_IN_PROCESS = 0  # Tune reuses worker processes: the first trial in one pays for imports and tracing


def process_age() -> float:
    """Seconds since this worker process started (Linux), to measure per-trial start-up cost."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _setup(config: dict, spec: dict, dense: DenseRefs) -> _Trial:
    answer, beside = None, False
    if dense.board is not None:
        answer = dense.board.wait.remote()
        beside = not ray.wait([answer], timeout=1.0)[0]
        if not beside:  # the dense run has ended; had it failed, this trial fails here, before any import
            dense = dense.published(answer)
    # Imports that start TensorFlow come after the thread counts are known.
    from tickets import training
    from tickets import runtime as runtime_lib
    from tickets import ticket as ticket_lib

    global _TRIALS_IN_PROCESS
    _TRIALS_IN_PROCESS += 1

    spec_obj = config_lib.from_dict(spec)
    # Tune runs trials in actors of their own runtime env, whose worker processes only trials use:
    # this is the first TensorFlow call in the process, so the pools are the trial's CPUs.
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    runtime = runtime_lib.configure(max(1, int(math.ceil(cpus))), precision=spec_obj.resources.precision)
    rewind_epoch, replicate = float(config["rewind_epoch"]), int(config["replicate"])
    data = ray.get(dense.data)
    model = training.sparse_model(spec_obj, data)  # compiled once per worker process, reused by its trials
    waited = 0.0
    if beside:
        # Started beside the dense run, on resources it does not use: trace the train and test steps
        # now, so that the trial trains at once when the snapshots come.
        training.warm_up(spec_obj, data)
        waiting = time.perf_counter()
        dense = dense.published(answer)
        waited = time.perf_counter() - waiting
    return _Trial(spec_obj, data, model, rewind_epoch, config_lib.step_of(rewind_epoch, dense.steps_per_epoch),
                  str(config["control"]), replicate,
                  ticket_lib.stream_seed(spec_obj, replicate, ticket_lib.Stream.SPARSE_DATA), runtime, dense, beside,
                  waited)


def _base_metrics(t: _Trial, ticket) -> dict:
    from tickets import pruning
    from tickets import ticket as ticket_lib

    summary = masks_lib.report(ticket.mask, ticket.threshold)
    lay = ticket_lib.layout(t.model)
    # A mask that cuts the network trains a network that cannot learn: say so in every row; an
    # emptied residual branch (skipped) and the narrowest layer (near-collapse) too.
    health = pruning.check(ticket.mask, lay)
    kept, kernels = pruning.kept_total(ticket.mask, lay)
    narrowest = health.narrowest or ("", -1, -1)
    return {"rewind_epoch": t.rewind_epoch, "control": t.control, "replicate": t.replicate,
            "collapsed_layers": ", ".join(health.cuts), "emptied_branches": ", ".join(health.branches),
            "narrowest_layer": narrowest[0], "narrowest_live_channels": narrowest[1],
            "narrowest_channels": narrowest[2],
            "rewind_step": t.rewind_step, "actual_sparsity": summary["sparsity"],
            "weights_remaining": summary["weights_remaining"], "weights_remaining_count": summary["remaining"],
            "prunable_weights": summary["total"], "weights_remaining_total": kept / kernels,
            "kernel_weights": kernels,
            "threshold": summary["threshold"] if summary["threshold"] is not None else float("nan"),
            "dense_hash": t.dense.dense_hash, "started_beside_dense": t.beside_dense,
            "dense_wait_seconds": t.waited, "node_id": ray.get_runtime_context().get_node_id(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""), **t.runtime.row()}


def _restore() -> dict | None:
    """This trial's last checkpoint (`artifacts.load_state`), or None on a fresh start."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return artifacts.load_state(Path(d))


def _report(metrics: dict, state, mask: dict) -> None:
    """Append the row to the trial's own `metrics.jsonl`, then `tune.report` it with a checkpoint
    of `state` (a `training.SparseState`) and the mask.

    The trial writes its rows itself, straight into its dir on the storage path: they survive
    whatever happens to Tune's copy (a restarted trial's `result.json` can lose rows that were not
    yet synced from the driver's staging dir).
    """
    row = {**metrics, "trial_id": tune.get_context().get_trial_id(), "pid": os.getpid(), "time": time.time(),
           "format": artifacts.FORMAT}
    artifacts.append_metrics(_trial_dir(), row)
    with tempfile.TemporaryDirectory() as d:
        artifacts.save_state(Path(d), state.step, state.weights, state.optimizer, mask,
                             dataclasses.asdict(state.early_stop))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _last_row() -> dict:
    """The trial's last reported row, as it was reported."""
    return {k: v for k, v in artifacts.read_metrics(_trial_dir())[-1].items()
            if k not in ("trial_id", "pid", "time", "format")}


def _twin(t: _Trial, ticket, first: dict, level: int | None = None) -> dict:
    """Instability analysis of the network the trial (or the IMP chain's `level`) trained to `first`:
    train its twin -- the same start, the TWIN stream's data order and augmentation, to the same end
    -- or continue it from its file after a restart, evaluate the line between the two copies,
    write it beside the trial, and return the row's instability columns."""
    from tickets import training
    from tickets import ticket as ticket_lib

    started, trial = time.perf_counter(), _trial_dir()
    saved = artifacts.load_twin(artifacts.twin_file(trial, level))
    resume = training.SparseState(saved["step"], saved["weights"], saved["optimizer"]) if saved else None
    seed = ticket_lib.stream_seed(t.spec, t.replicate, ticket_lib.Stream.TWIN)
    progress, state = (saved["progress"], resume) if saved else (None, None)
    for p, state in training.train_sparse(t.spec, t.data, ticket, t.rewind_step, seed, resume):
        progress = vars(p)
        artifacts.save_twin(artifacts.twin_file(trial, level), state.step, state.weights, state.optimizer, progress)
    curve = instability.path(t.spec, t.data, t.model, first, state.weights, seed)
    artifacts.save_curve(artifacts.curve_file(trial, level), curve)
    return {**instability.columns(curve, progress, t.spec.instability.batchnorm),
            "twin_resumed_from_step": saved["step"] if saved else -1, "twin_seconds": time.perf_counter() - started}


def _finished_before() -> bool:
    """True when this trial already finished: its ticket is written, but Tune's saved state (from
    before a driver crash) did not record it. Re-report its last row instead of training again."""
    trial = _trial_dir()
    rows = artifacts.read_metrics(trial)
    if not (trial / artifacts.TICKET_FILE).exists() or not rows:
        return False
    tune.report({k: v for k, v in rows[-1].items() if k not in ("trial_id", "pid", "time", "format")})
    return True


def _trial_dir() -> Path:
    """The trial's dir in the experiment (storage path). Not `get_trial_dir()`: in a worker that Tune
    reuses for another trial that names a local staging dir instead."""
    return Path(tune.get_context().get_storage().trial_fs_path)


def train_ticket(config: dict, spec: dict, dense: DenseRefs) -> None:
    """One grid point (or one IMP control at one level): mask, rewind, masked training to the end
    of the dense schedule, reporting every epoch with a checkpoint; a restarted trial continues
    from its last finished epoch."""
    entered, worker_age = time.perf_counter(), process_age()
    if _finished_before():
        return
    chain_mask = _chain_mask(config, dense) if "level" in config and spec["pruning"]["mode"] == "imp" else None
    from tickets import training

    t = _setup(config, spec, dense)  # from here on t.dense: beside the dense run, `dense` had no snapshots yet
    ticket, base = _one_shot_ticket(t, config, chain_mask)
    saved = _restore()
    if saved is not None and any(not np.array_equal(saved["mask"][k], ticket.mask[k]) for k in ticket.mask):
        raise RuntimeError("the checkpoint's mask differs from the one recomputed from the dense run")
    resume = training.SparseState(saved["step"], saved["weights"], saved["optimizer"],
                                  rows_lib.EarlyStop(**saved["early_stop"])) if saved else None
    # Start-up cost: the worker's age on entry, which of its trials this is (the first pays for
    # imports and tracing) and the time from entry to the first training step, less any wait for
    # the dense run (a trial that started beside it was already warm then).
    base |= {"resumed_from_step": resume.step if resume else -1, "worker_age_seconds": worker_age,
             "worker_trial": _TRIALS_IN_PROCESS, "setup_seconds": time.perf_counter() - entered - t.waited}

    state = resume  # restarted after its last epoch's checkpoint: nothing left to train
    for progress, state in training.train_sparse(t.spec, t.data, ticket, t.rewind_step, t.seed, resume):
        seconds = time.perf_counter() - entered - t.waited
        _report({**base, **rows_lib.epoch_metrics(progress, state.early_stop), "trial_seconds": seconds},
                state, ticket.mask)
    if state is not None and instability.wanted(t.spec.instability.enabled, t.control, base["sparsity"]):
        # The last epoch's row again, with the instability analysis of the network it trained.
        _report({**_last_row(), **_twin(t, ticket, state.weights)}, state, ticket.mask)
    if state is not None:  # the ticket marks the trial finished: every report is in by now
        info = {**{k: base[k] for k in config_lib.GRID_KEYS}, "rewind_step": t.rewind_step,
                "spec_hash": t.spec.spec_hash(), "dense_hash": t.dense.dense_hash}
        if chain_mask is not None:  # an IMP control keeps its level's file beside the chain's
            artifacts.save_ticket(artifacts.level_file(_trial_dir(), base["level"]), ticket.mask, ticket.start,
                                  state.weights, info)
        artifacts.save_ticket(_trial_dir() / artifacts.TICKET_FILE, ticket.mask, ticket.start, state.weights, info)


def _one_shot_ticket(t: _Trial, config: dict, chain_mask: dict | None):
    """The trial's ticket -- a sparsity, an IMP level reached in one shot, an IMP control on its
    ticket chain's mask (`chain_mask`), or a transferred ticket -- and the metrics every row of the
    trial carries."""
    from tickets import ticket as ticket_lib

    dense = t.dense
    level = int(config["level"]) if "level" in config else None
    sparsity = float(config["sparsity"]) if "sparsity" in config else None
    reinitialised = False
    if t.control == "transfer":
        source = ray.get(dense.transfers[transfer_key(sparsity, t.rewind_epoch, t.replicate)])
        ticket, reinitialised = ticket_lib.transfer_ticket(t.spec, t.model, source, t.replicate)
    elif chain_mask is not None:
        rewind = ray.get(dense.snapshots[t.rewind_step])
        ticket = ticket_lib.control_ticket(t.spec, t.model, chain_mask, None, rewind, t.control, t.replicate, level)
    else:
        final, rewind = ray.get([dense.snapshots[dense.total_steps], dense.snapshots[t.rewind_step]])
        ticket = (ticket_lib.make_ticket(t.spec, t.model, final, rewind, sparsity, t.control, t.replicate)
                  if level is None else
                  ticket_lib.make_level_ticket(t.spec, t.model, final, rewind, level, t.control, t.replicate))
    base = {**_base_metrics(t, ticket), "classifier_reinitialised": reinitialised, "level": level}
    # The sparsity column is the grid's value, or for a level the sparsity that level reached.
    base["sparsity"] = base["actual_sparsity"] if sparsity is None else sparsity
    return ticket, base


CHAIN_POLL_S = 2.0


def _chain_mask(config: dict, dense: DenseRefs) -> dict:
    """The mask an IMP control trains: its ticket chain's (same rewind epoch and replicate) at the
    control's level, read from the chain's level file on the storage path. Controls are queued only
    once that file exists; one retried by --resume beside its retried chain waits for it here. A
    chain that failed for good fails its controls with its one-line error (before any import)."""
    experiment, level = _trial_dir().parent, int(config["level"])
    chain = {"rewind_epoch": float(config["rewind_epoch"]), "replicate": int(config["replicate"])}
    while True:
        path = artifacts.find_level(experiment, level, control="ticket", dense_hash=dense.dense_hash, **chain)
        if path is not None:
            return artifacts.load_ticket(path)["mask"]
        error = artifacts.chain_error(experiment, **chain)
        if error is not None:
            raise RuntimeError(f"the ticket chain (rewind epoch {chain['rewind_epoch']:g}, replicate "
                               f"{chain['replicate']}) failed before level {level}: {error}")
        time.sleep(CHAIN_POLL_S)


def train_imp(config: dict, spec: dict, dense: DenseRefs) -> None:
    """An IMP trial: a ticket chain, or a control trained on one level of its chain."""
    (train_ticket if "level" in config else train_imp_chain)(config, spec, dense)


def train_imp_chain(config: dict, spec: dict, dense: DenseRefs) -> None:
    """One IMP ticket chain (rewind epoch, replicate): prune, rewind and retrain level after level,
    reporting once per level with a checkpoint; a restarted chain continues at its next level."""
    if _finished_before():
        return
    from tickets import training
    from tickets import ticket as ticket_lib

    t = _setup(config, spec, dense)  # from here on t.dense: beside the dense run, `dense` had no snapshots yet
    final, rewind = ray.get([t.dense.snapshots[t.dense.total_steps], t.dense.snapshots[t.rewind_step]])
    levels = t.spec.pruning.num_levels()
    # Level 0 is the dense run: its final weights rank the first pruning. A checkpoint's step is its level.
    saved = _restore()
    first, trained, previous = (saved["step"] + 1, saved["weights"], saved["mask"]) if saved else (1, final, None)

    twins = instability.wanted(t.spec.instability.enabled, t.control, None)
    for level in range(first, levels + 1):
        ticket = ticket_lib.imp_level(t.spec, t.model, trained, previous, rewind)
        path = artifacts.level_file(_trial_dir(), level)
        # A chain restarted while the level's twin trained finds the level itself trained already.
        done = artifacts.load_ticket(path) if twins and path.is_file() else None
        if done is not None and all(np.array_equal(done["mask"][k], ticket.mask[k]) for k in ticket.mask):
            state, metrics = training.SparseState(0, done["final"], []), done["info"]["metrics"]
        else:
            last, state = None, None
            for progress, state in training.train_sparse(t.spec, t.data, ticket, t.rewind_step, t.seed):
                last = progress
            base = _base_metrics(t, ticket)
            metrics = {"sparsity": base["actual_sparsity"], **base, "level": level, "levels": levels,
                       "resumed_from_level": first - 1, **rows_lib.epoch_metrics(last, state.early_stop)}
            # Written before the report: the controls of this level are queued once it is reported.
            artifacts.save_ticket(path, ticket.mask, ticket.start, state.weights,
                                  {"level": level, "rewind_epoch": t.rewind_epoch, "control": t.control,
                                   "replicate": t.replicate, "spec_hash": t.spec.spec_hash(),
                                   "dense_hash": t.dense.dense_hash, "pid": os.getpid(), "metrics": metrics})
        if twins:
            metrics = {**metrics, **_twin(t, ticket, state.weights, level)}
        # Optimizer state restarts fresh at every level: the checkpoint keeps none.
        _report(metrics, dataclasses.replace(state, step=level, optimizer=[]), ticket.mask)
        trained, previous = state.weights, ticket.mask
    # ticket.npz marks a finished trial, as for one-shot trials: the chain's last level.
    shutil.copyfile(artifacts.level_file(_trial_dir(), levels), _trial_dir() / artifacts.TICKET_FILE)
