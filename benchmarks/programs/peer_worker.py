"""One side of figure 13, kept warm in a process of its own: a preset's model with a ticket's masks,
trained by tickets (`training.compile_model`, `model.fit`, the runtime a trial gets) or by a plain
PyTorch loop (the same network translated layer by layer, the same weights and masks).

    peer_worker.py tickets|torch|xla|bf16 PRESET THREADS SPARSITY

Reads `STEPS` lines from stdin, trains that many steps on in-memory random images, and answers
each with a JSON line: images per second, and the largest absolute weight under the mask (0.0 when
the masks held). Its first line out is the set-up (parameters, the forward-pass check).
"""

from __future__ import annotations

import json
import os
import sys
import time

SIDE, PRESET, THREADS, SPARSITY = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
MAX_STEPS = 64  # a round's steps at most: the images stay in memory

import numpy as np  # noqa: E402

from tickets import config as config_lib  # noqa: E402
from tickets import models, pipeline, pruning, runtime, training  # noqa: E402


def keras_model(spec):
    """The preset's model as a trial holds it: built, with the masks of a one-shot ticket at
    `SPARSITY` (the preset's allocation, on these weights: where the zeros are does not change the
    step's work, but a mask that empties a layer would make the network a different one)."""
    model = models.build(spec.model, (32, 32, 3), 10, seed=0)
    mask, _ = pruning.oneshot_mask(spec.pruning, pruning.Layout.of(models.layout(model)), models.get_weights(model),
                                   SPARSITY)
    return model, mask


def main() -> None:
    spec = config_lib.load(PRESET)
    batch = spec.data.batch_size
    # Tickets' runtime as a trial gets it (threads, op determinism); torch is told the same threads.
    # Keras ignores `jit_compile` while op determinism is on (not every op has a deterministic XLA
    # kernel): the XLA side turns it off, and its runs are checked bit-identical otherwise.
    # The bf16 side computes under Keras's mixed_bfloat16 policy (float32 master weights).
    runtime.configure(cpus=THREADS, deterministic=SIDE != "xla", precision="mixed_bfloat16" if SIDE == "bf16" else "float32")
    model, mask = keras_model(spec)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * MAX_STEPS, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=batch * MAX_STEPS).astype("int64")
    if SIDE == "torch":
        import torch

        from benchmarks.peer import TorchTwin, torch_trainer

        torch.set_num_threads(THREADS)
        torch.set_num_interop_threads(1)
        twin = TorchTwin(model)
        gap = twin.check(model, x[:16])
        train, held = torch_trainer(twin, spec, mask)

        def step(n):
            for i in range(n):
                train(xs[i * batch:(i + 1) * batch], ys[i * batch:(i + 1) * batch])

        xs, ys = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)

        def prepare(n):  # the tensors in memory are the batches
            pass

        params = sum(p.numel() for p in twin.parameters())
    else:
        training.install_mask(model, mask)
        optimizer = training.make_optimizer(spec.dense, 100)
        training.compile_model(model, optimizer, jit_compile=SIDE == "xla")
        xs, ys, gap = x, y.astype("int32"), 0.0
        if model.jit_compile != (SIDE == "xla"):
            raise RuntimeError(f"{SIDE}: Keras compiled with jit_compile={model.jit_compile}")
        variables = {v.path: v for v in model.weights}
        params = model.count_params()

        # Fed as a trial's pipelines are (`model.fit` on arrays would autotune a pipeline of its own),
        # one dataset per round length, built before its round is timed.
        feeds = {}

        def prepare(n):
            feeds.setdefault(n, pipeline.in_memory(xs[: n * batch], ys[: n * batch], batch, THREADS))

        def step(n):
            model.fit(feeds[n], epochs=1, verbose=0, shuffle=False)

        def held():
            return max(float(np.abs(variables[k].numpy()[~m]).max(initial=0.0)) for k, m in mask.items())

    prepare(2)
    step(2)  # trace, allocate
    print(json.dumps({"side": SIDE, "batch": batch, "parameters": int(params), "forward_gap": gap}), flush=True)
    for line in sys.stdin:
        n = min(int(line), MAX_STEPS)
        prepare(n)
        start = time.perf_counter()
        step(n)
        seconds = time.perf_counter() - start
        print(json.dumps({"images_per_s": batch * n / seconds, "masked_max": held()}), flush=True)


if __name__ == "__main__":
    main()
