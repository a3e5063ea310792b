"""Dense trajectory and masked (sparse) training.

The algorithm, as in Frankle et al. (2020) "late resetting":
  1. train the dense network once, keeping weight snapshots at step 0, at every rewind point
     and at the end (`train_dense`);
  2. for each sparsity, prune the final weights by magnitude (`make_ticket`);
  3. reset the survivors to the rewind snapshot and train again with the pruned weights held at
     exactly zero, resuming the learning-rate schedule at the rewind step (`train_sparse`).

Dense and sparse training share one loop (`_segments`): dense training is the unmasked case.
Written against `keras` / `keras.ops`; only thread and device set-up touches TensorFlow.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import keras
import numpy as np

from tickets import artifacts
from tickets import masks as masks_lib
from tickets import models, pruning
from tickets.config import DenseSpec, Spec, step_of
from tickets.data import Dataset, eval_batches, train_batches
from tickets.data import order as data_order

Weights = dict[str, np.ndarray]


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


@contextlib.contextmanager
def replicated(replicas: int):
    """Build, compile and train inside this for data parallelism over `replicas` devices (the
    first ones `configure` made visible): Keras splits each global batch among them and sums the
    gradients, so batch size, schedule and steps stay the spec's. BatchNorm normalises each
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


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from several integers: distinct streams for data order, controls, replicates."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class Stream(enum.IntEnum):
    """The seed streams of one replicate: `derive_seed(spec.seed, replicate, stream, ...)`. The
    dense run's data order is `derive_seed(spec.seed, 0)`, apart from all of these."""

    SPARSE_DATA = 1  # the sparse runs' data order and augmentation
    REINIT = 2  # random_reinit's fresh initialisation
    RANDOM_PRUNE = 3  # random_prune's masks (and, for IMP, the level)
    TRANSFER = 4  # a transferred ticket's re-initialised layers
    TWIN = 5  # an instability twin's data order and augmentation (and its BatchNorm re-estimation batches)


def stream_seed(spec: Spec, replicate: int, stream: Stream, *more: int) -> int:
    return derive_seed(spec.seed, replicate, int(stream), *more)


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule.


class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """Warm-up, then constant, step, exponential (per epoch) or cosine decay; `offset` resumes it at
    a rewind step."""

    def __init__(self, spec: DenseSpec, steps_per_epoch: int, offset: int = 0):
        self.base = spec.optimizer.learning_rate
        self.name = spec.schedule.name
        self.total = spec.epochs * steps_per_epoch
        self.warmup = step_of(spec.schedule.warmup_epochs, steps_per_epoch)
        self.milestones = [step_of(m, steps_per_epoch) for m in spec.schedule.milestones]
        self.gamma = spec.schedule.gamma
        self.steps_per_epoch = steps_per_epoch
        # A variable, so a compiled model reused for another rewind point needs no retracing.
        self.offset = keras.Variable(float(offset), dtype="float32", trainable=False, name="schedule_offset")

    def __call__(self, step):
        t = keras.ops.cast(step, "float32") + self.offset
        if self.name == "cosine":
            progress = keras.ops.clip((t - self.warmup) / max(1, self.total - self.warmup), 0.0, 1.0)
            lr = 0.5 * self.base * (1.0 + keras.ops.cos(math.pi * progress))
        elif self.name == "step":
            passed = sum(keras.ops.cast(t >= m, "float32") for m in self.milestones) if self.milestones else 0.0
            lr = self.base * keras.ops.power(self.gamma, passed)
        elif self.name == "exponential":  # torchvision's StepLR(step_size=1 epoch), as its MobileNetV2 recipe
            lr = self.base * keras.ops.power(self.gamma, keras.ops.floor(t / self.steps_per_epoch))
        else:
            lr = self.base * keras.ops.ones_like(t)
        if self.warmup:
            lr = lr * keras.ops.minimum(1.0, (t + 1.0) / self.warmup)
        return lr

    def get_config(self):
        return {"base": self.base, "name": self.name, "total": self.total,
                "offset": float(keras.ops.convert_to_numpy(self.offset))}


