"""Data sets: reading images and labels from where a spec points, and how each split is held.

Sources: Parquet shards of encoded images + integer labels (`../shared/data/cifar10`, and what
`tickets.shards` writes from an ImageNet-style tree), ImageNet-style class folders, the CIFAR-10
python batches of the Keras cache, and a synthetic learnable set for smoke runs. Which images a
run uses (subsets, the validation hold-out, CIFAR-10a/b) is `tickets.splits`; the batches it trains
on, `tickets.pipeline`.

A split is held one of three ways: decoded uint8 pixels in memory (small sets at CIFAR-style
sizes, decoded once at load so epochs cost no JPEG decoding), file paths (class folders too large
for that), or streamed: only labels and row ids in memory, the images read from their Parquet
shards by each pipeline (`tickets.stream`), so no process holds the images: its memory grows with the
data set's size only by the row ids, labels and epoch order it keeps (about 90 bytes per image).
Nothing here imports TensorFlow unless images must be decoded into memory (`load`).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tickets import seeds, splits, stream
from tickets.config import IMAGENET_STYLE, DataSpec
from tickets.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Hold a split's decoded pixels in memory when they fit in this many bytes. That is what it costs
# per node and what each worker maps: the one object-store copy, shared by all the node's workers
# (the pipeline gathers from it without a private copy); larger splits are streamed or read as files.
DECODE_CACHE_BYTES = int(os.environ.get("TICKETS_DECODE_CACHE_MB", "2048")) * 2**20


def _budget(budget: int | None) -> int:
    """The in-memory budget in bytes: `budget` where a caller gives one (the benchmark times both
    ways on the same data), else `DECODE_CACHE_BYTES`."""
    return DECODE_CACHE_BYTES if budget is None else budget


@dataclass
class Split:
    images: np.ndarray  # uint8 (n, h, w, 3) | paths | row ids into `shards`
    labels: np.ndarray  # int32 (n,)
    kind: str  # "decoded" | "files" | "streamed"
    shards: stream.Shards | None = None  # streamed: where the rows live

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> "Split":
        return Split(self.images[index], self.labels[index], self.kind, self.shards)


@dataclass
class Dataset:
    """A loaded data set: its splits (see `Split` for how each is held); batches come from
    `pipeline.train_batches` / `pipeline.eval_batches`."""

    train: Split
    test: Split
    num_classes: int
    image_size: int
    source: str  # where it was read from, for logs and results
    validation: Split | None = None  # training images held out (`data.validation`); None: no split

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self.train) // batch_size


# ---------------------------------------------------------------------------------------------
# Loading.


def load(spec: DataSpec, seed: int, budget: int | None = None) -> Dataset:
    """Read the data set a spec names, take its half/subset, validate labels, decode if small.
    `budget`: the in-memory budget in bytes (`_budget`), which decides whether a split is decoded
    once or streamed."""
    d = survey(spec, seed, budget=budget)
    d.train, d.test = (_in_memory(s, spec.image_size, budget) for s in (d.train, d.test))
    if d.validation is not None:
        d.validation = _in_memory(d.validation, spec.image_size, budget)
    return d


def _in_memory(split: Split, size: int, budget: int | None) -> Split:
    """The split decoded once so epochs cost no decoding, when it is small and at a CIFAR-style
    size; others stay streamed or as files."""
    if split.kind == "decoded" and split.images.shape[1:] == (size, size, 3):
        return split
    if split.kind != "decoded" and not _fits(split, size, budget):
        return split
    # Imported only here: TensorFlow's import is most of the loading task's CPU, and synthetic data never needs it.
    from tickets import pipeline

    return pipeline.decoded(split, size)


def survey(spec: DataSpec, seed: int, download: bool = True, budget: int | None = None) -> Dataset:
    """What `load` would give, checked without TensorFlow and without reading every image: labels,
    counts and one decoded sample per split. For the driver, before any cluster work starts.
    Parquet splits come back streamed (labels and row ids only); `load` may then decode them.
    `download=False` (a dry run) makes a missing CIFAR-10 an error instead of a download."""
    if spec.dataset == "synthetic":
        train, test, classes, source = *_synthetic(spec), spec.classes, "synthetic"
    else:
        root = _locate(spec)
        train, test, classes, source = *_read_dir(root, spec.dataset, spec.cache), None, str(root)
        if train is None:  # a Keras-cache CIFAR-10 that still has to be downloaded
            if not download:
                raise DataError(f"data.dataset: 'cifar10' has no local copy (looked in $TICKETS_DATA_DIR/cifar10 "
                                f"and {root}); a dry run downloads nothing: set data.path or TICKETS_DATA_DIR")
            train, test = _download_cifar10()
        classes = 10 if spec.dataset == "cifar10" else _classes(root, spec.dataset, train)
    _check_labels(train, classes, "train", source)
    _check_labels(test, classes, "test", source)
    if spec.half is not None:
        train = train.take(splits.half_indices(train.labels, spec.half))
    validation = None
    if spec.validation:
        rest, held = splits.hold_out(train.labels, spec.validation, "after data.half" if spec.half else "")
        train, validation = train.take(rest), train.take(held)
    if spec.subset is not None:
        chosen = seeds.subset(seed)
        if spec.subset.train is not None:
            train = train.take(splits.balanced_subset(train.labels, spec.subset.train, chosen, "data.subset.train"))
        if spec.subset.test is not None:
            test = test.take(splits.balanced_subset(test.labels, spec.subset.test, chosen, "data.subset.test"))
    if len(train) < spec.batch_size:
        raise DataError(f"data.batch_size: {spec.batch_size} is larger than the {len(train)} training images")
    _check_shuffle(train, spec, _budget(budget))
    return Dataset(train, test, classes, spec.image_size, source, validation)


def _classes(root: Path, dataset: str, train: Split) -> int:
    names = root / stream.CLASSES_FILE
    if names.is_file():
        try:
            return len(json.loads(names.read_text()))
        except ValueError:
            raise DataError(f"data.path: {str(names)!r} is not a JSON list of class names") from None
    if dataset == "imagenet":  # tickets.shards writes classes.json last: without it, the conversion is unfinished
        raise DataError(f"data.path: {str(root)!r} has no {stream.CLASSES_FILE}: its conversion did not finish; "
                        f"run `python -m tickets.shards` again")
    return int(train.labels.max()) + 1


def _streamed(split: Split, size: int, budget: int | None = None) -> bool:
    """Whether `load` leaves this split on its shards (else it is decoded into memory or read as files)."""
    return split.kind == "streamed" and not _fits(split, size, budget)


def _fits(split: Split, size: int, budget: int | None = None) -> bool:
    return size < IMAGENET_STYLE and len(split) * size * size * 3 <= _budget(budget)


def order_label(split: Split, spec: DataSpec) -> str:
    """How epochs visit a split, which changes the numbers a run produces (so the dense manifest
    records it): a permutation of the whole split in memory, or the streamed windowed order."""
    if not _streamed(split, spec.image_size):
        return "permutation"
    return "streamed whole" if split.shards.sorted_by_class else f"streamed windows of {spec.shuffle_buffer}"


def describe(d: Dataset, spec: DataSpec) -> str:
    """How the training split will be held, for the driver's data line."""
    t = d.train
    if _streamed(t, spec.image_size):
        where = "a node-local copy of " if spec.cache == "node" else ""
        how = ("shuffled whole: its rows are sorted by class, so windows would hold one class each; "
               f"{_held(t) / 2**20:,.1f} MiB of encoded images held per process"
               if t.shards.sorted_by_class else f"shuffle window {spec.shuffle_buffer} images")
        return (f"streamed from {where}{len(t.shards.files)} shards ({how}; in-memory budget "
                f"{_budget(None) >> 20} MiB, TICKETS_DECODE_CACHE_MB)")
    if t.kind == "files" and not _fits(t, spec.image_size):
        return "read from image files as trained"
    return "decoded into memory once"


