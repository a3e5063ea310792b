"""Figure 14: channel tickets, deployed. The `mobilenetv2-cifar10` preset's model, dense, as channel
tickets without 50 % and 75 % of its hidden channels, and as an unstructured ticket at 90 %, each
exported as `tickets.export` does (the removed channels physically gone, a plain Keras model, a TFLite
flatbuffer), and measured: parameters, multiply-adds, file sizes, and the time of one image on one
thread and of a batch of 64 on every core, in LiteRT and in Keras.

The weights are the preset's initialisation with each BatchNorm gamma drawn around 1 (an untrained
model's gammas are all 1: every channel would tie) and every BatchNorm's statistics set to what its
input has on a random batch (`_calibrate`): a trained network's activation scale, not an
initialisation's, whose logits are ~1e-10 (and whose 90 % ticket's activations would near the
denormal range, which x86 computes many times slower). What is timed does not depend on which
channels go, only on how many.

LiteRT runs in this process, one interpreter per variant and setting; Keras runs in a process per
thread setting (`programs/deploy_keras.py`: TensorFlow's thread pools are set once per process), which
loads the `.keras` files with Keras alone. Each round times every variant once, in turn; each
figure is the median of the rounds. `measured` is LiteRT's one-image, one-thread latency of the dense
model over the 50 % channel ticket's.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.bench import Bench, log, program

PRESET = "mobilenetv2-cifar10"
CLASSES = 10
CHANNEL_SHARES = {"channel_50": 0.50, "channel_75": 0.75}  # of the removable (hidden) channels
UNSTRUCTURED = ("unstructured_90", 0.90)  # the preset's own pruning (weights, LAMP) at this sparsity
BATCH = 64  # the throughput batch
PAUSE_S = 0.05  # between two interpreters' timings: the last one's idle thread pool spins a while
# Within 25 % of the FLOPs ratio: the measured speed-up at least 0.75 of it.
FLOPS_SHARE = 0.75
MAX_LOGIT_ERROR = 1e-4  # thin against masked model (relative to the largest logit): float rounding only
MAX_LITERT_ERROR = 1e-3  # LiteRT against Keras: XNNPACK's own summation order, not a wrong conversion


def deployed_tickets(bench: Bench) -> dict:
    """Figure 14 (module docstring)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return {"skipped": "the export to TFLite and Keras's timing need the TensorFlow backend"}
    s = bench.size["deploy"]
    cpus = bench.machine["cpus"] or os.cpu_count()
    out_dir = bench.storage / "deploy"
    out_dir.mkdir(parents=True, exist_ok=True)
    variants, extra = _variants(out_dir)
    for name, v in variants.items():
        log(f"figure 14: {name}: {v['params']:,} parameters, {v['macs'] / 1e6:.1f} M MACs, "
            f"tflite {v['tflite_bytes'] / 1e3:.0f} KB, logits within {v['logit_error']:.1e}")
    log(f"figure 14: LiteRT, {s['rounds']} interleaved rounds")
    litert = _litert(variants, cpus, s)
    log("figure 14: Keras, one process per thread setting")
    keras_times, keras_threads = _keras(variants, cpus, s)
    for name, v in variants.items():
        v.pop("tflite")
        v["litert"], v["keras"] = litert[name], keras_times[name]
    out = {"preset": PRESET, "cpus": cpus, "batch": BATCH, "rounds": s["rounds"], "calls": s["calls"],
           "keras_threads_read_back": keras_threads, "variants": variants, **extra}
    _ratios(out)
    return out


# ---------------------------------------------------------------------------------------------
# The variants: masks, thin models, files, checks.


