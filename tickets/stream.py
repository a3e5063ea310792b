"""Streaming a split from its Parquet shards: the order an epoch visits the rows in, reading them a
window at a time, and the node-local copy of the shards.

A split too large to hold in memory stays where its shards are; each trial's `tf.data` pipeline
reads the rows it needs itself, so images never pass through the driver or the object store and a
process holds one window of encoded images, whatever the data set's size.

The order of epoch `e` is a function of (seed, e) only: the row groups (a few hundred images each)
are permuted, taken in that order `buffer` images at a time (a window), and the images of a window
are permuted. This is the shard-shuffle-plus-shuffle-buffer of the reference ImageNet pipelines,
computed ahead over row ids instead of over a `tf.data` buffer, which makes it resumable: step k's
images are known without reading anything before them. Its quality: every window mixes `buffer`
images from row groups drawn at random from the whole split, and the converter (`tickets.shards`)
writes rows in a random order, so each row group, hence each batch, is a random sample of the
classes; what stays correlated across epochs is only which images share a row group. Shards sorted
by class (as `../shared/data/cifar10` is) would give one-class windows: `class_sorted` detects them,
and such a split is shuffled whole instead (one window), which `tickets.data` allows only when its
encoded images fit the in-memory budget.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tickets import seeds

IMAGE, LABEL, PATH = "image", "label", "path"  # the shard columns
CLASSES_FILE = "classes.json"  # label names in label order, written by tickets.shards
MANIFEST_FILE = "shards.json"  # every shard's rows, bytes and sha256, written by tickets.shards
CACHE_ENV = "TICKETS_CACHE_DIR"
CHUNK = 256  # images handed to tf.data per generator call
OPEN_FILES = 32  # shards a reader keeps open


@dataclass
class Shards:
    """Where a split's rows live: Parquet files and their row groups. Row ids count rows across the
    files in order; group `g` holds rows `starts[g] .. starts[g + 1] - 1`."""

    files: tuple[str, ...]
    group_file: np.ndarray  # file index of each row group
    group_in_file: np.ndarray  # its index inside that file
    starts: np.ndarray  # first row id of each group, then the total row count
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> sha256, from shards.json
    cache: str = "none"  # "node": read a node-local copy of each shard (`local_copy`)
    sorted_by_class: bool = False  # most row groups hold one class: shuffle the split whole
    encoded_bytes: int = 0  # the shards' size on disk

    def group_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, rows, side="right") - 1


def index(files: list[Path], footers: list) -> Shards:
    """The row groups of `files`, from their Parquet footers (`ParquetFile.metadata`, read by the
    caller as it reads the labels: each file is opened once; no image is read)."""
    group_file, group_in_file, sizes = [], [], []
    for i, meta in enumerate(footers):
        for g in range(meta.num_row_groups):
            group_file.append(i)
            group_in_file.append(g)
            sizes.append(meta.row_group(g).num_rows)
    checksums = {}
    for folder in sorted({Path(f).parent for f in files}):
        checksums.update(_manifest(folder, [Path(f) for f in files if Path(f).parent == folder]))
    return Shards(tuple(str(f) for f in files), np.array(group_file, np.int32), np.array(group_in_file, np.int32),
                  np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), checksums,
                  encoded_bytes=sum(Path(f).stat().st_size for f in files))


def _manifest(folder: Path, files: list[Path]) -> dict[str, str]:
    """The sha256 of each shard from `folder`'s shards.json, once the folder is checked to hold
    exactly the shards it lists (a conversion that stopped half-way has no manifest yet, or more or
    fewer files than it). Folders the converter did not write have none: {}."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        listed = {s["file"]: s for s in json.loads(path.read_text())["shards"]}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} cannot be read as a shard manifest ({type(e).__name__}: {e})") from None
    present = {f.name for f in files}
    if present != set(listed):
        missing, extra = sorted(set(listed) - present), sorted(present - set(listed))
        raise ValueError(f"{folder} does not hold the shards {path.name} lists (missing {missing[:3]}, "
                         f"unlisted {extra[:3]}); run `python -m tickets.shards` again to finish the conversion")
    return {name: s["sha256"] for name, s in listed.items()}


def class_sorted(shards: Shards, labels: np.ndarray, rows: np.ndarray) -> bool:
    """Whether most row groups hold a single class (rows written class by class): windows of them
    would be one-class runs, so such shards should be written again with `tickets.shards`."""
    group = shards.group_of(rows)
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    pure = [len(np.unique(ls)) == 1 for ls in np.split(labels[order], bounds) if len(ls) > 1]
    return len(np.unique(labels)) > 1 and bool(pure) and sum(pure) > len(pure) / 2


