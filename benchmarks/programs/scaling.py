"""One training process of the machine's ceiling (figures 3 and 8), timed an epoch at a time on cue.

    python benchmarks/programs/scaling.py SPEC THREADS STEPS

Builds SPEC's model, optimizer and loss as a trial does (`tickets.models`, `tickets.training`) with
THREADS intra-op threads (`tickets.runtime.configure`, as a trial given THREADS CPUs), on generated
images of SPEC's size in batches of SPEC's batch size. Prints `ready` once traced, then trains one
epoch of STEPS batches for every line read on stdin and prints {"images_per_s": ...}: processes side
by side are told to start together.
"""

import json
import sys
import time

spec_path, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

from tickets import runtime  # noqa: E402  (thread pools are set before TensorFlow starts)

runtime.configure(threads)

import numpy as np  # noqa: E402

from tickets import config, models, pipeline, training  # noqa: E402

spec = config.load(spec_path)
size, batch, classes = spec.data.image_size, spec.data.batch_size, 10
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, (batch * steps, size, size, 3)).astype("float32")
y = rng.integers(0, classes, batch * steps).astype("int32")
model = models.build(spec.model, (size, size, 3), classes, seed=0)
training.compile_model(model, training.make_optimizer(spec.dense, steps))
batches = pipeline.in_memory(x, y, batch, threads)  # as a trial's pipelines run; built once
model.fit(pipeline.in_memory(x[: 2 * batch], y[: 2 * batch], batch, threads), verbose=0, shuffle=False)  # trace
print("ready", flush=True)
for _ in sys.stdin:
    start = time.perf_counter()
    model.fit(batches, verbose=0, shuffle=False)
    print(json.dumps({"images_per_s": len(x) / (time.perf_counter() - start)}), flush=True)
