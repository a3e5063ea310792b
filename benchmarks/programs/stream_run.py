"""Figures 10 and 11: one process, one core, streaming ImageNet-like shards at SIZE px with augmentation.

    python benchmarks/programs/stream_run.py ROOT SIZE BATCHES MODES

MODES: comma-separated `fused` (the product's pipeline: only the random crop of each JPEG is decoded)
and `decode_then_crop` (the same stream, whole images decoded and then cut). Run with TensorFlow's
pools at one thread (the bench sets TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS); `tf.data` gets
a private pool of one. Prints images/s per mode and the process's own peak RSS.
"""

import json
import sys
import time

from tickets import data, pipeline
from tickets.config import DataSpec

root, size, batches, modes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
spec = DataSpec(dataset="parquet", path=root, image_size=size, batch_size=32, augment=True)
d = data.load(spec, seed=0)
assert d.train.kind == "streamed", d.train.kind

out = {}
for mode in modes:
    batches_ = pipeline.train_batches(d, spec, seed=0, start_step=0, num_steps=batches + 1, threads=1,
                                  fused_crop=mode == "fused")
    it = iter(batches_)
    next(it)  # start-up
    start, n = time.perf_counter(), 0
    for x, _ in it:
        n += int(x.shape[0])
    out[mode] = n / (time.perf_counter() - start)
# VmHWM: this process's own peak (ru_maxrss would carry the parent's over from before exec).
out["peak_rss_mb"] = next(int(line.split()[1]) for line in open("/proc/self/status")
                          if line.startswith("VmHWM")) / 1024
print(json.dumps(out))
