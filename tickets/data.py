"""Data sets: loading images and labels, then deterministic `tf.data` pipelines over them.

Sources: Parquet shards of encoded images + integer labels (`../shared/data/cifar10`, and what
`tickets.shards` writes from an ImageNet-style tree), ImageNet-style class folders, the CIFAR-10
python batches of the Keras cache, and a synthetic learnable set for smoke runs.

A split is held one of three ways: decoded uint8 pixels in memory (small sets at CIFAR-style
sizes, decoded once at load so epochs cost no JPEG decoding), file paths (class folders too large
for that), or streamed: only labels and row ids in memory, the images read from their Parquet
shards by each pipeline (`tickets.stream`), so no process holds the images: its memory grows with the
data set's size only by the row ids, labels and epoch order it keeps (about 90 bytes per image).
The order of every epoch is a function of (seed, epoch) and every augmentation draws from a
stateless seed derived from (seed, epoch, position), so a pipeline can start at any step and give
the same batches as an uninterrupted run.
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

from tickets import stream
from tickets.config import IMAGENET_STYLE, DataSpec

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Hold a split's decoded pixels in memory when they fit in this many bytes. That is what it costs
# per node and what each worker maps: the one object-store copy, shared by all the node's workers
# (the pipeline gathers from it without a private copy); larger splits are streamed or read as files.
DECODE_CACHE_BYTES = int(os.environ.get("TICKETS_DECODE_CACHE_MB", "2048")) * 2**20
# The CIFAR-10a/10b halves are the same for every experiment seed, so transfer runs that use
# different seeds still split the classes' images the same way.
HALF_SPLIT_SEED = 20190531
# Likewise the validation split (`data.validation`): experiments of different seeds hold out the
# same images, so their early-stopping points are chosen on the same data.
VALIDATION_SEED = 20180309


class DataError(ValueError):
    """The data named by the spec cannot be found or read; the message says where and what."""


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
    `train_batches` / `eval_batches`."""

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
    `budget`: the in-memory budget in bytes (default `DECODE_CACHE_BYTES`), which decides whether a
    split is decoded once or streamed; the benchmark times both on the same data."""
    budget = DECODE_CACHE_BYTES if budget is None else budget
    d = inspect(spec, seed, budget=budget)
    d.train, d.test = (_in_memory(s, spec.image_size, budget) for s in (d.train, d.test))
    if d.validation is not None:
        d.validation = _in_memory(d.validation, spec.image_size, budget)
    return d


def inspect(spec: DataSpec, seed: int, download: bool = True, budget: int | None = None) -> Dataset:
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
        train = train.take(half_indices(train.labels, spec.half))
    validation = None
    if spec.validation:
        train, validation = hold_out(train, spec.validation, "after data.half" if spec.half else "")
    if spec.subset is not None:
        if spec.subset.train is not None:
            train = train.take(balanced_subset(train.labels, spec.subset.train, seed, "data.subset.train"))
        if spec.subset.test is not None:
            test = test.take(balanced_subset(test.labels, spec.subset.test, seed, "data.subset.test"))
    if len(train) < spec.batch_size:
        raise DataError(f"data.batch_size: {spec.batch_size} is larger than the {len(train)} training images")
    _check_shuffle(train, spec, DECODE_CACHE_BYTES if budget is None else budget)
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
    budget = DECODE_CACHE_BYTES if budget is None else budget
    return size < IMAGENET_STYLE and len(split) * size * size * 3 <= budget


def order(split: Split, spec: DataSpec) -> str:
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
                f"{DECODE_CACHE_BYTES >> 20} MiB, TICKETS_DECODE_CACHE_MB)")
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
    rng = np.random.default_rng(7)
    coarse = rng.uniform(0, 1, size=(classes, 4, 4, 3))
    prototypes = np.kron(coarse, np.ones((int(np.ceil(size / 4)),) * 2 + (1,)))[:, :size, :size]

    def make(n, stream):
        r = np.random.default_rng(stream)
        labels = np.arange(n, dtype=np.int32) % classes
        r.shuffle(labels)
        noise = r.normal(0, 1, size=(n, size, size, 3)) * spec.synthetic_noise
        pixels = np.clip(0.5 + 0.7 * (prototypes[labels] - 0.5) + noise, 0, 1)
        return Split((pixels * 255).astype(np.uint8), labels, "decoded")

    return make(spec.synthetic_size.train, 1), make(spec.synthetic_size.test, 2)


# ---------------------------------------------------------------------------------------------
# Deterministic selections.


def balanced_subset(labels: np.ndarray, n: int, seed: int, field_name: str) -> np.ndarray:
    """`n` indices, as equal per class as possible, the same for the same seed."""
    classes = np.unique(labels)
    per_class = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    rng = np.random.default_rng(seed)
    chosen = []
    for c, k in zip(classes, per_class, strict=True):
        members = np.flatnonzero(labels == c)
        if k > len(members):
            raise DataError(f"{field_name}: {n} needs {k} images of class {c}; the data has {len(members)}")
        chosen.append(members[rng.permutation(len(members))[:k]])
    return np.sort(np.concatenate(chosen))


def hold_out(train: Split, n: int, where: str = "") -> tuple[Split, Split]:
    """(what is left to train on, `n` class-balanced validation images), drawn with VALIDATION_SEED;
    by row, so a streamed split stays on its shards."""
    if n >= len(train):
        raise DataError(f"data.validation: {n} is not below the {len(train)} training images"
                        f"{f' ({where})' if where else ''}: nothing would be left to train on")
    held = balanced_subset(train.labels, n, VALIDATION_SEED, "data.validation")
    rest = np.setdiff1d(np.arange(len(train)), held, assume_unique=True)
    return train.take(rest), train.take(held)


def half_indices(labels: np.ndarray, half: str) -> np.ndarray:
    """CIFAR-10a (`a`) or 10b (`b`): disjoint halves with half of every class's images each."""
    rng = np.random.default_rng(HALF_SPLIT_SEED)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = members[rng.permutation(len(members))]
        cut = len(order) // 2
        chosen.append(order[:cut] if half == "a" else order[cut:])
    return np.sort(np.concatenate(chosen))


