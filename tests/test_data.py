import numpy as np
import pytest
from helpers import CIFAR10, needs_cifar10, write_cifar_batches, write_image_folder, write_parquet

from tickets import data, pipeline, splits
from tickets.config import DataSpec, SubsetSpec


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_synthetic_is_deterministic_and_balanced():
    spec = DataSpec(dataset="synthetic", synthetic_size=SubsetSpec(train=200, test=50), batch_size=20)
    a, b = data.load(spec, 0), data.load(spec, 0)
    assert np.array_equal(a.train.images, b.train.images)
    assert a.train.images.shape == (200, 32, 32, 3) and a.num_classes == 10
    assert np.bincount(a.train.labels).tolist() == [20] * 10


def test_pipelines_run_without_autotuning_on_their_own_pool():
    """tf.data's autotuning makes an iterator's deletion wait up to ~2 s (Keras deletes one after
    every fit and evaluate): every pipeline of a training process is built without it, and with
    the private pool it is given."""
    spec = DataSpec(dataset="synthetic", synthetic_size=SubsetSpec(train=40, test=20), batch_size=10)
    d = data.load(spec, 0)
    x, y = np.zeros((20, 8, 8, 3), np.float32), np.zeros(20, np.int32)
    for ds in (pipeline.train_batches(d, spec, seed=0, start_step=0, num_steps=3, threads=2),
               pipeline.eval_batches(d, d.test, spec, threads=2), pipeline.in_memory(x, y, 10, threads=2)):
        assert ds.options().autotune.enabled is False
        assert ds.options().threading.private_threadpool_size == 2
    assert pipeline.eval_batches(d, d.test, spec).options().threading.private_threadpool_size is None
    assert [len(b) for b, _ in pipeline.in_memory(x, y, 10)] == [10, 10]


@needs_cifar10()
def test_cifar10_parquet_subset_and_halves():
    spec = DataSpec(dataset="cifar10", path=str(CIFAR10), subset=SubsetSpec(train=1000, test=200))
    d = data.load(spec, seed=0)
    assert d.train.kind == "decoded" and d.train.images.shape == (1000, 32, 32, 3)
    assert np.bincount(d.train.labels).tolist() == [100] * 10
    assert np.bincount(d.test.labels).tolist() == [20] * 10
    again = data.load(spec, seed=0)
    assert np.array_equal(d.train.images, again.train.images)
    other = data.load(spec, seed=1)
    assert not np.array_equal(d.train.images, other.train.images)


@needs_cifar10()
def test_halves_are_disjoint_and_class_balanced():
    import pyarrow.parquet as pq

    labels = pq.read_table(CIFAR10 / "train.parquet", columns=["label"]).column("label").to_numpy()
    a, b = splits.half_indices(labels, "a"), splits.half_indices(labels, "b")
    assert len(a) == len(b) == 25000 and not set(a) & set(b)
    assert np.bincount(labels[a]).tolist() == [2500] * 10


def test_cifar10_python_batches_of_the_keras_cache(tmp_path):
    write_cifar_batches(tmp_path)
    d = data.load(DataSpec(dataset="cifar10", path=str(tmp_path), batch_size=10), seed=0)
    assert d.train.images.shape == (100, 32, 32, 3) and len(d.test) == 20


def test_image_folder_large_images_stay_files(tmp_path, monkeypatch):
    write_image_folder(tmp_path)
    monkeypatch.setattr(data, "DECODE_CACHE_BYTES", 0)  # as for ImageNet: decode per element
    spec = DataSpec(dataset="image_folder", path=str(tmp_path), image_size=128, batch_size=4)
    d = data.load(spec, seed=0)
    assert d.train.kind == "files" and d.num_classes == 3
    (x, y), *_ = _batches(pipeline.train_batches(d, spec, seed=0, start_step=0, num_steps=2))
    assert x.shape == (4, 128, 128, 3) and x.dtype == np.float32 and -1 <= x.min() and x.max() <= 1
    (xt, _), *_ = _batches(pipeline.eval_batches(d, d.test, spec))
    assert xt.shape[1:] == (128, 128, 3)


def test_parquet_with_out_of_range_label_is_rejected(tmp_path):
    write_parquet(tmp_path, labels=(0, 1, 2, 3), test_labels=(0, 1, 7, 2))
    with pytest.raises(data.DataError, match=r"test label 7 .* is out of range \[0, 4\)"):
        data.load(DataSpec(dataset="parquet", path=str(tmp_path), batch_size=2), seed=0)


