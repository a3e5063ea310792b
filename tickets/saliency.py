"""Pruning at initialization: the scores SNIP, GraSP and SynFlow give a network's prunable weights.

Each score is computed on a copy of the model built from its config (float32; SynFlow's float64 and
linearized), so the trial's compiled model and its traced steps are left alone. Scores are higher-
keeps, for `masks.select`; the allocation (`pruning.allocation`) says within which parts and how many.
As in Synaptic-Flow's reference code (ganguli-lab/Synaptic-Flow, `Pruners/pruners.py`), every score
is taken with BatchNorm in inference mode and over the prunable kernels only.

- SNIP (Lee et al. 2019): |g ⊙ θ|, g the loss's gradient summed over `batches`.
- GraSP (Wang et al. 2020): the paper prunes the largest −θ ⊙ Hg, so θ ⊙ Hg is kept; H is the loss's
  Hessian, g its gradient (both with the logits divided by the reference code's temperature 200),
  Hg by double back-propagation.
- SynFlow (Tanaka et al. 2020): |θ ⊙ ∂R/∂θ|, R = 1ᵀ f(1) the output of the network with every
  parameter (BatchNorm's statistics too) replaced by its absolute value and its activations made
  linear, on an all-ones input: data-free. Pruned iteratively (`synflow_mask`): `rounds` rounds on an
  exponential schedule, each scoring the network the previous rounds left. In float64: the product
  of fifty layers' weights overflows float32.

The gradients are TensorFlow's (`tf.GradientTape`); on another Keras backend these raise.
"""

from __future__ import annotations

from typing import Iterable

import keras
import numpy as np

from tickets import masks as masks_lib
from tickets import models

GRASP_TEMPERATURE = 200.0


def snip(model: keras.Model, names: list[str], weights: dict, batches: Iterable) -> masks_lib.Scores:
    """SNIP's |Σ_b ∇L_b ⊙ θ| of the kernels `names`, with all of `model`'s weights set to `weights`."""
    tf = _tensorflow()
    copy, kernels = _copy(model, names, weights, "float32")
    total = None
    for images, labels in batches:
        with tf.GradientTape() as tape:
            loss = _loss(labels, copy(images, training=False))
        grads = tape.gradient(loss, kernels)
        total = grads if total is None else [t + g for t, g in zip(total, grads, strict=True)]
    if total is None:
        raise ValueError("Received no batches to score")
    return {n: np.abs(_numpy(g) * _numpy(k)) for n, g, k in zip(names, total, kernels, strict=True)}


def grasp(model: keras.Model, names: list[str], weights: dict, batches: Iterable) -> masks_lib.Scores:
    """GraSP's kept score θ ⊙ Hg of the kernels `names` (the paper prunes the largest −θ ⊙ Hg)."""
    tf = _tensorflow()
    copy, kernels = _copy(model, names, weights, "float32")
    batches = list(batches)
    if not batches:
        raise ValueError("Received no batches to score")
    g = None  # the gradient, summed over the batches, held constant in the product below
    for images, labels in batches:
        with tf.GradientTape() as tape:
            loss = _loss(labels, copy(images, training=False) / GRASP_TEMPERATURE)
        grads = tape.gradient(loss, kernels)
        g = grads if g is None else [a + b for a, b in zip(g, grads, strict=True)]
    hg = [tf.zeros_like(k.value) for k in kernels]
    for images, labels in batches:
        hg = [a + b for a, b in zip(hg, hessian_gradient(copy, kernels, images, labels, g), strict=True)]
    return {n: _numpy(h) * _numpy(k) for n, h, k in zip(names, hg, kernels, strict=True)}


def hessian_gradient(model: keras.Model, kernels: list, images, labels, g: list) -> list:
    """H·g on one batch by double back-propagation: ∇_θ (∇_θ L · g), g held constant (GraSP's
    temperature applied to the logits)."""
    tf = _tensorflow()
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = _loss(labels, model(images, training=False) / GRASP_TEMPERATURE)
        grads = inner.gradient(loss, kernels)
        product = tf.add_n([tf.reduce_sum(tf.stop_gradient(c) * d) for c, d in zip(g, grads, strict=True)])
    return outer.gradient(product, kernels)