def _check_labels(split: Split, classes: int, name: str, source: str) -> None:
    if len(split) == 0:
        raise DataError(f"data.path: {source} has no {name} images")
    low, high = int(split.labels.min()), int(split.labels.max())
    if low < 0 or high >= classes:
        bad = low if low < 0 else high
        raise DataError(f"data: {name} label {bad} in {source} is out of range [0, {classes})")


def _locate(spec: DataSpec) -> Path:
    """The directory to read; for `cifar10`, the first of the usual places that has a copy."""
    if spec.dataset == "imagenet":  # shards written by tickets.shards, at data.path or $TICKETS_DATA_DIR/imagenet
        if not spec.path and not os.environ.get("TICKETS_DATA_DIR"):
            raise DataError("data.path: null and TICKETS_DATA_DIR is unset: data.dataset 'imagenet' needs one of "
                            "them to find its shards (written by `python -m tickets.shards`)")
        root = Path(spec.path or Path(os.environ["TICKETS_DATA_DIR"]) / "imagenet").expanduser()
        if _layout(root) != "parquet":
            raise DataError(f"data.dataset: 'imagenet' has no shards at {str(root)!r} (from "
                            f"{'data.path' if spec.path else '$TICKETS_DATA_DIR/imagenet'}); write them with "
                            f"`python -m tickets.shards ILSVRC_TREE {root}` (docs/imagenet.md)")
        return root
    if spec.dataset != "cifar10":
        root = Path(spec.path).expanduser()
        if not root.is_dir():
            raise DataError(f"data.path: {spec.path!r} is not a directory")
        return root
    if spec.path:  # an explicit path is the only place looked: no fallback, never a silent download
        root = Path(spec.path).expanduser()
        if _layout(root) is None:
            raise DataError(f"data.path: {spec.path!r} holds no CIFAR-10 (expected train/test Parquet shards "
                            f"or the python batches data_batch_1..5, test_batch)")
        return root
    candidates = []
    if os.environ.get("TICKETS_DATA_DIR"):
        candidates.append(Path(os.environ["TICKETS_DATA_DIR"]).expanduser() / "cifar10")
    candidates.append(_keras_cache() / "cifar-10-batches-py")
    for c in candidates:
        if _layout(c) is not None:
            return c
    if os.environ.get("TICKETS_OFFLINE"):
        looked = ", ".join(str(c) for c in candidates)
        raise DataError(f"data.dataset: 'cifar10' has no local copy (looked in {looked}; downloads are off "
                        f"because TICKETS_OFFLINE is set); set data.path or TICKETS_DATA_DIR")
    return candidates[-1]


