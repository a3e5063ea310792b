"""Faults injected into real sweeps, bad input catalogued, and the security promises checked."""

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (LOCAL, ONE_AT_A_TIME, SMALL, cli, dense_runs, read_results, run, sets, ticket_files, trial_rows,
                     wait_until, write_cifar_batches, write_parquet)

from tickets import artifacts, lock, sweep


def _pids_alive(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return alive


# ---------------------------------------------------------------------------------------------
# Faults.


def test_worker_killed_mid_epoch_resumes_from_its_last_checkpoint(tmp_path):
    exp = tmp_path / "smoke"
    p = cli(["smoke", "--storage-path", str(tmp_path), *LOCAL, "--set", "dense.epochs=5",
             "--set", "search.rewind_epoch=[0]", "--set", "search.sparsity=[0.5]", "--set", "search.control=[ticket]",
             "--set", "data.synthetic_size={train: 1024, test: 128}"])

    def two_epochs():
        rows = trial_rows(exp)
        return rows[1] if len(rows) >= 2 else None

    # Killed after its second row: rows are written before they are `tune.report`ed, one report at
    # a time, so Tune holds at least the first epoch's checkpoint (the second's may be in flight).
    row = wait_until(two_epochs, process=p, what="the trial's second epoch")
    os.kill(row["pid"], signal.SIGKILL)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    (trial,) = [t.parent for t in exp.glob("*/params.json")]
    rows = artifacts.read_metrics(trial)
    before = [r for r in rows if r["pid"] == row["pid"]]
    after = [r for r in rows if r["pid"] != row["pid"]]
    assert [r["epoch"] for r in before] == [1, 2] and after, "the worker was not killed mid-trial"
    assert {r["resumed_from_step"] for r in before} == {-1}
    # Restarted from the last checkpoint Tune held: epoch 1's or epoch 2's, never from scratch; at
    # most the epoch whose report was in flight is trained again, and none is lost.
    (resumed,) = {r["resumed_from_step"] for r in after}
    assert resumed in {before[0]["step"], before[1]["step"]}
    first = [r["epoch"] for r in before if r["step"] == resumed][0] + 1
    assert [r["epoch"] for r in after] == list(range(first, 6))
    df = read_results(exp)
    assert sorted(df[df.control != "dense"].epoch) == [1, 2, 3, 4, 5]  # each epoch once in the results


def test_driver_killed_mid_sweep_then_resume_completes_without_redoing_work(tmp_path):
    exp = tmp_path / "smoke"
    p = cli(["smoke", "--storage-path", str(tmp_path), *LOCAL, *SMALL,
             "--set", "search.sparsity=[0.5,0.7,0.9]", *ONE_AT_A_TIME])
    wait_until(lambda: ticket_files(exp), process=p, what="a finished trial")
    # A second driver on the live experiment, --resume or not, is refused before it starts anything.
    for extra in (["--resume"], []):
        code, out = run([*extra, "smoke", "--storage-path", str(tmp_path), *LOCAL, *SMALL,
                         "--set", "search.sparsity=[0.5,0.7,0.9]", *ONE_AT_A_TIME])
        assert code == 2, out[-3000:]
        assert f"is being run by another driver (host {socket.gethostname()}, PID {p.pid}, since " in out, out
        assert "Ray" not in out and len([line for line in out.splitlines() if "error" in line]) == 1, out
    assert len(list(exp.glob("experiment_state-*.json"))) <= 1  # only the live driver's
    ray_pids = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True,
                                                   text=True).stdout.split()]
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    # Ray's processes share the fate of the driver that started them.
    wait_until(lambda: not _pids_alive(ray_pids), timeout=60, every=0.5, what=lambda: f"Ray's processes to exit "
               f"with their driver ({_pids_alive(ray_pids)} still alive)")
    done = {f.parent.name: len(artifacts.read_metrics(f.parent)) for f in ticket_files(exp)}
    assert 1 <= len(done) < 3

    code, out = run(["--resume", "--name", "smoke", "--storage-path", str(tmp_path), *LOCAL])
    assert code == 0, out[-3000:]
    assert f"note: the experiment's previous driver is gone (host {socket.gethostname()}, PID {p.pid}" in out, out
    assert not (exp / lock.LOCK_FILE).exists()  # released at the end
    assert "reusing the dense run" in out
    # Tune's warning about the trials that had not started stays in Ray's log, not the terminal.
    assert "Failed to fetch metrics" not in out and "FileNotFoundError" not in out, out[-3000:]
    assert dense_runs(exp) == 1
    for trial, count in done.items():
        assert len(artifacts.read_metrics(exp / trial)) == count
    df = read_results(exp)
    trials = df[df.control != "dense"]
    assert not trials.duplicated(["trial_id", "epoch"]).any()
    assert trials.trial_id.nunique() == 3 and set(trials.status) == {"finished"} and len(trials) == 6


