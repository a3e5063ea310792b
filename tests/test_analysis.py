"""Results in pandas, the plots, the report and the example notebook, on experiments made here."""

import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import ROOT, SMALL, cli, run, sets, wait_until

from tickets import analysis, artifacts, plots, report

GRID = [*SMALL, *sets("search.sparsity=[0.5,0.9]", "search.control=[ticket,random_prune]", "search.replicate=[0,1]")]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    storage = tmp_path_factory.mktemp("results")
    code, out = run(["smoke", "--storage-path", str(storage), "--num-cpus", "2", *GRID])
    assert code == 0, out[-3000:]
    return storage / "smoke"


def test_load_is_tidy_and_typed(experiment):
    df = analysis.load(experiment)
    assert df["control"].dtype == "category" and df["sparsity"].dtype == "float64"
    assert df["epoch"].dtype == "int64" and df["replicate"].dtype == "int64"
    trials = df[df.control != "dense"]
    assert trials.trial_id.nunique() == 8 and len(trials) == 16 and len(df[df.control == "dense"]) == 2
    assert set(trials.status) == {"finished"}


def test_tensorboard_reads_the_dense_run_and_every_trial(experiment):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    runs = EventMultiplexer().AddRunsFromDirectory(str(experiment)).Reload()
    curves = {run: [e.value for e in runs.Scalars(run, "ray/tune/test_accuracy")] for run in runs.Runs()}
    dense = analysis.load(experiment).query("control == 'dense'").test_accuracy.tolist()
    assert curves.pop(artifacts.DENSE_DIR) == pytest.approx(dense)
    assert len(curves) == 8 and all(len(c) == 2 for c in curves.values())  # 8 trials of 2 epochs


def test_loading_needs_neither_ray_nor_tensorflow(experiment):
    code = ("import sys; from tickets import analysis; df = analysis.load(sys.argv[1]); "
            "assert len(df) == 18; bad = {'ray', 'tensorflow', 'keras'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(experiment)], check=True)


def test_parquet_round_trip_is_the_same_frame(experiment):
    import pyarrow.parquet as pq

    on_disk = pd.read_parquet(experiment / artifacts.RESULTS_FILE)
    pd.testing.assert_frame_equal(on_disk, analysis.load(experiment))
    assert pq.read_table(experiment / artifacts.RESULTS_FILE).num_rows == 18


def test_summary_and_winning_tickets(experiment):
    df = analysis.load(experiment)
    s = analysis.summary(df)
    assert len(s) == 4 and (s.replicates == 2).all()
    row = s[(s.control == "ticket") & (s.sparsity == 0.5)].iloc[0]
    finals = analysis.final_rows(df[(df.control == "ticket") & (df.sparsity == 0.5)]).test_accuracy
    assert row.final_accuracy == pytest.approx(finals.mean()) and row.final_accuracy_std == pytest.approx(finals.std())
    dense = analysis.dense_accuracy(df)
    assert (s.matches == (s.final_accuracy >= dense - 0.005)).all()
    # Tolerance is in percentage points: with 100 every configuration matches.
    wins = analysis.winning_tickets(df, tolerance=100)
    assert wins.sparsity.tolist() == [0.9] and wins.control.tolist() == ["ticket"]


def test_plots_have_labels_legends_and_the_dense_band(experiment, tmp_path):
    df = analysis.load(experiment)
    fig = plots.accuracy_vs_weights(df)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "weights remaining (%)" and ax.get_ylabel() == "test accuracy (%)"
    assert ax.get_xscale() == "log"
    labels = ax.get_legend_handles_labels()[1]
    assert any(label.startswith("dense") for label in labels)
    assert {"ticket, rewind 0", "random_prune, rewind 0"} <= set(labels)
    png, svg = plots.save(fig, tmp_path / "a.png", tmp_path / "a.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg.read_bytes()[:500]
    assert plots.early_stop_vs_weights(df).axes[0].get_ylabel().startswith("early-stop epoch")
    assert plots.heatmap(df).axes[0].get_ylabel() == "rewind epoch"


def test_report_command_writes_summary_plots_and_markdown(experiment):
    # The sweep already wrote them at its end; the command rewrites them.
    for name in ("summary.csv", "accuracy_vs_weights.png", "report.md"):
        assert (experiment / name).exists()
    (experiment / "report.md").unlink()
    assert report.main([str(experiment)]) == 0
    text = (experiment / "report.md").read_text()
    assert "Dense network:" in text and "| ticket | 0.5 |" in text and "![accuracy_vs_weights]" in text
    assert pd.read_csv(experiment / "summary.csv").shape[0] == 4


def test_example_notebook_runs(experiment):
    import nbclient
    import nbformat

    nb = nbformat.read(ROOT / "examples" / "analysis.ipynb", as_version=4)
    os.environ["TICKETS_EXPERIMENT"] = str(experiment)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    finally:
        del os.environ["TICKETS_EXPERIMENT"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3


def test_load_while_running_and_after_an_interrupt(tmp_path):
    exp = tmp_path / "smoke"
    p = cli(["smoke", "--storage-path", str(tmp_path), "--num-cpus", "2", "--set", "dense.epochs=3",
             "--set", "search.sparsity=[0.5,0.8,0.9]", "--set", "search.rewind_epoch=[0]",
             "--set", "resources.max_concurrent_trials=1"], start_new_session=True)

    def mid_run():
        df = analysis.load(exp) if exp.exists() else pd.DataFrame()
        if not df.empty and (df.control != "dense").any() and (df.status == "incomplete").any():
            return (df,)  # a DataFrame has no truth value
        return None

    try:
        (seen,) = wait_until(mid_run, every=0.3, process=p, what="a trial mid-run")
    finally:
        os.killpg(p.pid, signal.SIGINT)
        p.communicate(timeout=120)
    assert not seen.empty
    running = seen[seen.status == "incomplete"]
    assert running.epoch.min() >= 1 and running.test_accuracy.notna().all()

    after = analysis.load(exp)  # interrupted: nothing reported is lost, the grid is not complete
    after_trials = after[after.control != "dense"]
    assert set(running.trial_id) <= set(after_trials.trial_id)
    statuses = after_trials.drop_duplicates("trial_id").status
    assert len(statuses) < 3 or (statuses != "finished").any()
    assert np.isfinite(analysis.summary(after).final_accuracy).all()
