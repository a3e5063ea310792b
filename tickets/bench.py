"""`python -m tickets.bench`: the speed figures, each a ratio measured in one run.

  1. masked vs dense training step (MobileNetV2, same batch and in-memory data)    goal >= 0.95
  2. dense sharing: one sweep vs the naive design that retrains dense in each trial  goal: 1 dense run
  3. trials on 2 slots vs one at a time (one CPU each): training speed-up             goal >= 1.8
     (beside the ceiling: one-thread training processes side by side outside Ray)
  4. per-trial overhead: start of a trial to its first training step, of the trial  goal < 5 %
  5. scheduler scale: a grid of no-op trials that fetch a MobileNetV2 snapshot     goal < 0.2 s/trial
  6. input pipeline: decoded + augmented images/s vs images/s the model trains at   goal >= 3x
  7. GPU (only where one is present): 224 px training img/s, masked vs dense, mixed precision on/off
  8. the sweep vs a hand-written sequential Keras loop on the same grid (Conv-2, CIFAR-10) goal <= 0.8
  9. dense run, data-parallel: 1 replica's epoch time / 2 replicas' (logical CPU devices    reported
     here, GPUs where the machine has 2 or more)
 10. streamed ImageNet-like shards: images/s per core at 224 px with augmentation           goal >= 350
     (fused decode-and-crop), beside decoding whole images and cropping after
 11. peak RSS of a streaming process: growth from one data set to one 4x its size (MiB)  goal < 200
 12. cores one GPU trial's pipeline needs at the model's GPU rate (GPU only)              goal <= 8

Prints a table and writes JSON (`--out`, default bench.json). `--quick` runs every CPU figure in a
few minutes on 2 CPUs; `--tiny` only checks that every figure still runs. Sweeps run as
`python -m tickets.sweep` subprocesses, exactly as users run them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tickets import artifacts

SIZES = {
    # batch/steps/sparsities for figure 1, sweep grid for 2-4, grid points for 5, batches for 6, the
    # Conv-2 grid of 8 (CIFAR-10 images, epochs), images and epochs of 9's dense runs, the two data
    # set sizes (images) and batches streamed in 10-11
    "tiny": dict(batch=16, steps=2, repeats=1, masked=(0.95,), dense_epochs=1, sparsity=[0.5], rewind=[0],
                 noop=8, pipeline_batches=4, train=512,
                 loop=dict(train=600, test=120, epochs=2, sparsity=(0.9,), rewind=(0,)),
                 dp=(256, 1, "imagenet"), large=(200, 800, 3), scaling_steps=4),
    "quick": dict(batch=128, steps=24, repeats=4, masked=(0.0, 0.8, 0.95), dense_epochs=3, sparsity=[0.5, 0.9],
                  rewind=[0, 1], noop=1000, pipeline_batches=60, train=2048,
                  loop=dict(train=5000, test=1000, epochs=4), dp=(2048, 3, "cifar"), large=(1500, 6000, 40),
                  scaling_steps=40),
    "full": dict(batch=128, steps=40, repeats=3, masked=(0.0, 0.8, 0.95), dense_epochs=6,
                 sparsity=[0.5, 0.8, 0.9, 0.95], rewind=[0, 1], noop=1000, pipeline_batches=200, train=4096,
                 loop=dict(train=10000, test=2000, epochs=6), dp=(4096, 3, "cifar"), large=(2000, 8000, 60),
                 scaling_steps=80),
}


_START = time.monotonic()


def log(message: str) -> None:
    elapsed = int(time.monotonic() - _START)
    print(f"[bench {elapsed // 60}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# 1 and 7: training-step throughput, masked vs dense.


def step_throughput(size: int, batch: int, steps: int, repeats: int, sparsities=(0.0, 0.8, 0.95),
                    mixed_precision: bool = False, width: float = 0.35) -> dict:
    """Images/s of plain Keras training of MobileNetV2 and of masked training at each sparsity.

    Every model is built and traced first, then timed in interleaved rounds (dense, masked 0 %,
    masked 80 %, ... , dense, ...) keeping each one's best: a noisy neighbour or a CPU clock change
    then hits every variant alike instead of skewing the ratio.
    """
    import keras

    from tickets import masks, models, training
    from tickets.config import DenseSpec, ModelSpec

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
    keras.backend.clear_session()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * steps, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, size=batch * steps).astype("int32")
    spec = DenseSpec(epochs=1)

    def build(sparsity):
        model = models.build(ModelSpec(width=width), (size, size, 3), 10, seed=0)
        if sparsity is not None:  # masked: a magnitude mask installed as the training constraint
            names = models.prunable_variables(model, ("first_conv", "classifier"))
            w = models.get_weights(model)
            mask, _ = masks.magnitude_mask({n: w[n] for n in names}, sparsity)
            training.install_mask(model, mask)
        training.compile_model(model, training.make_optimizer(spec, steps))
        model.fit(x[: batch * 2], y[: batch * 2], batch_size=batch, epochs=1, verbose=0, shuffle=False)  # trace
        return model

    variants = {"dense": build(None), **{f"{s:g}": build(s) for s in sparsities}}
    best = dict.fromkeys(variants, 0.0)
    for _ in range(repeats):
        for name, model in variants.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
            best[name] = max(best[name], batch * steps / (time.perf_counter() - start))
    dense = best.pop("dense")
    out = {"image_size": size, "batch": batch, "steps": steps, "rounds": repeats, "mixed_precision": mixed_precision,
           "dense_images_per_s": dense,
           "masked": {name: {"images_per_s": rate, "ratio": rate / dense} for name, rate in best.items()}}
    out["ratio"] = min(v["ratio"] for v in out["masked"].values())
    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session()
    return out


# ---------------------------------------------------------------------------------------------
# 2, 3, 4: sweeps.


def _sweep(storage: Path, name: str, size: dict, extra: list[str]) -> dict:
    argv = [sys.executable, "-m", "tickets.sweep", "smoke", "--storage-path", str(storage), "--name", name,
            "--set", f"dense.epochs={size['dense_epochs']}",
            "--set", f"data.synthetic_size={{train: {size['train']}, test: 256}}", "--set", "search.control=[ticket]",
            "--set", "data.validation=0", *extra]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"sweep {name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    exp = storage / name
    trials = [artifacts.read_metrics(trial) for trial in artifacts.trial_dirs(exp)]
    manifest = artifacts.read_dense(exp / artifacts.DENSE_DIR)
    return {"wall": wall, "trials": trials, "dense_runs": artifacts.dense_starts(exp / artifacts.DENSE_DIR),
            "dense_seconds": sum(m["seconds"] for m in manifest["metrics"]),
            "dense_epochs": len(manifest["metrics"]), "trial_epochs": sum(len(t) for t in trials)}


def sweeps(size: dict, storage: Path, naive_design: bool = True) -> dict:
    grid = ["--set", f"search.sparsity={size['sparsity']}", "--set", f"search.rewind_epoch={size['rewind']}"]
    log("sweep, trials one at a time")
    sequential = _sweep(storage, "sequential", size, grid + ["--set", "resources.max_concurrent_trials=1"])
    naive = {"wall": 0.0, "dense_runs": 0, "epochs": 0}
    if len(size["sparsity"]) * len(size["rewind"]) == 1:
        # --tiny's one grid point: in parallel, or in the naive design, it is the same command again.
        naive.update(wall=sequential["wall"], dense_runs=sequential["dense_runs"],
                     epochs=sequential["dense_epochs"] + sequential["trial_epochs"])
        return {"sequential": sequential, "parallel": sequential, "naive": naive}
    log("sweep, trials in parallel")
    parallel = _sweep(storage, "parallel", size, grid)
    for s in size["sparsity"] if naive_design else ():  # figure 2 alone needs it
        for r in size["rewind"]:
            log(f"naive design: its own dense run for sparsity {s}, rewind {r}")
            one = _sweep(storage, f"naive-{s}-{r}", size,
                         ["--set", f"search.sparsity=[{s}]", "--set", f"search.rewind_epoch=[{r}]"])
            naive["wall"] += one["wall"]
            naive["dense_runs"] += one["dense_runs"]
            naive["epochs"] += one["dense_epochs"] + one["trial_epochs"]
    return {"sequential": sequential, "parallel": parallel, "naive": naive}


def dense_sharing(runs: dict) -> dict:
    ours = runs["sequential"]
    return {"trials": len(ours["trials"]), "dense_runs": ours["dense_runs"], "naive_dense_runs": runs["naive"]["dense_runs"],
            "epochs": ours["dense_epochs"] + ours["trial_epochs"], "naive_epochs": runs["naive"]["epochs"],
            "wall_s": ours["wall"], "naive_wall_s": runs["naive"]["wall"],
            "ratio": runs["naive"]["wall"] / ours["wall"]}


def _trial_phase(trials: list[list[dict]]) -> float:
    """Seconds from the first trial's start to the last trial's end."""
    starts = [t[-1]["time"] - t[-1]["trial_seconds"] for t in trials]
    return max(t[-1]["time"] for t in trials) - min(starts)


def _steady_epoch_s(trials: list[list[dict]]) -> float:
    """Median seconds of the trials' epochs after each one's first (which pays for tracing); of
    every epoch when the trials train one each (`--tiny`)."""
    later = [r["epoch_seconds"] for rows in trials for r in rows[1:]]
    return statistics.median(later or [r["epoch_seconds"] for rows in trials for r in rows])


def parallel_efficiency(runs: dict, slots: int, scaling: dict | None) -> dict:
    """What `slots` slots give over one trial at a time (one CPU per trial either way).

    Measured: the speed-up of trial training, `slots` x the median epoch time one at a time over
    that of trials side by side: what running trials in parallel delivers, or loses to threads
    that fight over the cores. Beside it, the trial phase's wall-time speed-up (first trial start to
    last end), which also holds each fresh worker's start-up (figure 4: paid once per worker and
    amortised by trials of realistic length, not by the seconds-long trials here), and the whole
    command's, which also holds the dense run and the fixed costs (Ray start, the dense worker's
    imports, Tune start, results and report). `scaling` (`machine_scaling`) is what one-thread
    processes side by side reach on this machine outside Ray: the ceiling.
    """
    par, seq = runs["parallel"], runs["sequential"]
    trial_seconds = [t[-1]["trial_seconds"] for t in par["trials"]]
    ideal = par["dense_seconds"] + sum(trial_seconds) / slots
    phase, seq_phase = _trial_phase(par["trials"]), _trial_phase(seq["trials"])
    epoch_s, seq_epoch_s = _steady_epoch_s(par["trials"]), _steady_epoch_s(seq["trials"])
    out = {"slots": slots, "sequential_wall_s": seq["wall"], "parallel_wall_s": par["wall"],
           "speedup": seq["wall"] / par["wall"], "ideal_s": ideal, "efficiency": ideal / par["wall"],
           "fixed_s": par["wall"] - par["dense_seconds"] - phase, "trial_phase_s": phase,
           "sequential_trial_phase_s": seq_phase, "trial_phase_speedup": seq_phase / phase,
           "trial_phase_efficiency": sum(trial_seconds) / slots / phase,
           "epoch_s": epoch_s, "sequential_epoch_s": seq_epoch_s, "measured": slots * seq_epoch_s / epoch_s}
    if par is seq:  # --tiny's one grid point: nothing ran side by side, so there is nothing to measure
        out["measured"] = None
        out["not_measured"] = "one grid point (--tiny): no trials ran side by side"
    if scaling:
        out |= {"machine_ceiling": slots * scaling["slot_efficiency"], "scaling": scaling}
    return out


# The one-thread vs all-threads training rates behind figures 3 and 8, outside Ray and tickets:
# Conv-2 (figure 8's model) on generated 32 px images, batch 60, TensorFlow's pools set first.
SCALING_CHILD = r"""
import json, sys, time
threads, steps = int(sys.argv[1]), int(sys.argv[2])
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
import keras, numpy as np
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, (60 * steps, 32, 32, 3)).astype("float32")
y = rng.integers(0, 10, 60 * steps)
inputs = keras.Input((32, 32, 3))
h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(inputs)
h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
h = keras.layers.Flatten()(keras.layers.MaxPooling2D(2)(h))
h = keras.layers.Dense(256, activation="relu")(keras.layers.Dense(256, activation="relu")(h))
model = keras.Model(inputs, keras.layers.Dense(10)(h))
model.compile(keras.optimizers.Adam(2e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x[:120], y[:120], batch_size=60, verbose=0)
print("ready", flush=True)
for _ in sys.stdin:  # one timed epoch per line; processes side by side are told to start together
    start = time.perf_counter()
    model.fit(x, y, batch_size=60, verbose=0)
    print(json.dumps({"images_per_s": len(x) / (time.perf_counter() - start)}), flush=True)
"""


def machine_scaling(steps: int, rounds: int = 3) -> dict:
    """What trials side by side can gain on this machine: one one-thread training process alone,
    `cpus` of them side by side, and one with all the threads (the hand-written loop's way). Each
    is timed `rounds` times, interleaved, and its best round kept: this machine's CPUs are shared
    with others, and a round that lost a CPU to them measures that, not the machine."""
    cpus = os.cpu_count() or 1
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    groups = {"alone": [1], "side": [1] * cpus, "whole": [cpus]}
    procs = {name: [subprocess.Popen([sys.executable, "-c", SCALING_CHILD, str(n), str(steps)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env) for n in threads]
             for name, threads in groups.items()}
    best: dict[str, list[float]] = {name: [0.0] * len(ps) for name, ps in procs.items()}
    try:
        for p in (p for ps in procs.values() for p in ps):
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a figure 3/8 scaling process failed before training")
        for _ in range(rounds):
            for name, ps in procs.items():  # one group at a time; the others wait idle
                for p in ps:
                    p.stdin.write("go\n")
                    p.stdin.flush()
                lines = [p.stdout.readline() for p in ps]
                if not all(lines):
                    raise RuntimeError("a figure 3/8 scaling process died while training")
                rates = [json.loads(line)["images_per_s"] for line in lines]
                if sum(rates) > sum(best[name]):
                    best[name] = rates
    finally:
        for p in (p for ps in procs.values() for p in ps):
            p.kill()
            p.wait()
    alone, side, whole = best["alone"][0], best["side"], best["whole"][0]
    return {"rounds": rounds, "one_thread_images_per_s": alone, "side_by_side_images_per_s": side,
            "all_threads_images_per_s": whole, "slot_efficiency": statistics.mean(side) / alone,
            "packing_gain": sum(side) / whole}


def trial_overhead(runs: dict, model_images_per_s: float | None, preset: str = "mobilenetv2-cifar10") -> dict:
    """Start of a trial to its first trained step, over the trial's time.

    Start-up is the trial's setup (imports, data and snapshot fetch, model build; near zero when
    Tune reuses the worker) plus what its first epoch took over the later ones (tracing the train
    step, once per worker). Benchmark trials last seconds, so the fraction is also projected onto
    a trial of `preset` at the training speed figure 1 measured on this machine.
    """
    from tickets import config

    per_trial = []
    for rows in runs["parallel"]["trials"]:
        epochs = [r["epoch_seconds"] for r in rows]
        steady = statistics.median(epochs[1:]) if len(epochs) > 1 else 0.0
        first_extra = max(0.0, epochs[0] - steady)
        startup = rows[0]["setup_seconds"] + first_extra
        per_trial.append({"setup_s": rows[0]["setup_seconds"], "first_epoch_extra_s": first_extra,
                          "startup_s": startup, "reused_worker": rows[0]["worker_trial"] > 1,
                          "trial_s": rows[-1]["trial_seconds"], "fraction": startup / rows[-1]["trial_seconds"]})
    fresh = [t["startup_s"] for t in per_trial if not t["reused_worker"]]
    reused = [t["startup_s"] for t in per_trial if t["reused_worker"]]
    out = {"trials": per_trial, "ratio": statistics.mean(t["fraction"] for t in per_trial),
           "fresh_worker_startup_s": statistics.mean(fresh) if fresh else None,
           "reused_worker_startup_s": statistics.mean(reused) if reused else None,
           "break_even_trial_s": max(fresh or reused) / 0.05}
    if model_images_per_s:
        spec = config.load(preset)
        train_images = (spec.data.subset.train if spec.data.subset and spec.data.subset.train else 50_000)  # CIFAR-10
        trial_s = spec.dense.epochs * train_images / model_images_per_s  # a rewind-0 trial, eval not counted
        out["projected"] = {"preset": preset, "trial_s": trial_s,
                            "fresh_worker_fraction": max(fresh or reused) / trial_s}
    return out


# ---------------------------------------------------------------------------------------------
# 5: scheduler scale.


def noop_trial(config: dict, snapshot: dict) -> None:
    """A trial that only fetches `snapshot` (`tune.with_parameters` does) and reports once."""
    from ray import tune

    from tickets.trainable import process_age

    tune.report({"point": config["point"], "weights": len(snapshot), "worker_age_seconds": process_age()})


def run_noop_grid(points: int, snapshot: dict, storage: Path, reuse_actors: bool = True) -> dict:
    """A `points`-point grid of `noop_trial`s in the Ray this process is connected to: wall seconds
    and error count, the scheduler's own cost per trial."""
    from ray import tune

    tuner = tune.Tuner(tune.with_resources(tune.with_parameters(noop_trial, snapshot=snapshot), {"cpu": 1}),
                       param_space={"point": tune.grid_search(list(range(points)))},
                       tune_config=tune.TuneConfig(reuse_actors=reuse_actors),
                       run_config=tune.RunConfig(name="noop", storage_path=str(storage), verbose=0))
    start = time.perf_counter()
    results = tuner.fit()
    return {"seconds": time.perf_counter() - start, "trials": len(results), "errors": len(results.errors)}


def scheduler_scale(points: int, storage: Path) -> dict:
    import ray

    from tickets import models, session
    from tickets.config import ModelSpec

    snapshot = models.get_weights(models.build(ModelSpec(width=0.35), (32, 32, 3), 10, seed=0))
    size_mb = sum(v.nbytes for v in snapshot.values()) / 2**20
    session.init_local(os.cpu_count(), None, dashboard=False, log_to_driver=False)
    try:
        before = _rss_mb()
        result = run_noop_grid(points, snapshot, storage)
        after = _rss_mb()
    finally:
        ray.shutdown()
    return {"points": points, "snapshot_mb": size_mb, "seconds": result["seconds"], "errors": result["errors"],
            "ratio": result["seconds"] / points, "driver_rss_mb_before": before, "driver_rss_mb_after": after}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------
# 6: input pipeline.


def _cifar10() -> Path:
    """Where figures 6 and 8 read the real CIFAR-10 shards (beside the checkout unless set)."""
    return Path(os.environ.get("TICKETS_DATA_DIR", "../shared/data")) / "cifar10"


def input_pipeline(batches: int, batch: int, model_images_per_s: float | None) -> dict:
    from tickets import data
    from tickets.config import DataSpec, SubsetSpec

    root = _cifar10()
    if not (root / "train.parquet").exists():
        return {"skipped": f"no CIFAR-10 Parquet shards at {root} (set TICKETS_DATA_DIR)"}
    out = {}
    spec = DataSpec(dataset="cifar10", path=str(root), batch_size=batch, augment=True,
                    subset=SubsetSpec(train=max(batch * batches, 1000), test=100))
    # Half the decoded pixels: too little to decode them once, enough to stream these class-sorted
    # shards shuffled whole (their JPEGs are a third of the pixels' size).
    streamed_budget = spec.subset.train * 32 * 32 * 3 // 2
    for mode, cache_bytes in (("decode_each_epoch", streamed_budget), ("decoded_once", data.DECODE_CACHE_BYTES)):
        saved, data.DECODE_CACHE_BYTES = data.DECODE_CACHE_BYTES, cache_bytes
        try:
            start = time.perf_counter()
            d = data.load(spec, seed=0)
            load_s = time.perf_counter() - start
        finally:
            data.DECODE_CACHE_BYTES = saved
        ds = data.train_batches(d, spec, seed=0, start_step=0, num_steps=batches)
        iterator = iter(ds)
        next(iterator)  # pipeline start-up
        start = time.perf_counter()
        n = 1
        for _ in iterator:
            n += 1
        rate = (n - 1) * batch / (time.perf_counter() - start)
        out[mode] = {"images_per_s": rate, "load_s": load_s, "kind": d.train.kind}
    slowest = min(v["images_per_s"] for v in out.values())
    out["model_images_per_s"] = model_images_per_s
    out["ratio"] = slowest / model_images_per_s if model_images_per_s else None
    return out


# ---------------------------------------------------------------------------------------------
# 8: the sweep against the loop a researcher writes by hand.

# What a researcher writes without tickets: plain Keras, dense once (keeping the rewind epochs'
# weights), then every grid point one after another, each with all the machine's cores, evaluating
# on the test set every epoch as the sweep does. Per-layer magnitude masks held by a kernel
# constraint (as cheap as the sweep's), a fresh optimizer per trial.
HAND_WRITTEN_LOOP = r"""
import json, sys, time
import numpy as np, keras

start = time.perf_counter()
arrays, grid = np.load(sys.argv[1]), json.loads(sys.argv[2])
x, y, xt, yt = (arrays[k] for k in ("x", "y", "xt", "yt"))
x, xt = (a.astype("float32") / 127.5 - 1.0 for a in (x, xt))
epochs, batch, lr = grid["epochs"], grid["batch"], grid["learning_rate"]

class Mask(keras.constraints.Constraint):
    def __init__(self, mask):
        self.mask = mask
    def __call__(self, w):
        return w * self.mask

def conv2(masks=None):
    masks = masks or {}
    c = lambda name: Mask(masks[name]) if name in masks else None
    inputs = keras.Input(x.shape[1:])
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu", kernel_constraint=c(0))(inputs)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu", kernel_constraint=c(2))(h)
    h = keras.layers.Flatten()(keras.layers.MaxPooling2D(2)(h))
    h = keras.layers.Dense(256, activation="relu", kernel_constraint=c(4))(h)
    h = keras.layers.Dense(256, activation="relu", kernel_constraint=c(6))(h)
    model = keras.Model(inputs, keras.layers.Dense(10, kernel_constraint=c(8))(h))
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model

keras.utils.set_random_seed(0)
model = conv2()
weights = {0: model.get_weights()}
for epoch in range(1, epochs + 1):
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, validation_data=(xt, yt))
    weights[epoch] = model.get_weights()
accuracies = {"dense": model.evaluate(xt, yt, verbose=0)[1]}
final = weights[epochs]
for sparsity, rewind in grid["points"]:
    masks = {}
    for i in (0, 2, 4, 6, 8):  # the kernels
        order = np.argsort(np.abs(final[i]), axis=None, kind="stable")
        keep = np.ones(final[i].size, dtype="float32")
        keep[order[: round(sparsity * final[i].size)]] = 0.0
        masks[i] = keep.reshape(final[i].shape)
    model = conv2(masks)
    model.set_weights([w * masks[i] if i in masks else w for i, w in enumerate(weights[rewind])])
    history = model.fit(x, y, batch_size=batch, epochs=epochs - rewind, verbose=0, validation_data=(xt, yt))
    accuracies[f"{sparsity}/{rewind}"] = history.history["val_accuracy"][-1]
print(json.dumps({"seconds": time.perf_counter() - start, "test_accuracy": accuracies}))
"""


def sweep_vs_loop(size: dict, storage: Path, scaling: dict) -> dict:
    """Wall time of `python -m tickets.sweep` over wall time of `HAND_WRITTEN_LOOP`, both processes
    started from scratch (imports and, for the sweep, Ray, Tune and the report included), on the same
    Conv-2 grid of CIFAR-10 images. Beside it, the best ratio this machine allows: the loop's
    trial epochs sped up by what one-thread trials side by side gain over one all-thread run
    (`scaling`), its dense epochs not, no fixed costs."""
    from tickets import config, data

    root = _cifar10()
    if not (root / "train.parquet").exists():
        return {"skipped": f"no CIFAR-10 Parquet shards at {root} (set TICKETS_DATA_DIR)"}
    loop = size["loop"]
    points = [[s, r] for s in loop.get("sparsity", (0.5, 0.9)) for r in loop.get("rewind", (0, 1))]
    overrides = [f"data.path={root}", f"data.subset={{train: {loop['train']}, test: {loop['test']}}}",
                 f"dense.epochs={loop['epochs']}", "pruning.mode=oneshot", "pruning.scope=layerwise",
                 "pruning.rates={}",
                 f"search.sparsity={sorted({s for s, _ in points})}",
                 f"search.rewind_epoch={sorted({r for _, r in points})}",
                 "search.control=[ticket]", "search.replicate=[0]", "data.validation=0"]  # the hand-written loop holds nothing out
    spec = config.load("conv2-cifar10", overrides)
    d = data.load(spec.data, spec.seed)  # the loop gets the same images, decoded (the sweep decodes them itself)
    arrays = storage / "loop.npz"
    np.savez(arrays, x=d.train.images, y=d.train.labels, xt=d.test.images, yt=d.test.labels)
    grid = {"epochs": loop["epochs"], "batch": spec.data.batch_size, "points": points,
            "learning_rate": spec.dense.optimizer.learning_rate}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    log(f"hand-written loop: dense + {len(points)} trials one after another")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", HAND_WRITTEN_LOOP, str(arrays), json.dumps(grid)],
                          capture_output=True, text=True, env=env)
    loop_wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"hand-written loop failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    hand = json.loads(proc.stdout.strip().splitlines()[-1])
    log("the same grid through python -m tickets.sweep")
    argv = [sys.executable, "-m", "tickets.sweep", "conv2-cifar10", "--storage-path", str(storage),
            "--name", "versus-loop"] + [a for o in overrides for a in ("--set", o)]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    sweep_wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    exp = storage / "versus-loop"
    manifest = artifacts.read_dense(exp / artifacts.DENSE_DIR)
    rows = {f"{r[-1]['sparsity']:g}/{r[-1]['rewind_epoch']:g}": r for r in map(artifacts.read_metrics,
                                                                           artifacts.trial_dirs(exp))}
    trials = {point: r[-1]["test_accuracy"] for point, r in rows.items()}
    trial_epochs = sum(loop["epochs"] - r for _, r in points)
    floor = (loop["epochs"] + trial_epochs / scaling["packing_gain"]) / (loop["epochs"] + trial_epochs)
    return {"images": [loop["train"], loop["test"]], "epochs": loop["epochs"], "points": points,
            "sweep_wall_s": sweep_wall, "loop_wall_s": loop_wall, "loop_inner_s": hand["seconds"],
            "sweep_dense_s": sum(m["seconds"] for m in manifest["metrics"]),
            # how the machine scales: the dense epochs on all cores, each trial's on one beside another
            "sweep_dense_epoch_s": [m["seconds"] for m in manifest["metrics"]],
            "sweep_trial_epoch_s": {point: [x["epoch_seconds"] for x in r] for point, r in rows.items()},
            "sweep_test_accuracy": {"dense": manifest["metrics"][-1]["test_accuracy"], **trials},
            "loop_test_accuracy": hand["test_accuracy"], "ratio": sweep_wall / loop_wall,
            "packing_gain": scaling["packing_gain"], "machine_floor": floor, "scaling": scaling}


