"""Figure 5: the scheduler's own cost per trial, on a grid of no-op trials that each fetch a
MobileNetV2 snapshot (`tune.with_parameters`, as the sweep's trials fetch the dense snapshots)."""

from __future__ import annotations

import contextlib
import os
import time

from benchmarks.bench import Bench


def noop_trial(config: dict, snapshot: dict) -> None:
    """A trial that only fetches `snapshot` and reports once."""
    from ray import tune

    from tickets.trainable import process_age

    tune.report({"point": config["point"], "weights": len(snapshot), "worker_age_seconds": process_age()})


def scheduler_scale(bench: Bench) -> dict:
    import ray
    from ray import tune

    from tickets import models, session
    from tickets.config import ModelSpec

    points = bench.size["noop"]
    snapshot = models.get_weights(models.build(ModelSpec(width=0.35), (32, 32, 3), 10, seed=0))
    session.init_local(os.cpu_count(), None, dashboard=False, log_to_driver=False)
    try:
        # Tune's TensorBoard logger imports tensorboardX, which imports PyTorch where it is installed
        # (a bench extra): +250 MB once, not per trial. Imported first, so the growth is the grid's.
        with contextlib.suppress(ImportError):
            import tensorboardX  # noqa: F401
        before = _rss_mb()
        tuner = tune.Tuner(tune.with_resources(tune.with_parameters(noop_trial, snapshot=snapshot), {"cpu": 1}),
                           param_space={"point": tune.grid_search(list(range(points)))},
                           tune_config=tune.TuneConfig(reuse_actors=True),
                           run_config=tune.RunConfig(name="noop", storage_path=str(bench.storage), verbose=0))
        start = time.perf_counter()
        results = tuner.fit()
        seconds = time.perf_counter() - start
        after = _rss_mb()
    finally:
        ray.shutdown()
    return {"points": points, "snapshot_mb": sum(v.nbytes for v in snapshot.values()) / 2**20, "seconds": seconds,
            "trials": len(results), "errors": len(results.errors), "measured": seconds / points,
            "driver_rss_mb_before": before, "driver_rss_mb_after": after}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")
