"""The Tune trainables: restore, train, report with a checkpoint.

One-shot (`train_ticket`), one grid point (sparsity or level, rewind epoch, control, replicate) per
trial: fetch the two dense snapshots it needs → mask → rewind → masked training, reporting every
epoch with a checkpoint, so a restarted trial continues from its last finished epoch.

IMP (`train_imp`): a ticket chain per (rewind epoch, replicate) prunes `rate` of the survivors →
rewinds → retrains, level after level, one report and one checkpoint per level, publishing each
level's mask (`train_imp_chain`); each control at each level is a trial of its own that trains the
chain's mask of that level (`train_ticket`), queued once the chain has reported it (`tickets.chains`).

Ray and Tune calls live here; what a trial computes lives in `tickets.trial`, which `_enter` imports
once `worker.start` has sized TensorFlow to the trial's CPUs.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from ray import tune

from tickets import artifacts, chains, grid, worker
from tickets import config as config_lib
from tickets import rows as rows_lib
from tickets.dense import DenseRefs

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


def train_ticket(config: dict, spec: dict, dense: DenseRefs, board=None) -> None:
    """One grid point (or one IMP control at one level, its chain's mask from the `chains.LevelBoard`):
    mask, rewind, masked training to the end of the dense schedule, reporting every epoch with a
    checkpoint; a restarted trial continues from its last finished epoch."""
    entered, worker_age = time.perf_counter(), process_age()
    if _finished_before():
        return
    # A control whose chain failed for good fails here, before any import.
    chain_mask = chains.chain_mask(board, config) if board is not None and not grid.is_chain(config) else None
    t, dense = _enter(config, spec, dense)
    waited = t.process["dense_wait_seconds"]
    saved = _restore()
    # A mask pruned at initialization is taken from the checkpoint on a restart: scored again on
    # another device (GPUs are not bit-reproducible), near-ties could fall the other way.
    known = saved["mask"] if saved is not None and grid.at_init(t.control) else None
    ticket, base = t.ticket(**_sources(t, dense, chain_mask), chain_mask=chain_mask, known_mask=known)
    if saved is not None and any(not np.array_equal(saved["mask"][k], ticket.mask[k]) for k in ticket.mask):
        raise RuntimeError("the checkpoint's mask differs from the one recomputed from the dense run")
    resume = t.state(saved) if saved else None
    # Start-up cost: the worker's age on entry, which of its trials this is (the first pays for
    # imports and tracing) and the time from entry to the first training step, less any wait for
    # the dense run (a trial that started beside it was already warm then).
    base |= {"resumed_from_step": resume.step if resume else -1, "worker_age_seconds": worker_age,
             "worker_trial": _TRIALS_IN_PROCESS, "setup_seconds": time.perf_counter() - entered - waited}

    state = resume  # restarted after its last epoch's checkpoint: nothing left to train
    for progress, state in t.train(ticket, resume):
        seconds = time.perf_counter() - entered - waited
        _report({**base, **rows_lib.epoch_metrics(progress, state.early_stop), "trial_seconds": seconds},
                state, ticket.mask)
    if state is None:
        return
    if t.wants_twin():
        # The last epoch's row again, with the instability analysis of the network it trained.
        _report({**_last_row(), **t.twin(ticket, state.weights, _trial_dir())}, state, ticket.mask)
    # The ticket marks the trial finished: every report is in by now.
    info = t.info(base)
    if chain_mask is not None:  # an IMP control keeps its level's file beside the chain's
        artifacts.save_ticket(artifacts.level_file(_trial_dir(), t.level), ticket.mask, ticket.start,
                              state.weights, info)
    artifacts.save_ticket(_trial_dir() / artifacts.TICKET_FILE, ticket.mask, ticket.start, state.weights, info)


def train_imp(config: dict, spec: dict, dense: DenseRefs, board) -> None:
    """An IMP trial: a ticket chain, or a control trained on one level of its chain."""
    (train_imp_chain if grid.is_chain(config) else train_ticket)(config, spec, dense, board)


def train_imp_chain(config: dict, spec: dict, dense: DenseRefs, board) -> None:
    """One IMP ticket chain (rewind epoch, replicate): prune, rewind and retrain level after level,
    reporting once per level with a checkpoint; a restarted chain continues at its next level."""
    if _finished_before():
        return
    t, dense = _enter(config, spec, dense)
    final, rewind = ray.get([dense.final, dense.snapshots[t.rewind_step]])
    total = t.spec.pruning.num_levels()
    # The dense run's final weights rank the first pruning. With twins, level 0 retrains the dense
    # network from the rewind point beside its twin: the instability analysis's dense baseline. A
    # checkpoint's step is its level.
    twins = t.wants_twin()
    saved = _restore()
    first = saved["step"] + 1 if saved else 0 if twins else 1
    trained, previous = (saved["weights"], saved["mask"]) if saved and saved["step"] > 0 else (final, None)
    for level in range(first, total + 1):
        ticket = t.imp_level(level, trained, previous, rewind)
        path = artifacts.level_file(_trial_dir(), level)
        # A chain restarted while the level's twin trained finds the level itself trained already.
        done = artifacts.load_ticket(path) if twins and path.is_file() else None
        if done is not None and all(np.array_equal(done["mask"][k], ticket.mask[k]) for k in ticket.mask):
            state, metrics = t.state({"step": 0, "weights": done["final"], "optimizer": []}), done["info"]["metrics"]
        else:
            last, state = None, None
            for progress, state in t.train(ticket):
                last = progress
            base = t.columns(ticket)
            metrics = {"sparsity": base["actual_sparsity"], **base, "level": level, "levels": total,
                       "resumed_from_level": saved["step"] if saved else 0, **rows_lib.epoch_metrics(last, state.early_stop)}
            artifacts.save_ticket(path, ticket.mask, ticket.start, state.weights,
                                  t.info(metrics, pid=os.getpid(), metrics=metrics))
        # On the board before the report: the controls of this level are queued once it is reported.
        if level > 0:
            ray.get(board.publish.remote(grid.chain_of(config), level, ticket.mask))
        if twins:
            metrics = {**metrics, **t.twin(ticket, state.weights, _trial_dir(), level)}
        # Optimizer state restarts fresh at every level: the checkpoint keeps none.
        _report(metrics, dataclasses.replace(state, step=level, optimizer=[]), ticket.mask)
        if level > 0:  # level 1 prunes the dense run's weights, not the baseline's retrained ones
            trained, previous = state.weights, ticket.mask
    # ticket.npz marks a finished trial, as for one-shot trials: the chain's last level.
    with artifacts.atomic(_trial_dir() / artifacts.TICKET_FILE) as tmp:  # never half a ticket
        shutil.copyfile(artifacts.level_file(_trial_dir(), total), tmp)


# ---------------------------------------------------------------------------------------------
# The trial's process, its inputs, and what it leaves with Tune.


def _enter(config: dict, spec: dict, dense: DenseRefs):
    """The trial in this process: (its `trial.Trial`, the dense refs with the snapshots in). A trial
    started beside the dense run (its board still open) traces its steps first, then waits (the
    seconds go in its rows); had the run already failed, it fails here, before any import."""
    global _TRIALS_IN_PROCESS
    answer, beside = None, False
    if dense.board is not None:
        answer = dense.board.wait.remote()
        beside = not ray.wait([answer], timeout=1.0)[0]
        if not beside:
            dense = dense.published(answer)
    spec_obj = config_lib.from_dict(spec)
    # Tune runs trials in actors of their own runtime env, whose worker processes only trials use:
    # this is the first TensorFlow call in the process, so the pools are the trial's CPUs.
    runtime = worker.start(spec_obj.resources.precision)
    from tickets import trial as trial_lib  # the training stack: after `worker.start`

    _TRIALS_IN_PROCESS += 1
    process = {"started_beside_dense": beside, "dense_wait_seconds": 0.0,
               "node_id": ray.get_runtime_context().get_node_id(),
               "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""), **runtime.row()}
    t = trial_lib.Trial(spec=spec_obj, data=ray.get(dense.data), point=config,
                        steps_per_epoch=dense.steps_per_epoch, dense_hash=dense.dense_hash, process=process)
    if beside:
        t.warm_up()  # on resources the dense run does not use: it trains at once when the snapshots come
        waiting = time.perf_counter()
        dense = dense.published(answer)
        t.process["dense_wait_seconds"] = time.perf_counter() - waiting
    return t, dense


def _sources(t, dense: DenseRefs, chain_mask: dict | None) -> dict:
    """The weights the trial's ticket is made from, fetched once each: a transferred ticket alone,
    an IMP control's rewind point (its mask is its chain's), the initialisation (rewind epoch 0) for
    a mask pruned at initialization, or the final weights and the rewind point."""
    if t.control == "transfer":
        key = grid.transfer_key(t.point["sparsity"], t.rewind_epoch, t.replicate)
        return {"source": ray.get(dense.transfers[key])}
    if chain_mask is not None:
        return {"rewind": ray.get(dense.snapshots[t.rewind_step])}
    if config_lib.split_control(t.control)[0] in config_lib.INIT_METHODS:  # pruned from the initialisation
        return {"rewind": ray.get(dense.snapshots[t.rewind_step])}
    final, rewind = ray.get([dense.final, dense.snapshots[t.rewind_step]])
    return {"final": final, "rewind": rewind}


def _restore() -> dict | None:
    """This trial's last checkpoint (`artifacts.load_state`), or None on a fresh start.

    One that cannot be read (cut short by a full disk, damaged) gives way to the one before it, else
    to the trial's start: the epochs after it train again, bit-identically on CPU, and their rows
    replace the ones reported before (`tickets.analysis` keeps an epoch's last report). The driver
    names it on `--resume` (`storage.repair_state`)."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    # The storage path is a local (or shared) directory: the checkpoint is read where it lies.
    state, used, broken = artifacts.state_or_earlier(Path(checkpoint.path))
    if broken is not None:
        print(f"note: {broken}; " + (f"continuing from {used.name}" if used else "training again from the start"),
              file=sys.stderr)
    return state


def _report(metrics: dict, state, mask: dict) -> None:
    """Append the row to the trial's own `metrics.jsonl`, then `tune.report` it with a checkpoint
    of `state` (a `training.SparseState`) and the mask.

    The trial writes its rows itself, straight into its dir on the storage path: they survive
    whatever happens to Tune's copy (a restarted trial's `result.json` can lose rows that were not
    yet synced from the driver's staging dir).
    """
    artifacts.append_metrics(_trial_dir(), rows_lib.recorded(metrics, tune.get_context().get_trial_id()))
    with tempfile.TemporaryDirectory() as d:
        artifacts.save_state(Path(d), state.step, state.weights, state.optimizer, mask,
                             dataclasses.asdict(state.early_stop))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _last_row() -> dict:
    """The trial's last reported row, as it was reported."""
    return rows_lib.as_reported(artifacts.read_metrics(_trial_dir())[-1])


def _finished_before() -> bool:
    """True when this trial already finished: its ticket is written, but Tune's saved state (from
    before a driver crash) did not record it. Re-report its last row instead of training again."""
    trial = _trial_dir()
    if not (trial / artifacts.TICKET_FILE).exists() or not artifacts.read_metrics(trial):
        return False
    tune.report(_last_row())
    return True


def _trial_dir() -> Path:
    """The trial's dir in the experiment (storage path). Not `get_trial_dir()`: in a worker that Tune
    reuses for another trial that names a local staging dir instead."""
    return Path(tune.get_context().get_storage().trial_fs_path)