def epoch_order(shards: Shards, rows: np.ndarray, seed: int, epoch: int, buffer: int) -> tuple[np.ndarray, np.ndarray]:
    """The order epoch `epoch` visits a split in: positions into `rows` (the split's row ids), and
    the window each position's image is read in. A function of (seed, epoch, buffer) only."""
    group = shards.group_of(rows)
    groups = len(shards.group_file)
    rng = seeds.epoch_windows(seed, epoch)
    visit = rng.permutation(groups)
    rank = np.empty(groups, np.int64)
    rank[visit] = np.arange(groups)
    wanted = np.bincount(group, minlength=groups)[visit]  # images of the split per group, in visiting order
    window_at_rank = (np.cumsum(wanted) - wanted) // buffer
    window = window_at_rank[rank[group]]
    order = np.lexsort((rng.random(len(rows)), window))
    return order, window[order]


class Reader:
    """Reads images by row id, the row groups of one window at a time, keeping the last few files open."""

    def __init__(self, shards: Shards):
        self.shards = shards
        self._open: dict[int, object] = {}

    def _file(self, i: int):
        import pyarrow.parquet as pq

        if i not in self._open:
            if len(self._open) >= OPEN_FILES:  # ImageNet has over a thousand shards: stay under ulimit -n
                self._open.pop(next(iter(self._open))).close()
            path = self.shards.files[i]
            if self.shards.cache == "node":
                path, _ = local_copy(path, self.shards.checksums.get(Path(path).name))
            self._open[i] = pq.ParquetFile(path)
        return self._open[i]

    def read(self, rows: np.ndarray) -> list[bytes]:
        """The encoded images of `rows`, in that order; each row group they touch is read once."""
        group = self.shards.group_of(rows)
        found: dict[int, bytes] = {}
        for g in np.unique(group):
            mine = rows[group == g]
            table = self._file(int(self.shards.group_file[g])).read_row_group(
                int(self.shards.group_in_file[g]), columns=[IMAGE])
            found.update(zip(mine.tolist(), table.column(0).take(mine - self.shards.starts[g]).to_pylist()))
        return [found[r] for r in rows.tolist()]


def chunks(shards: Shards, rows: np.ndarray, windows: np.ndarray, *extra: np.ndarray):
    """Yield `(images, *extra)` for `rows` in order, CHUNK at a time, reading window by window; the
    next window is read while this one is consumed, so two windows of encoded images are in memory.
    `windows` labels each row's window."""
    cuts = np.flatnonzero(np.diff(windows)) + 1
    parts = np.split(np.arange(len(rows)), cuts)
    reader = Reader(shards)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(reader.read, rows[parts[0]]) if parts and len(parts[0]) else None
        for i, part in enumerate(parts):
            images = ahead.result() if ahead is not None else []
            ahead = pool.submit(reader.read, rows[parts[i + 1]]) if i + 1 < len(parts) else None
            for start in range(0, len(part), CHUNK):
                sel = part[start:start + CHUNK]
                yield (np.array(images[start:start + CHUNK], dtype=object), *(a[sel] for a in extra))


# ---------------------------------------------------------------------------------------------
# The node-local cache.


def cache_root() -> Path:
    """$TICKETS_CACHE_DIR, else a directory of this user's in the node's temp dir."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(tempfile.gettempdir()) / f"tickets-cache-{os.getuid()}"


def local_copy(path: str, sha256: str | None = None) -> tuple[str, bool]:
    """A copy of shard `path` on this node's disk, made once per node, and whether this call made it.

    Processes on one node take a file lock per shard, so one copies while the others wait and then
    read its copy. A copy is checked against the shard's size and its sha256 (from shards.json, or
    as read from the source while copying), and only then renamed into place with a marker holding
    both; a copy without its marker is never read.
    """
    src = Path(path)
    stat = src.stat()
    key = hashlib.sha256(f"{src.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:20]
    home = cache_root() / key
    dest, marker = home / src.name, home / (src.name + ".ok")
    if marker.is_file() and dest.is_file() and dest.stat().st_size == stat.st_size:
        return str(dest), False
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if marker.is_file() and dest.is_file() and dest.stat().st_size == stat.st_size:
            return str(dest), False  # another process copied it while this one waited
        for stale in home.glob(src.name + ".part*"):  # left by a copier that died: under the lock, nobody's
            stale.unlink()
        tmp = home / (src.name + f".part{os.getpid()}")
        read = hashlib.sha256()
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                while block := fin.read(1 << 22):
                    read.update(block)
                    fout.write(block)
                fout.flush()
                os.fsync(fout.fileno())
        except OSError:  # a full local disk, most likely: leave nothing half-written behind
            tmp.unlink(missing_ok=True)
            raise
        written = sha256_of(tmp)
        expected = sha256 or read.hexdigest()
        if tmp.stat().st_size != stat.st_size or written != expected or read.hexdigest() != expected:
            tmp.unlink()
            raise OSError(f"node cache: the copy of {src} in {home} does not match the shard "
                          f"(size or sha256); the shard or the local disk is faulty")
        os.replace(tmp, dest)
        marker.write_text(json.dumps({"source": str(src), "bytes": stat.st_size, "sha256": written}))
    return str(dest), True


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()

