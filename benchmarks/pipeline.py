"""Input pipelines: CIFAR-10 shards against the model's training rate (figure 6), ImageNet-like shards
streamed at 224 px (10), a streaming process's memory at two data set sizes (11), and the cores one GPU
trial's pipeline needs (12). `imagenet_like_shards` makes the shards (the tests use it too)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.bench import Bench, cifar10, env, log, program
from benchmarks.training import step_throughput, throughput


def input_pipeline(bench: Bench) -> dict:
    """Figure 6: images/s the training pipeline delivers on real CIFAR-10 shards, decoding the JPEGs
    every epoch and decoded once, over the images/s MobileNetV2 trains at (figure 1)."""
    from tickets import data, pipeline
    from tickets.config import DataSpec, SubsetSpec

    root = cifar10()
    if not (root / "train.parquet").exists():
        return {"skipped": f"no CIFAR-10 Parquet shards at {root} (set TICKETS_DATA_DIR)"}
    model_rate = throughput(bench)["dense_images_per_s"]
    batches, batch = bench.size["pipeline_batches"], bench.size["step"]["batch"]
    spec = DataSpec(dataset="cifar10", path=str(root), batch_size=batch, augment=True,
                    subset=SubsetSpec(train=max(batch * batches, 1000), test=100))
    # Half the decoded pixels: too little to decode them once, enough to stream these class-sorted
    # shards shuffled whole (their JPEGs are a third of the pixels' size).
    streamed_budget = spec.subset.train * 32 * 32 * 3 // 2
    out = {}
    for mode, budget in (("decode_each_epoch", streamed_budget), ("decoded_once", None)):
        start = time.perf_counter()
        d = data.load(spec, seed=0, budget=budget)
        load_s = time.perf_counter() - start
        iterator = iter(pipeline.train_batches(d, spec, seed=0, start_step=0, num_steps=batches))
        next(iterator)  # pipeline start-up
        start, n = time.perf_counter(), 1
        for _ in iterator:
            n += 1
        out[mode] = {"images_per_s": (n - 1) * batch / (time.perf_counter() - start), "load_s": load_s,
                     "kind": d.train.kind}
    out["model_images_per_s"] = model_rate
    out["measured"] = min(out[m]["images_per_s"] for m in ("decode_each_epoch", "decoded_once")) / model_rate
    return out


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


def _shards(bench: Bench, rows: int) -> Path:
    root = bench.storage / f"shards-{rows}"
    return root if root.exists() else imagenet_like_shards(root, rows)


def _stream(root: Path, batches: int, modes: str) -> dict:
    """`programs/stream_run.py` at 224 px in a one-core process (TensorFlow's pools and tf.data's)."""
    return program("stream_run", root, 224, batches, modes,
                   environ=env(TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", CUDA_VISIBLE_DEVICES=""))


def streaming_rate(bench: Bench) -> dict:
    """Figure 10 (also read by 12): images/s per core at 224 px with augmentation, streamed from
    shards: the product's fused decode-and-crop, beside decoding whole images and cropping after."""
    def measure():
        rows, batches = bench.size["shards"]["images"][0], bench.size["shards"]["batches"]
        rates = _stream(_shards(bench, rows), batches, "fused,decode_then_crop")
        return {"images": rows, "batches": batches, "fused_images_per_s": rates["fused"],
                "decode_then_crop_images_per_s": rates["decode_then_crop"],
                "speedup": rates["fused"] / rates["decode_then_crop"], "measured": rates["fused"]}

    return bench.once("streaming", measure)


def streaming_memory(bench: Bench) -> dict:
    """Figure 11: peak RSS of one streaming process at two data set sizes (4x apart)."""
    sizes, batches = bench.size["shards"]["images"], bench.size["shards"]["batches"]
    peaks, encoded = [], []
    for rows in sizes:
        root = _shards(bench, rows)
        encoded.append(sum(f.stat().st_size for f in (root / "train").glob("*.parquet")) / 2**20)
        peaks.append(_stream(root, batches, "fused")["peak_rss_mb"])
    return {"images": list(sizes), "encoded_mb": encoded, "peak_rss_mb": peaks, "measured": peaks[1] - peaks[0]}


def cores_per_gpu_trial(bench: Bench) -> dict:
    """Figure 12: cores one GPU trial's input pipeline needs to feed MobileNetV2 (width 1.0, 224 px,
    mixed precision) at the GPU's training rate (figure 10's per-core rate)."""
    gpu = bench.machine["gpu"]
    if gpu is None:
        return {"skipped": "no GPU on this machine"}
    per_core = streaming_rate(bench)["fused_images_per_s"]
    log("figure 12: MobileNetV2 (width 1.0) at 224 px on the GPU, mixed precision")
    rate = step_throughput(224, 64, 20, 3, (0.0,), mixed_precision=True, width=1.0)["dense_images_per_s"]
    return {"gpu": gpu, "model_images_per_s": rate, "per_core_images_per_s": per_core, "measured": rate / per_core}
