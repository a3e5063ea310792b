"""What a training process runs with: its thread pools, the devices a dense run replicates over
(and how replicas' BatchNorm statistics are kept equal), the dtype policy, op determinism, graph
rewrites (off on CPUs), and which graph it is tracing.

`configure` must run before TensorFlow starts in the process; `RUNTIME` is what it set, read back
from TensorFlow, so trial rows and the dense manifest record it. Besides this module, TensorFlow
itself is touched by the `tf.data` pipelines (`pipeline`), the fused BatchNorm kernel (`layers`) and
SNIP's, GraSP's and SynFlow's gradients (`saliency`).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass

import keras
import numpy as np


@dataclass(frozen=True)
class Runtime:
    """What this process trains with, read back from TensorFlow after `configure`: the trial rows
    and the dense run's log record it, so a run that did not get its threads shows it."""

    intra_op_threads: int  # 0: TensorFlow's default (every core), i.e. not set
    inter_op_threads: int
    data_threads: int  # tf.data's private pool for this process's input pipelines (0: shared default)
    replicas: int  # devices the dense run is replicated over
    precision: str  # the Keras dtype policy

    def row(self) -> dict:
        return asdict(self)


RUNTIME = Runtime(0, 0, 0, 1, "float32")  # until `configure` runs: TensorFlow's own defaults


def configure(cpus: int | None = None, deterministic: bool = True, replicas: int | str = 1,
              precision: str = "float32") -> Runtime:
    """Thread pools sized to the CPUs this process was given, the devices a dense run replicates
    over, the dtype policy, GPU memory growth, op determinism; returns (and keeps) the `Runtime`.

    Must run before TensorFlow starts its runtime in this process (the sweep runs training in
    processes of its own for that); a later call cannot change the thread pools or devices and
    says so (a warning) when they differ from what it asks for.
    """
    global RUNTIME
    policy = resolve_precision(precision)
    set_precision(policy)
    if keras.backend.backend() != "tensorflow":  # the tf.data pipelines still get their pool
        RUNTIME = Runtime(0, 0, int(cpus or 0), 1, policy)
        return RUNTIME
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    n = (len(gpus) or 1) if replicas == "auto" else int(replicas)
    if gpus and n > len(gpus):
        raise ValueError(f"resources.dense_replicas: {n} replicas asked for, but this process sees {len(gpus)} GPU(s)")
    # Ops running side by side make gradient sums order-dependent even with op determinism on
    # (MobileNetV2 with CIFAR strides, 2 threads: different weights after 4 steps), so a
    # deterministic CPU run executes one op at a time, each on all its threads.
    want = (int(cpus), 1 if deterministic and not gpus else min(2, int(cpus))) if cpus else None
    try:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        if not gpus and n > 1:  # logical CPU devices: the multi-replica path without GPUs
            tf.config.set_logical_device_configuration(
                tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * n)
        if want:
            tf.config.threading.set_intra_op_parallelism_threads(want[0])
            tf.config.threading.set_inter_op_parallelism_threads(want[1])
    except RuntimeError:  # the runtime already runs in this process: its pools stay as they are
        have = (tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads())
        if want and have != want:
            logging.getLogger(__name__).warning(
                "TensorFlow already runs in this process: its thread pools stay at intra-op %s / inter-op %s "
                "(0: TensorFlow's default), not the %s / %s asked for; a CPU run may not be bit-reproducible",
                *have, *want)
    if deterministic and not gpus:
        tf.config.experimental.enable_op_determinism()
    if not gpus:
        # Grappler's graph rewrites lengthen a CPU process's first train and test steps (tracing) and
        # gain nothing in training on CPUs (docs/performance.md, "Start-up cuts and `--quick`").
        # On GPUs they stay: layout and fusion passes pay off there.
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    devices = len(tf.config.list_logical_devices("GPU" if gpus else "CPU"))
    if n > devices:
        logging.getLogger(__name__).warning("TensorFlow already runs in this process with %s device(s): the dense "
                                            "run cannot use the %s replicas asked for", devices, n)
    RUNTIME = Runtime(tf.config.threading.get_intra_op_parallelism_threads(),
                      tf.config.threading.get_inter_op_parallelism_threads(),
                      int(cpus or 0), min(n, devices), policy)
    return RUNTIME


def resolve_precision(precision: str) -> str:
    """`auto` → the mixed policy this process's GPU computes fastest in, float32 on CPUs."""
    if precision != "auto":
        return precision
    major = _gpu_compute_capability()
    return "mixed_bfloat16" if major >= 8 else "mixed_float16" if major >= 7 else "float32"


def _gpu_compute_capability() -> int:
    """Major compute capability of the first GPU, 0 without one."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
        return int((details.get("compute_capability") or (0, 0))[0])
    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return int(str(getattr(device, "compute_capability", "0")).split(".")[0]) if device.platform == "gpu" else 0
    return 0


def set_precision(policy: str) -> None:
    """The Keras dtype policy for models built from now on in this process. Under a mixed policy
    layers compute in 16 bits while their variables (the master weights) stay float32."""
    keras.config.set_dtype_policy(policy)


def on_gpu() -> bool:
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if keras.backend.backend() == "jax":
        import jax

        return jax.default_backend() == "gpu"
    return False


def tracing_graph():
    """The TensorFlow graph being traced (inside a `tf.function`) when no distribution strategy
    spreads it over devices; None otherwise (eager, replicated, or another backend). Lets a value
    that is the same all through one traced step be built into it once."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if tf.executing_eagerly() or tf.distribute.has_strategy():
        return None
    return tf.compat.v1.get_default_graph()


@contextlib.contextmanager
def replicated(replicas: int):
    """Build, compile and train inside this for data parallelism over `replicas` devices (the
    first ones `configure` made visible): Keras splits each global batch among them and averages the
    gradients (each replica's mean loss scaled by 1/replicas, then summed), so batch size, schedule
    and steps stay the spec's. BatchNorm normalises each
    replica's share of the batch, as in the reference multi-GPU recipes (`average_replicas`)."""
    if replicas <= 1 or keras.backend.backend() != "tensorflow":
        if replicas > 1:
            logging.getLogger(__name__).warning("data parallelism needs the TensorFlow backend; one device used")
        yield
        return
    import tensorflow as tf

    kind = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    devices = [d.name for d in tf.config.list_logical_devices(kind)][:replicas]
    # Reduction through one device: a fixed summation order, so CPU runs stay bit-reproducible.
    strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=None if kind == "GPU" else
                                              tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        yield


def average_replicas(model: keras.Model) -> None:
    """Set every variable that replicas keep apart to its mean over the replicas.

    Keras 3 does not aggregate BatchNorm's moving statistics under a distribution strategy: each
    replica updates its own copy from its share of the batch, and a snapshot would hold the first
    replica's alone. Their mean is what tf.keras kept (mean aggregation on read) and, the moving
    average being linear, equals the moving average of the replicas' mean batch statistics; called
    at every snapshot and evaluation it keeps all copies equal (numpy means: bit-reproducible).
    """
    strategy = getattr(model, "distribute_strategy", None)  # the TensorFlow backend's, when replicated
    if strategy is None or strategy.num_replicas_in_sync <= 1:
        return
    for v in model.non_trainable_variables:
        copies = strategy.experimental_local_results(v.value)
        if len(copies) > 1:
            v.assign(np.mean([keras.ops.convert_to_numpy(c) for c in copies], axis=0))