# ---------------------------------------------------------------------------------------------
# 9: the dense run, data-parallel.

DENSE_RUN = r"""
import json, sys, time
from tickets import config, data, training
from tickets import runtime as runtime_lib
runtime = runtime_lib.configure(int(sys.argv[2]), replicas=int(sys.argv[3]))
spec = config.load(sys.argv[1])
d = data.load(spec.data, spec.seed)
trajectory = training.train_dense(spec, d)
print(json.dumps({"epoch_seconds": [m["seconds"] for m in trajectory.metrics],
                  "replicas": trajectory.runtime["replicas"],
                  "test_accuracy": trajectory.metrics[-1]["test_accuracy"]}))
"""


def dense_data_parallel(size: dict, storage: Path, gpus: int) -> dict:
    """Epoch time of the dense run (MobileNetV2, synthetic images) on 1 replica over
    that on 2: two GPUs where the machine has them, else two logical CPU devices sharing the cores.
    The first epoch (tracing) is left out."""
    from tickets import config

    images, epochs, strides = size["dp"]
    spec = config.load("smoke", [f"model.strides={strides}", f"dense.epochs={epochs}", "data.batch_size=128",
                                 f"data.synthetic_size={{train: {images}, test: 256}}", "search.rewind_epoch=[0]",
                                 "data.validation=0"])
    path = storage / "dense-dp.yaml"
    path.write_text(spec.to_yaml())
    runs = {}
    for replicas in (1, 2):
        log(f"dense run on {replicas} replica(s) ({'GPUs' if gpus >= 2 else 'logical CPU devices'})")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        if gpus < 2:  # one GPU cannot hold two replicas: both runs on the CPUs
            env["CUDA_VISIBLE_DEVICES"] = ""
        proc = subprocess.run([sys.executable, "-c", DENSE_RUN, str(path), str(os.cpu_count() or 1), str(replicas)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"dense run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        runs[replicas] = json.loads(proc.stdout.strip().splitlines()[-1])
    steady = {r: statistics.median(v["epoch_seconds"][1:] or v["epoch_seconds"]) for r, v in runs.items()}
    return {"devices": "GPU" if gpus >= 2 else "logical CPU", "images": images, "epochs": epochs,
            "epoch_s_1": steady[1], "epoch_s_2": steady[2], "runs": runs, "ratio": steady[1] / steady[2]}


# ---------------------------------------------------------------------------------------------
# 10-12: ImageNet-scale data, streamed from shards.


def imagenet_like_shards(root: Path, rows: int, classes: int = 100, distinct: int = 40, rows_per_group: int = 200,
                         rows_per_shard: int = 1000) -> Path:
    """train/ and val/ Parquet shards of `rows` ImageNet-like JPEGs (256-400 px a side, about 40 KB
    each, as ILSVRC's average), fast to make: `distinct` images repeat in a random order (stored
    without Parquet's dictionary, so the bytes really are there), labels spread over `classes`."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(1)
    images = []
    for _ in range(distinct):
        h, w = rng.integers(256, 401, 2)
        coarse = rng.uniform(0, 255, (h // 16 + 1, w // 16 + 1, 3))
        pixels = np.kron(coarse, np.ones((16, 16, 1)))[:h, :w] + rng.normal(0, 20, (h, w, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=85)
        images.append(buf.getvalue())
    for split, n in (("train", rows), ("val", max(classes, rows // 20))):
        (root / split).mkdir(parents=True, exist_ok=True)
        which, labels = rng.integers(0, distinct, n), np.arange(n) % classes
        rng.shuffle(labels)
        for k, start in enumerate(range(0, n, rows_per_shard)):
            part = slice(start, start + rows_per_shard)
            pq.write_table(pa.table({"image": [images[i] for i in which[part]],
                                     "label": pa.array(labels[part], pa.int32())}),
                           root / split / f"{split}-{k:05d}.parquet", row_group_size=rows_per_group,
                           compression="none", use_dictionary=False)
    return root


# One process, one core (TensorFlow's pools and tf.data's private pool of 1 thread): images/s of the
# product's streamed pipeline (fused decode-and-crop) and of the same stream cropping after a full
# decode, at 224 px with augmentation; then the process's peak RSS.
STREAM_RUN = r"""
import json, sys, time
import numpy as np, tensorflow as tf
from tickets import data, stream
from tickets.config import DataSpec

root, size, batches, modes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
spec = DataSpec(dataset="parquet", path=root, image_size=size, batch_size=32, augment=True)
d = data.load(spec, seed=0)
assert d.train.kind == "streamed", d.train.kind

def decode_then_crop():
    split, n = d.train, len(d.train)
    order, windows = stream.epoch_order(split.shards, split.images, 0, 0, spec.shuffle_buffer)
    seeds = np.stack([np.zeros(n), np.arange(n)], axis=1).astype(np.int64)
    def prepare(x, label, s):
        s1, s2 = tf.unstack(tf.random.experimental.stateless_split(s, 2))
        image = tf.io.decode_image(x, channels=3, expand_animations=False)
        image = data._random_resized_crop(image, "decoded", s1, size)
        return data._to_float(tf.image.stateless_random_flip_left_right(image, seed=s2)), label
    ds = data._elements(split, order, seeds, windows).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return data._sized(ds.batch(32, drop_remainder=True).prefetch(tf.data.AUTOTUNE), 1)

out = {}
for mode in modes:
    ds = (data.train_batches(d, spec, seed=0, start_step=0, num_steps=batches + 1, threads=1) if mode == "fused"
          else decode_then_crop().take(batches + 1))
    it = iter(ds)
    next(it)  # start-up
    start, n = time.perf_counter(), 0
    for x, _ in it:
        n += int(x.shape[0])
    out[mode] = n / (time.perf_counter() - start)
# VmHWM: this process's own peak (ru_maxrss would carry the parent's over from before exec).
out["peak_rss_mb"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps(out))
"""


def _stream_child(root: Path, size: int, batches: int, modes: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", STREAM_RUN, str(root), str(size), str(batches), modes],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"streaming run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _large(storage: Path, rows: int) -> Path:
    root = storage / f"large-{rows}"
    return root if root.exists() else imagenet_like_shards(root, rows)


def streaming_rate(size: dict, storage: Path) -> dict:
    """Figure 10: images/s per core at 224 px with augmentation, streamed from shards."""
    rows, _, batches = size["large"]
    rates = _stream_child(_large(storage, rows), 224, batches, "fused,decode_then_crop")
    return {"images": rows, "batches": batches, "fused_images_per_s": rates["fused"],
            "decode_then_crop_images_per_s": rates["decode_then_crop"],
            "speedup": rates["fused"] / rates["decode_then_crop"], "measured": rates["fused"], "ratio": rates["fused"]}


def streaming_memory(size: dict, storage: Path) -> dict:
    """Figure 11: peak RSS of one streaming process at two data set sizes (4x apart)."""
    small, large, batches = size["large"]
    peaks, encoded = {}, {}
    for rows in (small, large):
        root = _large(storage, rows)
        encoded[rows] = sum(f.stat().st_size for f in (root / "train").glob("*.parquet")) / 2**20
        peaks[rows] = _stream_child(root, 224, batches, "fused")["peak_rss_mb"]
    return {"images": [small, large], "encoded_mb": [encoded[small], encoded[large]],
            "peak_rss_mb": [peaks[small], peaks[large]], "measured": peaks[large] - peaks[small],
            "ratio": peaks[large] - peaks[small]}


def cores_per_gpu_trial(per_core_images_per_s: float, gpu: str | None) -> dict:
    """Figure 12: cores one GPU trial's input pipeline needs to feed MobileNetV2 (width 1.0, 224 px,
    mixed precision) at the GPU's training rate."""
    if gpu is None:
        return {"skipped": "no GPU on this machine"}
    rate = step_throughput(224, 64, 20, 3, (0.0,), mixed_precision=True, width=1.0)["dense_images_per_s"]
    return {"gpu": gpu, "model_images_per_s": rate, "per_core_images_per_s": per_core_images_per_s,
            "measured": rate / per_core_images_per_s, "ratio": rate / per_core_images_per_s}


# ---------------------------------------------------------------------------------------------


def gpus() -> list[str]:
    """This machine's GPUs, as the Keras backend sees them."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return [str(d.device_kind) for d in jax.devices() if d.platform == "gpu"]
    import tensorflow as tf

    return [g.name for g in tf.config.list_physical_devices("GPU")]


def machine() -> dict:
    import importlib.metadata

    import keras

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "backend": keras.backend.backend()}
    # Installed versions, without importing: the GPU machine has Keras and JAX but no TensorFlow or Ray.
    for package in ("keras", "tensorflow", "jax", "ray"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    info["gpu"] = next(iter(gpus()), None)
    return info


GOALS = {1: (">=", 0.95), 2: ("==", 1), 3: (">=", 1.8), 4: ("<", 0.05), 5: ("<", 0.2), 6: (">=", 3.0),
         7: (">=", 0.95), 8: ("<=", 0.8), 9: (">=", 1.0), 10: (">=", 350), 11: ("<", 200), 12: ("<=", 8)}
NAMES = {1: "masked / dense step", 2: "dense runs per sweep", 3: "2-slot training speed-up", 4: "per-trial overhead",
         5: "scheduler s/trial", 6: "pipeline / model img/s", 7: "GPU masked / dense", 8: "sweep / hand loop",
         9: "dense 2-replica speed-up", 10: "streamed img/s per core", 11: "RSS growth MiB, 4x data",
         12: "cores per GPU trial"}


def run(figures: list[int], size_name: str) -> dict:
    size = SIZES[size_name]
    from tickets import runtime as runtime_lib

    runtime_lib.configure(os.cpu_count())
    results: dict = {"size": size_name, "machine": machine(), "figures": {}}
    figs = results["figures"]
    scaling = None  # machine_scaling, measured once for figures 3 and 8
    with tempfile.TemporaryDirectory(prefix="tickets-bench-") as tmp:
        storage = Path(tmp)
        if {1, 4, 6} & set(figures):
            log("figure 1: masked vs dense training step")
            figs[1] = step_throughput(32, size["batch"], size["steps"], size["repeats"], size["masked"])
        if {2, 3, 4} & set(figures):
            runs = sweeps(size, storage, naive_design=2 in figures)
            if 2 in figures:
                figs[2] = dense_sharing(runs)
                figs[2]["measured"] = figs[2]["dense_runs"]
            if 3 in figures:
                log("figures 3 and 8: one-thread training processes side by side, outside Ray")
                scaling = machine_scaling(size["scaling_steps"])
                figs[3] = parallel_efficiency(runs, os.cpu_count() or 1, scaling)
            if 4 in figures:
                figs[4] = trial_overhead(runs, figs.get(1, {}).get("dense_images_per_s"))
        if 5 in figures:
            log(f"figure 5: scheduler, {size['noop']}-point grid")
            figs[5] = scheduler_scale(size["noop"], storage)
        if 6 in figures:
            log("figure 6: input pipeline")
            figs[6] = input_pipeline(size["pipeline_batches"], size["batch"], figs[1]["dense_images_per_s"])
        if 7 in figures:
            gpu = results["machine"]["gpu"]
            if gpu is None:
                figs[7] = {"skipped": "no GPU on this machine"}
            else:
                log(f"figure 7: GPU {gpu}")
                figs[7] = {"fp32": step_throughput(224, 64, 20, 3, (0.0, 0.8, 0.95)),
                           "mixed": step_throughput(224, 64, 20, 3, (0.0, 0.8, 0.95), mixed_precision=True)}
                figs[7]["ratio"] = min(figs[7]["fp32"]["ratio"], figs[7]["mixed"]["ratio"])
        if 8 in figures:
            if scaling is None:
                log("figures 3 and 8: one-thread training processes side by side, outside Ray")
                scaling = machine_scaling(size["scaling_steps"])
            log("figure 8: the sweep vs a hand-written sequential loop")
            figs[8] = sweep_vs_loop(size, storage, scaling)
        if 9 in figures:
            log("figure 9: dense run, data-parallel")
            figs[9] = dense_data_parallel(size, storage, gpus=len(gpus()))
        if {10, 12} & set(figures):
            log("figure 10: streamed ImageNet-like shards, images/s per core at 224 px")
            figs[10] = streaming_rate(size, storage)
        if 11 in figures:
            log("figure 11: peak RSS of a streaming process at two data set sizes")
            figs[11] = streaming_memory(size, storage)
        if 12 in figures:
            figs[12] = cores_per_gpu_trial(figs[10]["fused_images_per_s"], results["machine"]["gpu"])
        if 1 not in figures:
            figs.pop(1, None)
        if 10 not in figures:
            figs.pop(10, None)
    return results


def describe(results: dict) -> None:
    """Give every figure in `results` its goal, its verdict and its detail line, as the JSON keeps them."""
    for number, fig in results["figures"].items():
        op, goal = GOALS[number]
        fig["goal"] = f"{op} {goal}"
        if "skipped" in fig:
            fig["verdict"], fig["detail"] = "skipped", fig["skipped"]
            continue
        value = fig["measured"] if "measured" in fig else fig["ratio"]
        if value is None:
            fig["verdict"], fig["detail"] = "not measured", fig.get("not_measured", "")
            continue
        ok = {">=": value >= goal, "==": value == goal, "<": value < goal, "<=": value <= goal}[op]
        fig["verdict"], fig["detail"] = ("meets" if ok else "MISSES"), _detail(number, fig)


def table(results: dict) -> str:
    lines = [f"{'figure':<28} {'measured':>10} {'goal':>8}  detail", "-" * 90]
    for number, fig in sorted(results["figures"].items()):
        value = fig.get("measured", fig.get("ratio"))
        shown = f"{value:>10.3f}" if isinstance(value, (int, float)) and "skipped" not in fig else f"{'-':>10}"
        lines.append(f"{number}. {NAMES[number]:<25} {shown} {fig['goal']:>8}  {fig['verdict']}; {fig['detail']}")
    return "\n".join(lines)


def _detail(number: int, fig: dict) -> str:
    if number == 1:
        return (f"dense {fig['dense_images_per_s']:.0f} img/s; masked "
                + ", ".join(f"{k}: {v['images_per_s']:.0f}" for k, v in fig["masked"].items()))
    if number == 2:
        return (f"naive design: {fig['naive_dense_runs']} dense runs, {fig['naive_epochs']} vs {fig['epochs']} "
                f"epochs, {fig['naive_wall_s']:.0f}s vs {fig['wall_s']:.0f}s ({fig['ratio']:.2f}x)")
    if number == 3:
        ceiling = (f" (this machine's ceiling {fig['machine_ceiling']:.2f}: one-thread processes side by side)"
                   if "machine_ceiling" in fig else "")
        return (f"trial epochs {fig['sequential_epoch_s']:.1f}s one at a time, {fig['epoch_s']:.1f}s side by side"
                f"{ceiling}; trial phase {fig['trial_phase_speedup']:.2f}x ({fig['sequential_trial_phase_s']:.0f}s vs "
                f"{fig['trial_phase_s']:.0f}s, start-ups included); whole command {fig['speedup']:.2f}x "
                f"({fig['sequential_wall_s']:.0f}s vs {fig['parallel_wall_s']:.0f}s, {fig['fixed_s']:.0f}s fixed costs)")
    if number == 4:
        detail = (f"start-up {fig['fresh_worker_startup_s'] or 0:.1f}s in a fresh worker, "
                  f"{fig['reused_worker_startup_s'] or 0:.2f}s in a reused one; < 5 % for trials > "
                  f"{fig['break_even_trial_s']:.0f}s")
        if "projected" in fig:
            detail += (f"; a {fig['projected']['preset']} trial here ({fig['projected']['trial_s']:.0f}s): "
                       f"{100 * fig['projected']['fresh_worker_fraction']:.1f} %")
        return detail
    if number == 5:
        return (f"{fig['points']} trials in {fig['seconds']:.0f}s, {fig['snapshot_mb']:.1f} MB snapshot, "
                f"driver RSS {fig['driver_rss_mb_before']:.0f} -> {fig['driver_rss_mb_after']:.0f} MB")
    if number == 6:
        return ", ".join(f"{k}: {v['images_per_s']:.0f} img/s" for k, v in fig.items() if isinstance(v, dict))
    if number == 7:
        return (f"fp32 dense {fig['fp32']['dense_images_per_s']:.0f} img/s, "
                f"mixed dense {fig['mixed']['dense_images_per_s']:.0f} img/s")
    if number == 8:
        return (f"sweep {fig['sweep_wall_s']:.0f}s vs loop {fig['loop_wall_s']:.0f}s for dense + "
                f"{len(fig['points'])} trials, {fig['epochs']} epochs of {fig['images'][0]} images; this "
                f"machine's floor {fig['machine_floor']:.2f} (trials side by side gain {fig['packing_gain']:.2f}x)")
    if number == 9:
        return (f"epoch {fig['epoch_s_1']:.1f}s on 1 replica, {fig['epoch_s_2']:.1f}s on 2 "
                f"({fig['devices']} devices)")
    if number == 10:
        return (f"decode-then-crop {fig['decode_then_crop_images_per_s']:.0f} img/s per core "
                f"(fused {fig['speedup']:.2f}x), {fig['images']} images")
    if number == 11:
        return (f"peak {fig['peak_rss_mb'][0]:.0f} -> {fig['peak_rss_mb'][1]:.0f} MiB for "
                f"{fig['encoded_mb'][0]:.0f} -> {fig['encoded_mb'][1]:.0f} MiB of JPEGs")
    if number == 12:
        return (f"{fig['gpu']}: model {fig['model_images_per_s']:.0f} img/s, pipeline "
                f"{fig['per_core_images_per_s']:.0f} img/s per core")
    return ""


def main(argv: list[str] | None = None) -> int:
    """`python -m tickets.bench`: run the figures asked for, print the table, write the JSON; exit 0, or 2 on bad flags."""
    p = argparse.ArgumentParser(prog="python -m tickets.bench", description=__doc__.split("\n")[0])
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="every CPU figure in a few minutes on 2 CPUs")
    group.add_argument("--tiny", action="store_true", help="smallest sizes: checks that the figures run")
    p.add_argument("--only", default=",".join(map(str, GOALS)), help="comma-separated figure numbers")
    p.add_argument("--out", type=Path, default=Path("bench.json"))
    args = p.parse_args(argv)
    try:
        figures = sorted({int(f) for f in args.only.split(",")})
    except ValueError:
        print(f"error: --only: {args.only!r} is not a list of figure numbers", file=sys.stderr)
        return 2
    if not set(figures) <= set(GOALS):
        print(f"error: --only: {args.only!r} names figures outside 1..{max(GOALS)}", file=sys.stderr)
        return 2
    results = run(figures, "tiny" if args.tiny else "quick" if args.quick else "full")
    describe(results)
    print(table(results))
    args.out.write_text(json.dumps(results, indent=1, default=float))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
