"""What every figure's measurement shares: the sizes, the scratch directory, the measurements more
than one figure reads (computed once, on first use), the programs run as processes of their own, and
the machine's description."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ROOT / "benchmarks" / "programs"

# The sizes of each figure's work. `tiny` only checks that every figure's code runs (the tests use
# it); `quick` gives every CPU figure at small sizes (its measured time, against a goal of 10 minutes,
# and the floor the figures' definitions set: docs/performance.md); `full` is the default.
SIZES = {
    "tiny": dict(
        step=dict(batch=16, steps=2, rounds=1, sparsities=(0.95,)),
        sweep=dict(dense_epochs=1, train=512, sparsity=[0.5, 0.9], rewind=[0], repeats=1, naive_points=0),
        ceiling=dict(steps=2, rounds=1),
        noop=200, pipeline_batches=4,
        loop=dict(train=600, test=120, epochs=2, sparsity=[0.9], rewind=[0], repeats=1),
        replicas=dict(train=256, epochs=1, strides="imagenet"),
        shards=dict(images=(200, 800), batches=3),
        peer=dict(threads=[1], steps=2, rounds=1, sides=["tickets", "torch"]),
        deploy=dict(rounds=2, calls=dict(latency=5, throughput=1), warmup=2)),
    "quick": dict(
        step=dict(batch=128, steps=24, rounds=3, sparsities=(0.0, 0.8, 0.95)),
        sweep=dict(dense_epochs=2, train=2048, sparsity=[0.5, 0.9], rewind=[0, 1], repeats=3, naive_points=1),
        ceiling=dict(steps=16, rounds=3),
        noop=1000, pipeline_batches=60,
        loop=dict(train=1000, test=500, epochs=2, sparsity=[0.5, 0.9], rewind=[0, 1], repeats=1),
        replicas=dict(train=1024, epochs=2, strides="cifar"),
        shards=dict(images=(1500, 6000), batches=40),
        peer=dict(threads=[None], steps=16, rounds=3, sides=["tickets", "xla", "bf16", "torch"]),
        deploy=dict(rounds=5, calls=dict(latency=100, throughput=5), warmup=10)),
    "full": dict(
        step=dict(batch=128, steps=40, rounds=3, sparsities=(0.0, 0.8, 0.95)),
        sweep=dict(dense_epochs=3, train=4096, sparsity=[0.5, 0.8, 0.9, 0.95], rewind=[0, 1], repeats=3,
                   naive_points=None),
        ceiling=dict(steps=32, rounds=5),
        noop=1000, pipeline_batches=200,
        loop=dict(train=10000, test=2000, epochs=6, sparsity=[0.5, 0.9], rewind=[0, 1], repeats=3),
        replicas=dict(train=4096, epochs=3, strides="cifar"),
        shards=dict(images=(2000, 8000), batches=60),
        peer=dict(threads=[None, 1], steps=32, rounds=5, sides=["tickets", "torch"]),
        deploy=dict(rounds=7, calls=dict(latency=400, throughput=20), warmup=20)),
}

_START = time.monotonic()


def log(message: str) -> None:
    elapsed = int(time.monotonic() - _START)
    print(f"[bench {elapsed // 60}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


@dataclass
class Bench:
    """One benchmark run: its size, its scratch directory, the machine, and the measurements shared
    between figures (`shared`), each made once by the first figure that asks for it."""

    size_name: str
    storage: Path
    machine: dict
    shared: dict = field(default_factory=dict)

    @property
    def size(self) -> dict:
        return SIZES[self.size_name]

    def once(self, key: str, measure: Callable[[], object]):
        if key not in self.shared:
            self.shared[key] = measure()
        return self.shared[key]


def env(**extra: str) -> dict:
    """The environment of the processes the figures time: this checkout's tickets and benchmarks first."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": path, **extra}


def program(name: str, *args, environ: dict | None = None) -> dict:
    """Run `benchmarks/programs/<name>.py` to its end; its last line of output, as JSON."""
    proc = subprocess.run([sys.executable, str(PROGRAMS / f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, env=environ or env())
    if proc.returncode != 0:
        raise RuntimeError(f"{name}.py failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cifar10() -> Path:
    """Where figures 6 and 8 read the real CIFAR-10 shards (beside the checkout unless set)."""
    return Path(os.environ.get("TICKETS_DATA_DIR", "../shared/data")) / "cifar10"


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

    from tickets.deployment import cpu_model  # the one reading of the CPU's name; needs no TensorFlow

    info = {"platform": platform.platform(), "processor": cpu_model(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "backend": keras.backend.backend()}
    # Installed versions, without importing: the GPU machine has Keras and JAX but no TensorFlow or Ray.
    for package in ("keras", "tensorflow", "jax", "ray"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    found = gpus()
    info["gpu"], info["gpus"] = next(iter(found), None), len(found)
    return info
