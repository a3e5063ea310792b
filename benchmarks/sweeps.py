"""Sweeps as users run them (`python -m tickets.sweep` subprocesses): one dense run per sweep (figure
2), one trial at a time with every CPU vs one-CPU slots side by side (3), a trial's start-up (4), and
the sweep against a hand-written Keras loop on the same grid (8)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.bench import PROGRAMS, Bench, cifar10, env, log
from benchmarks.training import ceiling, throughput
from tickets import artifacts


def sweep(bench: Bench, name: str, preset: str, overrides: list[str], dense_from: Path | None = None) -> dict:
    """`python -m tickets.sweep preset --set ...` to its end, and what it wrote. `dense_from`: an
    experiment whose finished dense run this one reuses (copied in, as a user re-running a grid
    would have it), so that only the trial phase and the fixed costs are timed."""
    exp = bench.storage / name
    if dense_from is not None:
        shutil.copytree(dense_from / artifacts.DENSE_DIR, exp / artifacts.DENSE_DIR)
        copied = artifacts.dense_starts(exp / artifacts.DENSE_DIR)
    argv = [sys.executable, "-m", "tickets.sweep", preset, "--storage-path", str(bench.storage), "--name", name,
            *(a for o in overrides for a in ("--set", o))]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env())
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"sweep {name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    trials = [artifacts.read_metrics(trial) for trial in artifacts.trial_dirs(exp)]
    manifest = artifacts.read_dense(exp / artifacts.DENSE_DIR)
    dense_runs = artifacts.dense_starts(exp / artifacts.DENSE_DIR)
    if dense_from is not None and dense_runs != copied:
        said = [line for line in proc.stdout.splitlines() if line.startswith("dense")]
        raise RuntimeError(f"sweep {name} trained its dense run again instead of reusing {dense_from}: {said}")
    return {"name": name, "exp": exp, "wall_s": wall, "trials": trials, "dense_runs": dense_runs,
            "dense_s": sum(m["seconds"] for m in manifest["metrics"]), "dense_epochs": len(manifest["metrics"]),
            "trial_epochs": sum(len(t) for t in trials), "trial_phase_s": trial_phase(trials)}


def trial_phase(trials: list[list[dict]]) -> float:
    """Seconds from the first trial's start to the last trial's end: every trial's start-up (a fresh
    worker's imports and tracing) and the slots' idle time included."""
    starts = [t[-1]["time"] - t[-1]["trial_seconds"] for t in trials]
    return max(t[-1]["time"] for t in trials) - min(starts)


def _grid(bench: Bench) -> list[str]:
    s = bench.size["sweep"]
    return [f"dense.epochs={s['dense_epochs']}", f"data.synthetic_size={{train: {s['train']}, test: 256}}",
            "search.control=[ticket]", "data.validation=0"]


def _points(bench: Bench) -> list[tuple[float, float]]:
    s = bench.size["sweep"]
    return [(p, r) for p in s["sparsity"] for r in s["rewind"]]


def _search(points) -> list[str]:
    return [f"search.sparsity={sorted({p for p, _ in points})}", f"search.rewind_epoch={sorted({r for _, r in points})}"]


def dense_sweep(bench: Bench) -> dict:
    """The grid as one sweep with the default resources: it trains the dense network, once."""
    def measure():
        log("sweep of the grid, its dense run included")
        return sweep(bench, "dense-once", "smoke", _grid(bench) + _search(_points(bench)))

    return bench.once("dense-sweep", measure)


# ---------------------------------------------------------------------------------------------
# Figure 2.


def dense_sharing(bench: Bench) -> dict:
    """Figure 2: dense runs in one sweep of the grid (1), beside the naive design that runs each grid
    point as a sweep of its own, dense run included. At `quick` size the naive design runs
    `naive_points` of the points and its wall time is that mean times the points."""
    ours, points = dense_sweep(bench), _points(bench)
    out = {"trials": len(ours["trials"]), "dense_runs": ours["dense_runs"], "measured": ours["dense_runs"],
           "epochs": ours["dense_epochs"] + ours["trial_epochs"], "wall_s": ours["wall_s"], "naive": None}
    k = bench.size["sweep"]["naive_points"]
    naive = []
    for p, r in points if k is None else points[:k]:
        log(f"naive design: a sweep of its own, dense run included, for sparsity {p}, rewind {r}")
        naive.append(sweep(bench, f"naive-{p}-{r}", "smoke", _grid(bench) + _search([(p, r)])))
    if naive:
        each = [n["wall_s"] for n in naive]
        out["naive"] = {"points": len(points), "points_run": len(naive), "wall_s_each": each,
                        "wall_s": statistics.mean(each) * len(points), "dense_runs_each": [n["dense_runs"] for n in naive],
                        "epochs": statistics.mean(n["dense_epochs"] + n["trial_epochs"] for n in naive) * len(points)}
        out["naive"]["ratio"] = out["naive"]["wall_s"] / ours["wall_s"]
    return out


# ---------------------------------------------------------------------------------------------
# Figures 3 and 4.


ARMS = ("one_at_a_time", "side_by_side")


def trial_phases(bench: Bench) -> dict:
    """The grid run `repeats` times each way, interleaved, all reusing `dense_sweep`'s dense run: one
    trial at a time with every CPU (`cpus_per_trial` = all), and on one-CPU slots side by side."""
    def measure():
        cpus = os.cpu_count() or 1
        shared, runs = dense_sweep(bench), {arm: [] for arm in ARMS}
        for i in range(bench.size["sweep"]["repeats"]):
            for arm, per_trial in zip(ARMS, (cpus, 1)):
                log(f"figure 3, run {i + 1}: trials {arm.replace('_', ' ')} ({per_trial} CPU(s) each)")
                runs[arm].append(sweep(bench, f"{arm}-{i}", "smoke", _grid(bench) + _search(_points(bench))
                                       + [f"resources.cpus_per_trial={per_trial}"], dense_from=shared["exp"]))
        return runs

    return bench.once("trial-phases", measure)


def _sweep_spec(bench: Bench, name: str, preset: str, overrides: list[str]) -> Path:
    """The spec a sweep of the figures runs, as a file (for the ceiling's training processes)."""
    from tickets import config

    path = bench.storage / f"{name}.yaml"
    path.write_text(config.load(preset, overrides).to_yaml())
    return path


def parallel_speedup(bench: Bench) -> dict:
    """Figure 3: the trial phase's wall time one trial at a time with every CPU over that of the
    same grid on one-CPU slots side by side (median of each, interleaved runs), beside the ceiling
    (the same model and batch in training processes outside Ray: `training.ceiling`) and the whole
    command's ratio (Ray start, Tune, results and report included; the dense run reused)."""
    runs = trial_phases(bench)
    spec = _sweep_spec(bench, "sweep", "smoke", _grid(bench) + _search(_points(bench)))
    limit = ceiling(bench, "sweep", spec)
    phase = {arm: [r["trial_phase_s"] for r in runs[arm]] for arm in ARMS}
    wall = {arm: [r["wall_s"] for r in runs[arm]] for arm in ARMS}
    med = {arm: statistics.median(phase[arm]) for arm in ARMS}
    out = {"cpus": os.cpu_count() or 1, "runs": len(phase[ARMS[0]]), "trials": len(runs[ARMS[0]][0]["trials"]),
           "trial_phase_s": phase, "wall_s": wall, "ceiling": limit["gain"], "ceiling_runs": limit,
           "whole_command": statistics.median(wall[ARMS[0]]) / statistics.median(wall[ARMS[1]]),
           "where": {arm: _where(runs[arm]) for arm in ARMS}}
    if out["trials"] < 2:
        out["measured"], out["not_measured"] = None, "one grid point: no trials ran side by side"
    else:
        out["measured"] = med[ARMS[0]] / med[ARMS[1]]
        out["of_ceiling"] = out["measured"] / limit["gain"]
    return out


def startups(run: dict) -> list[dict]:
    """Each trial's start-up in one sweep: its setup (imports, data and snapshot fetch, model build;
    near zero when Tune reuses the worker) plus what its first epoch took over the run's steady epoch
    (tracing, once per worker). The steady epoch is the median of every later epoch of the run's
    trials, so a one-epoch trial is judged like the others (none at all: the first epochs count whole)."""
    later = [r["epoch_seconds"] for rows in run["trials"] for r in rows[1:]]
    steady = statistics.median(later) if later else 0.0
    out = []
    for rows in run["trials"]:
        extra = max(0.0, rows[0]["epoch_seconds"] - steady)
        out.append({"setup_s": rows[0]["setup_seconds"], "first_epoch_extra_s": extra,
                    "startup_s": rows[0]["setup_seconds"] + extra, "reused_worker": rows[0]["worker_trial"] > 1,
                    "trial_s": rows[-1]["trial_seconds"]})
    return out


def _where(runs: list[dict]) -> dict:
    """Where a trial phase's time went: fresh workers' start-up and the steady epochs, medians over
    the runs' trials."""
    fresh = [t["startup_s"] for run in runs for t in startups(run) if not t["reused_worker"]]
    epochs = [r["epoch_seconds"] for run in runs for rows in run["trials"] for r in rows[1:]]
    epochs = epochs or [rows[0]["epoch_seconds"] for run in runs for rows in run["trials"]]
    return {"fresh_worker_startup_s": statistics.median(fresh) if fresh else None,
            "fresh_workers_per_run": len(fresh) / len(runs), "steady_epoch_s": statistics.median(epochs)}


def trial_overhead(bench: Bench, preset: str = "mobilenetv2-cifar10") -> dict:
    """Figure 4: start of a trial to its first trained step, over the trial's time, for the trials
    of figure 3's side-by-side runs.

    Start-up as `startups` defines it. Benchmark trials last seconds, so the fraction is also
    projected onto a trial of `preset` at the training speed figure 1 measured on this machine.
    """
    from tickets import config

    per_trial = [{**t, "fraction": t["startup_s"] / t["trial_s"]}
                 for run in trial_phases(bench)[ARMS[1]] for t in startups(run)]
    fresh = [t["startup_s"] for t in per_trial if not t["reused_worker"]]
    reused = [t["startup_s"] for t in per_trial if t["reused_worker"]]
    out = {"trials": per_trial, "measured": statistics.mean(t["fraction"] for t in per_trial),
           "fresh_worker_startup_s": statistics.mean(fresh) if fresh else None,
           "reused_worker_startup_s": statistics.mean(reused) if reused else None,
           "break_even_trial_s": max(fresh or reused) / 0.05}
    spec = config.load(preset)
    train_images = spec.data.subset.train if spec.data.subset and spec.data.subset.train else 50_000  # CIFAR-10
    trial_s = spec.dense.epochs * train_images / throughput(bench)["dense_images_per_s"]  # rewind 0, eval not counted
    out["projected"] = {"preset": preset, "trial_s": trial_s, "fresh_worker_fraction": max(fresh or reused) / trial_s}
    return out


# ---------------------------------------------------------------------------------------------
# Figure 8.


def sweep_vs_loop(bench: Bench) -> dict:
    """Figure 8: wall time of `python -m tickets.sweep` over that of `programs/hand_loop.py`, both
    processes started from scratch (imports and, for the sweep, Ray, Tune and the report included),
    on the same Conv-2 grid of CIFAR-10 images; `repeats` of each, interleaved, medians. Beside it
    the best ratio this machine allows (`machine_floor`): the loop's trial epochs sped up by what
    one-thread processes side by side gain over one all-thread process (`training.ceiling` on the
    sweep's Conv-2 and batch), its dense epochs not, and no fixed costs."""
    from tickets import config, data

    root = cifar10()
    if not (root / "train.parquet").exists():
        return {"skipped": f"no CIFAR-10 Parquet shards at {root} (set TICKETS_DATA_DIR)"}
    loop = bench.size["loop"]
    points = [[s, r] for s in loop["sparsity"] for r in loop["rewind"]]
    overrides = [f"data.path={root}", f"data.subset={{train: {loop['train']}, test: {loop['test']}}}",
                 f"dense.epochs={loop['epochs']}", "pruning.mode=oneshot", "pruning.scope=layerwise",
                 "pruning.rates={}", *_search(points),
                 "search.control=[ticket]", "search.replicate=[0]",
                 "data.validation=0", "report.match=final"]  # the loop holds nothing out: nothing to stop early on
    spec = config.load("conv2-cifar10", overrides)
    d = data.load(spec.data, spec.seed)  # the loop gets the same images, decoded (the sweep decodes them itself)
    arrays = bench.storage / "loop.npz"
    np.savez(arrays, x=d.train.images, y=d.train.labels, xt=d.test.images, yt=d.test.labels)
    grid = json.dumps({"epochs": loop["epochs"], "batch": spec.data.batch_size, "points": points,
                       "learning_rate": spec.dense.optimizer.learning_rate})
    loops, sweeps = [], []
    for i in range(loop["repeats"]):
        log(f"figure 8, run {i + 1}: hand-written loop, dense + {len(points)} trials one after another")
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(PROGRAMS / "hand_loop.py"), str(arrays), grid],
                              capture_output=True, text=True, env=env())
        if proc.returncode != 0:
            raise RuntimeError(f"hand-written loop failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        loops.append({"wall_s": time.perf_counter() - start, **json.loads(proc.stdout.strip().splitlines()[-1])})
        log(f"figure 8, run {i + 1}: the same grid through python -m tickets.sweep")
        sweeps.append(sweep(bench, f"versus-loop-{i}", "conv2-cifar10", overrides))
    limit = ceiling(bench, "conv2", _sweep_spec(bench, "conv2", "conv2-cifar10", overrides))
    trial_epochs = sum(loop["epochs"] - r for _, r in points)
    floor = (loop["epochs"] + trial_epochs / limit["gain"]) / (loop["epochs"] + trial_epochs)
    last = sweeps[-1]
    accuracy = {f"{r[-1]['sparsity']:g}/{r[-1]['rewind_epoch']:g}": r[-1]["test_accuracy"] for r in last["trials"]}
    manifest = artifacts.read_dense(last["exp"] / artifacts.DENSE_DIR)
    sweep_wall, loop_wall = [s["wall_s"] for s in sweeps], [lp["wall_s"] for lp in loops]
    return {"images": [loop["train"], loop["test"]], "epochs": loop["epochs"], "points": points,
            "runs": len(sweeps), "sweep_wall_s": sweep_wall, "loop_wall_s": loop_wall,
            "loop_inner_s": [lp["seconds"] for lp in loops], "sweep_dense_s": [s["dense_s"] for s in sweeps],
            "sweep_test_accuracy": {"dense": manifest["metrics"][-1]["test_accuracy"], **accuracy},
            "loop_test_accuracy": loops[-1]["test_accuracy"],
            "measured": statistics.median(sweep_wall) / statistics.median(loop_wall),
            "ceiling": limit["gain"], "ceiling_runs": limit, "machine_floor": floor}
