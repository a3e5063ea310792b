"""What the test modules share, each defined once: paths, the CLI runner, waiting, small specs, fake data.

Test modules import from here (`from helpers import ...`), never from one another; conftest.py
holds only the environment every test runs in.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import pytest

from tickets import artifacts

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# Paths.

ROOT = Path(__file__).resolve().parent.parent
# Real CIFAR-10 lives beside the checkout (../shared/data), never inside it.
DATA_DIR = Path(os.environ.get("TICKETS_DATA_DIR", ROOT.parent / "shared" / "data"))
CIFAR10 = DATA_DIR / "cifar10"


def needs_cifar10():
    return pytest.mark.skipif(not (CIFAR10 / "train.parquet").exists(),
                              reason=f"real CIFAR-10 not found at {CIFAR10} (set TICKETS_DATA_DIR)")


# ---------------------------------------------------------------------------------------------
# Small specs: `--set` overrides that make a preset's sweep take seconds.


def sets(*overrides: str) -> list[str]:
    """`--set` arguments, one pair per override."""
    return [arg for override in overrides for arg in ("--set", override)]


# Two dense epochs, every trial from initialisation, tickets only (the smoke preset adds random reinits).
SMALL = sets("dense.epochs=2", "search.rewind_epoch=[0]", "search.control=[ticket]")

# The embedded Ray of a test sweep: both CPUs, and no dashboard (its CPU is the suite's: both CPUs
# are busy all along); the smoke run keeps it, and asks it for pages.
LOCAL = ["--num-cpus", "2", "--no-dashboard"]

# One trial at a time, all on one reused actor: for tests that stop a sweep between its trials, and
# for small grids, where a second trial worker's start-up (importing TensorFlow, tracing the model)
# costs CPU that 2 busy CPUs never win back in wall time (docs/performance.md, "The test suite's CPU").
ONE_AT_A_TIME = sets("resources.max_concurrent_trials=1")


# ---------------------------------------------------------------------------------------------
# Running the command-line tools as a user does.


def cli(args, module: str = "tickets.sweep", env: dict | None = None, **popen) -> subprocess.Popen:
    """`python -m <module> *args` started in the background, stdout and stderr merged into
    `p.stdout` (text, unbuffered) unless `stderr=` says otherwise. `env` adds to this process's."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **(env or {})}
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, **popen}
    return subprocess.Popen([sys.executable, "-m", module, *args], env=env, text=True, **popen)


def run(args, timeout: float = 400, module: str = "tickets.sweep", env: dict | None = None,
        **popen) -> tuple[int, str]:
    """`python -m <module> *args` to the end: its exit status and its output (stdout and stderr)."""
    p = cli(args, module, env, **popen)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise
    return p.returncode, out


# ---------------------------------------------------------------------------------------------
# Waiting.


def wait_until(predicate: Callable[[], T], timeout: float = 300, every: float = 0.05,
               process: subprocess.Popen | None = None, what: str | Callable[[], str] = "the condition") -> T:
    """Call `predicate` every `every` seconds until it returns something truthy, and return that.

    Fails the test after `timeout` seconds, or as soon as `process` (when given) has exited without
    the condition holding; the message names `what` (a string, or a function called on failure)
    and ends with the process's output.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            value = predicate()  # what it wrote just before it exited
            if value:
                return value
            raise AssertionError(f"waiting for {_describe(what)}: the process ended first "
                                 f"(exit {process.returncode}):\n{_output(process)[-3000:]}")
        if time.monotonic() >= deadline:
            output = f":\n{_output(process)[-3000:]}" if process is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {_describe(what)}{output}")
        time.sleep(every)


def _describe(what) -> str:
    return what() if callable(what) else what


def _output(process: subprocess.Popen) -> str:
    if process.poll() is None:
        return "(still running)"
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # a child it left behind holds the pipe open
        return "(its output is still held open by a child process)"
    return out or ""


# ---------------------------------------------------------------------------------------------
# What a sweep left on disk, read through the names tickets.artifacts owns.


def dense_runs(experiment: Path) -> int:
    """How many times the experiment's dense network started training."""
    return artifacts.dense_starts(experiment / artifacts.DENSE_DIR)


def ticket_files(experiment: Path) -> list[Path]:
    """The ticket of every finished trial."""
    return list(experiment.glob(f"*/{artifacts.TICKET_FILE}"))


def trial_rows(experiment: Path) -> list[dict]:
    """Every row every trial has reported so far (the dense run's are not a trial's)."""
    return [row for trial in artifacts.trial_dirs(experiment) for row in artifacts.read_metrics(trial)]


def read_results(experiment: Path):
    """The experiment's results.parquet as a DataFrame."""
    import pandas as pd

    return pd.read_parquet(experiment / artifacts.RESULTS_FILE)


# ---------------------------------------------------------------------------------------------
# Fake data sets, small and written to disk in the formats `tickets.data` reads.


def write_cifar_batches(root: Path, columns: int = 3072, labels=None) -> Path:
    """CIFAR-10 as the Keras cache holds it: five pickled training batches and a test batch of 20
    images each; `columns` other than 3072 makes images of the wrong shape."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (20, columns), dtype=np.uint8),
                         b"labels": labels if labels is not None else list(rng.integers(0, 10, 20))}, f)
    return root


def write_parquet(root: Path, labels=(0, 1, 2, 3), image: bytes | None = None, test_labels=None) -> Path:
    """train.parquet and test.parquet of one image per label (a black 32x32 JPEG unless `image`);
    the test split has `test_labels` when given."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    if image is None:
        buf = io.BytesIO()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, format="JPEG")
        image = buf.getvalue()
    for split, split_labels in (("train", labels), ("test", labels if test_labels is None else test_labels)):
        pq.write_table(pa.table({"image": [image] * len(split_labels),
                                 "label": pa.array(list(split_labels), pa.int16())}),
                       root / f"{split}.parquet")
    return root


def write_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 40) -> Path:
    """train/ and test/ with a folder of random `size`x`size` JPEGs per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.jpg")
    return root


def write_imagenet_tree(root: Path, classes: int = 12, train: int = 10, val: int = 3, sizes=(48, 120),
                        odd_files: bool = True, seed: int = 0) -> Path:
    """An ILSVRC-like tree, train/<synset>/*.JPEG and val/<synset>/*.JPEG: smooth colour images of
    random sizes and aspect ratios (each class its own colour, so they are learnable). With
    `odd_files`: one truncated JPEG (listed as left out), one PNG, one CMYK JPEG (kept: TensorFlow decodes it) and a
    text file (ignored)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, (classes, 3))
    for split, per_class in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = rng.integers(sizes[0], sizes[1] + 1, 2)
                ramp = np.linspace(-30, 30, w)[None, :, None]
                pixels = colours[c] + ramp + rng.normal(0, 12, (h, w, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                    folder / f"n{c:08d}_{i}.JPEG", format="JPEG", quality=90)
    if odd_files:
        first = root / "train" / "n00000000"
        whole = (first / "n00000000_0.JPEG").read_bytes()
        (first / "n00000000_broken.JPEG").write_bytes(whole[: len(whole) // 3])
        Image.fromarray(np.full((50, 70, 3), 128, np.uint8)).save(first / "n00000000_png.png", format="PNG")
        Image.new("CMYK", (60, 40), (0, 128, 128, 0)).save(first / "n00000000_cmyk.JPEG", format="JPEG")
        (first / "notes.txt").write_text("not an image\n")
    return root

