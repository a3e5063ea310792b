"""The early stop: the epoch of least validation loss so far, chosen on the validation split, never
on the test set. A run carries it from epoch to epoch (and in its checkpoints); the results report
the test accuracy at that epoch beside the final one (`rows.early_stop_columns`)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class EarlyStop:
    """The epoch of least validation loss so far, and the test and validation accuracies at that
    epoch. Without a validation split nothing is chosen (epoch None)."""

    epoch: int | None = None
    val_loss: float = math.inf
    test_accuracy: float = math.nan
    val_accuracy: float = math.nan  # what early-stop matching decides by (`report.match`)

    def after(self, p) -> EarlyStop:
        """After epoch `p` (a `training.Progress`, or anything with its epoch and its validation loss
        and accuracy and test accuracy)."""
        if not p.val_loss < self.val_loss:
            return self
        return EarlyStop(p.epoch, p.val_loss, p.test_accuracy, p.val_accuracy)