def _variants(out_dir: Path) -> tuple[dict, dict]:
    """Every variant's mask, thin model and files, checked: {name: {...}}, and the unstructured
    ticket's TFLite encodings."""
    from tickets import channels, export, models, pruning
    from tickets import config as config_lib

    spec = config_lib.load(PRESET)
    size = spec.data.image_size
    model = models.build(spec.model, (size, size, 3), CLASSES, seed=0)
    layout = pruning.Layout.of(models.layout(model))
    weights = _perturbed(models.get_weights(model), seed=0)
    x = np.random.default_rng(1).uniform(-1, 1, (BATCH, size, size, 3)).astype(np.float32)
    channel_spec = dataclasses.replace(spec.pruning, granularity="channel", scope="layerwise")
    # The share the figure names counts the inverted-residual blocks' hidden channels (the groups that
    # pass a depthwise convolution); layerwise pruning takes about the same share of the two other groups.
    groups = [g for g in channels.prunable(layout, pruning.prunable(channel_spec, layout)) if g.through]

    masks = {"dense": ({}, {"granularity": None})}
    for name, share in CHANNEL_SHARES.items():
        mask, sparsity = _channel_mask(channel_spec, layout, weights, groups, share)
        masks[name] = (mask, {"granularity": "channel", "scope": "layerwise", "sparsity": sparsity,
                              "channel_share": channels.removed_share(mask, groups), "channel_share_asked": share})
    name, sparsity = UNSTRUCTURED
    mask, _ = pruning.oneshot_mask(spec.pruning, layout, weights, sparsity=sparsity)
    masks[name] = (mask, {"granularity": "weight", "scope": spec.pruning.scope, "sparsity": sparsity})

    variants, extra = {}, {}
    for name, (mask, how) in masks.items():
        sparse = name == UNSTRUCTURED[0]
        thin, removed = _thin(model, weights, mask, x)  # `model` now holds the masked, calibrated weights
        v = {"mask": how, "channels_removed": removed, **_counts(thin, mask, layout), **_agreement(model, thin, x)}
        keras_path = out_dir / f"{name}.keras"
        thin.save(keras_path)
        v["tflite"] = export.to_tflite(thin, sparse=sparse)
        v["keras_path"], v["keras_bytes"] = str(keras_path), keras_path.stat().st_size
        v["tflite_bytes"] = len(v["tflite"])
        v["litert_logit_error"] = _litert_error(v["tflite"], thin, x)
        if sparse:
            tflite_path = out_dir / f"{name}.tflite"
            tflite_path.write_bytes(v["tflite"])
            stored_sparse, kept_dense = export.sparse_report(tflite_path, thin)
            extra["unstructured_tflite"] = {
                "sparse_bytes": len(v["tflite"]), "dense_encoded_bytes": len(export.to_tflite(thin, sparse=False)),
                "kernels_stored_sparse": len(stored_sparse), "kernels_kept_dense": kept_dense,
                "tensors_stored_sparse": _sparse_tensors(v["tflite"])}
        variants[name] = v
    return variants, extra


def _perturbed(weights: dict, seed: int) -> dict:
    """The initial weights with every BatchNorm gamma drawn from N(1, 0.1): channels that differ."""
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0, 0.1, v.shape).astype(v.dtype) if k.endswith("/gamma") else v)
            for k, v in weights.items()}


def _channel_mask(spec, layout, weights: dict, groups, share: float) -> tuple[dict, float]:
    """The layerwise channel mask whose removed share of `groups`' channels is closest to `share`:
    `pruning.oneshot_mask` asks for a share of the weights, so the sparsity is bisected (the share
    grows with it); returns the mask and its sparsity."""
    from tickets import channels, pruning

    close = 0.5 / sum(g.size for g in groups)  # half a channel: no mask comes closer than that
    lo, hi, best = 0.0, 1.0, None
    while hi - lo > 1e-6 and not (best and abs(best[0] - share) <= close):
        sparsity = (lo + hi) / 2
        try:
            mask, _ = pruning.oneshot_mask(spec, layout, weights, sparsity=sparsity)
        except ValueError:  # more weights than the groups can give above their floors
            hi = sparsity
            continue
        got = channels.removed_share(mask, groups)
        if best is None or abs(got - share) < abs(best[0] - share):
            best = (got, mask, sparsity)
        lo, hi = (sparsity, hi) if got < share else (lo, sparsity)
    if best is None:
        raise RuntimeError(f"figure 14: no channel mask of the {PRESET} model removes {share:.0%} of its channels")
    return best[1], best[2]


def _thin(model, weights: dict, mask: dict, x: np.ndarray):
    """The ticket as `tickets.export` deploys it: the masked weights set, the BatchNorm statistics
    calibrated on `x`, the channels no consumer reads removed (`export.thinner`)."""
    from tickets import export, models

    models.set_weights(model, {k: v * mask[k] if k in mask else v for k, v in weights.items()})
    _calibrate(model, x)
    return export.thinner(model, mask)


def _calibrate(model, x: np.ndarray) -> None:
    """Every BatchNorm's moving mean and variance set to its input's on `x`, from one training-mode
    pass (each BatchNorm normalises by the batch's statistics there): in inference mode the model then
    computes what that pass did, activations of a trained network's scale."""
    import keras

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    probe = keras.Model(model.input, [layer.input for layer in norms])
    for layer, value in zip(norms, probe(x, training=True)):
        value = keras.ops.convert_to_numpy(value)
        layer.moving_mean.assign(value.mean(axis=(0, 1, 2)))
        layer.moving_variance.assign(value.var(axis=(0, 1, 2)))


