"""Data sets: loading images and labels, then deterministic `tf.data` pipelines over them.

Sources: Parquet shards of encoded images + integer labels (`../shared/data/cifar10`, and how
ImageNet is sharded for clusters), ImageNet-style class folders, the CIFAR-10 python batches of
the Keras cache, and a synthetic learnable set for smoke runs.

Images are held as one of: decoded uint8 arrays (small sets, decoded once at load, so epochs
cost no JPEG decoding), encoded bytes, or file paths (large sets, decoded per element inside
the parallel `tf.data` map). The order of every epoch is a seeded permutation and every
augmentation draws from a stateless seed derived from (seed, epoch, position), so a pipeline can
start at any step and give the same batches as an uninterrupted run.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tickets.config import DataSpec

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Decode a whole split into memory when its uint8 pixels fit in this many bytes.
DECODE_CACHE_BYTES = int(os.environ.get("TICKETS_DECODE_CACHE_MB", "2048")) * 2**20
# The CIFAR-10a/10b halves are the same for every experiment seed, so transfer runs that use
# different seeds still split the classes' images the same way.
HALF_SPLIT_SEED = 20190531


class DataError(ValueError):
    """The data named by the spec cannot be found or read; the message says where and what."""


@dataclass
class Split:
    images: np.ndarray | None  # uint8 (n, h, w, 3) | encoded bytes (object array) | paths | None: not read
    labels: np.ndarray  # int32 (n,)
    kind: str  # "decoded" | "encoded" | "files"

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> "Split":
        return Split(None if self.images is None else self.images[index], self.labels[index], self.kind)


@dataclass
class Dataset:
    """A loaded data set: the encoded images and labels of both splits, in memory; batches come from
    `train_batches` / `test_batches`."""

    train: Split
    test: Split
    num_classes: int
    image_size: int
    source: str  # where it was read from, for logs and results

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self.train) // batch_size


# ---------------------------------------------------------------------------------------------
# Loading.


def load(spec: DataSpec, seed: int) -> Dataset:
    """Read the data set a spec names, take its half/subset, validate labels, decode if small."""
    d = _read(spec, seed, labels_only=False)
    d.train, d.test = (_maybe_decode(s, spec.image_size) for s in (d.train, d.test))
    return d


def inspect(spec: DataSpec, seed: int, download: bool = True) -> Dataset:
    """What `load` would give, checked without TensorFlow and without reading every image: labels,
    counts and one decoded sample per split. For the driver, before any cluster work starts.
    Parquet images come back as None (only their labels are read). `download=False` (a dry run)
    makes a missing CIFAR-10 an error instead of a download."""
    return _read(spec, seed, labels_only=True, download=download)


def _read(spec: DataSpec, seed: int, labels_only: bool, download: bool = True) -> Dataset:
    if spec.dataset == "synthetic":
        train, test, classes, source = *_synthetic(spec), spec.classes, "synthetic"
    else:
        root = _locate(spec)
        train, test, classes, source = *_read_dir(root, spec.dataset, labels_only), None, str(root)
        if train is None:  # a Keras-cache CIFAR-10 that still has to be downloaded
            if not download:
                raise DataError(f"data.dataset: 'cifar10' has no local copy (looked in $TICKETS_DATA_DIR/cifar10 "
                                f"and {root}); a dry run downloads nothing: set data.path or TICKETS_DATA_DIR")
            train, test = _download_cifar10()
        classes = 10 if spec.dataset == "cifar10" else int(train.labels.max()) + 1
    _check_labels(train, classes, "train", source)
    _check_labels(test, classes, "test", source)
    if spec.half is not None:
        train = train.take(half_indices(train.labels, spec.half))
    if spec.subset is not None:
        if spec.subset.train is not None:
            train = train.take(balanced_subset(train.labels, spec.subset.train, seed, "data.subset.train"))
        if spec.subset.test is not None:
            test = test.take(balanced_subset(test.labels, spec.subset.test, seed, "data.subset.test"))
    if len(train) < spec.batch_size:
        raise DataError(f"data.batch_size: {spec.batch_size} is larger than the {len(train)} training images")
    return Dataset(train, test, classes, spec.image_size, source)


def _check_labels(split: Split, classes: int, name: str, source: str) -> None:
    if len(split) == 0:
        raise DataError(f"data.path: {source} has no {name} images")
    low, high = int(split.labels.min()), int(split.labels.max())
    if low < 0 or high >= classes:
        bad = low if low < 0 else high
        raise DataError(f"data: {name} label {bad} in {source} is out of range [0, {classes})")


def _locate(spec: DataSpec) -> Path:
    """The directory to read; for `cifar10`, the first of the usual places that has a copy."""
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
    if _parquet_files(root, "train") and _parquet_files(root, "test"):
        return "parquet"
    if (root / "train").is_dir() and any((root / s).is_dir() for s in ("test", "val")):
        return "folders"
    return None


def _read_dir(root: Path, dataset: str, labels_only: bool = False) -> tuple[Split | None, Split | None]:
    layout = _layout(root)
    if dataset == "cifar10" and layout is None:
        return None, None
    if dataset == "parquet" and layout != "parquet":
        raise DataError(f"data.path: {str(root)!r} has no train*.parquet and test*.parquet shards "
                        f"(or train/ and test/ folders of them)")
    if dataset == "image_folder" and layout != "folders":
        raise DataError(f"data.path: {str(root)!r} has no train/ and test/ (or val/) class folders")
    if layout == "batches":
        return _cifar_batches(root)
    if layout == "parquet":
        return (_parquet(_parquet_files(root, "train"), labels_only),
                _parquet(_parquet_files(root, "test"), labels_only))
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    splits = _folder(root / "train", classes), _folder(test_dir, classes)
    if labels_only:
        for split in splits:
            if len(split):
                _check_image(Path(split.images[0]).read_bytes(), split.images[0])
    return splits


def _parquet_files(root: Path, split: str) -> list[Path]:
    files = sorted(root.glob(f"{split}*.parquet"))
    if (root / split).is_dir():
        files += sorted((root / split).glob("*.parquet"))
    return files


def _parquet(files: list[Path], labels_only: bool = False) -> Split:
    import pyarrow.parquet as pq

    images, labels = [], []
    for f in files:
        try:
            table = pq.read_table(f, columns=["label"] if labels_only else ["image", "label"])
            if labels_only and f == files[0] and table.num_rows:
                first = pq.ParquetFile(f).read_row_group(0, columns=["image"]).column("image")[0].as_py()
                _check_image(first, f"{f} row 0")
        except DataError:
            raise
        except Exception as e:  # pyarrow raises several types for missing columns or bad files
            raise DataError(f"data.path: {str(f)!r} cannot be read as image/label Parquet: {e}") from None
        if not labels_only:
            images.extend(table.column("image").to_pylist())
        labels.append(table.column("label").to_numpy().astype(np.int32))
    return Split(None if labels_only else np.array(images, dtype=object), np.concatenate(labels), "encoded")


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
    """Each class is a fixed smooth colour pattern plus noise: learnable in a few epochs."""
    size, classes = spec.image_size, spec.classes
    rng = np.random.default_rng(7)
    coarse = rng.uniform(0, 1, size=(classes, 4, 4, 3))
    prototypes = np.kron(coarse, np.ones((int(np.ceil(size / 4)),) * 2 + (1,)))[:, :size, :size]

    def make(n, stream):
        r = np.random.default_rng(stream)
        labels = np.arange(n, dtype=np.int32) % classes
        r.shuffle(labels)
        noise = r.normal(0, 0.25, size=(n, size, size, 3))
        pixels = np.clip(0.7 * prototypes[labels] + 0.3 * noise + 0.15, 0, 1)
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


def _decode(image, size: int, kind: str):
    import tensorflow as tf

    if kind == "files":
        image = tf.io.read_file(image)
    image = tf.io.decode_image(image, channels=3, expand_animations=False)
    image = tf.image.resize(image, (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _maybe_decode(split: Split, size: int) -> Split:
    """Decode a small split once so epochs cost no decoding; leave large ones encoded."""
    if split.kind == "decoded":
        if split.images.shape[1:] != (size, size, 3):
            import tensorflow as tf

            resized = tf.image.resize(split.images, (size, size), antialias=True)
            return Split(np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8), split.labels, "decoded")
        return split
    if len(split) * size * size * 3 > DECODE_CACHE_BYTES:
        return split
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(split.images)
    ds = ds.map(lambda x: _decode(x, size, split.kind), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    try:
        pixels = np.concatenate([b.numpy() for b in ds.batch(4096)])
    except tf.errors.InvalidArgumentError as e:
        raise DataError(f"data: an image could not be decoded: {e.message.splitlines()[0]}") from None
    return Split(pixels, split.labels, "decoded")


def _augment(image, seed, size: int):
    import tensorflow as tf

    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if size < 128:
        # CIFAR-style: pad 4 pixels on each side, random crop back to size, random flip.
        padded = tf.image.resize_with_crop_or_pad(image, size + 8, size + 8)
        image = tf.image.stateless_random_crop(padded, (size, size, 3), seed=s1)
    else:
        # ImageNet-style random-resized crop: 8-100 % of the area, aspect ratio 3/4..4/3.
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), tf.zeros((0, 0, 4)), seed=s1, area_range=(0.08, 1.0),
            aspect_ratio_range=(3 / 4, 4 / 3), use_image_if_no_bounding_boxes=True)
        image = tf.image.resize(tf.slice(image, begin, crop_size), (size, size))
    return tf.image.stateless_random_flip_left_right(image, seed=s2)


def _to_float(image):
    import tensorflow as tf

    return tf.cast(image, tf.float32) / 127.5 - 1.0


def _lookup(split: Split, size: int):
    import tensorflow as tf

    images = tf.constant(split.images) if split.kind == "decoded" else tf.constant(split.images.tolist())
    labels = tf.constant(split.labels)

    def get(i):
        image = tf.gather(images, i)
        if split.kind != "decoded":
            image = _decode(image, size, split.kind)
        return image, tf.gather(labels, i)

    return get


def train_batches(data: Dataset, spec: DataSpec, seed: int, start_step: int, num_steps: int, threads: int = 0):
    """Batches `start_step .. start_step + num_steps` of the training stream, as `tf.data`.

    Epoch `e` visits a permutation seeded by (seed, e) and drops the last partial batch, so
    step `k` always holds the same images, however the run was split or resumed. `threads` > 0
    gives the pipeline a private pool of that size (the CPUs the process was given).
    """
    import tensorflow as tf

    n, batch = len(data.train), spec.batch_size
    spe = data.steps_per_epoch(batch)
    first, last = start_step // spe, (start_step + num_steps - 1) // spe
    index, epoch, position = [], [], []
    for e in range(first, last + 1):
        perm = np.random.default_rng([seed, e]).permutation(n)[: spe * batch]
        index.append(perm)
        epoch.append(np.full(len(perm), e))
        position.append(np.arange(len(perm)))
    begin = (start_step - first * spe) * batch
    end = begin + num_steps * batch
    index, epoch, position = (np.concatenate(a)[begin:end] for a in (index, epoch, position))
    seeds = np.stack([np.full(len(index), seed), epoch * n + position], axis=1).astype(np.int64)

    get = _lookup(data.train, data.image_size)

    def prepare(i, s):
        image, label = get(i)
        if spec.augment:
            image = _augment(image, s, data.image_size)
        return _to_float(image), label

    ds = tf.data.Dataset.from_tensor_slices((index, seeds))
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


def test_batches(data: Dataset, spec: DataSpec, threads: int = 0):
    """The test split as a `tf.data.Dataset` of (images, labels) in a fixed order, no augmentation."""
    import tensorflow as tf

    get = _lookup(data.test, data.image_size)
    size = data.image_size

    def prepare(i):
        image, label = get(i)
        if size >= 128:  # ImageNet-style evaluation: central 87.5 % crop
            image = tf.image.resize(tf.image.central_crop(image, 0.875), (size, size))
        return _to_float(image), label

    ds = tf.data.Dataset.range(len(data.test)).map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _sized(ds.batch(spec.batch_size).prefetch(tf.data.AUTOTUNE), threads)
