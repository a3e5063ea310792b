"""What a ticket costs where it is deployed: the report's deployment table.

For the dense network and each winning ticket: parameters and multiply-adds of the exported (thinner)
model, its `.keras` and `.tflite` sizes, and its single-image latency on one thread in LiteRT, on the
machine that writes the report (named beside the table). Each is exported as `tickets.export` writes it,
into a temporary dir. Imports TensorFlow: the report calls it only when `report.deployment` is on.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from tickets import artifacts, channels, export

ROUNDS = 5  # one network at a time (not interleaved: the report times each once), the median of these rounds


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; elsewhere what `platform` knows)."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> str:
    """The CPU the latencies were measured on, in words."""
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()}"


def table(experiment: Path, tickets: dict[str, Path]) -> list[dict]:
    """One row for the dense network (its final snapshot) and one per named ticket file, in that order."""
    spec = export.config_lib.load(experiment / artifacts.SPEC_FILE)
    manifest = artifacts.read_dense(experiment / artifacts.DENSE_DIR)
    final = max(int(s) for s in manifest["snapshot_steps"])
    dense = artifacts.load_snapshots(experiment / artifacts.DENSE_DIR, [final])[final]
    rows = [_row("dense", spec, dense, {})]
    for label, path in tickets.items():
        saved = artifacts.load_ticket(path, parts=("mask", "final"))
        rows.append(_row(label, spec, saved["final"], saved["mask"]))
    return rows


def winning_files(experiment: Path, wins, imp: bool) -> dict[str, Path]:
    """The ticket file of each winning configuration (`analysis.winning_tickets`), of the first of its
    replicates found: a one-shot trial's ticket, or an IMP chain's file of the level."""
    out = {}
    for r in wins.itertuples():
        level = getattr(r, "level", None)
        level = None if level is None or level != level else int(level)  # NaN: no level
        label = f"ticket, {'level %d' % level if level is not None else 'sparsity %.4g' % r.sparsity}, rewind {r.rewind_epoch:g}"
        if imp:
            chains = [d for d, p in artifacts.trial_params(experiment).items() if "level" not in p
                      and p.get("control") == "ticket" and float(p["rewind_epoch"]) == float(r.rewind_epoch)]
            found = [artifacts.level_file(d, level) for d in chains if artifacts.level_file(d, level).is_file()]
            path = found[0] if found else None
        else:
            at = {"level": level} if level is not None else {"sparsity": float(r.sparsity)}
            trial = artifacts.find_trial(experiment, rewind_epoch=float(r.rewind_epoch), control="ticket", **at)
            path = trial / artifacts.TICKET_FILE if trial is not None else None
        if path is not None:
            out[label] = path
    return out


def _row(label: str, spec, weights: dict, mask: dict) -> dict:
    from tickets import models, pruning

    model = export.masked_model(spec, weights, mask)
    thin, _ = export.thinner(model, mask)
    macs, nonzero, _ = channels.flops(mask, pruning.Layout.of(models.layout(model)))
    with tempfile.TemporaryDirectory(prefix="tickets-deploy-") as tmp:
        keras_file, tflite_file = Path(tmp) / "t.keras", Path(tmp) / "t.tflite"
        thin.save(keras_file)
        tflite_file.write_bytes(export.to_tflite(thin, sparse=bool(mask)))
        return {"network": label, "params": thin.count_params(), "macs": macs, "nonzero_macs": nonzero,
                "keras_bytes": keras_file.stat().st_size, "tflite_bytes": tflite_file.stat().st_size,
                "latency_ms": latency(tflite_file)}


def latency(path: Path, threads: int = 1, seconds: float = 0.2) -> float:
    """Median over `ROUNDS` rounds of one image's LiteRT inference time, in ms (each round times as
    many invocations as fill about `seconds`)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], np.float32))
    started = time.perf_counter()
    for _ in range(5):  # warm-up, and how long one takes
        interpreter.invoke()
    count = max(5, int(seconds / max((time.perf_counter() - started) / 5, 1e-6)))
    rounds = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(count):
            interpreter.invoke()
        rounds.append((time.perf_counter() - started) / count)
    return float(np.median(rounds) * 1e3)
