"""The figures, each described once: its name, its goal, how it is measured, and the detail line the
table prints. A figure's definition and goal are its issue's; `measured` is the value the goal judges."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable

from benchmarks import deploy, peer, pipeline, scheduler, sweeps, training
from benchmarks.bench import Bench

OPS = {">=": operator.ge, "==": operator.eq, "<": operator.lt, "<=": operator.le}


@dataclass(frozen=True)
class Goal:
    """`measured <op> value`, or relative to what the same run measured of the machine:
    `value x figure[times]` (a fraction of a ceiling) or `value + figure[plus]` (above a floor)."""

    op: str
    value: float
    times: str | None = None
    plus: str | None = None

    def threshold(self, fig: dict) -> float:
        return self.value * fig[self.times] if self.times else self.value + fig[self.plus] if self.plus else self.value

    def met(self, fig: dict) -> bool:
        return OPS[self.op](fig["measured"], self.threshold(fig))

    def __str__(self) -> str:
        if self.plus:
            return f"{self.op} {self.plus} + {self.value:g}"
        return f"{self.op} {self.value:g}" + (f" x {self.times}" if self.times else "")


@dataclass(frozen=True)
class Figure:
    number: int
    name: str
    goal: Goal
    measure: Callable[[Bench], dict]
    detail: Callable[[dict], str]
    what: str  # one line: what `measured` is


def _seconds(values) -> str:
    """Each run's seconds, as `48/51/45`."""
    return "/".join(f"{v:.0f}" for v in values)


def _step(fig: dict) -> str:
    return (f"dense {fig['dense_images_per_s']:.0f} img/s; masked "
            + ", ".join(f"{k}: {v['images_per_s']:.0f}" for k, v in fig["masked"].items())
            + f" (best of {fig['rounds']} interleaved rounds)")


def _sharing(fig: dict) -> str:
    text = f"{fig['trials']} trials, {fig['epochs']} epochs, {fig['wall_s']:.0f}s"
    naive = fig["naive"]
    if naive is None:
        return text + "; the naive design (a sweep per grid point) not run at this size"
    how = "" if naive["points_run"] == naive["points"] else (
        f", {naive['points_run']} of {naive['points']} points run, the rest at their mean")
    return (f"{text}; naive design: {naive['points']} dense runs, {naive['epochs']:.0f} epochs, "
            f"{naive['wall_s']:.0f}s ({naive['ratio']:.2f}x){how}")


def _parallel(fig: dict) -> str:
    phase, wall, where = fig["trial_phase_s"], fig["wall_s"], fig["where"]
    one, side = sweeps.ARMS

    head = (f"of ceiling {fig['of_ceiling']:.2f}; " if fig["measured"] is not None else "")
    return (f"{head}ceiling {fig['ceiling']:.2f} (same model and batch, {fig['cpus']} one-thread processes vs one "
            f"{fig['cpus']}-thread, median of {fig['ceiling_runs']['rounds']}); trial phase {_seconds(phase[one])}s one "
            f"at a time vs {_seconds(phase[side])}s side by side ({fig['trials']} trials, {fig['runs']} runs each); "
            f"whole command {fig['whole_command']:.2f}x ({_seconds(wall[one])}s vs {_seconds(wall[side])}s, dense "
            f"reused); steady epoch {where[one]['steady_epoch_s']:.2f}s vs {where[side]['steady_epoch_s']:.2f}s, "
            f"fresh-worker start-up {where[one]['fresh_worker_startup_s'] or 0:.1f}s x "
            f"{where[one]['fresh_workers_per_run']:.0f} vs {where[side]['fresh_worker_startup_s'] or 0:.1f}s x "
            f"{where[side]['fresh_workers_per_run']:.0f} per run")


def _overhead(fig: dict) -> str:
    projected = fig["projected"]
    return (f"start-up {fig['fresh_worker_startup_s'] or 0:.1f}s in a fresh worker, "
            f"{fig['reused_worker_startup_s'] or 0:.2f}s in a reused one; < 5 % for trials > "
            f"{fig['break_even_trial_s']:.0f}s; a {projected['preset']} trial here ({projected['trial_s']:.0f}s): "
            f"{100 * projected['fresh_worker_fraction']:.1f} %")


