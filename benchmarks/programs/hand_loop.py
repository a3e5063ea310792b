"""Figure 8's baseline: the loop a researcher writes by hand without tickets.

    python benchmarks/programs/hand_loop.py ARRAYS.npz GRID_JSON

Plain Keras: the dense network once (keeping the rewind epochs' weights), then every grid point one
after another, each with all the machine's cores, evaluating on the test set every epoch as the sweep
does. Per-layer magnitude masks held by a kernel constraint (as cheap as the sweep's), a fresh
optimizer per trial. Its own Conv-2 on purpose: it owes nothing to tickets. Prints the seconds it
took after its imports and each run's final test accuracy.
"""

import json
import sys
import time

import keras
import numpy as np

start = time.perf_counter()
arrays, grid = np.load(sys.argv[1]), json.loads(sys.argv[2])
x, y, xt, yt = (arrays[k] for k in ("x", "y", "xt", "yt"))
x, xt = (a.astype("float32") / 127.5 - 1.0 for a in (x, xt))
epochs, batch, lr = grid["epochs"], grid["batch"], grid["learning_rate"]
KERNELS = (0, 2, 4, 6, 8)  # positions of the kernels in get_weights()


class Mask(keras.constraints.Constraint):
    def __init__(self, mask):
        self.mask = mask

    def __call__(self, w):
        return w * self.mask


def conv2(masks=None):
    masks = masks or {}

    def constraint(i):
        return Mask(masks[i]) if i in masks else None

    inputs = keras.Input(x.shape[1:])
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu", kernel_constraint=constraint(0))(inputs)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu", kernel_constraint=constraint(2))(h)
    h = keras.layers.Flatten()(keras.layers.MaxPooling2D(2)(h))
    h = keras.layers.Dense(256, activation="relu", kernel_constraint=constraint(4))(h)
    h = keras.layers.Dense(256, activation="relu", kernel_constraint=constraint(6))(h)
    model = keras.Model(inputs, keras.layers.Dense(10, kernel_constraint=constraint(8))(h))
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


keras.utils.set_random_seed(0)
model = conv2()
weights = {0: model.get_weights()}
for epoch in range(1, epochs + 1):
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, validation_data=(xt, yt))
    weights[epoch] = model.get_weights()
accuracies = {"dense": model.evaluate(xt, yt, verbose=0)[1]}
final = weights[epochs]
for sparsity, rewind in grid["points"]:
    masks = {}
    for i in KERNELS:
        order = np.argsort(np.abs(final[i]), axis=None, kind="stable")
        keep = np.ones(final[i].size, dtype="float32")
        keep[order[: round(sparsity * final[i].size)]] = 0.0
        masks[i] = keep.reshape(final[i].shape)
    model = conv2(masks)
    model.set_weights([w * masks[i] if i in masks else w for i, w in enumerate(weights[rewind])])
    history = model.fit(x, y, batch_size=batch, epochs=epochs - rewind, verbose=0, validation_data=(xt, yt))
    accuracies[f"{sparsity}/{rewind}"] = history.history["val_accuracy"][-1]
print(json.dumps({"seconds": time.perf_counter() - start, "test_accuracy": accuracies}))
