"""Dense trajectory and masked (sparse) training: the loop.

The algorithm, as in Frankle et al. (2020) "late resetting":
  1. train the dense network once, keeping weight snapshots at step 0, at every rewind point
     and at the end (`train_dense`);
  2. for each sparsity, prune the final weights by magnitude (`tickets.ticket.make_ticket`);
  3. reset the survivors to the rewind snapshot and train again with the pruned weights held at
     exactly zero, resuming the learning-rate schedule at the rewind step (`train_sparse`).

Dense and sparse training share one loop (`_segments`): dense training is the unmasked case.
Written against `keras` / `keras.ops`; only thread and device set-up (`tickets.runtime`) touches
TensorFlow. Each process trains with what `runtime.configure` set.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import keras
import numpy as np

from tickets import artifacts, models, pruning, seeds
from tickets import masks as masks_lib
from tickets import runtime as runtime_lib
from tickets.config import DenseSpec, Spec, step_of
from tickets.data import Dataset, order_label
from tickets.early_stop import EarlyStop
from tickets.ticket import Ticket, Weights, layout


class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """Warm-up, then constant, step, exponential (per epoch) or cosine decay; `offset` resumes it at
    a rewind step."""

    def __init__(self, spec: DenseSpec, steps_per_epoch: int, offset: int = 0):
        self.base = spec.optimizer.learning_rate
        self.name = spec.schedule.name
        self.total = spec.total_steps(steps_per_epoch)
        self.warmup = step_of(spec.schedule.warmup_epochs, steps_per_epoch)
        self.milestones = [step_of(m, steps_per_epoch) for m in spec.schedule.milestones]
        self.gamma = spec.schedule.gamma
        self.steps_per_epoch = steps_per_epoch
        # A variable, so a compiled model reused for another rewind point needs no retracing.
        self.offset = keras.Variable(float(offset), dtype="float32", trainable=False, name="schedule_offset")
        self._traced = None  # (graph, step, rate): the rate already built into the step being traced

    def __call__(self, step):
        # Keras's TensorFlow optimizer asks for the rate once per weight it decays (158 times in a
        # MobileNetV2 train step), and each ask would build these ops again: one traced step gets
        # them once (the step advances `step` only after its last read, and never writes `offset`).
        graph = runtime_lib.tracing_graph()
        if graph is not None and self._traced and self._traced[0] is graph and self._traced[1] is step:
            return self._traced[2]
        lr = self._rate(step)
        self._traced = (graph, step, lr) if graph is not None else None
        return lr

    def _rate(self, step):
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


def compile_model(model: keras.Model, optimizer: keras.optimizers.Optimizer, jit_compile: bool | None = None) -> None:
    # XLA on CPU is not bit-reproducible across builds and gains little for these nets.
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  jit_compile=("auto" if runtime_lib.on_gpu() else False) if jit_compile is None else jit_compile)
    # Every variable exists before the first step: TensorFlow traces a step that creates variables
    # twice (MobileNetV2 on a CPU: about 8 s more per process). Hence the metric as an object, not
    # the string "accuracy" (whose variables Keras makes inside the step), and the optimizer built
    # here (under mixed_float16 its loss-scale wrapper too).
    model.optimizer.build(model.trainable_variables)


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
            model.make_train_function(force=True)
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


def _segments(model: keras.Model, spec: Spec, data: Dataset, seed: int, start: int, end: int,
              stops: set[int], on_stop: Callable[[int], None]) -> Iterator[Progress]:
    """Train steps `start..end`, pausing at every step in `stops` (for `on_stop`) and yielding
    a `Progress` at every epoch boundary, where the validation split (if any) and the test set are
    evaluated."""
    if start >= end:  # a run restarted from its last checkpoint: nothing to train or evaluate again
        return
    from tickets.pipeline import eval_batches, train_batches  # TensorFlow: imported where batches are made

    spe = data.steps_per_epoch(spec.data.batch_size)
    boundaries = sorted({s for s in stops if start < s <= end}
                        | {e * spe for e in range(start // spe + 1, end // spe + 1)} | {end})
    test = eval_batches(data, data.test, spec.data, runtime_lib.RUNTIME.data_threads)
    validation = (eval_batches(data, data.validation, spec.data, runtime_lib.RUNTIME.data_threads)
                  if data.validation is not None else None)
    t0 = time.perf_counter()
    cur, loss_sum, acc_sum, n = start, 0.0, 0.0, 0
    for b in boundaries:
        if b > cur:
            # The pipeline orders and augments batches itself (deterministically, by step).
            batches = train_batches(data, spec.data, seed, cur, b - cur, runtime_lib.RUNTIME.data_threads)
            # Its length is unknown to tf.data, and without `steps_per_epoch` Keras calls the train
            # step once more to find the end: that call fails on the data but still runs what does
            # not depend on it, the optimizer's step counter (+1 per segment, so the schedule drifts;
            # on 2 replicas only the first replica's, so replicas read different learning rates and
            # their weight copies part) and the accuracy metric's count.
            hist = model.fit(batches, epochs=1, steps_per_epoch=b - cur, verbose=0, shuffle=False).history
            loss_sum += hist["loss"][-1] * (b - cur)
            acc_sum += hist["accuracy"][-1] * (b - cur)
            n += b - cur
            cur = b
        if b in stops or b % spe == 0:
            runtime_lib.average_replicas(model)
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
    total = spec.dense.total_steps(spe)
    keep = set(spec.record_steps(spe))
    with runtime_lib.replicated(runtime_lib.RUNTIME.replicas):
        model = models.build(spec.model, data.input_shape, data.num_classes, seed=seeds.dense_init(spec.seed))
        replicas = model.distribute_strategy.num_replicas_in_sync if hasattr(model, "distribute_strategy") else 1
        compile_model(model, make_optimizer(spec.dense, spe))
        snapshots = {0: models.get_weights(model)}

        def snapshot(step: int) -> None:
            snapshots[step] = models.get_weights(model)

        metrics = []
        for p in _segments(model, spec, data, seeds.dense_data(spec.seed), 0, total, keep, snapshot):
            metrics.append(vars(p))
            on_epoch(p)
    sizes = {"train": len(data.train), "validation": len(data.validation) if data.validation is not None else 0,
             "test": len(data.test), "source": data.source}
    return Trajectory(spe, total, snapshots, metrics, models.layout(model),
                      {**runtime_lib.RUNTIME.row(), "replicas": replicas,
                       "data_order": order_label(data.train, spec.data)}, sizes)


@dataclass
class SparseState:
    """Everything a sparse run needs to continue from an epoch boundary."""

    step: int
    weights: Weights
    optimizer: list[np.ndarray]
    early_stop: EarlyStop = EarlyStop()


def optimizer_state(optimizer: keras.optimizers.Optimizer) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v.value) for v in optimizer.variables]


@dataclass
class _Compiled:
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    schedule: Schedule
    traced: bool = False  # its train and test steps have run in this process (a trial, or warm_up)


_COMPILED: dict[str, _Compiled] = {}


def sparse_model(spec: Spec, data: Dataset) -> keras.Model:
    """The compiled model sparse runs train, kept per process for the sweep's architecture.

    Tune reuses worker processes between trials; keeping the model keeps its traced train and
    test steps, so only the first trial in a worker pays for tracing. Everything a run changes
    (weights, masks, optimizer state, schedule offset) is reset by `train_sparse`.
    """
    return _compiled(spec, data).model


def _compiled(spec: Spec, data: Dataset) -> _Compiled:
    spe = data.steps_per_epoch(spec.data.batch_size)
    key = json.dumps([spec.to_dict()["model"], spec.to_dict()["dense"], data.input_shape, data.num_classes, spe,
                      keras.config.dtype_policy().name])
    if key not in _COMPILED:
        _COMPILED.clear()
        policy = keras.config.dtype_policy().name
        keras.backend.clear_session()
        runtime_lib.set_precision(policy)  # clear_session resets Keras's global state, the dtype policy included
        # Every trial replaces these weights; the dense run's own initialisation is as good as any.
        model = models.build(spec.model, data.input_shape, data.num_classes, seed=seeds.dense_init(spec.seed))
        schedule = Schedule(spec.dense, spe)
        optimizer = make_optimizer(spec.dense, spe, schedule)
        compile_model(model, optimizer)
        _COMPILED[key] = _Compiled(model, optimizer, schedule)
    return _COMPILED[key]


def warm_up(spec: Spec, data: Dataset) -> None:
    """Trace the sparse model's train and test steps ahead of the first trial (one train step, one
    test batch), with all-ones masks on the prunable weights so the traced step applies masks.
    `train_sparse` resets everything the step changed: weights, optimizer state, metrics."""
    compiled = _compiled(spec, data)
    if compiled.traced:  # this process has traced it already
        return
    model = compiled.model
    names = pruning.prunable(spec.pruning, layout(model))
    shapes = {v.path: tuple(v.shape) for v in model.weights}
    install_mask(model, {n: np.ones(shapes[n], dtype=bool) for n in names})
    from tickets.pipeline import eval_batches, train_batches

    threads = runtime_lib.RUNTIME.data_threads
    model.fit(train_batches(data, spec.data, seeds.WARM_UP, 0, 1, threads), epochs=1, steps_per_epoch=1, verbose=0,
              shuffle=False)
    model.evaluate(eval_batches(data, data.test, spec.data, threads).take(1), verbose=0)
    compiled.traced = True


def train_sparse(spec: Spec, data: Dataset, ticket: Ticket, rewind_step: int, seed: int,
                 resume: SparseState | None = None) -> Iterator[tuple[Progress, SparseState]]:
    """Train the masked network from `rewind_step` to the end of the dense schedule.

    Yields at every epoch boundary; the state yielded there restarts the run exactly there.
    """
    total = spec.dense.total_steps(data.steps_per_epoch(spec.data.batch_size))
    compiled = _compiled(spec, data)
    model, optimizer, schedule = compiled.model, compiled.optimizer, compiled.schedule
    compiled.traced = True  # by its first epoch
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
