"""`python -m tickets.bench --tiny`: every figure's code runs and lands in the JSON."""

import json
import subprocess

from helpers import DATA_DIR, cli


def test_bench_tiny_runs_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    proc = cli(["--tiny", "--out", str(out)], module="tickets.bench", stderr=subprocess.PIPE, cwd=tmp_path,
               env={"TF_CPP_MIN_LOG_LEVEL": "3", "TICKETS_DATA_DIR": str(DATA_DIR)})
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    results = json.loads(out.read_text())
    figures = results["figures"]
    assert sorted(figures, key=int) == [str(n) for n in range(1, 13)]
    assert figures["1"]["dense_images_per_s"] > 0 and set(figures["1"]["masked"]) == {"0.95"}
    # What does not depend on the machine: one dense run per sweep, exactly (the naive design one per trial).
    assert figures["2"]["measured"] == figures["2"]["dense_runs"] == 1 and figures["2"]["verdict"] == "meets"
    assert figures["2"]["naive_dense_runs"] == figures["2"]["trials"] == 1
    # Figure 3 needs trials side by side: with --tiny's one grid point it is not measured (never a made-up 1.0).
    assert figures["3"]["measured"] is None and figures["3"]["verdict"] == "not measured"
    assert figures["3"]["trial_phase_s"] > 0 and figures["3"]["machine_ceiling"] > 0  # the ceiling is measured
    assert 0 < figures["4"]["ratio"] and figures["4"]["fresh_worker_startup_s"] > 0
    assert figures["4"]["projected"]["trial_s"] > 0  # projected from figure 1's throughput
    assert figures["5"]["errors"] == 0 and figures["5"]["points"] == 8
    assert figures["5"]["ratio"] == figures["5"]["seconds"] / 8 < 0.2 * 25  # under its bound, with start-up slack
    for number, fig in figures.items():  # every figure states its goal, its verdict and what it measured
        assert fig["goal"].split()[0] in (">=", "==", "<", "<=") and fig["verdict"] and fig["detail"], number
    assert "skipped" in figures["7"] or figures["7"]["ratio"] > 0
    # The sweep and the hand-written loop trained the same grid, and both learned (chance is 0.10).
    fig8 = figures["8"]
    if "skipped" not in fig8:  # it needs the real CIFAR-10 shards
        assert fig8["ratio"] > 0 and fig8["machine_floor"] > 0 and sorted(fig8["sweep_test_accuracy"]) == sorted(fig8["loop_test_accuracy"])
        assert fig8["loop_test_accuracy"]["dense"] > 0.15 and fig8["sweep_test_accuracy"]["dense"] > 0.15
    assert figures["9"]["ratio"] > 0 and [figures["9"]["runs"][r]["replicas"] for r in ("1", "2")] == [1, 2]
    # Streamed shards: both crops measured; memory at two sizes 4x apart; 12 needs a GPU.
    assert figures["10"]["fused_images_per_s"] > 0 and figures["10"]["decode_then_crop_images_per_s"] > 0
    assert figures["11"]["images"][1] == 4 * figures["11"]["images"][0] and figures["11"]["peak_rss_mb"][0] > 0
    assert "skipped" in figures["12"] or figures["12"]["measured"] > 0
    for line in ("1. masked / dense step", "5. scheduler s/trial", "7. GPU masked / dense", "10. streamed img/s"):
        assert line in stdout


def test_bench_rejects_unknown_figures(tmp_path):
    proc = cli(["--only", "13"], module="tickets.bench", stderr=subprocess.PIPE, cwd=tmp_path)
    _, stderr = proc.communicate()
    assert proc.returncode == 2 and "error: --only: '13' names figures outside 1..12" in stderr