def _counts(thin, mask: dict, layout) -> dict:
    """Parameters (all variables, BatchNorm statistics included) and multiply-adds per image: of the
    thin model's dense kernels, and of its nonzero weights (what a sparse kernel would compute)."""
    import keras

    from tickets import channels

    macs, nonzero_macs, _ = channels.flops(mask, layout)
    values = [keras.ops.convert_to_numpy(v) for v in thin.weights]
    return {"params": int(thin.count_params()), "nonzero_params": int(sum(np.count_nonzero(v) for v in values)),
            "macs": macs, "nonzero_macs": nonzero_macs}


def _agreement(masked, thin, x: np.ndarray) -> dict:
    """The thin model's logits against the masked model's on `x`: the largest difference relative to
    the largest logit, and the share of images whose top-1 class agrees. Raises if they differ: a thin
    model that computes something else would be timed as if it were the ticket."""
    a = np.asarray(masked(x, training=False))
    b = np.asarray(thin(x, training=False))
    error = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
    top1 = float(np.mean(a.argmax(1) == b.argmax(1)))
    if not (error < MAX_LOGIT_ERROR and top1 == 1.0):
        raise RuntimeError(f"figure 14: the thin model's logits differ from the masked model's "
                           f"(relative error {error:.2e}, top-1 agreement {top1:.1%})")
    return {"logit_error": error, "top1_agreement": top1, "logit_scale": float(np.abs(a).max())}


def _litert_error(content: bytes, thin, x: np.ndarray) -> float:
    """LiteRT's logits for the flatbuffer against Keras's, relative; raises past MAX_LITERT_ERROR."""
    interpreter = _interpreter(content, 1, len(x))
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    want = np.asarray(thin(x, training=False))
    error = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
    if not error < MAX_LITERT_ERROR:
        raise RuntimeError(f"figure 14: LiteRT's logits differ from Keras's by {error:.2e} (relative)")
    return error


def _sparse_tensors(content: bytes) -> int:
    """How many tensors the flatbuffer stores in TFLite's sparse encoding, counted in the file itself
    (`export.sparse_report` names the kernels, matching them to tensors by size)."""
    details = _interpreter(content, 1, 1).get_tensor_details()
    return sum(1 for d in details if d.get("sparsity_parameters"))


# ---------------------------------------------------------------------------------------------
# Timing.


def _interpreter(content: bytes, threads: int, batch: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=threads)
    if batch != 1:
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, [batch, *interpreter.get_input_details()[0]["shape"][1:]])
    interpreter.allocate_tensors()
    return interpreter