@pytest.fixture
def small_disk(tmp_path):
    """A real size-limited file system (tmpfs, 256 MiB) bind-mounted at tmp_path/disk, so that it can
    be unmounted from there and mounted again with its files: mounting needs root."""
    backing, disk = tmp_path / "backing", tmp_path / "disk"
    backing.mkdir()
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(backing)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    subprocess.run(["mount", "--bind", str(backing), str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
        subprocess.run(["umount", "-l", str(backing)], check=True)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError:
            pass
    return filler


def _storage_fault(p: subprocess.Popen, exp: Path, reason: str) -> str:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == sweep.storage.EXIT_STORAGE, out[-3000:]
    assert f"storage fault: writing to {exp}" in out and reason in out, out[-3000:]
    assert "The sweep stopped" in out and "Finished results are safe" in out, out[-3000:]
    assert f"python -m tickets.sweep --resume --name {exp.name} --storage-path {exp.parent}" in out, out[-3000:]
    # One paragraph, not a cascade: Tune's and the workers' tracebacks stay in Ray's log files.
    assert "Traceback" not in out and out.count("Errno") == 1, out[-3000:]
    logs = out.split("The errors in full are in Ray's logs: ", 1)[1].split(" on each node", 1)[0]
    assert (Path(logs) / "tickets-driver.log").exists(), logs
    return out


def test_storage_that_fills_up_turns_read_only_or_goes_away_mid_sweep_stops_it_cleanly_and_resume_loses_nothing(
        small_disk):
    exp = small_disk / "smoke"
    args = ["smoke", "--storage-path", str(small_disk), *LOCAL, *SMALL, *ONE_AT_A_TIME,
            *sets("search.sparsity=[0.3,0.5,0.7,0.9]", "dense.epochs=3")]
    env = {"TICKETS_MIN_FREE_MB": "1"}
    resume = ["--resume", "--name", "smoke", "--storage-path", str(small_disk), *LOCAL]

    # The disk fills up (another job writing to it) once a trial has finished.
    p = cli(args, env=env)
    wait_until(lambda: ticket_files(exp), process=p, what="a finished trial")
    filler = _fill(small_disk)
    _storage_fault(p, exp, "No space left on device")
    before = {t.parent.name for t in ticket_files(exp)}
    assert not (exp / lock.LOCK_FILE).exists()  # released: --resume needs no wait
    filler.unlink()

    # Resumed; then the file system turns read-only (remounted) once another trial has finished.
    p = cli(resume, env=env)
    wait_until(lambda: len(ticket_files(exp)) > len(before), process=p, what="another finished trial")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        _storage_fault(p, exp, "Read-only file system")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)

    # Resumed; then the file system is unmounted (the experiment dir gone) once a third trial has finished.
    backing = small_disk.parent / "backing"
    p = cli(resume, env=env)
    wait_until(lambda: len(ticket_files(exp)) > len(before) + 1, process=p, what="a third finished trial")
    subprocess.run(["umount", "-l", str(small_disk)], check=True)
    try:
        _storage_fault(p, exp, "the experiment dir is gone")
    finally:
        shutil.rmtree(exp, ignore_errors=True)  # whatever Tune wrote where the mount was
        subprocess.run(["mount", "--bind", str(backing), str(small_disk)], check=True)

    code, out = run(resume, env=env)
    assert code == 0, out[-3000:]
    df = read_results(exp)
    trials = df[df.control != "dense"]
    assert trials.trial_id.nunique() == 4 and set(trials.status) == {"finished"}, out[-3000:]
    assert not trials.duplicated(["trial_id", "epoch"]).any()
    assert sorted(trials.epoch) == sorted([1, 2, 3] * 4)  # every epoch of every trial, once
    assert dense_runs(exp) == 1
    for trial in {t.parent for t in ticket_files(exp)}:  # no trial's reports lost, none twice
        epochs = [r["epoch"] for r in artifacts.read_metrics(trial)]
        assert sorted(set(epochs)) == [1, 2, 3], (trial, epochs)


def test_a_disk_that_fills_up_during_the_dense_run_stops_it_cleanly_and_resume_trains_it_again(small_disk):
    exp = small_disk / "smoke"
    filler = _fill(small_disk)
    os.truncate(filler, filler.stat().st_size - 3 * 2**20)  # room for the spec and a snapshot, not two
    env = {"TICKETS_MIN_FREE_MB": "1"}
    p = cli(["smoke", "--storage-path", str(small_disk), *LOCAL, *SMALL], env=env)
    out = _storage_fault(p, exp, "No space left on device")
    assert "0/2 trials finished" in out and not (exp / artifacts.DENSE_DIR / artifacts.MANIFEST_FILE).exists()
    filler.unlink()
    code, out = run(["--resume", "--name", "smoke", "--storage-path", str(small_disk), *LOCAL], env=env)
    assert code == 0 and "dense: restarted" in out, out[-3000:]
    df = read_results(exp)
    assert set(df[df.control != "dense"].status) == {"finished"} and not df.duplicated(["trial_id", "epoch"]).any()
    assert sorted(df[df.control == "dense"].epoch) == [1, 2]


def test_two_node_cluster_spreads_trials_one_gpu_each_warms_them_beside_the_dense_run_and_survives_losing_a_node(
        tmp_path):
    from ray.cluster_utils import Cluster

    exp = tmp_path / "smoke"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1, "node_ip_address": "127.0.0.2",
                                                            "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.3")
        cluster.wait_for_nodes()
        p = cli(["smoke", "--storage-path", str(tmp_path), "--address", cluster.address,
                 *sets("dense.epochs=4", "search.sparsity=[0.5,0.9]", "search.rewind_epoch=[0,1]",
                       "search.control=[ticket]", "resources.gpus_per_trial=1")])
        # Two epochs reported from the worker node: a trial writes a row before `tune.report`ing it,
        # and reports one at a time, so the first row's checkpoint is Tune's by then and that row
        # survives the node's removal (a later epoch may be retrained elsewhere).
        wait_until(lambda: [t for t in artifacts.trial_dirs(exp)
                            if len([r for r in artifacts.read_metrics(t) if r["node_id"] == worker.node_id]) >= 2],
                   process=p, what="a trial's second epoch on the worker node")
        cluster.remove_node(worker)
        out, _ = p.communicate(timeout=400)
    finally:
        cluster.shutdown()
    assert p.returncode == 0, out[-3000:]
    df = read_results(exp)
    trials = df[df.control != "dense"]
    assert trials.trial_id.nunique() == 4 and set(trials.status) == {"finished"}  # the grid went on without it
    assert dense_runs(exp) == 1 and "1 CPU, 1 GPU" in out
    rows = trial_rows(exp)
    nodes = {r["node_id"] for r in rows}
    assert len(nodes) == 2 and worker.node_id in nodes  # trials ran on both nodes, the removed one included
    assert all(r["cuda_visible_devices"] in ("0", "1") for r in rows)  # exactly one GPU each
    # The dense run took one node whole; the first trial started on the other beside it, warmed up
    # (traced) there, and trained once the dense run ended: its start-up did not wait for it.
    early = [r for r in rows if r["started_beside_dense"]]
    assert early and all(r["worker_trial"] == 1 and r["dense_wait_seconds"] > 0 for r in early)
    assert "start on the nodes the dense run leaves free" in out


