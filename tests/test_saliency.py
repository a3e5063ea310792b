"""Pruning at initialization: SNIP's, GraSP's and SynFlow's scores against what they are by hand,
by finite differences and in closed form, and SynFlow's defining property (no layer collapse)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tickets import masks, models, saliency


def _chain(widths: list[int], activation=None, dtype="float32", bias=False) -> keras.Model:
    """Dense layers d1, d2, ... of `widths[1:]` units on an input of `widths[0]`."""
    inputs = keras.Input((widths[0],), dtype=dtype)
    x = inputs
    for i, width in enumerate(widths[1:]):
        last = i == len(widths) - 2
        x = keras.layers.Dense(width, use_bias=bias, activation=None if last else activation, dtype=dtype,
                               name=f"d{i + 1}")(x)
    return keras.Model(inputs, x)


def _signed(model: keras.Model, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.7, v.shape).astype(v.dtype) for k, v in models.get_weights(model).items()}


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_snip_scores_are_the_summed_gradient_times_the_weight_by_hand():
    model = _chain([4, 3])
    weights = _signed(model, 0)
    rng = np.random.default_rng(1)
    batches = [(rng.normal(size=(5, 4)).astype("float32"), rng.integers(0, 3, 5)) for _ in range(2)]
    w = weights["d1/kernel"].astype(np.float64)
    # Softmax cross-entropy of logits x·W, mean over the batch: dL/dW = xᵀ(softmax(xW) − onehot(y)) / n.
    g = sum(x.T.astype(np.float64) @ (_softmax(x @ w) - np.eye(3)[y]) / len(y) for x, y in batches)
    scores = saliency.snip(model, ["d1/kernel"], weights, batches)
    np.testing.assert_allclose(scores["d1/kernel"], np.abs(g * w), rtol=1e-4, atol=1e-7)


def test_grasp_hessian_gradient_product_matches_a_finite_difference():
    model = _chain([4, 6, 3], activation="tanh", dtype="float64")
    models.set_weights(model, _signed(model, 2))
    kernels = [v for v in model.weights if v.path.endswith("kernel")]
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(8, 4)), rng.integers(0, 3, 8)
    g = [tf.constant(rng.normal(size=k.shape)) for k in kernels]  # any direction: H·g is linear in it

    def gradient():
        with tf.GradientTape() as tape:
            logits = model(x, training=False) / saliency.GRASP_TEMPERATURE
            loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        return [t.numpy() for t in tape.gradient(loss, kernels)]

    eps, start = 1e-4, [k.numpy() for k in kernels]
    for k, w, d in zip(kernels, start, g):
        k.assign(w + eps * d.numpy())
    plus = gradient()
    for k, w, d in zip(kernels, start, g):
        k.assign(w - eps * d.numpy())
    minus = gradient()
    for k, w in zip(kernels, start):
        k.assign(w)
    hg = saliency.hessian_gradient(model, kernels, x, y, g)
    for exact, p, m in zip(hg, plus, minus):
        np.testing.assert_allclose(exact.numpy(), (p - m) / (2 * eps), rtol=1e-5, atol=1e-12)
    # GraSP keeps θ ⊙ Hg with g the loss's own gradient: the paper prunes the largest −θ ⊙ Hg.
    weights = models.get_weights(model)
    names = [k.path for k in kernels]
    scores = saliency.grasp(model, names, weights, [(x, y)])
    with tf.GradientTape() as tape:
        logits = model(x, training=False) / saliency.GRASP_TEMPERATURE
        loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
    own = saliency.hessian_gradient(model, kernels, x, y, tape.gradient(loss, kernels))
    for n, k, h in zip(names, start, own):
        np.testing.assert_allclose(scores[n], k * h.numpy(), rtol=2e-3, atol=1e-7)  # the score is float32
        assert (scores[n] < 0).any() and (scores[n] > 0).any()


def test_synflow_scores_on_a_linear_chain_are_the_closed_form():
    model = _chain([3, 4, 5, 2])
    weights = _signed(model, 4)
    a = [np.abs(weights[f"d{i}/kernel"]).astype(np.float64) for i in (1, 2, 3)]
    # R = 1ᵀ|W1||W2||W3|1: the score of W_l[i, j] is |W_l[i, j]| times the flow into unit i from the
    # input and the flow out of unit j to the output.
    into = [np.ones(3), np.ones(3) @ a[0], np.ones(3) @ a[0] @ a[1]]
    out = [a[1] @ a[2] @ np.ones(2), a[2] @ np.ones(2), np.ones(2)]
    scores = saliency.synflow(model, [f"d{i}/kernel" for i in (1, 2, 3)], weights)
    for i in range(3):
        np.testing.assert_allclose(scores[f"d{i + 1}/kernel"], a[i] * np.outer(into[i], out[i]), rtol=1e-10)


def test_synflow_keeps_every_layer_alive_where_global_snip_empties_one():
    # A wide first layer and a narrow last one, Glorot-uniform initialised (as Keras does, but
    # seeded), pruned globally to 30 of 10,320 weights (99.7 %).
    model = _chain([32, 256, 8, 10], activation="relu", bias=True)
    rng = np.random.default_rng(0)
    weights = {k: (rng.uniform(-1, 1, v.shape) * np.sqrt(6 / sum(v.shape)) if k.endswith("kernel") else
                   np.zeros(v.shape)).astype("float32") for k, v in models.get_weights(model).items()}
    names = ["d1/kernel", "d2/kernel", "d3/kernel"]
    parts = [(tuple(names), 30)]
    batch = [(rng.normal(size=(64, 32)).astype("float32"), rng.integers(0, 10, 64))]
    snip = masks.select(saliency.snip(model, names, weights, batch), parts)
    flow = saliency.synflow_mask(model, names, weights, parts, rounds=100)
    assert sum(int(m.sum()) for m in snip.values()) == sum(int(m.sum()) for m in flow.values()) == 30
    assert int(snip["d1/kernel"].sum()) == 0, {n: int(m.sum()) for n, m in snip.items()}  # the wide layer emptied
    # Maximal critical compression: every layer keeps a path through it.
    assert min(int(m.sum()) for m in flow.values()) > 0, {n: int(m.sum()) for n, m in flow.items()}


def test_synflow_rounds_must_be_positive():
    model = _chain([3, 2])
    with pytest.raises(ValueError, match="rounds=0"):
        saliency.synflow_mask(model, ["d1/kernel"], models.get_weights(model), [(("d1/kernel",), 3)], rounds=0)