def _keras_cache() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def _layout(root: Path) -> str | None:
    if not root.is_dir():
        return None
    if (root / "data_batch_1").is_file() and (root / "test_batch").is_file():
        return "batches"
    if _parquet_files(root, "train") and (_parquet_files(root, "test") or _parquet_files(root, "val")):
        return "parquet"
    if (root / "train").is_dir() and any((root / s).is_dir() for s in ("test", "val")):
        return "folders"
    return None


def _read_dir(root: Path, dataset: str, cache: str = "none") -> tuple[Split | None, Split | None]:
    layout = _layout(root)
    if dataset == "cifar10" and layout is None:
        return None, None
    if dataset in ("parquet", "imagenet") and layout != "parquet":
        raise DataError(f"data.path: {str(root)!r} has no train*.parquet and test*.parquet shards "
                        f"(or train/ and test/ or val/ folders of them)")
    if dataset == "image_folder" and layout != "folders":
        raise DataError(f"data.path: {str(root)!r} has no train/ and test/ (or val/) class folders")
    if layout == "batches":
        return _cifar_batches(root)
    if layout == "parquet":
        return (_parquet(_parquet_files(root, "train"), cache),
                _parquet(_parquet_files(root, "test") or _parquet_files(root, "val"), cache))
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    splits = _folder(root / "train", classes), _folder(test_dir, classes)
    for split in splits:
        if len(split):
            _check_image(Path(split.images[0]).read_bytes(), split.images[0])
    return splits


def _parquet_files(root: Path, split: str) -> list[Path]:
    files = sorted(root.glob(f"{split}*.parquet"))
    if (root / split).is_dir():
        files += sorted((root / split).glob("*.parquet"))
    return files


def _parquet(files: list[Path], cache: str) -> Split:
    """A streamed split: the shards' row groups and every label; of the images only the first is read."""
    import pyarrow.parquet as pq

    labels, footers = [], []
    for f in files:
        try:
            with pq.ParquetFile(f) as pf:
                labels.append(pf.read(columns=[stream.LABEL]).column(0).to_numpy().astype(np.int32))
                footers.append(pf.metadata)
                if f == files[0] and len(labels[0]):
                    _check_image(pf.read_row_group(0, columns=[stream.IMAGE]).column(0)[0].as_py(), f"{f} row 0")
        except DataError:
            raise
        except Exception as e:  # pyarrow raises several types for missing columns or bad files
            raise DataError(f"data.path: {str(f)!r} cannot be read as image/label Parquet: {e}") from None
    try:
        shards = stream.index(files, footers)
    except ValueError as e:
        raise DataError(f"data.path: {e}") from None
    shards.cache = cache
    rows, labels = np.arange(shards.starts[-1]), np.concatenate(labels)
    shards.sorted_by_class = stream.class_sorted(shards, labels, rows)
    return Split(rows, labels, "streamed", shards)


