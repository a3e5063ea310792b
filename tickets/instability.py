"""Instability analysis: is a rewound (sparse) network stable to SGD noise?

Frankle, Dziugaite, Roy & Carbin (2020), "Linear Mode Connectivity and the Lottery Ticket
Hypothesis": train two copies of a network from the same weights with different data order and
augmentation, then evaluate the straight line θ(α) = (1 − α)·θ₁ + α·θ₂ between them. The
*instability* is the error barrier on that line: the largest error along it minus the mean of the
two end points' errors. A network is stable when it is under 2 % (`stable`, the one rule every
table, plot and summary uses); the paper finds IMP
subnetworks match the dense network's accuracy only from the rewind points where they are stable.

This module holds the definitions, plain numpy (the driver and the analysis read them): which trials
twin (`wanted`), the line (`interpolate`), the barrier (`barrier`, `STABLE`) and the row's columns
(`columns`). The twin is trained by its trial (`train_sparse` with the TWIN seed stream) and the
line evaluated in the trial's process (`interpolation.path`). The two copies share their mask, so
every point of the line keeps exactly the ticket's zeros.
"""

from __future__ import annotations

import math

import numpy as np

STABLE = 0.02  # the paper's threshold: an error barrier under 2 % is "stable"


def stable(barrier: float) -> bool:
    """Whether an error barrier (a fraction) is stable: under `STABLE`."""
    return bool(barrier < STABLE)


def wanted(enabled: bool, control: str) -> bool:
    """Whether a trial trains a twin: every `ticket` trial. The ticket at sparsity 0 is the dense
    network rewound and retrained, the paper's dense curve; an IMP chain trains one at level 0. A
    control's twin would only repeat, less comparably, what its ticket's says."""
    return enabled and control == "ticket"


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


def columns(curve: dict[str, np.ndarray], twin: dict, batchnorm: str) -> dict:
    """The trial row's instability columns: the error barrier on the test set (`instability`) and on
    the validation split (`val_instability`, NaN without one), with BatchNorm's statistics re-estimated
    also the barriers with them interpolated (`interpolated_instability`, `interpolated_val_instability`;
    NaN otherwise), the twin's own final accuracies (a second sample of the network) and how BatchNorm
    was treated along the line."""
    return {"instability": barrier(curve["test_accuracy"]), "val_instability": barrier(curve["val_accuracy"]),
            "interpolated_instability": barrier(curve["interpolated_test_accuracy"]),
            "interpolated_val_instability": barrier(curve["interpolated_val_accuracy"]),
            "twin_test_accuracy": twin["test_accuracy"], "twin_val_accuracy": twin["val_accuracy"],
            "instability_batchnorm": batchnorm}
