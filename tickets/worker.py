"""The entry of every process that trains (the dense run's task, a trial's actor).

TensorFlow sizes its thread pools once, when its runtime starts: `start` sets them to the CPUs Ray
gave this process (and the precision and replicas) before anything runs an op, and the caller
imports its training stack (`tickets.training`, `tickets.trial`) only after it. The driver never
calls this and never imports TensorFlow.
"""

from __future__ import annotations

import math

import ray


def start(precision: str, replicas: int | str = 1):
    """Configure this training process for the CPUs Ray assigned it; returns its `runtime.Runtime`."""
    from tickets import runtime  # Keras, and with it TensorFlow: imported, its runtime not yet started

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    return runtime.configure(max(1, math.ceil(cpus)), replicas=replicas, precision=precision)
