"""The `tf.data` pipelines: batches of training images in a deterministic order, evaluation batches,
the preprocessing of one image, and decoding a split into memory once.

The order of every epoch is a function of (seed, epoch) (`seeds.epoch_permutation`, or
`stream.epoch_order` for a streamed split) and every augmentation draws from a stateless seed
derived from (seed, epoch, position), so a pipeline can start at any step and give the same
batches as an uninterrupted run. It is imported where batches are made (a training process, after
`runtime.configure`) or images decoded, never by the driver.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from tickets import seeds, stream
from tickets.config import IMAGENET_STYLE, DataSpec
from tickets.data import Dataset, Split
from tickets.errors import DataError


def decoded(split: Split, size: int) -> Split:
    """A split's images decoded once into uint8 pixels of size x size (`data.load` asks only for the
    splits that fit its in-memory budget, or are in memory at another size). Decoding goes row
    group by row group (or a few thousand files at a time) into one preallocated array, so the peak
    is the pixels plus one group."""
    if split.kind == "decoded":  # at another size
        resized = tf.image.resize(split.images, (size, size), antialias=True)
        return Split(np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8), split.labels, "decoded")
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
    return tf.io.read_file(x) if kind == "files" else x


def _small(encoded, size: int):
    """The whole image resized to size x size, rounded to uint8 (as decoded-in-memory splits hold it)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.resize(image, (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _random_resized_crop(x, kind: str, seed, size: int, fused: bool = True):
    """A random crop of 8-100 % of the original image's area, aspect ratio 3/4..4/3 (Szegedy et al.
    2015, as torchvision's RandomResizedCrop and TF's Inception preprocessing), resized to size x
    size. JPEGs decode only the crop (`decode_and_crop_jpeg`) unless `fused` is off (the benchmark's
    baseline: the whole image decoded, then cut); the crop box depends on the image's shape and the
    seed alone, so every kind of split and both ways cut the same box."""
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
    image = x if kind == "decoded" else tf.io.decode_image(_encoded(x, kind), channels=3, expand_animations=False)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = round(size / 0.875) / tf.reduce_min(shape)
    resized = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32), antialias=True)
    return tf.image.resize_with_crop_or_pad(resized, size, size)


def _train_image(x, seed, kind: str, size: int, augment: bool, fused: bool = True):
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
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def _elements(split: Split, index: np.ndarray, element_seeds: np.ndarray, windows: np.ndarray | None = None):
    """(x, label, seed) per position of `index`, as `tf.data`: x gathered from the in-memory
    pixels (through numpy, so the pipeline never copies the whole array), a file path, or encoded
    bytes streamed from the shards window by window."""
    labels = split.labels[index]
    if split.kind == "files":
        return tf.data.Dataset.from_tensor_slices((split.images[index], labels, element_seeds))
    if split.kind == "decoded":
        pixels = split.images
        shape = (None, *pixels.shape[1:])

        def gather(i, y, s):
            x = tf.numpy_function(lambda j: pixels[j], [i], tf.uint8, stateful=False)
            return tf.ensure_shape(x, shape), y, s

        ds = tf.data.Dataset.from_tensor_slices((index, labels, element_seeds)).batch(stream.CHUNK).map(gather)
        return ds.unbatch()
    rows = split.images[index]
    if windows is None:  # a fixed order: read row group by row group
        windows = split.shards.group_of(rows)
    signature = (tf.TensorSpec((None,), tf.string), tf.TensorSpec((None,), tf.int32),
                 tf.TensorSpec((None, 2), tf.int64))
    ds = tf.data.Dataset.from_generator(lambda: stream.chunks(split.shards, rows, windows, labels, element_seeds),
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
    split, batch, size = data.train, spec.batch_size, data.image_size
    n, spe = len(split), data.steps_per_epoch(batch)
    first, last = start_step // spe, (start_step + num_steps - 1) // spe
    index, epoch, position, windows = [], [], [], []
    for e in range(first, last + 1):
        if split.kind == "streamed":
            buffer = n if split.shards.sorted_by_class else spec.shuffle_buffer  # see `data.order_label`
            visit, window = stream.epoch_order(split.shards, split.images, seed, e, buffer)
            windows.append(window[: spe * batch] + e * n)  # windows of different epochs never merge
        else:
            visit = seeds.epoch_permutation(seed, e).permutation(n)
        index.append(visit[: spe * batch])
        epoch.append(np.full(spe * batch, e))
        position.append(np.arange(spe * batch))
    begin = (start_step - first * spe) * batch
    end = begin + num_steps * batch
    index, epoch, position = (np.concatenate(a)[begin:end] for a in (index, epoch, position))
    windows = np.concatenate(windows)[begin:end] if windows else None
    element_seeds = np.stack([np.full(len(index), seed), epoch * n + position], axis=1).astype(np.int64)

    def prepare(x, label, s):
        return _to_float(_train_image(x, s, split.kind, size, spec.augment, fused_crop)), label

    ds = _elements(split, index, element_seeds, windows)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return configured(ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE), threads)


def configured(ds, threads: int = 0):
    """`ds` as every pipeline of a training process runs: a private thread pool of `threads` (its
    own default, shared by all cores, when 0), and no autotuning.

    With autotuning an iterator's deletion waited 0.8-1.9 s at random (4 of 30 deletions of a plain
    pipeline, 2 of 6 of a streamed one, 2 vCPUs): Keras deletes one at the end of every `fit` and
    `evaluate`, which made whole rounds of a step benchmark a third slower (docs/performance.md,
    figure 13). Without it the parallel maps run one call per pool thread and `prefetch` keeps its
    own small buffer: as many images per second at 1 and 2 threads, decoded or streamed (measured
    2026-12-07 on 2 vCPUs; larger hosts not yet)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    if threads:
        options.threading.private_threadpool_size = threads
    return ds.with_options(options)


def in_memory(x: np.ndarray, y: np.ndarray, batch: int, threads: int = 0):
    """Arrays already in memory in batches of `batch`, in order, through the same options as a
    trial's pipelines (the benchmarks time training steps on them)."""
    return configured(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).prefetch(tf.data.AUTOTUNE), threads)


def eval_batches(data: Dataset, split: Split, spec: DataSpec, threads: int = 0):
    """An evaluation split (`data.test`, `data.validation`) as a `tf.data.Dataset` of (images,
    labels) in a fixed order, without augmentation."""
    size = data.image_size
    index = np.arange(len(split))

    def prepare(x, label, _):
        return _to_float(_test_image(x, split.kind, size)), label

    ds = _elements(split, index, np.zeros((len(split), 2), np.int64))
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(spec.batch_size)
    # Its length stated: unknown to tf.data (the pipeline unbatches), Keras's evaluate reads to the
    # end and then warns "Your input ran out of data; interrupting training", as if batches were lost.
    ds = ds.apply(tf.data.experimental.assert_cardinality(-(-len(split) // spec.batch_size)))
    return configured(ds.prefetch(tf.data.AUTOTUNE), threads)
