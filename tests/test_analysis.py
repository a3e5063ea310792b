"""Results in pandas, the plots, the report and the example notebook, on experiments made here."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import LOCAL, ONE_AT_A_TIME, ROOT, SMALL, run, sets

from tickets import analysis, artifacts, plots, report
from tickets.config import CONTROLS

GRID = [*SMALL, *ONE_AT_A_TIME,
        *sets("search.sparsity=[0.5,0.9]", "search.control=[ticket,random_prune]", "search.replicate=[0,1]",
              "data.validation=128")]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    storage = tmp_path_factory.mktemp("results")
    code, out = run(["smoke", "--storage-path", str(storage), *LOCAL, *GRID])
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
    finals = analysis.final_rows(df[(df.control == "ticket") & (df.sparsity == 0.5)])
    assert row.final_accuracy == pytest.approx(finals.test_accuracy.mean())
    assert row.final_accuracy_std == pytest.approx(finals.test_accuracy.std())
    assert row.early_stop_accuracy == pytest.approx(finals.early_stop_accuracy.mean())
    # The early stop is chosen on the validation split: each trial's epoch of least validation loss.
    for _, trial in df[df.control != "dense"].groupby("trial_id"):
        best = trial.loc[trial.val_loss.idxmin()]
        last = trial.loc[trial.epoch.idxmax()]
        assert last.early_stop_epoch == best.epoch and last.early_stop_accuracy == best.test_accuracy
    assert 0 < row.weights_remaining < row.weights_remaining_total < 1  # the dense layers count in the total
    # Winners are chosen on the validation split: final validation accuracy against the dense network's.
    dense = analysis.dense_val_accuracy(df)
    assert row.final_val_accuracy == pytest.approx(finals.val_accuracy.mean())
    assert (s.matches == (s.final_val_accuracy >= dense - 0.005)).all() and not s.collapsed.any()


def _results(rows) -> pd.DataFrame:
    """A results frame with a dense run at 80 % and one final row per (control, sparsity, accuracy, collapsed)."""
    frame = [{"control": "dense", "sparsity": 0.0, "rewind_epoch": np.nan, "replicate": 0, "trial_id": "dense",
              "epoch": 2, "test_accuracy": 0.80, "weights_remaining": 1.0, "weights_remaining_total": 1.0,
              "collapsed_layers": ""}]
    for i, (control, sparsity, accuracy, cut) in enumerate(rows):
        frame.append({"control": control, "sparsity": sparsity, "rewind_epoch": 0.0, "replicate": 0,
                      "trial_id": f"t{i}", "epoch": 2, "test_accuracy": accuracy, "weights_remaining": 1 - sparsity,
                      "weights_remaining_total": 1 - 0.9 * sparsity, "collapsed_layers": "Conv_1/kernel" if cut else ""})
    df = pd.DataFrame(frame)
    for column in ("level", "val_loss", "early_stop_epoch", "early_stop_accuracy", "emptied_branches",
                   "narrowest_live_channels"):
        df[column] = pd.NA if column == "level" else np.nan if column != "emptied_branches" else ""
    df["control"] = pd.Categorical(df["control"], categories=("dense", *CONTROLS))
    return df


def test_a_winning_ticket_matches_dense_within_the_tolerance_and_is_never_a_cut_network():
    df = _results([("ticket", 0.5, 0.799, False), ("ticket", 0.8, 0.794, False), ("ticket", 0.9, 0.95, True),
                   ("random_reinit", 0.8, 0.81, False)])
    s = analysis.summary(df, tolerance=0.5).set_index(["control", "sparsity"])
    # Within 0.5 points of 80 %: 79.9 matches, 79.4 does not; the cut network never does, whatever its accuracy.
    assert s.loc[("ticket", 0.5), "matches"] and not s.loc[("ticket", 0.8), "matches"]
    assert s.loc[("ticket", 0.9), "collapsed"] and not s.loc[("ticket", 0.9), "matches"]
    wins = analysis.winning_tickets(df, tolerance=0.5)
    assert wins.sparsity.tolist() == [0.5] and wins.control.tolist() == ["ticket"]  # controls never win
    assert analysis.winning_tickets(df, tolerance=1.0).sparsity.tolist() == [0.8]  # the sparsest that matches
    assert analysis.winning_tickets(df, tolerance=0.05).empty
    assert analysis.collapsed_trials(df).trial_id.tolist() == ["t2"]
    # With a validation split the match is decided there, not on the test set: the test accuracies
    # stay as they were, the 0.8 ticket is now within 0.5 points of dense on validation, 0.5 is not.
    df["val_loss"], df["val_accuracy"] = 1.0, df["test_accuracy"]
    df.loc[df.sparsity == 0.5, "val_accuracy"] = 0.70
    df.loc[(df.control == "ticket") & (df.sparsity == 0.8), "val_accuracy"] = 0.799
    s = analysis.summary(df, tolerance=0.5).set_index(["control", "sparsity"])
    assert not s.loc[("ticket", 0.5), "matches"] and s.loc[("ticket", 0.8), "matches"]
    assert analysis.winning_tickets(df, tolerance=0.5).sparsity.tolist() == [0.8]


def test_only_finished_runs_count_with_their_intervals_and_controls_pair_with_the_ticket_by_replicate():
    # Tickets at 0.5 in three replicates (the third errored at epoch 1, at chance: not a result), random
    # reinits in two; a dense network at 80 %.
    rows = [("ticket", 0.5, 0.79, False), ("ticket", 0.5, 0.81, False), ("ticket", 0.5, 0.10, False),
            ("random_reinit", 0.5, 0.70, False), ("random_reinit", 0.5, 0.705, False)]
    df = _results(rows)
    df["replicate"] = [0, 0, 1, 2, 0, 1]
    df["status"] = ["finished"] * 3 + ["error"] + ["finished"] * 2
    s = analysis.summary(df, tolerance=0.5).set_index("control")
    ticket = s.loc["ticket"]
    assert ticket.replicates == 2 and not ticket.complete and ticket.final_accuracy == pytest.approx(0.80)
    assert ticket.final_accuracy_ci95 == pytest.approx(12.706204736 * 0.01)  # t(0.975, 1) · (0.01 √2) / √2
    # 80 % ± 12.7 points straddles 79.5 %: the mean matches, the interval cannot tell.
    assert ticket.matches and ticket.match_verdict.startswith("undecided")
    assert analysis.winning_tickets(df, tolerance=0.5).empty
    reinit = s.loc["random_reinit"]
    assert reinit.complete and reinit.match_verdict == "falls short"  # 70.25 % ± 4.5 points < 79.5 %
    pairs = analysis.paired(df).set_index("control")
    assert pairs.loc["random_reinit", "pairs"] == 2  # replicates 0 and 1; the errored ticket is no pair
    assert pairs.loc["random_reinit", "difference"] == pytest.approx(((0.70 - 0.79) + (0.705 - 0.81)) / 2)
    one = analysis.summary(df[df.trial_id != "t1"], tolerance=0.5).set_index("control").loc["ticket"]
    assert one.replicates == 1 and np.isnan(one.final_accuracy_std) and one.match_verdict == "falls short (one replicate)"


def test_a_published_point_is_compared_only_with_a_configuration_near_it():
    from tickets.config import Reference, ReferencePoint

    # Conv-2's published points: the dense anchor and a gain of 3.4 points at 4.6 % of the weights.
    refs = (Reference("Frankle & Carbin (2019)", "ticket", (ReferencePoint(100, gain=0), ReferencePoint(4.6, gain=3.4))),)
    df = _results([("ticket", 0.67, 0.8, False), ("ticket", 0.96, 0.75, False)])
    df.loc[1:, "weights_remaining_total"] = [0.33, 0.037]  # of all the network's weights
    df["early_stop_accuracy"], df["val_loss"] = df["test_accuracy"], 1.0
    s = analysis.summary(df, references=refs).set_index("sparsity")
    assert np.isnan(s.loc[0.67, "published_gap"])  # 33 % is three times from 100 % and seven from 4.6 %
    assert s.loc[0.96, "published_weights_remaining"] == 0.046  # 3.7 %: within x1.3
    assert s.loc[0.96, "published_gap"] == pytest.approx(0.75 - (0.80 + 0.034))


def test_rows_of_an_older_format_read_in_this_one(tmp_path):
    # Format 1 rows (before rows carried a format) predate mixed precision: they read as float32.
    row = {"sparsity": 0.5, "rewind_epoch": 0.0, "control": "ticket", "replicate": 0, "epoch": 1,
           "test_accuracy": 0.5, "trial_id": "a"}
    artifacts.append_metrics(tmp_path / "old", row)
    artifacts.append_metrics(tmp_path / "new", {**row, "trial_id": "b", "precision": "mixed_bfloat16",
                                                "format": artifacts.FORMAT})
    df = analysis.load(tmp_path).set_index("trial_id")
    assert df.loc["a", "precision"] == "float32" and df.loc["a", "format"] == 1
    assert df.loc["b", "precision"] == "mixed_bfloat16" and df.loc["b", "format"] == artifacts.FORMAT
    assert np.isnan(df.loc["a", "instability"]) and df.loc["a", "instability_batchnorm"] == ""


def test_every_plot_marks_a_cut_network():
    df = _results([("ticket", 0.5, 0.79, False), ("ticket", 0.9, 0.10, True)])
    df.loc[df.trial_id != "dense", "early_stop_epoch"] = 1.0
    for fig in (plots.accuracy_vs_weights(df), plots.early_stop_vs_weights(df)):
        assert "cut network (collapsed mask)" in fig.axes[0].get_legend_handles_labels()[1]
    cells = [t.get_text() for t in plots.heatmap(df).axes[0].texts]
    assert cells == ["79.0", "10.0\ncut"]


def test_plots_have_labels_legends_and_the_dense_band(experiment, tmp_path):
    df = analysis.load(experiment)
    fig = plots.accuracy_vs_weights(df)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "weights remaining (% of all kernel weights)"
    assert ax.get_ylabel() == "final test accuracy (%)"
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
    # It opens with what was run, before any number.
    header = text.split("Dense network:")[0]
    for what in ("**Model**: mobilenet_v2 (width 0.35, imagenet strides)", "1,024 train / 128 validation / 256 test",
                 "scope `lamp`; excluded (left dense): first_conv, classifier", "**Weights axis**",
                 "least validation loss on the 128 held-out training images"):
        assert what in header, (what, header)
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


def test_load_while_running_and_after_an_interrupt(interrupted):
    seen = interrupted.mid_run  # loaded (every 0.3 s, as the sweep wrote) until a trial was mid-run
    assert not seen.empty
    running = seen[seen.status == "incomplete"]
    assert running.epoch.min() >= 1 and running.test_accuracy.notna().all()

    after = interrupted.after  # interrupted: nothing reported is lost, the grid is not complete
    after_trials = after[after.control != "dense"]
    assert set(running.trial_id) <= set(after_trials.trial_id)
    statuses = after_trials.drop_duplicates("trial_id").status
    assert len(statuses) < 2 or (statuses != "finished").any()
    # The summary counts finished runs only: the interrupted trial's last epoch is not its result.
    s = analysis.summary(after)
    unfinished = s[~s.complete]
    assert len(unfinished) and unfinished.final_accuracy.isna().all() and (unfinished.replicates == 0).all()
    assert np.isfinite(s[s.complete].final_accuracy).all()
    # From the spec, every point of the grid, reported or not: two sparsities, one of them not complete.
    every = analysis.summary(after, expected=analysis.expected_runs(interrupted.exp))
    assert sorted(every.sparsity) == [0.5, 0.9] and not every.complete.all()