# ---------------------------------------------------------------------------------------------
# Pipelines.


def _in_memory(split: Split, size: int, budget: int) -> Split:
    """Decode a split once so epochs cost no decoding, when it is small and at a CIFAR-style size;
    leave others streamed or as files. Decoding goes row group by row group (or a few thousand
    files at a time) into one preallocated array, so the peak is the pixels plus one group."""
    if split.kind == "decoded" and split.images.shape[1:] == (size, size, 3):
        return split  # no TensorFlow import: it costs the loading task ~8 CPU-s (synthetic data)
    import tensorflow as tf

    if split.kind == "decoded":  # at another size
        resized = tf.image.resize(split.images, (size, size), antialias=True)
        return Split(np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8), split.labels, "decoded")
    if not _fits(split, size, budget):
        return split
    pixels = np.empty((len(split), size, size, 3), np.uint8)
    if split.kind == "streamed":
        group = split.shards.group_of(split.images)
        by_group = np.argsort(group, kind="stable")
        parts = np.split(by_group, np.flatnonzero(np.diff(group[by_group])) + 1)
    else:
        parts = np.array_split(np.arange(len(split)), max(1, len(split) // 4096))
    reader = stream.Reader(split.shards) if split.kind == "streamed" else None
    for part in parts:
        encoded = (reader.read(split.images[part]) if reader else
                   [Path(f).read_bytes() for f in split.images[part]])
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(encoded, tf.string))
        ds = ds.map(lambda x: _small(x, size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        try:
            pixels[part] = np.concatenate([b.numpy() for b in ds.batch(1024)])
        except tf.errors.InvalidArgumentError as e:
            raise DataError(f"data: an image could not be decoded: {e.message.splitlines()[0]}") from None
    return Split(pixels, split.labels, "decoded")


# Preprocessing, one image at a time inside the `tf.data` map. `x` is what the split holds: uint8
# pixels, a file path or encoded bytes.


def _encoded(x, kind: str):
    import tensorflow as tf

    return tf.io.read_file(x) if kind == "files" else x


def _small(encoded, size: int):
    """The whole image resized to size x size, rounded to uint8 (as decoded-in-memory splits hold it)."""
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.resize(image, (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _random_resized_crop(x, kind: str, seed, size: int, fused: bool = True):
    """A random crop of 8-100 % of the original image's area, aspect ratio 3/4..4/3 (Szegedy et al.
    2015, as torchvision's RandomResizedCrop and TF's Inception preprocessing), resized to size x
    size. JPEGs decode only the crop (`decode_and_crop_jpeg`) unless `fused` is off (the benchmark's
    baseline: the whole image decoded, then cut); the crop box depends on the image's shape and the
    seed alone, so every kind of split and both ways cut the same box."""
    import tensorflow as tf

    def box(shape):
        begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, tf.zeros((0, 0, 4)), seed=seed, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
            max_attempts=10, use_image_if_no_bounding_boxes=True)
        return begin, extent

    def cut(image):
        begin, extent = box(tf.shape(image))
        return tf.slice(image, begin, extent)

    if kind == "decoded":
        crop = cut(x)
    else:
        encoded = _encoded(x, kind)

        def jpeg():
            begin, extent = box(tf.image.extract_jpeg_shape(encoded))
            return tf.image.decode_and_crop_jpeg(encoded, tf.stack([begin[0], begin[1], extent[0], extent[1]]),
                                                 channels=3)

        def whole():
            return cut(tf.io.decode_image(encoded, channels=3, expand_animations=False))

        crop = tf.cond(tf.io.is_jpeg(encoded), jpeg, whole) if fused else whole()
    return tf.image.resize(crop, (size, size), antialias=True)


def _central_crop(x, kind: str, size: int):
    """Evaluation: the shorter side resized to size / 0.875, then the central size x size crop."""
    import tensorflow as tf

    image = x if kind == "decoded" else tf.io.decode_image(_encoded(x, kind), channels=3, expand_animations=False)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = round(size / 0.875) / tf.reduce_min(shape)
    resized = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32), antialias=True)
    return tf.image.resize_with_crop_or_pad(resized, size, size)


def _train_image(x, seed, kind: str, size: int, augment: bool, fused: bool = True):
    import tensorflow as tf

    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if size >= IMAGENET_STYLE:
        if not augment:
            return _central_crop(x, kind, size)
        image = _random_resized_crop(x, kind, s1, size, fused)
    else:
        image = x if kind == "decoded" else _small(_encoded(x, kind), size)
        if not augment:
            return image
        # CIFAR-style: pad 4 pixels on each side, random crop back to size.
        padded = tf.image.resize_with_crop_or_pad(image, size + 8, size + 8)
        image = tf.image.stateless_random_crop(padded, (size, size, 3), seed=s1)
    return tf.image.stateless_random_flip_left_right(image, seed=s2)


def _test_image(x, kind: str, size: int):
    if size >= IMAGENET_STYLE:
        return _central_crop(x, kind, size)
    return x if kind == "decoded" else _small(_encoded(x, kind), size)


def _to_float(image):
    import tensorflow as tf

    return tf.cast(image, tf.float32) / 127.5 - 1.0


def _elements(split: Split, index: np.ndarray, seeds: np.ndarray, windows: np.ndarray | None = None):
    """(x, label, seed) per position of `index`, as `tf.data`: x gathered from the in-memory
    pixels (through numpy, so the pipeline never copies the whole array), a file path, or encoded
    bytes streamed from the shards window by window."""
    import tensorflow as tf

    labels = split.labels[index]
    if split.kind == "files":
        return tf.data.Dataset.from_tensor_slices((split.images[index], labels, seeds))
    if split.kind == "decoded":
        pixels = split.images
        shape = (None, *pixels.shape[1:])

        def gather(i, y, s):
            x = tf.numpy_function(lambda j: pixels[j], [i], tf.uint8, stateful=False)
            return tf.ensure_shape(x, shape), y, s

        ds = tf.data.Dataset.from_tensor_slices((index, labels, seeds)).batch(stream.CHUNK).map(gather)
        return ds.unbatch()
    rows = split.images[index]
    if windows is None:  # a fixed order: read row group by row group
        windows = split.shards.group_of(rows)
    signature = (tf.TensorSpec((None,), tf.string), tf.TensorSpec((None,), tf.int32),
                 tf.TensorSpec((None, 2), tf.int64))
    ds = tf.data.Dataset.from_generator(lambda: stream.chunks(split.shards, rows, windows, labels, seeds),
                                        output_signature=signature)
    return ds.unbatch()


def train_batches(data: Dataset, spec: DataSpec, seed: int, start_step: int, num_steps: int, threads: int = 0,
                  fused_crop: bool = True):
    """Batches `start_step .. start_step + num_steps` of the training stream, as `tf.data`.

    Epoch `e` visits the images in an order that depends on (seed, e) alone: a permutation of the
    whole split when it is in memory or read as files, the windowed shard order of
    `stream.epoch_order` when streamed. The last partial batch is dropped, so step `k` always
    holds the same images however the run was split or resumed, and a resumed stream reads only
    what its steps need. `threads` > 0 gives the pipeline a private pool of that size.
    `fused_crop=False` decodes whole JPEGs before the random-resized crop (the benchmark's baseline).
    """
    import tensorflow as tf

    split, batch, size = data.train, spec.batch_size, data.image_size
    n, spe = len(split), data.steps_per_epoch(batch)
    first, last = start_step // spe, (start_step + num_steps - 1) // spe
    index, epoch, position, windows = [], [], [], []
    for e in range(first, last + 1):
        if split.kind == "streamed":
            buffer = n if split.shards.sorted_by_class else spec.shuffle_buffer  # see `order`
            visit, window = stream.epoch_order(split.shards, split.images, seed, e, buffer)
            windows.append(window[: spe * batch] + e * n)  # windows of different epochs never merge
        else:
            visit = np.random.default_rng([seed, e]).permutation(n)
        index.append(visit[: spe * batch])
        epoch.append(np.full(spe * batch, e))
        position.append(np.arange(spe * batch))
    begin = (start_step - first * spe) * batch
    end = begin + num_steps * batch
    index, epoch, position = (np.concatenate(a)[begin:end] for a in (index, epoch, position))
    windows = np.concatenate(windows)[begin:end] if windows else None
    seeds = np.stack([np.full(len(index), seed), epoch * n + position], axis=1).astype(np.int64)

    def prepare(x, label, s):
        return _to_float(_train_image(x, s, split.kind, size, spec.augment, fused_crop)), label

    ds = _elements(split, index, seeds, windows)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _sized(ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE), threads)


def _sized(ds, threads: int):
    """`ds` with a private thread pool of `threads` (its own default, shared by all cores, when 0)."""
    if not threads:
        return ds
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    return ds.with_options(options)


def eval_batches(data: Dataset, split: Split, spec: DataSpec, threads: int = 0):
    """An evaluation split (`data.test`, `data.validation`) as a `tf.data.Dataset` of (images,
    labels) in a fixed order, without augmentation."""
    import tensorflow as tf

    size = data.image_size
    index = np.arange(len(split))

    def prepare(x, label, _):
        return _to_float(_test_image(x, split.kind, size)), label

    ds = _elements(split, index, np.zeros((len(split), 2), np.int64))
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(spec.batch_size)
    # Its length stated: unknown to tf.data (the pipeline unbatches), Keras's evaluate reads to the
    # end and then warns "Your input ran out of data; interrupting training", as if batches were lost.
    ds = ds.apply(tf.data.experimental.assert_cardinality(-(-len(split) // spec.batch_size)))
    return _sized(ds.prefetch(tf.data.AUTOTUNE), threads)