def _timer(content: bytes, threads: int, batch: int, warmup: int):
    """A warm interpreter's timing function: `calls` invocations -> seconds per invocation."""
    interpreter = _interpreter(content, threads, batch)
    shape = interpreter.get_input_details()[0]["shape"]
    x = np.random.default_rng(2).uniform(-1, 1, shape).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    for _ in range(warmup):  # XNNPACK packs weights and plans on the first invocations
        interpreter.invoke()

    def time_it(calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            interpreter.invoke()
        return (time.perf_counter() - start) / calls

    return time_it


def _litert(variants: dict, cpus: int, s: dict) -> dict:
    """LiteRT in this process: each variant's batch-1 one-thread latency and batch-64 every-core
    throughput, every timing of a round in turn, `rounds` rounds; medians and each round's values."""
    settings = {"latency": (1, 1, s["calls"]["latency"]), "throughput": (cpus, BATCH, s["calls"]["throughput"])}
    timers = {(name, what): _timer(v["tflite"], threads, batch, s["warmup"])
              for what, (threads, batch, _) in settings.items() for name, v in variants.items()}
    seconds = {key: [] for key in timers}
    for _ in range(s["rounds"]):
        for (name, what), time_it in timers.items():
            time.sleep(PAUSE_S)
            seconds[(name, what)].append(time_it(settings[what][2]))
    return {name: _rates(seconds[(name, "latency")], seconds[(name, "throughput")]) for name in variants}


def _keras(variants: dict, cpus: int, s: dict) -> tuple[dict, dict]:
    """Keras (TensorFlow) in a process per thread setting, loading the `.keras` files alone: each
    variant's times, and the thread pools (intra-op, inter-op) each process read back."""
    paths = [v["keras_path"] for v in variants.values()]
    runs = {what: program("deploy_keras", threads, batch, s["rounds"], s["calls"][what], s["warmup"], *paths)
            for what, threads, batch in (("latency", 1, 1), ("throughput", cpus, BATCH))}
    for run in runs.values():
        if run["tickets_imported"]:
            raise RuntimeError("figure 14: loading the exported .keras files imported tickets")
    times = {name: _rates(runs["latency"]["seconds"][name], runs["throughput"]["seconds"][name])
             for name in variants}
    return times, {what: run["threads_read_back"] for what, run in runs.items()}


def _rates(latency_s: list[float], batch_s: list[float]) -> dict:
    return {"latency_ms": 1e3 * statistics.median(latency_s), "images_per_s": BATCH / statistics.median(batch_s),
            "rounds_latency_ms": [1e3 * t for t in latency_s], "rounds_images_per_s": [BATCH / t for t in batch_s]}


# ---------------------------------------------------------------------------------------------
# The figure: speed-ups against FLOPs ratios.


def _ratios(out: dict) -> None:
    """Each variant's speed-ups over dense and FLOPs ratios; `measured`; whether the 50 % ticket's
    speed-up is within 25 % of its FLOPs ratio; and a fit of where its latency goes."""
    variants = out["variants"]
    dense = variants["dense"]
    for v in variants.values():
        v["flops_ratio"] = dense["macs"] / v["macs"]
        v["nonzero_flops_ratio"] = dense["macs"] / v["nonzero_macs"]
        v["speedup"] = {f"{engine}_{what}": (dense[engine]["latency_ms"] / v[engine]["latency_ms"] if what == "latency"
                                             else v[engine]["images_per_s"] / dense[engine]["images_per_s"])
                        for engine in ("litert", "keras") for what in ("latency", "throughput")}
        # Multiply-adds per second of LiteRT's one-thread latency: how well each model's kernels run.
        v["litert_gmacs_per_s"] = v["macs"] / v["litert"]["latency_ms"] / 1e6
    half = variants["channel_50"]
    out["measured"] = half["speedup"]["litert_latency"]
    out["flops_ratio"] = half["flops_ratio"]
    out["speedup_over_flops_ratio"] = out["measured"] / half["flops_ratio"]
    out["within_25pct_of_flops_ratio"] = out["measured"] >= FLOPS_SHARE * half["flops_ratio"]
    out["latency_fit"] = _fit([variants[n] for n in ("dense", *CHANNEL_SHARES)])


def _fit(variants: list[dict]) -> dict:
    """LiteRT's one-thread latency = fixed + per-MAC x MACs, least squares over the dense model and
    the channel tickets: the fixed part is what does not shrink with the multiply-adds (per-operator
    dispatch, the residual stream's elementwise work, kernels a channel ticket does not thin)."""
    macs = np.array([v["macs"] for v in variants]) / 1e6
    ms = np.array([v["litert"]["latency_ms"] for v in variants])
    per_mmac, fixed = np.polyfit(macs, ms, 1)
    return {"fixed_ms": float(fixed), "ms_per_million_macs": float(per_mmac),
            "fixed_share_of_dense": float(fixed / ms[0]),
            "largest_residual_ms": float(np.abs(fixed + per_mmac * macs - ms).max())}


def detail(fig: dict) -> str:
    """The table's line for figure 14."""
    v = fig["variants"]

    def lat(name: str) -> str:
        return f"{v[name]['litert']['latency_ms']:.3f}"

    half, fit = v["channel_50"], fig["latency_fit"]
    unstructured = v[UNSTRUCTURED[0]]
    return (
        f"LiteRT 1 image 1 thread {lat('dense')} ms dense, {lat('channel_50')} / {lat('channel_75')} ms at "
        f"50 / 75 % channels ({half['speedup']['litert_latency']:.2f}x / "
        f"{v['channel_75']['speedup']['litert_latency']:.2f}x; FLOPs {half['flops_ratio']:.2f}x / "
        f"{v['channel_75']['flops_ratio']:.2f}x: 50 % {'' if fig['within_25pct_of_flops_ratio'] else 'NOT '}within"
        f" 25 % of its FLOPs ratio, {fig['speedup_over_flops_ratio']:.2f} of it; fit: {fit['fixed_ms']:.3f} ms "
        f"does not shrink with FLOPs), unstructured 90 % {lat(UNSTRUCTURED[0])} ms "
        f"({unstructured['speedup']['litert_latency']:.2f}x; XNNPACK's sparse kernels run only on ARM and pre-AVX "
        f"x86; tflite {unstructured['tflite_bytes'] / 1e3:.0f} vs {v['dense']['tflite_bytes'] / 1e3:.0f} KB dense); "
        f"batch {fig['batch']} on {fig['cpus']} cores, img/s dense / 50 / 75 / unstructured: LiteRT "
        + " / ".join(f"{x['litert']['images_per_s']:.0f}" for x in v.values()) + ", Keras "
        + " / ".join(f"{x['keras']['images_per_s']:.0f}" for x in v.values()) + "; Keras 1 image "
        + " / ".join(f"{x['keras']['latency_ms']:.2f}" for x in v.values())
        + f" ms (median of {fig['rounds']} interleaved rounds)")
