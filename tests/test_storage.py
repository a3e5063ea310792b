"""What the driver makes of its storage: which errors are storage faults, the probe, the free-space
warning (the faults made for real on a sweep are in test_reliability)."""

import errno
import json
import os
import pickle
from types import SimpleNamespace

import numpy as np

from tickets import artifacts, storage


def test_storage_faults_are_told_from_other_errors(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    full = storage.fault_of("OSError: [Errno 28] No space left on device: '/anywhere/x.npz'", exp)
    assert (full.errno, full.strerror, str(full.path)) == (errno.ENOSPC, "No space left on device", "/anywhere/x.npz")
    assert full.free_bytes is not None and "MiB free" in full.describe()
    # Permission denied: a fault in the experiment, bad input elsewhere (a data file).
    assert storage.fault_of(f"PermissionError: [Errno 13] Permission denied: '{exp}/t/metrics.jsonl'", exp)
    assert storage.fault_of("PermissionError: [Errno 13] Permission denied: '/data/cifar10/train.parquet'", exp) is None
    assert storage.fault_of("ValueError: bad value", exp) is None
    # pyarrow's wording (Tune's checkpoint uploads and state syncs): the path in quotes, no colon.
    arrow = storage.fault_of(f"OSError: [Errno 13] Failed to open local file '{exp}/t/checkpoint_000001/state.npz'. "
                             f"Detail: [errno 13] Permission denied", exp)
    assert arrow.errno == errno.EACCES and str(arrow.path).startswith(str(exp)), arrow
    # Chained and wrapped exceptions are followed to the OSError.
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", str(exp / "dense" / "step_0.npz"))
        except OSError as e:
            raise RuntimeError("the dense run failed") from e
    except RuntimeError as e:
        assert storage.fault_of(e, exp).errno == errno.EROFS
    # A missing file is a fault only where the experiment dir itself is gone.
    missing = f"FileNotFoundError: [Errno 2] No such file or directory: '{exp}/t/metrics.jsonl'"
    assert storage.fault_of(missing, exp) is None
    os.rmdir(exp)
    gone = storage.fault_of(missing, exp)
    assert (gone.errno, gone.path, gone.strerror) == (errno.ENOENT, exp, storage.GONE)
    assert "safe where they were written" in storage.paragraph(gone, 0, 4, "python -m tickets.sweep --resume", False)


def test_the_probe_finds_a_removed_or_replaced_experiment_dir(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    held = storage.hold(exp)
    try:
        assert storage.probe(exp, held) is None and list(exp.iterdir()) == []  # the probe file is removed
        exp.rmdir()
        assert "gone" in storage.probe(exp, held).strerror
        exp.mkdir()  # another dir where it was (a mount point once unmounted, a recreated dir)
        assert "gone" in storage.probe(exp, held).strerror
        assert storage.probe(exp) is None  # without a handle, any dir there will do
    finally:
        os.close(held)


def test_free_space_warning_once_when_the_remaining_trials_would_not_fit(tmp_path, capsys):
    exp = tmp_path / "exp"
    done = []
    for name in ("a", "b"):
        trial = exp / name
        trial.mkdir(parents=True)
        (trial / artifacts.TICKET_FILE).write_bytes(b"x")
        with open(trial / "checkpoint.npz", "wb") as f:  # sparse: large in size, nothing on disk
            f.truncate(storage.free_bytes(tmp_path) // 2)
        done.append(SimpleNamespace(path=str(trial)))
    pending = [SimpleNamespace(path=str(exp / "c"))]
    watch = storage.StorageWatch(exp, total_trials=5)
    watch.on_trial_complete(0, done + pending, done[-1])
    watch.on_trial_complete(0, done + pending, done[-1])
    out = capsys.readouterr().out
    assert out.count("warning:") == 1 and "the 3 remaining trial(s) are expected to write about" in out, out
    quiet = storage.StorageWatch(exp, total_trials=2)  # none left
    quiet.on_trial_complete(0, done, done[-1])
    assert capsys.readouterr().out == ""


def test_a_cut_short_state_is_put_back_from_its_copies_and_later_trial_dirs_set_aside(tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    state = exp / "experiment_state-1.json"
    searcher = exp / "basic-variant-state-1.json"  # Tune's searcher state: a pickle, whatever its suffix
    state.write_text('{"trial_data": [["{\\"trial_id\\": \\"ab_00000\\"}", "{}"]]}')
    searcher.write_bytes(pickle.dumps({"generated": 1}))
    for name in ("train_ab_00000_0_x", "train_ab_00001_1_y"):
        (exp / name).mkdir()
        (exp / name / artifacts.PARAMS_FILE).write_text("{}")
    storage.keep_state(exp)  # every file whole: copied
    assert storage.repair_state(exp) == []  # nothing to repair
    state.write_text('{"trial_data": [["{\\"trial_id\\": \\"ab_00000\\"}", "{}"], ["{\\"trial_id\\": \\"ab_0')  # cut
    storage.keep_state(exp)  # not whole: the copies stay as they were
    notes = storage.repair_state(exp)
    assert "cut short (experiment_state-1.json): using its copy" in notes[0], notes
    assert storage.whole(state) and storage.whole(searcher)
    assert "trial_data" in state.read_text() and "ab_00001" not in state.read_text()
    # The trial dir Tune started after the copy was taken is set aside: its grid point trains again.
    assert (exp / ".tickets-orphans" / "train_ab_00001_1_y").is_dir() and (exp / "train_ab_00000_0_x").is_dir()
    assert any("train_ab_00001_1_y is not in that save" in n for n in notes), notes
    data = pickle.dumps({"generated": 2, "names": ["a." * 8, "b"]})
    for cut in range(1, len(data)):  # cut anywhere, even just after a "." inside a string
        searcher.write_bytes(data[:cut])
        assert not storage.whole(searcher), cut


def test_without_a_whole_copy_the_grid_starts_again_with_every_trial_dir_set_aside(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "experiment_state-1.json").write_text('{"trial_data": [["{\\"trial_id\\": \\"ab_0')  # the first save, cut
    (exp / "tuner.pkl").write_bytes(pickle.dumps({"whole": True}))
    for name in ("train_ab_00000_0_x", "train_ab_00001_1_y"):
        (exp / name).mkdir()
        artifacts.append_metrics(exp / name, {"epoch": 1})
    (exp / "train_ab_00000_0_x" / artifacts.TICKET_FILE).write_bytes(b"finished")
    notes = storage.repair_state(exp)
    assert "no whole copy of it was kept: the grid starts again" in notes[0], notes
    # Tune finds nothing to restore; nothing is deleted, nothing is read twice.
    assert sorted(p.name for p in exp.iterdir() if p.is_file()) == ["experiment_state-1.json.broken", "tuner.pkl.broken"]
    assert sorted(p.name for p in (exp / storage.ORPHANS).iterdir()) == ["train_ab_00000_0_x", "train_ab_00001_1_y"]
    assert artifacts.trial_dirs(exp) == []
    assert storage.repair_state(exp) == []


def test_a_checkpoint_that_cannot_be_read_is_named_with_where_its_trial_continues(tmp_path):
    exp = tmp_path / "exp"
    trial = exp / "train_ab_00000_0_x"
    trial.mkdir(parents=True)
    artifacts.append_metrics(trial, {"epoch": 1})
    weights, mask = {"w": np.ones(3, np.float32)}, {"w": np.ones(3, bool)}
    for n in (0, 1):
        (trial / f"checkpoint_00000{n}").mkdir()
        artifacts.save_state(trial / f"checkpoint_00000{n}", n, weights, [], mask, {})
    assert storage.repair_state(exp) == []
    (trial / "checkpoint_000001" / "weights.npz").write_bytes(b"PK\x03\x04 cut")  # a full disk's half file
    (note,) = storage.repair_state(exp)
    assert "checkpoint_000001/weights.npz: cannot be read" in note and note.endswith("continues from checkpoint_000000")
    assert artifacts.earlier_checkpoints(trial / "checkpoint_000001") == [trial / "checkpoint_000000"]
    (trial / "checkpoint_000000" / "state.json").write_text('{"step": ')
    (note,) = storage.repair_state(exp)
    assert note.endswith(f"{trial.name} trains again from its start"), note
    (trial / artifacts.TICKET_FILE).write_bytes(b"finished")  # a finished trial restores nothing
    assert storage.repair_state(exp) == []


def test_a_later_session_cut_short_without_a_copy_gives_way_to_the_last_whole_save_before_it(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    a, b = "2026-12-07_16-22-40", "2026-12-07_16-30-01"  # Tune names each driver's files by its start
    (exp / f"experiment_state-{a}.json").write_text('{"trial_data": [["{\\"trial_id\\": \\"ab_00000\\"}", "{}"]]}')
    (exp / f"basic-variant-state-{a}.json").write_bytes(pickle.dumps({"generated": 1}))
    (exp / "tuner.pkl").write_bytes(pickle.dumps({"whole": True}))
    for name in ("train_ab_00000_0_x", "train_ab_00001_1_y"):
        (exp / name).mkdir()
        artifacts.append_metrics(exp / name, {"epoch": 1})
    storage.keep_state(exp)
    # A resumed driver's session: its first save cut short, before any copy of it.
    (exp / f"experiment_state-{b}.json").write_text('{"trial_data": [["{\\"trial_id\\": \\"ab_0')
    (exp / f"basic-variant-state-{b}.json").write_bytes(pickle.dumps({"generated": 2}))
    notes = storage.repair_state(exp)
    assert f"Tune continues from the save before (experiment_state-{a}.json)" in notes[0], notes
    assert sorted(p.name for p in exp.iterdir() if p.is_file()) == [
        f"basic-variant-state-{a}.json", f"basic-variant-state-{b}.json.broken", f"experiment_state-{a}.json",
        f"experiment_state-{b}.json.broken", "tuner.pkl"]
    assert (exp / storage.STATE_COPIES / f"experiment_state-{a}.json").is_file()  # never deleted
    assert [t.name for t in artifacts.trial_dirs(exp)] == ["train_ab_00000_0_x"]
    assert (exp / storage.ORPHANS / "train_ab_00001_1_y").is_dir()


def test_a_checkpoint_tune_deleted_since_its_save_is_put_back_from_the_newest_one(tmp_path):
    exp = tmp_path / "exp"
    trial = exp / "train_ab_00000_0_x"
    trial.mkdir(parents=True)
    artifacts.append_metrics(trial, {"epoch": 1})
    meta = json.dumps({"checkpoint_manager": f"{trial}/checkpoint_000001"})
    (exp / "experiment_state-2026-12-07_16-22-40.json").write_text(
        json.dumps({"trial_data": [[json.dumps({"trial_id": "ab_00000"}), meta]]}))
    weights, mask = {"w": np.ones(3, np.float32)}, {"w": np.ones(3, bool)}
    for n in (2, 3):  # Tune kept two, and deleted checkpoint_000001 that its (older) save names
        (trial / f"checkpoint_00000{n}").mkdir()
        artifacts.save_state(trial / f"checkpoint_00000{n}", n, weights, [], mask, {})
    (note,) = storage.repair_state(exp)
    assert "checkpoint_000001, where Tune's save resumes it, is gone; put back from checkpoint_000003" in note
    assert artifacts.load_state(trial / "checkpoint_000001")["step"] == 3
    assert storage.repair_state(exp) == []