def make_optimizer(spec: DenseSpec, steps_per_epoch: int, schedule: Schedule | None = None) -> keras.optimizers.Optimizer:
    """The spec's optimizer on `schedule` (a fresh `Schedule` if none is given)."""
    o = spec.optimizer
    lr = schedule or Schedule(spec, steps_per_epoch)
    if o.name == "sgd":
        return keras.optimizers.SGD(lr, momentum=o.momentum, nesterov=o.nesterov,
                                    weight_decay=o.weight_decay or None)
    return keras.optimizers.Adam(lr, weight_decay=o.weight_decay or None)


def compile_model(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
    # XLA on CPU is not bit-reproducible across builds and gains little for these nets.
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  jit_compile="auto" if _on_gpu() else False)
    # Every variable exists before the first step: TensorFlow traces a step that creates variables
    # twice (MobileNetV2 on a CPU: about 8 s more per process). Hence the metric as an object, not
    # the string "accuracy" (whose variables Keras makes inside the step), and the optimizer built
    # here (under mixed_float16 its loss-scale wrapper too).
    model.optimizer.build(model.trainable_variables)


def _on_gpu() -> bool:
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if keras.backend.backend() == "jax":
        import jax

        return jax.default_backend() == "gpu"
    return False


# ---------------------------------------------------------------------------------------------
# Masks inside the model: a constraint the optimizer applies after every update.


class MaskConstraint(keras.constraints.Constraint):
    """`w * mask` after each optimizer step, so pruned weights stay exactly 0.0.

    The mask is a variable: changing it (the next IMP level) needs no retracing. Keras applies
    variable constraints inside the compiled train step, after momentum and weight decay.
    """

    def __init__(self, mask: np.ndarray):
        self.mask = keras.Variable(mask.astype("float32"), trainable=False, name="mask")

    def __call__(self, w):
        return w * keras.ops.cast(self.mask, w.dtype)


def install_mask(model: keras.Model, mask: masks_lib.Mask) -> None:
    variables = {v.path: v for v in model.weights}
    for name, m in mask.items():
        var = variables[name]
        if isinstance(var.constraint, MaskConstraint):
            var.constraint.mask.assign(m.astype("float32"))
        else:
            var.constraint = MaskConstraint(m)
            # A train step traced without this constraint would never apply it: trace again.
            model.train_function = None
        var.assign(keras.ops.convert_to_numpy(var.value) * m)


# ---------------------------------------------------------------------------------------------
# The training loop shared by dense and sparse runs.


@dataclass
class Progress:
    step: int
    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float
    val_loss: float = math.nan  # NaN without a validation split (`data.validation`)
    val_accuracy: float = math.nan


@dataclass(frozen=True)
class EarlyStop:
    """The epoch of least validation loss so far and the test accuracy at that epoch: chosen on the
    validation split, never on the test set. Without a validation split nothing is chosen (epoch None)."""

    epoch: int | None = None
    val_loss: float = math.inf
    test_accuracy: float = math.nan

    def after(self, p: Progress) -> EarlyStop:
        return EarlyStop(p.epoch, p.val_loss, p.test_accuracy) if p.val_loss < self.val_loss else self

    def row(self) -> dict:
        """The columns every report carries (NaN where nothing was chosen)."""
        return {"early_stop_epoch": math.nan if self.epoch is None else self.epoch,
                "early_stop_accuracy": self.test_accuracy,
                "best_val_loss": self.val_loss if self.epoch is not None else math.nan}