def test_unwritable_or_full_storage_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch):
    assert sweep.main(["smoke", "--storage-path", "/proc/tickets-results"]) == 2
    assert "--storage-path: /proc is not writable" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert sweep.main(["smoke", "--storage-path", str(tmp_path / "file")]) == 2
    assert "is not a writable directory" in capsys.readouterr().err
    monkeypatch.setenv("TICKETS_MIN_FREE_MB", str(10**12))
    assert sweep.main(["smoke", "--storage-path", str(tmp_path / "r")]) == 2
    assert "MiB free; a sweep needs at least" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_an_interrupted_sweep_says_how_to_continue(interrupted):
    assert interrupted.code == sweep.EXIT_INTERRUPTED, interrupted.out[-3000:]
    assert "continue with: python -m tickets.sweep --resume" in interrupted.out


def test_corrupted_dense_snapshot_is_named_and_never_retrained_over(interrupted, tmp_path, capsys):
    exp = interrupted.exp
    copy = tmp_path / "smoke"
    shutil.copytree(exp, copy)
    snapshot = artifacts.snapshot_file(copy / artifacts.DENSE_DIR, 0)
    snapshot.write_bytes(snapshot.read_bytes()[:100])
    runs = dense_runs(copy)
    assert runs >= 1  # the interrupted sweep trained it
    assert sweep.main(["--resume", "--name", "smoke", "--storage-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(snapshot) in err and err.count("\n") == 1
    assert dense_runs(copy) == runs
    (copy / artifacts.DENSE_DIR / artifacts.MANIFEST_FILE).write_text("{not json")
    assert sweep.main(["--resume", "--name", "smoke", "--storage-path", str(tmp_path)]) == 2
    assert f"{artifacts.MANIFEST_FILE}: cannot be read" in capsys.readouterr().err


def test_a_state_saved_without_a_whole_copy_is_set_aside_and_the_grid_trains_again_bit_identically(
        interrupted, tmp_path):
    copy = tmp_path / "smoke"
    shutil.copytree(interrupted.exp, copy)
    before = {json.loads((t / artifacts.PARAMS_FILE).read_text())["sparsity"]: artifacts.read_metrics(t)
              for t in artifacts.trial_dirs(copy)}
    for state in copy.glob("experiment_state-*.json"):  # the first save, cut short by a full disk
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    shutil.rmtree(copy / ".tickets-state", ignore_errors=True)
    code, out = run(["--resume", "--name", "smoke", "--storage-path", str(tmp_path), *LOCAL])
    assert code == 0, out[-3000:]
    assert "no whole copy of it was kept: the grid starts again" in out and "Traceback" not in out
    assert len(list((copy / ".tickets-orphans").iterdir())) == len(before) >= 1
    df = read_results(copy)
    trials = df[df.control != "dense"]
    assert trials.trial.nunique() == 2 and set(trials.status) == {"finished"}
    assert all(sorted(rows.epoch) == list(range(1, 9)) for _, rows in trials.groupby("trial"))
    # The grid trained again as it had before: the same seeds, the same numbers.
    for sparsity, rows in before.items():
        again = trials[trials.sparsity == sparsity].set_index("epoch").val_accuracy
        assert [r["val_accuracy"] for r in rows] == [again[r["epoch"]] for r in rows], sparsity


def test_a_checkpoint_that_cannot_be_read_is_named_and_its_trial_continues_from_the_one_before(interrupted):
    exp, trial = interrupted.exp, interrupted.trial
    saved = sorted(trial.glob("checkpoint_*"))
    reported_before = len(artifacts.read_metrics(trial))
    step = artifacts.load_state(saved[-2])["step"] if len(saved) > 1 else -1  # Tune removes it later
    (saved[-1] / "weights.npz").write_bytes(b"PK\x03\x04 cut short")  # whichever one Tune restores from
    code, out = run(["--resume", "--name", "smoke", "--storage-path", str(exp.parent), *LOCAL])
    assert code == 0, out[-3000:]
    older = f"continues from {saved[-2].name}" if len(saved) > 1 else "trains again from its start"
    assert f"{saved[-1].name}/weights.npz: cannot be read" in out and f"{trial.name} {older}" in out, out[-3000:]
    df = read_results(exp)
    trials = df[df.control != "dense"]
    assert set(trials.status) == {"finished"}
    rows = trials[trials.trial == trial.name]
    assert sorted(rows.epoch) == list(range(1, 9))
    # The epochs after that checkpoint trained again and came out as they had before.
    reported = artifacts.read_metrics(trial)
    assert {r["resumed_from_step"] for r in reported[reported_before:]} == {step}
    epochs = [r["epoch"] for r in reported]
    again = [e for e in set(epochs) if epochs.count(e) > 1]
    assert again, epochs
    for e in again:
        assert len({r["val_accuracy"] for r in reported if r["epoch"] == e}) == 1, e


# ---------------------------------------------------------------------------------------------
# Bad input: every case exits 2 with one line naming the field and value, writes nothing, starts no Ray.


SPEC_CASES = [
    # (spec file text or preset, --set overrides, expected message start)
    ("name: x\nsearch: {sparsity: [0.5,\n", [], "is not valid YAML at line"),
    ("- just\n- a list\n", [], "must hold a mapping of spec fields"),
    ("name: x\nmodle: {arch: conv2}\n", [], "modle: unknown field (did you mean 'model'?)"),
    ("name: x\ndata: {batchsize: 4}\n", [], "data.batchsize: unknown field (did you mean 'batch_size'?)"),
    ("smoke", ["data.batch_size=many"], "data.batch_size: 'many' must be an integer"),
    ("smoke", ["dense.epochs=2.5"], "dense.epochs: 2.5 must be an integer"),
    ("smoke", ["data.augment=7"], "data.augment: 7 must be true or false"),
    ("smoke", ["search.sparsity=[1.0]"], "search.sparsity: 1 is outside [0, 1)"),
    ("smoke", ["search.sparsity=[1.2]"], "search.sparsity: 1.2 is outside [0, 1)"),
    ("smoke", ["search.sparsity=[-0.1]"], "search.sparsity: -0.1 is outside [0, 1)"),
    ("smoke", ["search.sparsity=[]"], "search.sparsity: [] is empty"),
    ("smoke", ["search.rewind_epoch=[]"], "search.rewind_epoch: [] is empty"),
    ("smoke", ["search.replicate=[]"], "search.replicate: [] is empty"),
    ("smoke", ["search.rewind_epoch=[40]"], "search.rewind_epoch: 40 is past dense.epochs (4)"),
    ("smoke", ["search.rewind_epoch=[4]"], "search.rewind_epoch: 4 equals dense.epochs (4)"),
    ("smoke", ["model.arch=resnet18"], "model.arch: 'resnet18' is not one of"),
    ("smoke", ["data.dataset=imagenet21k"], "data.dataset: 'imagenet21k' is not one of"),
    ("smoke", ["search.control=[lucky]"], "search.control[0]: 'lucky' is not one of"),
    ("smoke", ["pruning.scope=local"], "pruning.scope: 'local' is not one of"),
    ("smoke", ["dense.optimizer.name=rmsprop"], "dense.optimizer.name: 'rmsprop' is not one of"),
    ("smoke", ["dense.optimizer.momentum=1.5"], "dense.optimizer.momentum: 1.5 is outside [0, 1)"),
    ("smoke", ["model.width=0"], "model.width: 0 is outside (0, 4]"),
    ("smoke", ["search.sparsty=[0.5]"], "--set search.sparsty: no such field (did you mean 'sparsity'?)"),
    ("smoke", ["data.nothing.deeper=1"], "--set data.nothing: no such field"),
    ("smoke", ["pruning.mode=imp", "pruning.levels=3", "search.sparsity=[0.5]"],
     "search.sparsity: [0.5] conflicts with pruning.mode 'imp'"),
    ("smoke", ["pruning.mode=imp"], "pruning.levels: None must be set"),
    ("smoke", ["resources.gpus_per_trial=1"], "resources.gpus_per_trial: 1 cannot be met by any node"),
    ("smoke", ["resources.cpus_per_trial=64"], "resources.cpus_per_trial: 64 cannot be met by any node"),
    ("smoke", ["search.control=[transfer]"], "search.control: ['transfer'] has 'transfer' but the spec has no"),
    ("smoke", ["data.subset={train: 10}"], "data.subset.train: 10 is smaller than data.batch_size (64)"),
    ("smoke", ["data.validation=-5"], "data.validation: -5 must be >= 0"),
    ("smoke", ["data.validation=0.1"], "data.validation: 0.1 must be an integer"),
    ("smoke", ["data.validation=1152"], "data.validation: 1152 is not below the 1152 training images"),
    ("smoke", ["pruning.mode=imp", "pruning.levels=2", "search.sparsity=[]", "search.control=[random_prune]"],
     "search.control: ['random_prune'] has no 'ticket'"),
]


@pytest.mark.parametrize("spec, overrides, message", SPEC_CASES)
def test_bad_spec_catalogue(tmp_path, capsys, spec, overrides, message):
    _assert_bad_input(tmp_path, capsys, spec, overrides, message)


DATA_CASES = [
    ("missing data path", lambda d: ["data.dataset=parquet", f"data.path={d / 'nowhere'}"],
     "data.path: '{d}/nowhere' is not a directory"),
    ("cifar10 path without a copy", lambda d: ["data.dataset=cifar10", f"data.path={d}"], "holds no CIFAR-10"),
    ("imagenet without shards", lambda d: ["data.dataset=imagenet", f"data.path={d}", "data.image_size=224"],
     "data.dataset: 'imagenet' has no shards at '{d}' (from data.path); write them with `python -m tickets.shards"),
    ("folder without class dirs", lambda d: ["data.dataset=image_folder", f"data.path={d}"],
     "has no train/ and test/ (or val/) class folders"),
    ("label out of range", lambda d: ["data.dataset=parquet", "data.batch_size=2",
                                      f"data.path={write_parquet(d / 'p', labels=(0, 1, 2, -3))}"], "label -3"),
    ("not an image", lambda d: ["data.dataset=parquet", f"data.path={write_parquet(d / 'p', image=b'garbage')}",
                                "data.batch_size=2"], "is not a readable image"),
    ("images of the wrong shape", lambda d: ["data.dataset=cifar10", f"data.path={write_cifar_batches(d / 'c', 1024)}",
                                             "data.batch_size=10"], "holds images of shape (1024,)"),
    ("subset larger than a class", lambda d: ["data.dataset=cifar10", "data.batch_size=10",
                                              f"data.path={write_cifar_batches(d / 'c', labels=[0, 0] + [1] * 18)}",
                                              "data.subset={train: 90}", "data.validation=0"],
     "data.subset.train: 90 needs 45 images of class 0; the data has 10"),
    ("validation leaves nothing to train", lambda d: ["data.dataset=cifar10", "data.batch_size=10",
                                                      f"data.path={write_cifar_batches(d / 'c')}", "data.validation=100"],
     "data.validation: 100 is not below the 100 training images: nothing would be left to train on"),
]


@pytest.mark.parametrize("name, overrides, message", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_catalogue(tmp_path, capsys, name, overrides, message):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _assert_bad_input(tmp_path, capsys, "smoke", overrides(data_dir), message.format(d=data_dir),
                      ignore={"data"})


def _assert_bad_input(tmp_path, capsys, spec, overrides, message, ignore=()):
    import ray

    if "\n" in spec:
        (tmp_path / "spec.yaml").write_text(spec)
        spec = str(tmp_path / "spec.yaml")
    before = {p for p in tmp_path.rglob("*")}
    argv = [spec, "--storage-path", str(tmp_path / "results"), "--num-cpus", "2", "--num-gpus", "0"]
    for o in overrides:
        argv += ["--set", o]
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert {p for p in tmp_path.rglob("*")} == before  # nothing written
    assert not ray.is_initialized()


def test_the_catalogue_has_at_least_30_cases():
    assert len(SPEC_CASES) + len(DATA_CASES) >= 30


# ---------------------------------------------------------------------------------------------
# Security.


def test_local_ray_keeps_token_auth_and_secrets_stay_out_of_logs_and_results(smoke_run):
    assert smoke_run.code == 0, smoke_run.out[-3000:]
    assert smoke_run.dashboard == {"/api/version": 401, "/api/jobs/": 401, "/api/version with the token": 200}
    token = smoke_run.token
    assert stat.S_IMODE((Path.home() / ".ray" / "auth_token").stat().st_mode) & 0o077 == 0
    assert token not in smoke_run.out
    exp = smoke_run.exp
    for f in exp.rglob("*"):
        mode = stat.S_IMODE(f.stat().st_mode)
        assert not mode & stat.S_IWOTH, f"{f} is world-writable"
        if f.is_file() and f.stat().st_size < 5_000_000:
            assert token.encode() not in f.read_bytes(), f"token found in {f}"


def test_sweeps_started_at_once_on_a_fresh_account_share_one_private_token(tmp_path):
    # Eight processes make sure of 100 fresh token files, each at the same instant (a slot of 20 ms),
    # and read each back as their Ray would: a process that wrote its own token over another's would
    # have read one the file no longer holds.
    code = ("import sys, time; from pathlib import Path; from tickets.session import private_token\n"
            "root, start = Path(sys.argv[1]), float(sys.argv[2])\n"
            "for i in range(100):\n"
            "    path = root / str(i) / '.ray' / 'auth_token'\n"
            "    time.sleep(max(0.0, start + 0.02 * i - time.time()))\n"
            "    private_token(path); print(i, path.read_text().strip())")
    start = f"{time.time() + 3:.3f}"  # every process past its imports
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), start], stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    seen = [line.split() for p in procs for line in p.communicate(timeout=60)[0].splitlines()]
    assert [p.returncode for p in procs] == [0] * 8 and len(seen) == 800
    held = {i: (tmp_path / i / ".ray" / "auth_token").read_text().strip() for i, _ in seen}
    assert [(i, token) for i, token in seen if token != held[i]] == []
    assert {len(token) for token in held.values()} == {64}
    for i in held:
        path = tmp_path / i / ".ray" / "auth_token"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [f.name for f in path.parent.iterdir()] == ["auth_token"]  # no process's own copy left behind
