"""The instability analysis's line, evaluated in a trial's process: the two trained copies'
interpolations (`instability.interpolate`) evaluated along α on the test set and the validation
split, with BatchNorm's statistics interpolated or re-estimated at every point.
"""

from __future__ import annotations

import keras
import numpy as np

from tickets import artifacts, instability, models
from tickets import runtime as runtime_lib
from tickets.pipeline import eval_batches, train_batches


def path(spec, data, model, first: dict, second: dict, seed: int) -> dict[str, np.ndarray]:
    """The two copies' line evaluated at `spec.instability.points` values of α: the test set's loss and
    accuracy, and the validation split's where there is one (NaN otherwise). With `batchnorm:
    reestimate`, BatchNorm's statistics are recomputed at every α from training batches (`seed`), and
    the accuracies with them interpolated are kept beside (`interpolated_*`): both barriers."""
    options = spec.instability
    test = eval_batches(data, data.test, spec.data, runtime_lib.RUNTIME.data_threads)
    validation = (eval_batches(data, data.validation, spec.data, runtime_lib.RUNTIME.data_threads)
                  if data.validation is not None else None)
    alphas = np.linspace(0.0, 1.0, options.points)
    curve = {k: np.full(len(alphas), np.nan) for k in artifacts.CURVE_COLUMNS if k != "alpha"}
    for i, alpha in enumerate(alphas):
        models.set_weights(model, instability.interpolate(first, second, alpha))
        if options.batchnorm == "reestimate":
            curve["interpolated_test_accuracy"][i] = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
            if validation is not None:
                curve["interpolated_val_accuracy"][i] = model.evaluate(validation, verbose=0,
                                                                       return_dict=True)["accuracy"]
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