def _scheduler(fig: dict) -> str:
    return (f"{fig['points']} trials in {fig['seconds']:.0f}s, {fig['snapshot_mb']:.1f} MB snapshot, "
            f"driver RSS {fig['driver_rss_mb_before']:.0f} -> {fig['driver_rss_mb_after']:.0f} MB")


def _pipeline(fig: dict) -> str:
    return ", ".join(f"{k}: {v['images_per_s']:.0f} img/s" for k, v in fig.items() if isinstance(v, dict)) + (
        f"; model {fig['model_images_per_s']:.0f} img/s")


def _gpu(fig: dict) -> str:
    return (f"{fig['gpu']}: fp32 dense {fig['fp32']['dense_images_per_s']:.0f} img/s, "
            f"mixed dense {fig['mixed']['dense_images_per_s']:.0f} img/s")


def _versus_loop(fig: dict) -> str:
    return (f"sweep {_seconds(fig['sweep_wall_s'])}s vs loop {_seconds(fig['loop_wall_s'])}s ({fig['runs']} runs) for "
            f"dense + {len(fig['points'])} trials, {fig['epochs']} epochs of {fig['images'][0]} images; this "
            f"machine's floor {fig['machine_floor']:.2f} (one-thread processes side by side gain "
            f"{fig['ceiling']:.2f}x); dense test accuracy {fig['sweep_test_accuracy']['dense']:.3f} (sweep) vs "
            f"{fig['loop_test_accuracy']['dense']:.3f} (loop)")


def _replicas(fig: dict) -> str:
    runs = fig["runs"]
    return (f"epoch {fig['epoch_s_1']:.1f}s on 1 replica, {fig['epoch_s_2']:.1f}s on 2 ({fig['devices']} devices); "
            f"test accuracy after {fig['epochs']} epochs {runs[1]['test_accuracy'][-1]:.3f} vs "
            f"{runs[2]['test_accuracy'][-1]:.3f}")


def _streaming(fig: dict) -> str:
    return (f"decode-then-crop {fig['decode_then_crop_images_per_s']:.0f} img/s per core "
            f"(fused {fig['speedup']:.2f}x), {fig['images']} images")


def _memory(fig: dict) -> str:
    return (f"peak {fig['peak_rss_mb'][0]:.0f} -> {fig['peak_rss_mb'][1]:.0f} MiB for "
            f"{fig['encoded_mb'][0]:.0f} -> {fig['encoded_mb'][1]:.0f} MiB of JPEGs")


def _cores(fig: dict) -> str:
    return (f"{fig['gpu']}: model {fig['model_images_per_s']:.0f} img/s, pipeline "
            f"{fig['per_core_images_per_s']:.0f} img/s per core")


def _peer(fig: dict) -> str:
    def run(r: dict) -> str:
        rates = ", ".join(f"{side} {rate:.0f}" for side, rate in r["images_per_s"].items())
        return f"{r['arch']} {r['threads']} thread(s): {rates} img/s ({r['ratio']:.2f}x)"

    notes = {"xla": "xla: tickets' step under XLA", "bf16": "bf16: tickets' step under mixed_bfloat16"}
    shown = [notes[s] for s in notes if any(s in r["images_per_s"] for r in fig["runs"])]
    return "; ".join(run(r) for r in fig["runs"]) + f" (median of interleaved rounds{''.join('; ' + n for n in shown)})"


