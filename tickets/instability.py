"""Instability analysis: is a rewound (sparse) network stable to SGD noise?

Frankle, Dziugaite, Roy & Carbin (2020), "Linear Mode Connectivity and the Lottery Ticket
Hypothesis": train two copies of a network from the same weights with different data order and
augmentation, then evaluate the straight line θ(α) = (1 − α)·θ₁ + α·θ₂ between them. The
*instability* is the error barrier on that line: the largest error along it minus the mean of the
two end points' errors. A network is stable when it is at most 2 % (`STABLE`); the paper finds IMP
subnetworks match the dense network's accuracy only from the rewind points where they are stable.

The twin itself is trained by the trainable (`train_sparse` with the TWIN seed stream); this module
evaluates the path (`path`) and turns the curve into the row's columns (`columns`). The two copies
share their mask, so every point of the line keeps exactly the ticket's zeros.
"""

from __future__ import annotations

import math

import numpy as np

STABLE = 0.02  # the paper's threshold: an error barrier of at most 2 % is "stable"


def wanted(enabled: bool, control: str, sparsity: float | None) -> bool:
    """Whether a trial trains a twin: every `ticket` trial, and every trial at sparsity 0 (the dense
    network rewound and retrained)."""
    return enabled and (control == "ticket" or sparsity == 0.0)


def barrier(accuracy) -> float:
    """The error barrier of a curve of accuracies (fractions) from α = 0 to α = 1: the largest error
    along it minus the mean of the two ends' errors. 0 for a flat line; never below 0."""
    error = 1.0 - np.asarray(accuracy, dtype=np.float64)
    if not np.isfinite(error).all():
        return math.nan
    return float(error.max() - (error[0] + error[-1]) / 2)


def interpolate(first: dict, second: dict, alpha: float) -> dict:
    """(1 − α)·first + α·second, tensor by tensor, computed in float64 and kept in each tensor's dtype
    (every variable: the weights, and BatchNorm's running statistics too); α = 0 and 1 give the ends exactly."""
    return {k: ((1.0 - alpha) * first[k].astype(np.float64) + alpha * second[k].astype(np.float64))
            .astype(first[k].dtype) for k in first}


def path(spec, data, model, first: dict, second: dict, seed: int) -> dict[str, np.ndarray]:
    """The two copies' line evaluated at `spec.instability.points` values of α: the test set's loss and
    accuracy, and the validation split's where there is one (NaN otherwise). With `batchnorm:
    reestimate`, BatchNorm's statistics are recomputed at every α from training batches (`seed`)."""
    from tickets import models
    from tickets import runtime as runtime_lib
    from tickets.data import eval_batches

    options = spec.instability
    test = eval_batches(data, data.test, spec.data, runtime_lib.RUNTIME.data_threads)
    validation = (eval_batches(data, data.validation, spec.data, runtime_lib.RUNTIME.data_threads)
                  if data.validation is not None else None)
    alphas = np.linspace(0.0, 1.0, options.points)
    curve = {k: np.full(len(alphas), np.nan) for k in ("test_loss", "test_accuracy", "val_loss", "val_accuracy")}
    for i, alpha in enumerate(alphas):
        models.set_weights(model, interpolate(first, second, alpha))
        if options.batchnorm == "reestimate":
            reestimate_batchnorm(model, spec, data, seed, options.batchnorm_batches)
        ev = model.evaluate(test, verbose=0, return_dict=True)
        curve["test_loss"][i], curve["test_accuracy"][i] = ev["loss"], ev["accuracy"]
        if validation is not None:
            ev = model.evaluate(validation, verbose=0, return_dict=True)
            curve["val_loss"][i], curve["val_accuracy"][i] = ev["loss"], ev["accuracy"]
    return {"alpha": alphas, **curve}


def reestimate_batchnorm(model, spec, data, seed: int, batches: int) -> None:
    """Every BatchNorm layer's running mean and variance set to the average of its batch statistics
    over `batches` training batches (augmented, as in training), the weights left alone. The
    momentum of step i is i / (i + 1): the running average of the first i + 1 batches' statistics."""
    import keras

    from tickets import runtime as runtime_lib
    from tickets.data import train_batches

    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return
    saved = [layer.momentum for layer in layers]
    try:
        for i, (images, _) in enumerate(train_batches(data, spec.data, seed, 0, batches,
                                                      runtime_lib.RUNTIME.data_threads)):
            for layer in layers:
                layer.momentum = i / (i + 1)
            model(images, training=True)  # eager: the momentum is read at every call
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum


def columns(curve: dict[str, np.ndarray], twin: dict, batchnorm: str) -> dict:
    """The trial row's instability columns: the error barrier on the test set (`instability`) and on
    the validation split (`val_instability`, NaN without one), the twin's own final accuracies (a
    second sample of the network) and how BatchNorm was treated along the line."""
    return {"instability": barrier(curve["test_accuracy"]), "val_instability": barrier(curve["val_accuracy"]),
            "twin_test_accuracy": twin["test_accuracy"], "twin_val_accuracy": twin["val_accuracy"],
            "instability_batchnorm": batchnorm}