def _segments(model: keras.Model, spec: Spec, data: Dataset, seed: int, start: int, end: int,
              stops: set[int], on_stop: Callable[[int], None]) -> Iterator[Progress]:
    """Train steps `start..end`, pausing at every step in `stops` (for `on_stop`) and yielding
    a `Progress` at every epoch boundary, where the validation split (if any) and the test set are
    evaluated."""
    if start >= end:  # a run restarted from its last checkpoint: nothing to train or evaluate again
        return
    spe = data.steps_per_epoch(spec.data.batch_size)
    boundaries = sorted({s for s in stops if start < s <= end}
                        | {e * spe for e in range(start // spe + 1, end // spe + 1)} | {end})
    test = eval_batches(data, data.test, spec.data, RUNTIME.data_threads)
    validation = (eval_batches(data, data.validation, spec.data, RUNTIME.data_threads)
                  if data.validation is not None else None)
    t0 = time.perf_counter()
    cur, loss_sum, acc_sum, n = start, 0.0, 0.0, 0
    for b in boundaries:
        if b > cur:
            # The pipeline orders and augments batches itself (deterministically, by step).
            batches = train_batches(data, spec.data, seed, cur, b - cur, RUNTIME.data_threads)
            hist = model.fit(batches, epochs=1, verbose=0, shuffle=False).history
            loss_sum += hist["loss"][-1] * (b - cur)
            acc_sum += hist["accuracy"][-1] * (b - cur)
            n += b - cur
            cur = b
        if b in stops or b % spe == 0:
            average_replicas(model)
        if b in stops:
            on_stop(b)
        if b % spe == 0:
            ev = model.evaluate(test, verbose=0, return_dict=True)
            val = model.evaluate(validation, verbose=0, return_dict=True) if validation is not None else {}
            yield Progress(step=b, epoch=b // spe, train_loss=loss_sum / max(n, 1),
                           train_accuracy=acc_sum / max(n, 1), test_loss=float(ev["loss"]),
                           test_accuracy=float(ev["accuracy"]), seconds=time.perf_counter() - t0,
                           val_loss=float(val.get("loss", math.nan)), val_accuracy=float(val.get("accuracy", math.nan)))
            loss_sum, acc_sum, n, t0 = 0.0, 0.0, 0, time.perf_counter()


# ---------------------------------------------------------------------------------------------
# Dense trajectory.


@dataclass
class Trajectory:
    """Snapshots of all weights (BN statistics included) by step, and per-epoch metrics."""

    steps_per_epoch: int
    total_steps: int
    snapshots: dict[int, Weights]
    metrics: list[dict] = field(default_factory=list)
    layout: dict = field(default_factory=dict)  # models.layout: lets the driver check masks without Keras
    runtime: dict = field(default_factory=dict)  # Runtime.row(): threads, replicas, precision it trained with
    data: dict = field(default_factory=dict)  # the images of each split it trained and was evaluated on

    @property
    def final(self) -> Weights:
        return self.snapshots[self.total_steps]

    def save(self, directory: Path, dense_hash: str) -> None:
        artifacts.save_dense(directory, self.snapshots, {
            "dense_hash": dense_hash, "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "metrics": self.metrics, "layout": self.layout, "runtime": self.runtime, "data": self.data})


def train_dense(spec: Spec, data: Dataset, on_epoch: Callable[[Progress], None] = lambda p: None) -> Trajectory:
    """Train the dense network from its seeded initialisation, keeping the snapshots the spec's
    rewind points need; `on_epoch` sees each epoch's metrics as it ends."""
    spe = data.steps_per_epoch(spec.data.batch_size)
    total = spec.dense.epochs * spe
    keep = set(spec.record_steps(spe))
    with replicated(RUNTIME.replicas):
        model = models.build(spec.model, data.input_shape, data.num_classes, seed=spec.seed)
        replicas = model.distribute_strategy.num_replicas_in_sync if hasattr(model, "distribute_strategy") else 1
        compile_model(model, make_optimizer(spec.dense, spe))
        snapshots = {0: models.get_weights(model)}

        def snapshot(step: int) -> None:
            snapshots[step] = models.get_weights(model)

        metrics = []
        for p in _segments(model, spec, data, derive_seed(spec.seed, 0), 0, total, keep, snapshot):
            metrics.append(vars(p))
            on_epoch(p)
    sizes = {"train": len(data.train), "validation": len(data.validation) if data.validation is not None else 0,
             "test": len(data.test), "source": data.source}
    return Trajectory(spe, total, snapshots, metrics, models.layout(model),
                      {**RUNTIME.row(), "replicas": replicas, "data_order": data_order(data.train, spec.data)}, sizes)


def average_replicas(model: keras.Model) -> None:
    """Set every variable that replicas keep apart to its mean over the replicas.

    Keras 3 does not aggregate BatchNorm's moving statistics under a distribution strategy: each
    replica updates its own copy from its share of the batch, and a snapshot would hold the first
    replica's alone. Their mean is what tf.keras kept (mean aggregation on read) and, the moving
    average being linear, equals the moving average of the replicas' mean batch statistics; called
    at every snapshot and evaluation it keeps all copies equal (numpy means: bit-reproducible).
    """
    for v in model.non_trainable_variables:
        copies = getattr(v.value, "values", None)
        if copies and len(copies) > 1:
            v.assign(np.mean([keras.ops.convert_to_numpy(c) for c in copies], axis=0))


# ---------------------------------------------------------------------------------------------
# Tickets and sparse training.


@dataclass
class Ticket:
    """A mask and the (masked) weights its sparse run starts from; `threshold` is the largest pruned
    magnitude (None for random masks)."""

    mask: masks_lib.Mask
    start: Weights  # all weights the sparse run starts from, already masked
    threshold: float | None


def make_ticket(spec: Spec, model: keras.Model, final: Weights, rewind: Weights, sparsity: float,
                control: str, replicate: int) -> Ticket:
    """A one-shot grid point at `sparsity`: the mask pruned from the final dense weights, and what
    `control` trains from it (`control_ticket`)."""
    mask, threshold = pruning.oneshot_mask(spec.pruning, layout(model), final, sparsity=sparsity)
    return control_ticket(spec, model, mask, threshold, rewind, control, replicate)


def make_level_ticket(spec: Spec, model: keras.Model, final: Weights, rewind: Weights, level: int,
                      control: str, replicate: int) -> Ticket:
    """A one-shot grid point at IMP level `level`: the per-layer counts IMP keeps there, pruned in one
    shot from the final dense weights (the papers' one-shot comparisons); then `control_ticket`."""
    mask, threshold = pruning.oneshot_mask(spec.pruning, layout(model), final, level=level)
    return control_ticket(spec, model, mask, threshold, rewind, control, replicate)


def imp_level(spec: Spec, model: keras.Model, trained: Weights, previous: masks_lib.Mask | None,
              rewind: Weights) -> Ticket:
    """The ticket chain's next IMP level: prune `pruning.rate` of the survivors of `previous` by the
    magnitudes of the weights the previous level trained to, then rewind."""
    mask, threshold = pruning.imp_mask(spec.pruning, layout(model), trained, previous)
    return Ticket(mask, masks_lib.apply(rewind, mask), threshold)


def control_ticket(spec: Spec, model: keras.Model, mask: masks_lib.Mask, threshold: float | None,
                   rewind: Weights, control: str, replicate: int, level: int | None = None) -> Ticket:
    """What `control` trains from the ticket's `mask` (the papers' controls, each its own branch):

    - `ticket`: the mask, the rewound weights;
    - `random_reinit`: the same mask, a fresh initialisation (the replicate's REINIT stream);
    - `random_prune`: a random mask with exactly the ticket's count in every tensor (the replicate's
      RANDOM_PRUNE stream; an IMP chain's `level` gets its own), the rewound weights.
    """
    if control == "random_reinit":
        fresh = models.build(spec.model, tuple(model.input_shape[1:]), model.output_shape[-1],
                             seed=stream_seed(spec, replicate, Stream.REINIT))
        rewind = models.get_weights(fresh)
    elif control == "random_prune":
        extra = () if level is None else (level,)
        mask = masks_lib.random_mask_like(mask, stream_seed(spec, replicate, Stream.RANDOM_PRUNE, *extra))
        threshold = None
    elif control != "ticket":
        raise ValueError(f"Received `control={control!r}`: expected ticket, random_reinit or random_prune")
    return Ticket(mask, masks_lib.apply(rewind, mask), threshold)


def layout(model: keras.Model) -> pruning.Layout:
    return pruning.Layout.of(models.layout(model))


def transfer_ticket(spec: Spec, model: keras.Model, source: dict, replicate: int) -> tuple[Ticket, bool]:
    """A ticket found on another data set (`artifacts.load_ticket` output) fitted to `model`.

    Weights whose shape differs here (the classifier, when the class count differs) are
    re-initialised and left dense. Returns the ticket and whether that happened.
    """
    fresh = models.get_weights(models.build(spec.model, tuple(model.input_shape[1:]), model.output_shape[-1],
                                            seed=stream_seed(spec, replicate, Stream.TRANSFER)))
    names = pruning.prunable(spec.pruning, layout(model))
    start, mask, reinit = {}, {}, False
    for name, value in fresh.items():
        theirs = source["start"].get(name)
        if theirs is not None and theirs.shape == value.shape:
            start[name] = theirs
        else:
            start[name], reinit = value, True
        if name in names:
            m = source["mask"].get(name)
            mask[name] = m if m is not None and m.shape == value.shape else np.ones(value.shape, dtype=bool)
    return Ticket(mask, masks_lib.apply(start, mask), None), reinit


@dataclass
class SparseState:
    """Everything a sparse run needs to continue from an epoch boundary."""

    step: int
    weights: Weights
    optimizer: list[np.ndarray]
    early_stop: EarlyStop = EarlyStop()


def optimizer_state(optimizer: keras.optimizers.Optimizer) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v.value) for v in optimizer.variables]


_COMPILED: dict[str, tuple] = {}


def sparse_model(spec: Spec, data: Dataset) -> keras.Model:
    """The compiled model sparse runs train, kept per process for the sweep's architecture.

    Tune reuses worker processes between trials; keeping the model keeps its traced train and
    test steps, so only the first trial in a worker pays for tracing. Everything a run changes
    (weights, masks, optimizer state, schedule offset) is reset by `train_sparse`.
    """
    return _compiled(spec, data)[0]


def _compiled(spec: Spec, data: Dataset) -> tuple:
    spe = data.steps_per_epoch(spec.data.batch_size)
    key = json.dumps([spec.to_dict()["model"], spec.to_dict()["dense"], data.input_shape, data.num_classes, spe,
                      keras.config.dtype_policy().name])
    if key not in _COMPILED:
        _COMPILED.clear()
        policy = keras.config.dtype_policy().name
        keras.backend.clear_session()
        set_precision(policy)  # clear_session resets Keras's global state, the dtype policy included
        model = models.build(spec.model, data.input_shape, data.num_classes, seed=spec.seed)
        schedule = Schedule(spec.dense, spe)
        optimizer = make_optimizer(spec.dense, spe, schedule)
        compile_model(model, optimizer)
        _COMPILED[key] = (model, optimizer, schedule)
    return _COMPILED[key]


def warm_up(spec: Spec, data: Dataset) -> None:
    """Trace the sparse model's train and test steps ahead of the first trial (one train step, one
    test batch), with all-ones masks on the prunable weights so the traced step applies masks.
    `train_sparse` resets everything the step changed: weights, optimizer state, metrics."""
    model = sparse_model(spec, data)
    if model.train_function is not None:  # this process has traced it already
        return
    names = pruning.prunable(spec.pruning, layout(model))
    weights = models.get_weights(model)
    install_mask(model, {n: np.ones(weights[n].shape, dtype=bool) for n in names})
    model.fit(train_batches(data, spec.data, 0, 0, 1, RUNTIME.data_threads), epochs=1, verbose=0, shuffle=False)
    model.evaluate(eval_batches(data, data.test, spec.data, RUNTIME.data_threads).take(1), verbose=0)


def train_sparse(spec: Spec, data: Dataset, ticket: Ticket, rewind_step: int, seed: int,
                 resume: SparseState | None = None) -> Iterator[tuple[Progress, SparseState]]:
    """Train the masked network from `rewind_step` to the end of the dense schedule.

    Yields at every epoch boundary; the state yielded there restarts the run exactly there.
    """
    spe = data.steps_per_epoch(spec.data.batch_size)
    total = spec.dense.epochs * spe
    model, optimizer, schedule = _compiled(spec, data)
    # A fresh optimizer (zero momentum, step 0) whose schedule continues from the rewind step, as
    # OpenLTH does; or, when resuming, the checkpoint's optimizer state.
    schedule.offset.assign(float(rewind_step))
    for var in optimizer.variables:
        var.assign(keras.ops.zeros_like(var))
    scaler = model.optimizer  # under mixed_float16, Keras's loss-scaling wrapper around `optimizer`
    if isinstance(scaler, keras.optimizers.LossScaleOptimizer):
        # Its dynamic scale restarts with every run, so a trial does not inherit the scale the
        # worker's previous trial left (a resumed run restarts it too: float16 runs on GPUs, which
        # are not bit-reproducible anyway).
        scaler.step_counter.assign(0)
        scaler.dynamic_scale.assign(scaler.initial_scale)
    state = resume or SparseState(rewind_step, ticket.start, optimizer_state(optimizer))
    models.set_weights(model, state.weights)
    for var, value in zip(optimizer.variables, state.optimizer, strict=True):
        var.assign(value)
    install_mask(model, ticket.mask)
    early_stop = state.early_stop
    for p in _segments(model, spec, data, seed, state.step, total, set(), lambda _: None):
        early_stop = early_stop.after(p)
        yield p, SparseState(p.step, models.get_weights(model), optimizer_state(optimizer), early_stop)
