"""`python -m tickets.export`: a finished trial's ticket as a plain Keras model, a SavedModel or TFLite
that predicts what the masked model does on the test set; channel tickets physically thinner, an
unstructured ticket stored sparse in TFLite and run with LiteRT; bad input one line, exit 2, nothing
written. On the smoke preset's model (a channel sweep here; the README's smoke run for the unstructured
ticket)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import LOCAL, ONE_AT_A_TIME, cli, run, sets, ticket_files

from tickets import artifacts, channels, config, data, export, pipeline, pruning


@pytest.fixture(scope="module")
def channel_run(tmp_path_factory):
    """The smoke preset with channel tickets: 50 % of the prunable weights in whole channels."""
    storage = tmp_path_factory.mktemp("channel")
    code, out = run(["smoke", "--storage-path", str(storage), *LOCAL, *ONE_AT_A_TIME,
                     *sets("pruning.granularity=channel", "pruning.scope=layerwise", "search.sparsity=[0.5]",
                           "search.control=[ticket,random_prune]")])
    assert code == 0, out[-3000:]
    return storage / "smoke"


def _test_set(exp):
    spec = config.load(exp / artifacts.SPEC_FILE)
    d = data.load(spec.data, spec.seed)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in pipeline.eval_batches(d, d.test, spec.data)])
    return spec, np.concatenate(images), np.concatenate(labels)


def _masked_logits(spec, ticket, images):
    saved = artifacts.load_ticket(ticket, parts=("mask", "final"))
    return np.asarray(export.masked_model(spec, saved["final"], saved["mask"]).predict(images, verbose=0))


def _litert_logits(path, images):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _agree(ours, theirs, tolerance=1e-4):
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.999
    assert np.abs(ours - theirs).max() <= tolerance * np.abs(ours).max()


def test_a_channel_sweep_prunes_whole_channels_and_its_rows_say_how_many(channel_run):
    rows = {}
    for ticket in ticket_files(channel_run):
        saved = artifacts.load_ticket(ticket, parts=("mask",))
        rows[saved["info"]["control"]] = saved["mask"]
    lay = pruning.Layout.of(json.loads((channel_run / "dense" / artifacts.MANIFEST_FILE).read_text())["layout"])
    groups = channels.prunable(lay, list(rows["ticket"]))
    for control, mask in rows.items():
        live = [channels.live(mask, g) for g in groups]
        assert 0.3 < 1 - np.concatenate(live).mean() < 0.7, control
        assert all(not mask[g.producer][..., ~k].any() for g, k in zip(groups, live))  # whole channels
    assert [channels.live(rows["ticket"], g).sum() for g in groups] == [
        channels.live(rows["random_prune"], g).sum() for g in groups]
    import pandas as pd

    results = pd.read_parquet(channel_run / artifacts.RESULTS_FILE)
    trials = results[results.control != "dense"]
    assert (trials.actual_sparsity >= 0.5).all() and (trials.actual_sparsity < 0.52).all()
    assert trials.channels_removed.between(0.3, 0.7).all() and trials.flops_left.between(0.3, 0.8).all()
    assert (results[results.control == "dense"].flops_left == 1.0).all()


def test_a_channel_ticket_exports_thinner_and_predicts_what_the_masked_model_does(channel_run, tmp_path):
    ticket = next(t for t in ticket_files(channel_run) if artifacts.load_ticket(t, ())["info"]["control"] == "ticket")
    spec, images, labels = _test_set(channel_run)
    ours = _masked_logits(spec, ticket, images)
    code, out = run([str(ticket.parent), "--format", "keras", "--out", str(tmp_path / "t.keras")], module="tickets.export")
    assert code == 0 and "channels removed" in out, out[-2000:]
    # A plain Keras model: it loads, in a process that never imports tickets, and it is thinner.
    probe = ("import sys, json, keras, numpy as np\n"
             f"m = keras.models.load_model({str(tmp_path / 't.keras')!r})\n"
             f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
             f"np.save({str(tmp_path / 'y.npy')!r}, m.predict(x, verbose=0))\n"
             "print(json.dumps({'tickets': any(k.startswith('tickets') for k in sys.modules), "
             "'params': m.count_params()}))\n")
    np.save(tmp_path / "x.npy", images)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    probed = json.loads(done.stdout.strip().splitlines()[-1])
    assert not probed["tickets"]
    saved = artifacts.load_ticket(ticket, parts=("final",))["final"]
    assert probed["params"] < 0.75 * sum(v.size for v in saved.values())
    _agree(ours, np.load(tmp_path / "y.npy"))
    # And independently of this module: the exported model's test accuracy is the one the trial reported
    # for its last epoch (the weights a ticket file keeps), within an image.
    import pandas as pd

    rows = pd.read_parquet(channel_run / artifacts.RESULTS_FILE)
    rows = rows[(rows.control == "ticket")]
    reported = rows[rows.epoch == rows.epoch.max()].test_accuracy.iloc[0]
    assert abs((np.load(tmp_path / "y.npy").argmax(1) == labels).mean() - reported) <= 1.01 / len(labels)
    # TFLite, run with LiteRT; and a SavedModel's serving signature.
    result = export.export(ticket.parent, "tflite", tmp_path / "t.tflite")
    assert result.channels_removed > 0 and result.bytes == (tmp_path / "t.tflite").stat().st_size
    _agree(ours, _litert_logits(tmp_path / "t.tflite", images))
    export.export(ticket, "saved_model", tmp_path / "saved")
    import tensorflow as tf

    serve = tf.saved_model.load(str(tmp_path / "saved")).signatures["serve"]
    _agree(ours, next(iter(serve(tf.constant(images)).values())).numpy())


def test_an_unstructured_ticket_exports_to_sparse_tflite(smoke_run, tmp_path):
    exp = smoke_run.exp
    ticket = next(t for t in ticket_files(exp) if artifacts.load_ticket(t, ())["info"]["sparsity"] == 0.95
                  and artifacts.load_ticket(t, ())["info"]["control"] == "ticket")
    spec, images, _ = _test_set(exp)
    result = export.export(ticket.parent, "tflite", tmp_path / "u.tflite")
    # The converter's sparse encoding: a 95 %-sparse ticket's file is far smaller than the dense encoding.
    saved = artifacts.load_ticket(ticket, parts=("mask", "final"))
    model = export.masked_model(spec, saved["final"], saved["mask"])
    dense_bytes = len(export.to_tflite(export.thinner(model, saved["mask"])[0], sparse=False))
    assert result.bytes < 0.6 * dense_bytes and result.sparse_tensors
    assert set(result.sparse_tensors) | set(result.dense_tensors) <= {n for n in saved["mask"]}
    _agree(_masked_logits(spec, ticket, images), _litert_logits(tmp_path / "u.tflite", images))


def test_bad_input_is_one_line_exit_2_and_writes_nothing(smoke_run, tmp_path):
    exp = smoke_run.exp
    trial = ticket_files(exp)[0].parent
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / artifacts.METRICS_FILE).write_text("{}\n")
    existing = tmp_path / "there.keras"
    existing.write_text("mine")
    cases = [([str(exp), "--format", "keras", "--out", str(tmp_path / "a.keras")], "is an experiment dir"),
             ([str(unfinished), "--format", "keras", "--out", str(tmp_path / "b.keras")], "is an unfinished trial"),
             ([str(tmp_path), "--format", "keras", "--out", str(tmp_path / "c.keras")], "holds no ticket"),
             ([str(trial), "--format", "onnx", "--out", str(tmp_path / "d.onnx")], "--format: 'onnx' is not one of"),
             ([str(trial), "--format", "keras", "--out", str(existing)], "exists; pass --force"),
             ([str(trial), "--format", "tflite", "--out", str(tmp_path / "e.keras")], "must end in .tflite"),
             ([str(tmp_path / "nowhere"), "--format", "keras", "--out", str(tmp_path / "f.keras")], "does not exist")]
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, message in cases:
        p = cli(args, module="tickets.export", stderr=subprocess.PIPE)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and existing.read_text() == "mine"
    # --force replaces it.
    assert export.export(trial, "keras", existing, force=True).bytes > 1000


def test_the_report_deploys_the_winning_tickets_on_this_machine(smoke_run, tmp_path):
    # A copy: the smoke run's own report is read by other tests.
    exp = tmp_path / "smoke"
    shutil.copytree(smoke_run.exp, exp, ignore=shutil.ignore_patterns("checkpoint_*", "events.*"))
    code, out = run([str(exp), "--deployment"], module="tickets.report")
    assert code == 0, out[-2000:]
    text = (exp / "report.md").read_text()
    table = text[text.index("## Deployment"):text.index("## Figures")]
    assert "timed here: **" in table and "logical CPUs" in table, table
    rows = [line for line in table.splitlines() if line.startswith("| dense") or line.startswith("| ticket")]
    assert rows[0].startswith("| dense") and rows[0].endswith("| 1.00x |") and len(rows) >= 2, table
    # The winning ticket is unstructured: about the dense network's multiply-adds, its nonzero ones fewer
    # (in brackets), and a TFLite file no larger.
    dense, ticket = (line.split(" | ") for line in rows[:2])
    assert "(" in ticket[2] and float(ticket[2].split()[0]) > 0.9 * float(dense[2].split()[0])
    assert float(ticket[4].split()[0]) <= 1.01 * float(dense[4].split()[0])
