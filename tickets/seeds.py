"""Every random stream of a sweep, named once.

A sweep draws from the experiment's seed (`spec.seed`) through a few named streams, so that two
choices never share random numbers by accident and a value never changes because another stream
gained a draw. Each function here returns the seed (or generator) of one stream; within a stream,
a data pipeline derives each image's augmentation seed from (stream seed, position), and an IMP
control its level's (`stream_seed`'s `more`). Some streams are fixed on purpose (`HALF_SPLIT`, `VALIDATION`, the
synthetic data's): they are the same for every experiment seed, so experiments of different seeds
see the same images. The values are pinned by tests/test_seeds.py: changing one changes every
mask, dense run and data order made from it.
"""

from __future__ import annotations

import enum

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from several integers: distinct streams for data order, controls, replicates."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class Stream(enum.IntEnum):
    """The seed streams of one replicate: `derive_seed(seed, replicate, stream, ...)`. The dense run's
    are apart from all of these (`dense_init`, `dense_data`)."""

    SPARSE_DATA = 1  # the sparse runs' data order and augmentation
    REINIT = 2  # random_reinit's fresh initialisation
    RANDOM_PRUNE = 3  # random_prune's masks (and, for IMP, the level)
    TRANSFER = 4  # a transferred ticket's re-initialised layers
    TWIN = 5  # an instability twin's data order and augmentation (and its BatchNorm re-estimation batches)
    INIT_SCORE = 6  # the training batches SNIP and GraSP score at initialization


def stream_seed(seed: int, replicate: int, stream: Stream, *more: int) -> int:
    """The seed of `stream` for `replicate` of an experiment seeded `seed` (`more`: e.g. an IMP level)."""
    return derive_seed(seed, replicate, int(stream), *more)


# ---------------------------------------------------------------------------------------------
# The dense run (shared by every replicate).


def dense_init(seed: int) -> int:
    """The dense network's initialisation: the experiment's seed itself (also every model a trial
    process builds before it loads a snapshot)."""
    return seed


def dense_data(seed: int) -> int:
    """The dense run's data order and augmentation."""
    return derive_seed(seed, 0)


WARM_UP = 0  # the one batch a trial traces its step on before the dense run ends (its effect is reset)


# ---------------------------------------------------------------------------------------------
# Data: which images, and the order an epoch visits them in.

# The CIFAR-10a/10b halves are the same for every experiment seed, so transfer runs that use
# different seeds still split the classes' images the same way.
HALF_SPLIT = 20190531
# Likewise the validation split (`data.validation`): experiments of different seeds hold out the
# same images, so their early-stopping points are chosen on the same data.
VALIDATION = 20180309
# The synthetic data set is one fixed data set: its class patterns and each split's images.
SYNTHETIC_PATTERNS = 7
SYNTHETIC_SPLITS = {"train": 1, "test": 2}


def subset(seed: int) -> int:
    """`data.subset`'s class-balanced draw: the experiment's seed (other seeds, other images)."""
    return seed


def epoch_permutation(seed: int, epoch: int) -> np.random.Generator:
    """The generator of epoch `epoch`'s permutation of an in-memory split (`seed`: a data stream above)."""
    return np.random.default_rng([seed, epoch])


def epoch_windows(seed: int, epoch: int) -> np.random.Generator:
    """The generator of epoch `epoch`'s windowed order of a streamed split (`stream.epoch_order`)."""
    return np.random.default_rng([seed, epoch, 1])


def shard_order(seed: int, split_index: int) -> np.random.Generator:
    """The row order `python -m tickets.shards --seed` writes a split's shards in."""
    return np.random.default_rng([seed, split_index])