def synflow(model: keras.Model, names: list[str], weights: dict, mask: masks_lib.Mask | None = None) -> masks_lib.Scores:
    """SynFlow's |θ ⊙ ∂R/∂θ| of the kernels `names` of the network `weights` (masked by `mask`)."""
    return _SynFlow(model, names, weights).scores(mask or {})


def synflow_mask(model: keras.Model, names: list[str], weights: dict, parts: list[masks_lib.Part],
                 rounds: int) -> masks_lib.Mask:
    """SynFlow's mask: `rounds` rounds, each keeping in every part its share of the survivors by the
    scores of the network the previous rounds left; part p keeps n_p·(k_p / n_p)^(r / rounds) after
    round r (exponential schedule), exactly k_p after the last."""
    if rounds < 1:
        raise ValueError(f"Received `rounds={rounds}`: must be >= 1")
    flow = _SynFlow(model, names, weights)
    sizes = {n: int(np.size(weights[n])) for n in names}
    mask = {n: np.ones(np.shape(weights[n]), dtype=bool) for n in names}
    for r in range(1, rounds + 1):
        scores = flow.scores(mask)
        step = []
        for part, keep in parts:
            size = sum(sizes[n] for n in part)
            share = keep if r == rounds else max(keep, int(round(size * (keep / size) ** (r / rounds))))
            step.append((part, min(share, sum(int(mask[n].sum()) for n in part))))
        mask = masks_lib.select(scores, step, mask)
    return mask


class _SynFlow:
    """The linearized float64 copy of a model (|θ|, linear activations, BatchNorm in inference mode)
    and its traced score step."""

    def __init__(self, model: keras.Model, names: list[str], weights: dict):
        tf = _tensorflow()
        self.names = names
        self.absolute = {k: np.abs(np.asarray(v, dtype=np.float64)) for k, v in weights.items()}
        self.copy, self.kernels = _copy(model, names, self.absolute, "float64", linear=True)
        ones = tf.ones((1, *model.input_shape[1:]), tf.float64)

        @tf.function
        def gradients():
            with tf.GradientTape() as tape:
                flow = tf.reduce_sum(self.copy(ones, training=False))
            return flow, tape.gradient(flow, self.kernels)

        self._gradients = gradients

    def scores(self, mask: masks_lib.Mask) -> masks_lib.Scores:
        for n, k in zip(self.names, self.kernels, strict=True):
            k.assign(self.absolute[n] * mask[n] if n in mask else self.absolute[n])
        flow, grads = self._gradients()
        if not np.isfinite(float(flow)):
            raise ValueError(f"Received a network whose SynFlow output is {float(flow)} even in float64")
        return {n: np.abs(_numpy(g) * _numpy(k)) for n, g, k in zip(self.names, grads, self.kernels, strict=True)}


def _copy(model: keras.Model, names: list[str], weights: dict, dtype: str, linear: bool = False):
    """`model` rebuilt from its config in `dtype` (with `linear`, every activation made linear: on
    the all-positive inputs SynFlow feeds it, ReLU is the identity and ReLU6 would saturate), its
    weights set to `weights`; and its kernel variables `names`, in that order."""
    config = model.get_config()
    for layer in config["layers"]:
        c = layer["config"]
        c["dtype"] = dtype
        if linear and layer["class_name"] == "ReLU":
            c["max_value"] = None
        if linear and c.get("activation") not in (None, "linear", "relu"):
            raise ValueError(f"Received layer {c['name']!r} with activation {c['activation']!r}: SynFlow "
                             "needs a network that is linear on positive inputs")
    copy = keras.Model.from_config(config)
    models.set_weights(copy, {k: np.asarray(v, dtype=dtype) for k, v in weights.items()})
    variables = {v.path: v for v in copy.weights}
    return copy, [variables[n] for n in names]


def _loss(labels, logits):
    return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


def _numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


def _tensorflow():
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"Pruning at initialization computes its gradients with TensorFlow; Keras runs on "
                           f"{keras.backend.backend()!r} here (KERAS_BACKEND)")
    import tensorflow as tf

    return tf
