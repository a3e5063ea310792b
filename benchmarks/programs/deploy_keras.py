"""Figure 14's Keras side: exported tickets (`.keras` files) loaded with Keras alone and timed.

    python benchmarks/programs/deploy_keras.py THREADS BATCH ROUNDS CALLS WARMUP MODEL.keras...

TensorFlow gets THREADS intra-op threads and one inter-op thread (one op at a time, each on every
thread, as tickets' runtime runs a CPU process), set before it starts: a process per thread setting.
Each model runs `model(x, training=False)` inside a `tf.function` on BATCH random images; each round
times CALLS calls of every model in turn, after WARMUP calls each (tracing). Prints one JSON line:
seconds per call of each model (named by its file's stem) in every round, the thread pools read back,
and whether loading the models imported tickets (it must not: an export loads without it).
"""

import json
import sys
import time
from pathlib import Path

threads, batch, rounds, calls, warmup = map(int, sys.argv[1:6])
paths = [Path(p) for p in sys.argv[6:]]

import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)

import keras  # noqa: E402
import numpy as np  # noqa: E402

models = {p.stem: keras.models.load_model(p) for p in paths}
tickets_imported = any(name == "tickets" or name.startswith("tickets.") for name in sys.modules)
x = tf.constant(np.random.default_rng(2).uniform(-1, 1, (batch, *next(iter(models.values())).input_shape[1:]))
                .astype("float32"))
calls_of = {}
for name, model in models.items():
    forward = tf.function(lambda x, model=model: model(x, training=False))
    for _ in range(warmup):
        forward(x).numpy()
    calls_of[name] = forward


def time_it(forward) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        y = forward(x)
    y.numpy()  # eager CPU calls return when done; this only makes sure
    return (time.perf_counter() - start) / calls


seconds = {name: [] for name in models}
for _ in range(rounds):
    for name, forward in calls_of.items():
        seconds[name].append(time_it(forward))
print(json.dumps({"seconds": seconds, "tickets_imported": tickets_imported,
                  "threads_read_back": [tf.config.threading.get_intra_op_parallelism_threads(),
                                        tf.config.threading.get_inter_op_parallelism_threads()]}))