FIGURES = {f.number: f for f in (
    Figure(1, "masked / dense step", Goal(">=", 0.95), training.throughput, _step,
           "MobileNetV2 (width 0.35, 32 px) training images/s masked over dense, the worst sparsity"),
    Figure(2, "dense runs per sweep", Goal("==", 1), sweeps.dense_sharing, _sharing,
           "dense runs one sweep of the grid trains (beside it, the naive design: a sweep per grid point)"),
    Figure(3, "trial phase, 1 at a time / slots", Goal(">=", 0.9, times="ceiling"), sweeps.parallel_speedup,
           _parallel, "trial-phase wall time (first trial's start to last trial's end, start-ups and idle slots "
           "included), trials one at a time with every CPU over one-CPU slots side by side, same grid; medians "
           "of interleaved runs, all reusing one dense run"),
    Figure(4, "per-trial overhead", Goal("<", 0.05), sweeps.trial_overhead, _overhead,
           "a trial's start-up (setup, and its first epoch's extra time: tracing) over its time, mean over "
           "figure 3's side-by-side trials"),
    Figure(5, "scheduler s/trial", Goal("<", 0.2), scheduler.scheduler_scale, _scheduler,
           "seconds per no-op trial that fetches a MobileNetV2 snapshot"),
    Figure(6, "pipeline / model img/s", Goal(">=", 3.0), pipeline.input_pipeline, _pipeline,
           "CIFAR-10 pipeline images/s, the slower of decoding every epoch and decoded once, over figure 1's "
           "training images/s"),
    Figure(7, "GPU masked / dense", Goal(">=", 0.95), training.gpu_step, _gpu,
           "figure 1 at 224 px on a GPU, float32 and mixed precision, the worse"),
    Figure(8, "sweep / hand loop", Goal("<=", 0.05, plus="machine_floor"), sweeps.sweep_vs_loop, _versus_loop,
           "`python -m tickets.sweep`'s wall time over a hand-written sequential Keras loop's "
           "(`benchmarks/programs/hand_loop.py`) on the same Conv-2 grid of CIFAR-10, medians of interleaved runs"),
    Figure(9, "dense 2-replica speed-up", Goal(">=", 1.0), training.dense_replicas, _replicas,
           "dense epoch time on 1 replica over 2 (two GPUs, else two logical CPU devices); test accuracies beside it"),
    Figure(10, "streamed img/s per core", Goal(">=", 350), pipeline.streaming_rate, _streaming,
           "224 px augmented images/s in a one-core process streaming ImageNet-like shards (fused "
           "decode-and-crop; decode-then-crop beside it)"),
    Figure(11, "RSS growth MiB, 4x data", Goal("<", 200), pipeline.streaming_memory, _memory,
           "peak RSS growth of a streaming process when the data set grows 4x"),
    Figure(12, "cores per GPU trial", Goal("<=", 8), pipeline.cores_per_gpu_trial, _cores,
           "CPU cores one GPU trial's pipeline needs: MobileNetV2 (width 1.0, 224 px, mixed precision) GPU "
           "images/s over figure 10's per-core rate"),
    Figure(13, "tickets / PyTorch step", Goal(">=", 1.0), peer.peer_step, _peer,
           "masked training images/s of tickets' step (a preset's model, a 90 % ticket's masks) over the same "
           "network and masks in a plain PyTorch loop, same batch, threads and precision; the worse of "
           "MobileNetV2 and Conv-2"),
    Figure(14, "channel ticket batch-1 speed-up", Goal(">=", 1.5), deploy.deployed_tickets, deploy.detail,
           "LiteRT latency (1 image, 1 thread) of the MobileNetV2 preset's model over the same model without 50 % "
           "of its hidden channels (a channel ticket, exported thin); beside them 75 % of the channels and a 90 % "
           "unstructured ticket: parameters, FLOPs, `.keras` / `.tflite` bytes, Keras and LiteRT latency and "
           "batch-64 throughput on every core; medians of interleaved rounds"),
)}


_SYMBOLS = {">=": "≥", "<=": "≤", "==": "=", " x ": " × "}


def markdown() -> str:
    """The figures as docs/performance.md's table (`python -m benchmarks --list-figures` prints it)."""
    def goal(figure: Figure) -> str:
        text = str(figure.goal).replace("machine_floor", "floor")
        for plain, symbol in _SYMBOLS.items():
            text = text.replace(plain, symbol)
        return text

    lines = ["| figure | measured | goal |", "| --- | --- | --- |"]
    lines += [f"| {n}. {f.name} | {f.what} | {goal(f)} |" for n, f in FIGURES.items()]
    return "\n".join(lines)