def test_missing_cifar10_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETS_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("TICKETS_OFFLINE", "1")
    with pytest.raises(data.DataError) as e:
        data.load(DataSpec(dataset="cifar10"), seed=0)
    message = str(e.value)
    assert str(tmp_path / "nowhere" / "cifar10") in message and str(tmp_path / "keras") in message
    assert "data.path" in message and "TICKETS_DATA_DIR" in message
    with pytest.raises(data.DataError, match="holds no CIFAR-10"):
        data.load(DataSpec(dataset="cifar10", path=str(tmp_path)), seed=0)


def test_training_stream_is_the_same_however_it_is_split():
    spec = DataSpec(dataset="synthetic", synthetic_size=SubsetSpec(train=100, test=20), batch_size=10,
                    augment=True)
    d = data.load(spec, 0)
    whole = _batches(pipeline.train_batches(d, spec, seed=5, start_step=0, num_steps=25))  # 2.5 epochs
    parts = _batches(pipeline.train_batches(d, spec, seed=5, start_step=0, num_steps=7))
    parts += _batches(pipeline.train_batches(d, spec, seed=5, start_step=7, num_steps=18))
    assert len(whole) == len(parts) == 25
    for (xa, ya), (xb, yb) in zip(whole, parts):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    # Each epoch is a different permutation of all the images; augmentation differs per epoch.
    epoch0 = np.concatenate([y for _, y in whole[:10]])
    assert sorted(epoch0.tolist()) == sorted(d.train.labels.tolist())
    assert not np.array_equal(whole[0][0], whole[10][0])


@needs_cifar10()
def test_validation_is_balanced_the_same_for_every_seed_and_never_trained_on():
    import pyarrow.parquet as pq

    # Held out of CIFAR-10a by row, before the seed's subset is drawn from what is left.
    spec = DataSpec(dataset="cifar10", path=str(CIFAR10), half="a", validation=1000,
                    subset=SubsetSpec(train=2000, test=100))
    a, b = data.survey(spec, seed=0), data.survey(spec, seed=1)
    assert a.train.kind == a.validation.kind == "streamed"  # row ids into the shards, nothing decoded yet
    assert len(a.validation) == 1000 and np.bincount(a.validation.labels).tolist() == [100] * 10
    assert np.array_equal(a.validation.images, b.validation.images)  # the same images whatever the seed
    assert not np.array_equal(a.train.images, b.train.images)  # the subset follows the seed
    for d in (a, b):
        assert not set(d.validation.images) & set(d.train.images)
    labels = pq.read_table(CIFAR10 / "train.parquet", columns=["label"]).column("label").to_numpy()
    half_a = set(splits.half_indices(labels, "a").tolist())
    assert set(a.validation.images.tolist()) <= half_a and set(a.train.images.tolist()) <= half_a
    # Without the subset, every image of the half is either trained on or held out.
    whole = data.survey(DataSpec(dataset="cifar10", path=str(CIFAR10), half="a", validation=1000), seed=0)
    assert len(whole.train) == 24000 and set(whole.train.images) | set(whole.validation.images) == half_a

    loaded = data.load(DataSpec(dataset="cifar10", path=str(CIFAR10), validation=500, batch_size=100,
                                subset=SubsetSpec(train=1000, test=100)), seed=0)
    assert loaded.validation.kind == "decoded" and loaded.validation.images.shape == (500, 32, 32, 3)
    labels = [y for _, y in _batches(pipeline.eval_batches(loaded, loaded.validation, DataSpec(batch_size=100)))]
    assert np.concatenate(labels).tolist() == loaded.validation.labels.tolist()  # every image, in order


def test_a_validation_split_that_leaves_nothing_to_train_is_bad_input():
    spec = DataSpec(dataset="synthetic", synthetic_size=SubsetSpec(train=200, test=50), batch_size=20, validation=200)
    with pytest.raises(data.DataError, match=r"^data.validation: 200 is not below the 200 training images"):
        data.survey(spec, seed=0)
    d = data.load(DataSpec(dataset="synthetic", synthetic_size=SubsetSpec(train=200, test=50), batch_size=20,
                           validation=50), seed=0)
    assert len(d.train) == 150 and np.bincount(d.validation.labels).tolist() == [5] * 10