def _held(split: Split) -> int:
    """Encoded bytes of a streamed split's own rows (a subset's share of its shards)."""
    return split.shards.encoded_bytes * len(split) // max(1, int(split.shards.starts[-1]))


def _check_shuffle(split: Split, spec: DataSpec, budget: int) -> None:
    """A streamed split sorted by class is shuffled whole, which holds its encoded images in memory:
    they must fit the in-memory budget."""
    if not (_streamed(split, spec.image_size, budget) and split.shards.sorted_by_class):
        return
    held = _held(split)
    if held > budget:
        raise DataError(f"data.path: the rows of {str(Path(split.shards.files[0]).parent)!r} are sorted by class, "
                        f"so they must be shuffled whole, and their {held / 2**20:.1f} MiB of encoded images exceed the "
                        f"in-memory budget ({budget >> 20} MiB, TICKETS_DECODE_CACHE_MB); write them "
                        f"again with `python -m tickets.shards` (rows in random order)")


def _check_image(encoded: bytes, where) -> None:
    """Decode one image with Pillow (no TensorFlow): it must be a 2-D greyscale or colour image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(encoded)) as im:
            im.load()
            shape = np.asarray(im).shape
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"data: {where} is not a readable image ({type(e).__name__})") from None
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)) or min(shape[:2]) < 1:
        raise DataError(f"data: {where} has shape {shape}; expected height x width (x 1, 3 or 4 channels)")


def _folder(root: Path, classes: list[str]) -> Split:
    paths, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()) if (root / name).is_dir() else []:
            if f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(f))
                labels.append(label)
    return Split(np.array(paths, dtype=str), np.array(labels, dtype=np.int32), "files")


def _cifar_batches(root: Path) -> tuple[Split, Split]:
    def read(names):
        xs, ys = [], []
        for name in names:
            with open(root / name, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            pixels = np.asarray(d[b"data"], dtype=np.uint8)
            if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32:
                raise DataError(f"data: {root / name} holds images of shape {pixels.shape[1:]}; CIFAR-10 batches "
                                f"hold rows of 3072 values (32x32x3)")
            xs.append(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d[b"labels"], dtype=np.int32))
        return Split(np.concatenate(xs), np.concatenate(ys), "decoded")

    return read([f"data_batch_{i}" for i in range(1, 6)]), read(["test_batch"])


def _download_cifar10() -> tuple[Split, Split]:
    import keras

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        (x, y), (xt, yt) = keras.datasets.cifar10.load_data()
    except Exception as e:
        places = [f"$TICKETS_DATA_DIR/cifar10 ({os.environ.get('TICKETS_DATA_DIR') or 'TICKETS_DATA_DIR unset'})",
                  str(_keras_cache() / "cifar-10-batches-py")]
        raise DataError(f"data.dataset: 'cifar10' has no local copy (looked in {', '.join(places)}) and the "
                        f"download failed ({type(e).__name__}); set data.path or TICKETS_DATA_DIR to a copy") from None
    finally:
        socket.setdefaulttimeout(previous)
    return (Split(x, y.ravel().astype(np.int32), "decoded"), Split(xt, yt.ravel().astype(np.int32), "decoded"))


def _synthetic(spec: DataSpec) -> tuple[Split, Split]:
    """Each class is a fixed smooth colour pattern (a 4 x 4 grid of colours) at 70 % contrast, plus
    pixel noise of std `synthetic_noise`: learnable in a few epochs, and the more noise, the more a
    network needs its training to tell the classes apart."""
    size, classes = spec.image_size, spec.classes
    rng = np.random.default_rng(seeds.SYNTHETIC_PATTERNS)
    coarse = rng.uniform(0, 1, size=(classes, 4, 4, 3))
    prototypes = np.kron(coarse, np.ones((int(np.ceil(size / 4)),) * 2 + (1,)))[:, :size, :size]

    def make(n, stream):
        r = np.random.default_rng(stream)
        labels = np.arange(n, dtype=np.int32) % classes
        r.shuffle(labels)
        noise = r.normal(0, 1, size=(n, size, size, 3)) * spec.synthetic_noise
        pixels = np.clip(0.5 + 0.7 * (prototypes[labels] - 0.5) + noise, 0, 1)
        return Split((pixels * 255).astype(np.uint8), labels, "decoded")

    return (make(spec.synthetic_size.train, seeds.SYNTHETIC_SPLITS["train"]),
            make(spec.synthetic_size.test, seeds.SYNTHETIC_SPLITS["test"]))
