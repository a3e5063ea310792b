"""The named seed streams keep their values: every mask, dense run and data order made from them
depends on it (a change here would silently change every experiment's numbers)."""

from tickets import seeds
from tickets.seeds import Stream


def test_stream_values_are_pinned():
    # The values tickets drew before the streams had a module of their own (2026-12-07).
    assert seeds.dense_data(0) == 821328062 and seeds.dense_data(7) == 2083679832
    assert seeds.dense_init(3) == 3 and seeds.subset(3) == 3
    assert seeds.stream_seed(0, 0, Stream.SPARSE_DATA) == 1683718082
    assert seeds.stream_seed(0, 1, Stream.REINIT) == 1736571394
    assert seeds.stream_seed(3, 2, Stream.RANDOM_PRUNE, 4) == 1887161790  # an IMP level's own
    assert seeds.stream_seed(0, 0, Stream.TRANSFER) == 53917133
    assert seeds.stream_seed(0, 0, Stream.TWIN) == 1387925762
    assert (seeds.HALF_SPLIT, seeds.VALIDATION, seeds.SYNTHETIC_PATTERNS) == (20190531, 20180309, 7)
    assert seeds.SYNTHETIC_SPLITS == {"train": 1, "test": 2} and seeds.WARM_UP == 0
    assert seeds.epoch_permutation(5, 0).permutation(10).tolist() == [7, 6, 1, 3, 2, 4, 0, 9, 5, 8]
    assert seeds.epoch_windows(5, 0).random() == 0.7426581154321283


def test_a_replicates_streams_never_coincide():
    for seed in (0, 1, 12345):
        for replicate in (0, 1, 2):
            drawn = [seeds.stream_seed(seed, replicate, s) for s in Stream] + [seeds.dense_data(seed)]
            assert len(set(drawn)) == len(drawn)
            assert all(0 <= d < 2**31 for d in drawn)
