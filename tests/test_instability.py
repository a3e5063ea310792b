"""Instability analysis on real Ray: twins, the interpolation path, resume, the table and the report.

The twin's bit-identity on the same seed and the path's end points on the library are in
test_training.py; bad input in test_config.py and test_sweep.py.
"""

import os
import signal

import numpy as np
from helpers import LOCAL, ONE_AT_A_TIME, cli, read_results, run, sets, wait_until

from tickets import analysis, artifacts, report


def test_twins_resume_without_retraining_the_finished_copy_and_the_path_ends_at_both_copies(tmp_path):
    exp = tmp_path / "smoke"
    p = cli(["smoke", "--storage-path", str(tmp_path), *LOCAL, *ONE_AT_A_TIME,
             *sets("dense.epochs=3", "search.sparsity=[0,0.9]", "search.rewind_epoch=[0]",
                   "search.control=[ticket,random_reinit]", "instability.enabled=true", "instability.points=6",
                   "data.synthetic_size={train: 640, test: 128}")])

    def twin_training():  # a twin two epochs in (its sibling's last checkpoint long registered by Tune)
        for path in exp.glob(f"*/{artifacts.twin_file(exp).name}"):
            rows = artifacts.read_metrics(path.parent)
            if rows and artifacts.load_twin(path)["step"] >= 2 * rows[0]["step"]:
                return path
        return None

    # Killed while a twin trains: its sibling copy has finished and been checkpointed.
    trial = wait_until(twin_training, process=p, what="a twin's second epoch").parent
    killed = artifacts.read_metrics(trial)[-1]["pid"]
    os.kill(killed, signal.SIGKILL)
    out, _ = p.communicate(timeout=400)
    assert p.returncode == 0, out[-3000:]
    assert "instability" in out  # the trial table shows each twin's barrier

    rows = artifacts.read_metrics(trial)
    before, after = [r for r in rows if r["pid"] == killed], [r for r in rows if r["pid"] != killed]
    assert [r["epoch"] for r in before] == [1, 2, 3] and "instability" not in before[-1]
    # Restarted: no epoch of the finished copy trained again, the twin continued from its second epoch.
    assert [r["epoch"] for r in after] == [3] and after[0]["twin_resumed_from_step"] == 2 * before[0]["step"]
    assert {k: v for k, v in after[0].items() if k in ("test_accuracy", "val_accuracy", "step")} == \
        {k: v for k, v in before[-1].items() if k in ("test_accuracy", "val_accuracy", "step")}

    df = read_results(exp)
    final = analysis.final_rows(df[df.control != "dense"])
    twins = final[final.instability.notna()]
    # Every ticket has a twin (the one at sparsity 0 is the dense network); no control has, not even at
    # sparsity 0, where a random reinit's twin once stood beside the dense one as a second "dense" row.
    assert sorted(zip(twins.control.astype(str), twins.sparsity)) == [("ticket", 0.0), ("ticket", 0.9)]
    assert set(twins.instability_batchnorm) == {"interpolate"}
    assert (twins.instability >= 0).all() and (twins.instability <= 1).all()
    curves = analysis.curves(exp)
    for r in twins.itertuples():
        curve = curves[curves.trial_id == r.trial_id].sort_values("alpha")
        assert list(curve.alpha) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        # The ends of the line are the two copies: their own final accuracies, exactly.
        assert (curve.test_accuracy.iloc[0], curve.test_accuracy.iloc[-1]) == (r.test_accuracy, r.twin_test_accuracy)
        assert curve.val_accuracy.iloc[0] == r.val_accuracy
        error = 1 - curve.test_accuracy
        assert r.instability == error.max() - (error.iloc[0] + error.iloc[-1]) / 2
    # The curve file needs numpy alone.
    table = np.genfromtxt(artifacts.curve_file(trial), delimiter=",", names=True)
    assert table.dtype.names == artifacts.CURVE_COLUMNS and len(table) == 6

    s = analysis.summary(df)
    assert s[s.instability.notna()].stable.isin([True, False]).all()
    written = report.write(exp)
    assert exp / "instability.png" in written
    text = (exp / "report.md").read_text()
    assert "## Instability: which rewind points are stable to SGD noise" in text
    assert "judged on the validation split" in text and "the dense network (sparsity 0)" in text


def test_an_imp_chain_trains_a_dense_baseline_at_level_0_and_reestimation_keeps_both_barriers(tmp_path):
    exp = tmp_path / "imp"
    code, out = run(["smoke", "--storage-path", str(tmp_path), "--name", "imp", *LOCAL,
                     *sets("dense.epochs=2", "search.rewind_epoch=[0]", "search.sparsity=[]", "pruning.mode=imp",
                           "pruning.levels=1", "search.control=[ticket]", "data.synthetic_size={train: 512, test: 128}",
                           "instability.enabled=true", "instability.points=3", "instability.batchnorm=reestimate",
                           "instability.batchnorm_batches=2")])
    assert code == 0, out[-3000:]
    final = analysis.final_rows(read_results(exp))
    chain = final[final.control == "ticket"].sort_values("level")
    # Level 0: the dense network rewound and retrained, beside its twin; level 1 still prunes the dense
    # run's own weights (its count is exactly the first level's).
    assert chain.level.tolist() == [0, 1] and chain.sparsity.iloc[0] == 0.0 and chain.instability.notna().all()
    assert (chain.interpolated_instability.notna() & chain.interpolated_val_instability.notna()).all()
    rows = artifacts.read_metrics(next(exp.glob(f"*/{artifacts.level_file(exp, 1).name}")).parent)
    n = rows[0]["prunable_weights"]
    assert [r["weights_remaining_count"] for r in rows] == [n, n - round(0.2 * n)]
    text = (exp / "report.md").read_text()
    assert "the dense network (level 0)" in text and "interpolated BatchNorm: test" in text
