"""Training speed: masked vs dense steps (figures 1, 7, 12), what training processes side by side
gain on this machine (the ceiling of figures 3 and 8), and the dense run on 1 and 2 replicas (9)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.bench import PROGRAMS, Bench, env, log, program


def step_throughput(size: int, batch: int, steps: int, rounds: int, sparsities=(0.0, 0.8, 0.95),
                    mixed_precision: bool = False, width: float = 0.35) -> dict:
    """Images/s of plain Keras training of MobileNetV2 and of masked training at each sparsity.

    Every model is built and traced first, then timed in interleaved rounds (dense, masked 0 %,
    masked 80 %, ... , dense, ...) keeping each one's best: a noisy neighbour or a CPU clock change
    then hits every variant alike instead of skewing the ratio (timed one after another, the ratio
    swung between 0.5 and 1.0 on the development machine).
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

    def feed(n: int):
        # On TensorFlow as a trial feeds `fit` (`model.fit` on arrays would autotune a pipeline of its
        # own, whose deletion can stall a round: docs/performance.md, figure 13), built once, outside
        # the timed rounds; other backends (JAX on a GPU machine without TensorFlow) take the arrays.
        if keras.backend.backend() != "tensorflow":
            return {"x": x[:n], "y": y[:n], "batch_size": batch}
        from tickets import pipeline

        return {"x": pipeline.in_memory(x[:n], y[:n], batch)}

    trace, epoch = feed(batch * 2), feed(batch * steps)

    def build(sparsity):
        model = models.build(ModelSpec(width=width), (size, size, 3), 10, seed=0)
        if sparsity is not None:  # masked: a magnitude mask installed as the training constraint
            names = models.prunable_variables(model, ("first_conv", "classifier"))
            w = models.get_weights(model)
            mask, _ = masks.magnitude_mask({n: w[n] for n in names}, sparsity)
            training.install_mask(model, mask)
        training.compile_model(model, training.make_optimizer(spec, steps))
        model.fit(**trace, epochs=1, verbose=0, shuffle=False)
        return model

    variants = {"dense": build(None), **{f"{s:g}": build(s) for s in sparsities}}
    best = dict.fromkeys(variants, 0.0)
    for _ in range(rounds):
        for name, model in variants.items():
            start = time.perf_counter()
            model.fit(**epoch, epochs=1, verbose=0, shuffle=False)
            best[name] = max(best[name], batch * steps / (time.perf_counter() - start))
    dense = best.pop("dense")
    out = {"image_size": size, "batch": batch, "steps": steps, "rounds": rounds, "mixed_precision": mixed_precision,
           "dense_images_per_s": dense,
           "masked": {name: {"images_per_s": rate, "ratio": rate / dense} for name, rate in best.items()}}
    out["measured"] = min(v["ratio"] for v in out["masked"].values())
    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session()
    return out


def throughput(bench: Bench) -> dict:
    """Figure 1 (also read by 4 and 6): MobileNetV2 (width 0.35) at 32 px, masked vs dense."""
    s = bench.size["step"]
    return bench.once("throughput", lambda: step_throughput(32, s["batch"], s["steps"], s["rounds"], s["sparsities"]))


def gpu_step(bench: Bench) -> dict:
    """Figure 7: 224 px, masked vs dense, float32 and mixed precision; only where a GPU is."""
    gpu = bench.machine["gpu"]
    if gpu is None:
        return {"skipped": "no GPU on this machine"}
    out = {"gpu": gpu, "fp32": step_throughput(224, 64, 20, 3), "mixed": step_throughput(224, 64, 20, 3,
                                                                                          mixed_precision=True)}
    out["measured"] = min(out["fp32"]["measured"], out["mixed"]["measured"])
    return out


def ceiling(bench: Bench, name: str, spec_path: Path) -> dict:
    """What training processes side by side gain on this machine, outside Ray and tickets' sweep:
    SPEC's model and batch (`programs/scaling.py`) in one process with every thread (how one trial
    at a time, or the hand-written loop, trains) against one one-thread process per CPU side by side
    (how one-CPU slots train). Each group is timed `rounds` times, interleaved; the gain of each
    round is the side-by-side images/s summed over the all-thread process's, and the median round
    is kept, the statistic of the sweeps it bounds."""
    return bench.once(f"ceiling-{name}", lambda: _ceiling(spec_path, **bench.size["ceiling"]))


def _ceiling(spec_path: Path, steps: int, rounds: int) -> dict:
    cpus = os.cpu_count() or 1
    groups = {"whole": [cpus], "side": [1] * cpus}
    procs = {name: [subprocess.Popen([sys.executable, str(PROGRAMS / "scaling.py"), str(spec_path), str(n), str(steps)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env())
                    for n in threads] for name, threads in groups.items()}
    measured: dict[str, list[list[float]]] = {name: [] for name in groups}
    try:
        for p in (p for ps in procs.values() for p in ps):
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a ceiling training process failed before training")
        for _ in range(rounds):
            for name, ps in procs.items():  # one group at a time; the other waits idle
                for p in ps:
                    p.stdin.write("go\n")
                    p.stdin.flush()
                lines = [p.stdout.readline() for p in ps]
                if not all(lines):
                    raise RuntimeError("a ceiling training process died while training")
                measured[name].append([json.loads(line)["images_per_s"] for line in lines])
    finally:
        # End of input lets each process exit on its own: killed, its atexit hooks would not run, and
        # TensorFlow's autograph would leave its generated `__autograph_generated_file*.py` in /tmp.
        for p in (p for ps in procs.values() for p in ps):
            p.stdin.close()
        for p in (p for ps in procs.values() for p in ps):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    gains = [sum(side) / whole[0] for side, whole in zip(measured["side"], measured["whole"])]
    return {"rounds": rounds, "steps": steps, "all_threads_images_per_s": [w[0] for w in measured["whole"]],
            "side_by_side_images_per_s": measured["side"], "gains": gains, "gain": statistics.median(gains)}


def dense_replicas(bench: Bench) -> dict:
    """Figure 9: epoch time of the dense run (MobileNetV2, synthetic images) on 1 replica over that
    on 2: two GPUs where the machine has them, else two logical CPU devices sharing the cores. The
    first epoch (tracing) is left out. Both runs' test accuracy per epoch is kept beside it."""
    from tickets import config

    s = bench.size["replicas"]
    spec = config.load("smoke", [f"model.strides={s['strides']}", f"dense.epochs={s['epochs']}",
                                 "data.batch_size=128", f"data.synthetic_size={{train: {s['train']}, test: 256}}",
                                 "search.rewind_epoch=[0]", "data.validation=0"])
    path = bench.storage / "dense-replicas.yaml"
    path.write_text(spec.to_yaml())
    on_gpus = bench.machine["gpus"] >= 2
    runs = {}
    for replicas in (1, 2):
        log(f"dense run on {replicas} replica(s) ({'GPUs' if on_gpus else 'logical CPU devices'})")
        # One GPU cannot hold two replicas: without two, both runs are on the CPUs.
        runs[replicas] = program("dense_run", path, os.cpu_count() or 1, replicas,
                                 environ=env() if on_gpus else env(CUDA_VISIBLE_DEVICES=""))
    steady = {r: statistics.median(v["epoch_seconds"][1:] or v["epoch_seconds"]) for r, v in runs.items()}
    return {"devices": "GPU" if on_gpus else "logical CPU", "images": s["train"], "epochs": s["epochs"],
            "epoch_s_1": steady[1], "epoch_s_2": steady[2], "runs": runs, "measured": steady[1] / steady[2]}
