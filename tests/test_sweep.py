"""The sweep on real Ray: one dense run, a Tune grid, results.parquet (a 2-node cluster, resume and faults: test_reliability.py)."""

import json
import re

import pytest
from helpers import LOCAL, ONE_AT_A_TIME, SMALL, dense_runs, read_results, run, sets, ticket_files

from tickets import analysis, artifacts, sweep

@pytest.mark.parametrize("argv, message", [
    (["smoke", "--set", "search.sparsity=[1.2]"], "error: search.sparsity: 1.2 is outside [0, 1)"),
    (["smoke", "--set", "search.sparsty=[0.5]"], "error: --set search.sparsty: no such field"),
    (["smoke", "--set", "search.rewind_epoch=[9]"], "error: search.rewind_epoch: 9 is past dense.epochs (4)"),
    (["smoke", "--set", "search.rewind_epoch=[0,3.99]"],
     "error: search.rewind_epoch: 3.99 is step 64 of 64 (16 per epoch): nothing would be left to train"),
    (["nonexistent.yaml"], "error: SPEC: 'nonexistent.yaml' is not a file"),
    (["smoke", "--set", "model.arch=vgg"], "error: model.arch: 'vgg' is not one of"),
    (["smoke", "--resume"], "error: --resume:"),
    (["smoke", "--set", "resources.gpus_per_trial=1", "--num-gpus", "0", "--dry-run"],
     "error: resources.gpus_per_trial: 1 cannot be met by any node"),
    (["smoke", "--set", "resources.dense_replicas=4", "--num-gpus", "2", "--dry-run"],
     "error: resources.dense_replicas: 4 is more than the 2 GPUs of the largest node"),
    (["smoke", "--set", "resources.precision=fp16"], "error: resources.precision: 'fp16' is not one of auto,"),
    (["smoke", "--name", "../../x"], "error: --name: '../../x' must be a single directory name"),
    (["smoke", "--name", "/abs/path"], "error: --name: '/abs/path' must be a single directory name"),
    (["smoke", "--set", "search.sparsity=null"], "error: search.sparsity: [] is empty"),
    (["smoke", "--set", "pruning.rates={dense: 0.2}", "--set", "search.level=[2]"],
     "error: pruning.rates: 'dense' is not a group of mobilenet_v2"),
    (["smoke", "--set", "pruning.rates={conv: 0.1}"], "error: pruning.rates: {'conv': 0.1} apply per level"),
    (["smoke", "--set", "instability.enabled=true", "--set", "instability.points=1"],
     "error: instability.points: 1 must be >= 2"),
    (["smoke", "--set", "instability.enabled=true", "--set", "search.control=[random_reinit]"],
     "error: instability.enabled: True has nothing to analyse: search.control ['random_reinit'] has no 'ticket' "
     "(only tickets, the one at sparsity 0 the dense network, twin)"),
    (["smoke", "--set", "search.control=[ticket,snip]", "--set", "search.rewind_epoch=[1]"],
     "error: search.control[1]: 'snip' prunes at initialization and trains from it (rewind epoch 0), which "
     "search.rewind_epoch [1.0] lacks: add 0"),
    (["smoke", "--set", "pruning.synflow_rounds=0"], "error: pruning.synflow_rounds: 0 must be >= 1"),
])
def test_bad_input_exits_2_writes_nothing_starts_no_ray(tmp_path, capsys, argv, message):
    import ray

    storage = tmp_path / "results"
    assert sweep.main([*argv, "--storage-path", str(storage)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not storage.exists() and not ray.is_initialized()


def test_dry_run_prints_the_grid(tmp_path, capsys):
    assert sweep.main(["smoke", "--storage-path", str(tmp_path), "--dry-run", "--num-cpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "grid: 4 trials" in out and "would start local Ray with 2 CPU" in out
    assert "dense run: one whole node, 2 CPU, 0 GPU" in out and "each trial: 1 CPU, 0 GPU" in out
    assert list(tmp_path.iterdir()) == []


def test_the_smoke_preset_trains_dense_once_writes_every_epoch_and_shows_a_ticket_beating_its_reinit(smoke_run):
    """The README's first command, as a new user runs it: one dense run, every trial epoch on disk, a
    short output, no layer collapse, the tickets well above chance and, at the highest sparsity, far
    above the same mask from a fresh initialisation (the contrast a newcomer came for)."""
    code, out, exp = smoke_run.code, smoke_run.out, smoke_run.exp
    assert code == 0, out[-3000:]
    assert dense_runs(exp) == 1
    assert "dense epoch 4/4" in out and "4/4 trials finished" in out and "128 validation (held out of train)" in out
    assert "masks: no grid point cuts the network" in out
    assert not [line for line in out.splitlines() if line.startswith("warning:")]  # the sweep's own warnings
    # What a user reads: the plan, dense progress, one table row per trial, where results are; Tune's
    # boxes, TensorFlow's start-up banner and Ray's INFO lines stay in the log files.
    lines = out.splitlines()
    rows = [line.split() for line in lines if line.startswith("  0.")]
    assert sorted((r[0], r[1], r[2]) for r in rows) == [("0.5", "1", "random_reinit"), ("0.5", "1", "ticket"),
                                                        ("0.95", "1", "random_reinit"), ("0.95", "1", "ticket")]
    assert all(r[4].endswith("%") for r in rows)
    assert not [line for line in lines if any(noise in line for noise in (
        "Trial status", "╭", "│", "absl", "oneDNN", "cuda", " INFO ", "Checkpoint successfully"))], out
    assert len(lines) < 40, out

    df = read_results(exp)
    trials = df[df.control != "dense"]
    # rewind 1 trains epochs 2..4: 2 sparsities x 2 controls x 3 rows
    assert len(trials) == 12 and len(df[df.control == "dense"]) == 4
    assert sorted(map(tuple, trials[["sparsity", "control", "epoch"]].drop_duplicates().values.tolist())) == [
        (s, c, e) for s in (0.5, 0.95) for c in ("random_reinit", "ticket") for e in (2, 3, 4)]
    n = trials.iloc[0]["weights_remaining_count"] / trials.iloc[0]["weights_remaining"]
    for _, row in trials.iterrows():  # exactly round(s * N) pruned, to the weight
        assert row.weights_remaining_count == round(n) - round(row.sparsity * round(n))
    assert set(trials.status) == {"finished"} and trials.val_accuracy.notna().all()
    final = trials[trials.epoch == 4].set_index(["sparsity", "control"]).test_accuracy
    assert len(final) == 4 and (trials.collapsed_layers == "").all()
    assert final[0.5, "ticket"] > 0.8 and final[0.95, "ticket"] > 0.8, final  # chance: 0.1
    assert final[0.95, "ticket"] > final[0.95, "random_reinit"] + 0.25, final

    # Thread pools as read back inside each process that trained: the dense task has the whole node
    # (though the data-loading task started TensorFlow with its default pools first), every trial its
    # one CPU; one op at a time on CPUs, for bit-reproducible runs.
    threads = ("intra_op_threads", "inter_op_threads", "data_threads", "precision")
    (dense,) = [json.loads(line) for line in (exp / "dense" / artifacts.DENSE_RUNS_LOG).read_text().splitlines()]
    assert [dense[k] for k in threads] == [2, 1, 2, "float32"] and dense["replicas"] == 1
    for rows in map(artifacts.read_metrics, artifacts.trial_dirs(exp)):
        assert {tuple(r[k] for k in threads) for r in rows} == {(1, 1, 1, "float32")}
    assert set(df.precision) == {"float32"}

    for ticket_file in ticket_files(exp):
        ticket = artifacts.load_ticket(ticket_file)
        assert ticket["info"]["dense_hash"] and set(ticket["mask"]) <= set(ticket["final"])
    assert len(ticket_files(exp)) == 4

    from ray import tune

    analysis = tune.ExperimentAnalysis(str(exp))
    assert len(analysis.trials) == 4


def test_layer_collapse_is_reported_before_training_in_the_results_and_the_report(tmp_path, capsys):
    # Global magnitude pruning empties MobileNetV2's last 1x1 convolution (Conv_1) at 95 %.
    code, out = run(["smoke", "--storage-path", str(tmp_path), *LOCAL, *SMALL, *ONE_AT_A_TIME,
                     *sets("search.sparsity=[0.5,0.95]", "pruning.scope=global")])
    assert code == 0, out[-3000:]
    assert "local Ray" in out and "dashboard" not in out  # --no-dashboard
    before = out[:out.index("\ntrials: ")]  # printed once the dense run is checked, as the grid starts
    assert "warning: pruning.scope 'global' collapses layers at 1 of 2 grid points" in before
    assert "s=0.95: " in before and "Conv_1/kernel no weights left (0 of 143,360)" in before
    table = [line for line in before.splitlines() if line.strip().startswith("Conv_1/kernel ")]
    assert table and table[0].split()[-1] == "0.00!"  # per-layer densities: Conv_1 empty at 0.95
    assert "1 trial(s) trained a mask that cuts the network" in out
    assert [line for line in out.splitlines()
            if line.strip().startswith("0.95") and "cut network: " in line and "Conv_1/kernel" in line]

    exp = tmp_path / "smoke"
    df = read_results(exp)
    trials = df[df.control != "dense"].drop_duplicates("trial_id").set_index("sparsity")
    assert "Conv_1/kernel" in trials.loc[0.95, "collapsed_layers"] and trials.loc[0.5, "collapsed_layers"] == ""
    report = (exp / "report.md").read_text()
    assert "trial(s) trained a mask that cuts the network" in report and "Conv_1/kernel" in report
    summary = analysis.summary(df).set_index("sparsity")
    assert summary.loc[0.95, "collapsed"] and not summary.loc[0.95, "matches"]  # never a winning ticket

    # A dry run on the finished dense run checks other sparsities without training anything, and names
    # a layer near collapse: at width 0.35 the narrowest layers have 8 channels, at this threshold.
    assert sweep.main(["smoke", "--storage-path", str(tmp_path), "--dry-run", *SMALL,
                       *sets("search.sparsity=[0.5,0.9]", "pruning.scope=lamp", "pruning.min_live_channels=8")]) == 0
    out = capsys.readouterr().out
    assert "a real run would stop here: --name: experiment" in out
    assert "masks: no grid point cuts the network (scope lamp" in out
    assert re.search(r"warning: s=0\.5 leaves a layer near collapse: \S+ \(8 of 8 live\) \(pruning.min_live_channels 8\)",
                     out), out


def test_a_dry_run_downloads_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TICKETS_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("TICKETS_OFFLINE", raising=False)
    assert sweep.main(["mobilenetv2-cifar10", "--storage-path", str(tmp_path / "results"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "a dry run downloads nothing" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []
