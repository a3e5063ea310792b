"""The large-data path on generated ImageNet-like data: `python -m tickets.shards`, the streamed
pipeline (order, resume, memory), ImageNet preprocessing, the node cache, and a streamed sweep."""

import io
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import CIFAR10, LOCAL, ONE_AT_A_TIME, needs_cifar10, read_results, run, sets, write_imagenet_tree

from benchmarks.pipeline import imagenet_like_shards
from tickets import data, pipeline, stream
from tickets.config import DataSpec, SubsetSpec


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A generated ILSVRC-like tree (12 classes, odd files included) and its shards, written by
    `python -m tickets.shards` on a local Ray: (source tree, shards, the converter's output)."""
    root = tmp_path_factory.mktemp("imagenet")
    src = write_imagenet_tree(root / "src", classes=12, train=24, val=4)
    code, out = run([str(src), str(root / "shards"), "--shard-mb", "0.15", "--row-group", "32", "--num-cpus", "2"],
                    module="tickets.shards", timeout=300)
    assert code == 0, out
    return src, root / "shards", out


def test_converter_writes_shards_reports_bad_images_and_skips_finished_ones(converted):
    src, dst, out = converted
    report = json.loads((dst / "report.json").read_text())
    assert [c["path"] for c in report["left_out"]] == ["train/n00000000/n00000000_broken.JPEG"]
    assert report["ignored"] == ["train/n00000000/notes.txt"]
    assert "n00000000_broken.JPEG: OSError" in out and "left out" in out  # named on the terminal too
    assert json.loads((dst / "classes.json").read_text()) == [f"n{c:08d}" for c in range(12)]
    manifest = json.loads((dst / "train" / "shards.json").read_text())
    shards = sorted((dst / "train").glob("*.parquet"))
    assert len(shards) >= 3 and [s["file"] for s in manifest["shards"]] == [s.name for s in shards]
    rows = sum(pq.ParquetFile(s).metadata.num_rows for s in shards)
    assert rows == manifest["rows"] == 12 * 24 + 2  # + the PNG and the CMYK JPEG, - the broken one
    first = pq.ParquetFile(shards[0])
    assert first.metadata.row_group(0).num_rows == 32 and first.schema_arrow.names == ["image", "label", "path"]
    # Rows are in random order (a row group holds many classes), and every image is where its label says.
    table = first.read()
    assert len(set(table.column("label").to_pylist()[:32])) > 4
    for path, label in zip(table.column("path").to_pylist(), table.column("label").to_pylist()):
        assert path.split("/")[1] == f"n{label:08d}"
    assert stream.sha256_of(shards[0]) == manifest["shards"][0]["sha256"]
    # A second run finds every shard done and rewrites none.
    mtimes = [s.stat().st_mtime_ns for s in shards]
    code, again = run([str(src), str(dst), "--shard-mb", "0.15", "--row-group", "32"], module="tickets.shards")
    assert code == 0 and f"({len(shards) + len(list((dst / 'val').glob('*.parquet')))} already written)" in again
    assert "converting" not in again and [s.stat().st_mtime_ns for s in shards] == mtimes


def test_converter_rejects_bad_input_before_starting_anything(tmp_path, converted):
    src, dst, _ = converted
    (tmp_path / "flat").mkdir()
    (tmp_path / "noval" / "train" / "a").mkdir(parents=True)
    (tmp_path / "flatval" / "val").mkdir(parents=True)
    (tmp_path / "flatval" / "train").symlink_to(src / "train")
    (tmp_path / "flatval" / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")
    for args, message in (([str(tmp_path / "flat"), str(tmp_path / "out")], "SRC: .* has no train/ folder"),
                          ([str(tmp_path / "noval"), str(tmp_path / "out")], "SRC: .* has no val/ \\(or test/\\)"),
                          ([str(tmp_path / "flatval"), str(tmp_path / "out")], "SRC: val/ holds images directly"),
                          ([str(src), str(src / "shards")], "DST: .* is inside SRC"),
                          ([str(src), str(dst), "--shard-mb", "1"], "DST: .* is a shard of another conversion"),
                          ([str(src), str(tmp_path / "out"), "--row-group", "0"], "--row-group: 0 must be >= 1")):
        code, out = run(args, module="tickets.shards", timeout=60)
        assert code == 2 and len(out.strip().splitlines()) == 1, out
        assert re.search(message, out), out
    assert not (tmp_path / "out").exists()


def test_streamed_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch(converted):
    _, dst, _ = converted
    spec = DataSpec(dataset="parquet", path=str(dst), image_size=128, batch_size=16, shuffle_buffer=64)
    d = data.load(spec, seed=0)
    assert d.train.kind == "streamed" and d.num_classes == 12 and len(d.train) == 290
    spe = d.steps_per_epoch(16)  # 18: 2 images a epoch dropped
    whole = _batches(pipeline.train_batches(d, spec, seed=5, start_step=0, num_steps=2 * spe + 3))
    again = _batches(pipeline.train_batches(data.load(spec, seed=0), spec, seed=5, start_step=0, num_steps=2 * spe + 3))
    resumed = _batches(pipeline.train_batches(d, spec, seed=5, start_step=spe + 7, num_steps=spe - 4))
    for (xa, ya), (xb, yb) in zip(whole, again):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(whole[spe + 7:], resumed, strict=False):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert len(resumed) == spe - 4
    # Each epoch visits spe x 16 distinct images of the split, in a different order each epoch.
    order0, _ = stream.epoch_order(d.train.shards, d.train.images, 5, 0, 64)
    order1, windows1 = stream.epoch_order(d.train.shards, d.train.images, 5, 1, 64)
    assert sorted(order0) == list(range(290)) and not np.array_equal(order0, order1)
    labels0 = np.concatenate([y for _, y in whole[:spe]])
    assert np.array_equal(labels0, d.train.labels[order0[: spe * 16]])
    # Windows hold about `buffer` images: reading is bounded by them, and every window mixes classes.
    sizes = np.bincount(windows1)
    assert sizes.max() <= 64 + 32 and len(sizes) >= 290 // 96
    assert len(set(d.train.labels[order1[:32]])) > 4


def test_resumed_stream_reads_only_the_windows_it_needs(converted, monkeypatch):
    _, dst, _ = converted
    spec = DataSpec(dataset="parquet", path=str(dst), image_size=128, batch_size=16, shuffle_buffer=64)
    d = data.load(spec, seed=0)
    read = []
    original = stream.Reader.read
    monkeypatch.setattr(stream.Reader, "read", lambda self, rows: read.append(len(rows)) or original(self, rows))
    _batches(pipeline.train_batches(d, spec, seed=5, start_step=16, num_steps=2))  # the epoch's last two batches
    assert 32 <= sum(read) <= 64 + 32  # the last window's images, not the epoch's 288


def test_evaluation_takes_the_central_crop_of_the_shorter_side_resized(tmp_path):
    """A 200x100 image whose outer band is red: resizing the shorter side to 128 / 0.875 and cutting
    the central 128 x 128 keeps only the green middle; a crop of a squashed image would not."""
    from PIL import Image

    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[...] = (255, 0, 0)
    pixels[3:97, 50:150] = (0, 255, 0)
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=fmt, quality=95)
        image = pipeline._test_image(buf.getvalue(), "streamed", 128).numpy()
        assert image.shape == (128, 128, 3)
        assert image[..., 0].max() < 40 and image[..., 1].min() > 200, fmt


def test_training_crops_decode_only_the_crop_and_match_a_full_decode(tmp_path):
    import tensorflow as tf
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = np.clip(rng.normal(128, 40, (300, 420, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    decoded = tf.io.decode_jpeg(buf.getvalue(), channels=3)
    for s in range(5):
        seed = tf.constant([7, s], tf.int64)
        fused = pipeline._random_resized_crop(buf.getvalue(), "streamed", seed, 128).numpy()
        whole = pipeline._random_resized_crop(decoded, "decoded", seed, 128).numpy()
        assert fused.shape == (128, 128, 3)
        assert np.abs(fused - whole).mean() < 2.0  # the same box; JPEG's partial decode may differ by a unit


def test_node_cache_copies_each_shard_once_per_node_and_checks_it(converted, tmp_path, monkeypatch):
    _, dst, _ = converted
    shard = sorted((dst / "train").glob("*.parquet"))[0]
    sha = json.loads((dst / "train" / "shards.json").read_text())["shards"][0]["sha256"]
    child = textwrap.dedent(f"""
        from tickets import stream
        path, copied = stream.local_copy({str(shard)!r}, {sha!r})
        print(int(copied), path)
    """)
    env = {"TICKETS_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(4)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert sorted(int(o[0]) for o in outs) == [0, 0, 0, 1] and len({o[1] for o in outs}) == 1
    copy = outs[0][1]
    assert copy.startswith(str(tmp_path / "cache")) and open(copy, "rb").read() == shard.read_bytes()
    with pytest.raises(OSError, match="does not match the shard"):
        stream.local_copy(str(sorted((dst / "train").glob("*.parquet"))[1]), "0" * 64)
    # A pipeline with data.cache: node reads the copies.
    spec = DataSpec(dataset="parquet", path=str(dst), image_size=128, batch_size=16, cache="node")
    monkeypatch.setenv("TICKETS_CACHE_DIR", str(tmp_path / "cache2"))
    loaded = data.load(spec, seed=0)
    _batches(pipeline.eval_batches(loaded, loaded.test, spec))
    cached = sorted(p.name for p in (tmp_path / "cache2").rglob("*.parquet"))
    assert cached == sorted(p.name for p in (dst / "val").glob("*.parquet"))


def test_streamed_memory_does_not_grow_with_the_data_set(tmp_path):
    """Peak RSS of a process streaming 25 batches at 128 px from 1,500 vs 6,000 ImageNet-like JPEGs
    (about 4x the encoded bytes) differs by far less than the encoded difference."""
    child = textwrap.dedent("""
        import sys
        from tickets import data, pipeline
        from tickets.config import DataSpec, SubsetSpec
        spec = DataSpec(dataset="parquet", path=sys.argv[1], image_size=128, batch_size=32, shuffle_buffer=512)
        d = data.load(spec, seed=0)
        for _ in pipeline.train_batches(d, spec, seed=0, start_step=0, num_steps=25, threads=2):
            pass
        # VmHWM: this process's own peak (ru_maxrss carries the parent's over from before exec)
        print(d.train.kind, next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) // 1024)
    """)
    peaks, sizes = [], []
    for rows in (1500, 6000):
        root = imagenet_like_shards(tmp_path / str(rows), rows)
        sizes.append(sum(f.stat().st_size for f in (root / "train").glob("*.parquet")) / 2**20)
        out = subprocess.run([sys.executable, "-c", child, str(root)], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        kind, peak = out.stdout.split()[-2:]
        assert kind == "streamed", out.stderr[-2000:]
        peaks.append(int(peak))
    assert sizes[1] - sizes[0] > 100  # MiB of JPEGs more in the larger set
    assert peaks[1] - peaks[0] < 60, (peaks, sizes)


def test_validation_is_held_out_of_streamed_shards_by_row(converted):
    _, dst, _ = converted
    spec = DataSpec(dataset="imagenet", path=str(dst), image_size=128, batch_size=8, shuffle_buffer=64,
                    validation=24)
    d = data.load(spec, seed=0)
    assert d.train.kind == d.validation.kind == "streamed"  # row ids: the images stay on the shards
    assert len(d.validation) == 24 and np.bincount(d.validation.labels).tolist() == [2] * 12
    assert not set(d.validation.images) & set(d.train.images) and len(d.train) == 290 - 24
    labels = np.concatenate([y for _, y in _batches(pipeline.eval_batches(d, d.validation, spec))])
    assert labels.tolist() == d.validation.labels.tolist()  # read from the shards, row by row


def test_a_sweep_trains_end_to_end_on_streamed_shards(converted, tmp_path):
    # Conv-2 at 32 px: its dense layer a quarter of 64 px's, half the test's time (docs/performance.md,
    # "The test suite's CPU").
    _, dst, _ = converted
    code, out = run(["smoke", "--storage-path", str(tmp_path), "--name", "streamed", *LOCAL,
                     *sets("data.dataset=parquet", f"data.path={dst}", "data.image_size=32", "data.batch_size=32",
                           "data.augment=true", "data.shuffle_buffer=96", "model.arch=conv2", "dense.epochs=3",
                           "search.sparsity=[0.8]", "search.rewind_epoch=[0]", "search.control=[ticket]",
                           "data.validation=0")],
                    env={"TICKETS_DECODE_CACHE_MB": "0"}, timeout=400)
    assert code == 0, out
    assert "290 train / 48 test images, 12 classes" in out and "streamed from 7 shards" in out
    df = read_results(tmp_path / "streamed")
    final = df[df.epoch == 3].set_index("control")["test_accuracy"]  # chance: 1/12
    assert len(final) == 2 and (final > 2 / 12).all(), final  # the dense network and the ticket learned


@needs_cifar10()
def test_an_imagenet_ticket_trains_on_cifar10(converted, tmp_path):
    """Morcos et al.'s other transfer, end to end at small size: MobileNetV2 width 1.0 tickets found on
    ImageNet-like shards (Keras's strides) trained on CIFAR-10 with the CIFAR strides."""
    _, dst, _ = converted
    small = sets("dense.epochs=1", "search.sparsity=[0.9]", "search.rewind_epoch=[0]", "search.replicate=[0]",
                 "data.batch_size=32")
    code, out = run(["mobilenetv2-imagenet", "--storage-path", str(tmp_path), "--name", "imagenet", *LOCAL,
                     *small, *sets(f"data.path={dst}", "data.image_size=32", "data.validation=24",
                                   "search.control=[ticket]")], timeout=600)
    assert code == 0, out[-3000:]
    code, out = run(["transfer-imagenet-to-cifar10", "--storage-path", str(tmp_path), *LOCAL, *small, *ONE_AT_A_TIME,
                     *sets(f"data.path={CIFAR10}", "data.subset={train: 256, test: 100}", "data.validation=50",
                           "dense.schedule.warmup_epochs=0",
                           "search.control=[ticket,transfer]")], timeout=600)
    assert code == 0, out[-3000:]
    df = read_results(tmp_path / "transfer-imagenet-to-cifar10")
    final = df[df.control != "dense"].set_index("control")
    assert final.loc["transfer", "classifier_reinitialised"] and not final.loc["ticket", "classifier_reinitialised"]
    assert (final.collapsed_layers == "").all() and (final.weights_remaining.round(6) == 0.1).all()
    from tickets import artifacts

    source = artifacts.load_ticket(next((tmp_path / "imagenet").glob(f"*/{artifacts.TICKET_FILE}")))
    (target,) = [f for f in (tmp_path / "transfer-imagenet-to-cifar10").glob(f"*/{artifacts.TICKET_FILE}")
                 if artifacts.load_ticket(f)["info"]["control"] == "transfer"]
    ticket = artifacts.load_ticket(target)
    for name, m in ticket["mask"].items():  # every prunable kernel: the ImageNet ticket's mask and start
        assert np.array_equal(m, source["mask"][name]), name
        assert np.array_equal(ticket["start"][name], source["start"][name]), name


def test_unfinished_or_class_sorted_shards_are_caught_before_anything_starts(converted, tmp_path, monkeypatch):
    import shutil

    _, dst, _ = converted
    partial = tmp_path / "partial"
    shutil.copytree(dst, partial)
    sorted((partial / "train").glob("*.parquet"))[-1].unlink()  # a conversion that stopped half-way
    with pytest.raises(data.DataError, match=r"does not hold the shards shards.json lists .*tickets.shards"):
        data.survey(DataSpec(dataset="parquet", path=str(partial), image_size=128), seed=0)
    (partial / "classes.json").unlink()
    (partial / "train" / "shards.json").unlink()
    with pytest.raises(data.DataError, match="has no classes.json: its conversion did not finish"):
        data.survey(DataSpec(dataset="imagenet", path=str(partial), image_size=128), seed=0)
    monkeypatch.delenv("TICKETS_DATA_DIR", raising=False)
    with pytest.raises(data.DataError, match="data.path: null and TICKETS_DATA_DIR is unset"):
        data.survey(DataSpec(dataset="imagenet", image_size=128), seed=0)
    # Converted shards stream in windows; a small set at CIFAR size is decoded into memory instead.
    spec = DataSpec(dataset="imagenet", path=str(dst), image_size=128, shuffle_buffer=64)
    assert data.order_label(data.survey(spec, seed=0).train, spec) == "streamed windows of 64"
    small = DataSpec(dataset="imagenet", path=str(dst), image_size=64)
    assert data.order_label(data.survey(small, seed=0).train, small) == "permutation"


@needs_cifar10()
def test_class_sorted_shards_are_shuffled_whole_or_refused(monkeypatch):
    # ../shared/data/cifar10 is sorted by class: windows would hold one class each.
    spec = DataSpec(dataset="cifar10", path=str(CIFAR10), image_size=32, batch_size=50,
                    subset=SubsetSpec(train=1000, test=100))
    monkeypatch.setattr(data, "DECODE_CACHE_BYTES", 1000 * 32 * 32 * 3 // 2)  # too small to decode, enough to shuffle
    d = data.load(spec, seed=0)
    assert d.train.kind == "streamed" and data.order_label(d.train, spec) == "streamed whole"
    assert "shuffled whole: its rows are sorted by class" in data.describe(d, spec)
    labels = np.concatenate([y for _, y in _batches(pipeline.train_batches(d, spec, seed=0, start_step=0, num_steps=20))])
    assert sorted(labels.tolist()) == sorted(d.train.labels.tolist())  # one epoch: every image once
    assert len(set(labels[:50].tolist())) >= 8  # and the first batch mixes the classes
    monkeypatch.setattr(data, "DECODE_CACHE_BYTES", 0)
    with pytest.raises(data.DataError, match="sorted by class, so they must be shuffled whole"):
        data.survey(spec, seed=0)


def test_a_dense_run_that_saw_another_data_order_is_not_reused(tmp_path, capsys):
    from tickets import artifacts, config, plan

    spec = config.load("smoke")
    artifacts.save_dense(tmp_path / artifacts.DENSE_DIR, {0: {"w": np.zeros(2, np.float32)}},
                         {"dense_hash": spec.dense_hash(), "runtime": {"data_order": "permutation"}})
    assert plan.reusable_dense(spec, tmp_path, [0], "permutation") is not None
    assert plan.reusable_dense(spec, tmp_path, [0], "streamed windows of 4096") is None
    assert "visited the data as 'permutation'" in capsys.readouterr().out
