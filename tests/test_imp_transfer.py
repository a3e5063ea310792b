"""Iterative magnitude pruning chains and transfer tickets, on real Ray."""

import json
import os
import signal
import time

import numpy as np
from helpers import SMALL, cli, run, ticket_files, wait_until

from tickets import analysis, artifacts, config, sweep


def test_imp_chain_prunes_exact_counts_nests_masks_and_resumes_after_a_kill(tmp_path):
    exp = tmp_path / "imp"
    # Levels of several seconds each, so the kill lands while level 2 trains.
    p = cli(["smoke", "--storage-path", str(tmp_path), "--name", "imp", "--num-cpus", "2", *SMALL,
             "--set", "data.synthetic_size={train: 3072, test: 256}",
             "--set", "pruning.mode=imp", "--set", "pruning.levels=3", "--set", "search.sparsity=[]"],
            start_new_session=True)

    def kill_mid_level_2():
        # Level files are written by the trial itself the moment a level ends, before the level is
        # reported; once its checkpoint is persisted, a second's grace lets Tune take the report, so
        # the chain restarts from level 1's checkpoint rather than from scratch.
        for trial in exp.glob("*/"):
            level_1, level_2 = artifacts.level_file(trial, 1), artifacts.level_file(trial, 2)
            if level_1.exists() and (trial / "checkpoint_000000").exists() and not level_2.exists():
                time.sleep(1.0)
                if level_2.exists():
                    continue
                pid = artifacts.load_ticket(level_1)["info"]["pid"]
                os.kill(pid, signal.SIGKILL)  # the trial's worker, mid level 2
                return pid
        return None

    killed = wait_until(kill_mid_level_2, process=p, what="level 1 checkpointed while level 2 trains")
    out, _ = p.communicate(timeout=400)
    assert killed and p.returncode == 0, out[-3000:]

    (trial,) = [d.parent for d in exp.glob("*/params.json")]
    rows = artifacts.read_metrics(trial)
    assert [r["level"] for r in rows] == [1, 2, 3]  # level 1 was not trained again
    assert [r["resumed_from_level"] for r in rows] == [0, 1, 1]
    n = rows[0]["prunable_weights"]
    expected, remaining = [], n
    for _ in range(3):
        remaining -= round(0.2 * remaining)
        expected.append(remaining)
    assert [r["weights_remaining_count"] for r in rows] == expected
    assert [round(r["weights_remaining_count"] / n, 3) for r in rows] == [0.8, 0.64, 0.512]

    masks = [artifacts.load_ticket(artifacts.level_file(trial, k))["mask"] for k in (1, 2, 3)]
    for outer, inner in zip(masks, masks[1:]):
        assert all(not (inner[k] & ~outer[k]).any() for k in outer)  # each level is a subset of the last
    assert sum(int(m.sum()) for m in masks[2].values()) == expected[2]

    df = analysis.load(exp)
    assert df[df.control == "ticket"].level.tolist() == [1, 2, 3]
    assert analysis.summary(df).level.tolist() == [1, 2, 3]


def test_imp_and_sparsity_together_is_bad_input(tmp_path, capsys):
    code = sweep.main(["smoke", "--storage-path", str(tmp_path), "--set", "pruning.mode=imp",
                       "--set", "pruning.levels=2", "--set", "search.sparsity=[0.5]"])
    assert code == 2 and "search.sparsity: [0.5] conflicts with pruning.mode 'imp'" in capsys.readouterr().err


def test_per_group_rates_prune_the_output_layer_at_half_rate():
    spec = config.from_dict({"pruning": {"mode": "imp", "levels": 1, "rate": 0.2, "exclude": [],
                                         "rates": {"classifier": 0.1}}})
    from tickets import masks, models, training

    model = models.build(spec.model, (32, 32, 3), 10, seed=0)
    weights = models.get_weights(model)
    ticket = training.imp_level(spec, model, weights, None, weights, 1, "ticket", 0)
    report = masks.report(ticket.mask)["layers"]
    assert report["predictions/kernel"]["pruned"] == round(0.1 * report["predictions/kernel"]["total"])
    rest = [v for k, v in report.items() if k != "predictions/kernel"]
    assert sum(v["pruned"] for v in rest) == round(0.2 * sum(v["total"] for v in rest))


def test_transfer_trains_a_ticket_from_another_experiment_on_the_other_half(tmp_path):
    code, out = run(["smoke", "--storage-path", str(tmp_path), "--name", "source", "--num-cpus", "2", *SMALL,
                     "--set", "data.half=a", "--set", "search.sparsity=[0.8]"])
    assert code == 0, out[-3000:]
    source_ticket = artifacts.load_ticket(ticket_files(tmp_path / "source")[0])

    # The target has 5 classes: the classifier cannot be reused, so it is re-initialised and left dense.
    code, out = run(["smoke", "--storage-path", str(tmp_path), "--name", "target", "--num-cpus", "2", *SMALL,
                     "--set", "data.half=b", "--set", "data.classes=5", "--set", "search.sparsity=[0.8]",
                     "--set", "search.control=[ticket,transfer]",
                     "--set", "transfer={from: source, select: {control: ticket}}"])
    assert code == 0, out[-3000:]
    df = analysis.load(tmp_path / "target")
    transfer = df[df.control == "transfer"]
    assert len(transfer) == 2 and transfer.classifier_reinitialised.all()
    assert not df[df.control == "ticket"].classifier_reinitialised.any()
    (trial,) = [f.parent for f in (tmp_path / "target").glob("*/params.json")
                if json.loads(f.read_text())["control"] == "transfer"]
    ticket = artifacts.load_ticket(trial / artifacts.TICKET_FILE)
    for name, m in ticket["mask"].items():
        assert np.array_equal(m, source_ticket["mask"][name])
        assert np.array_equal(ticket["start"][name], source_ticket["start"][name])


def test_transfer_from_a_missing_trial_is_bad_input(tmp_path, capsys):
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / artifacts.SPEC_FILE).write_text(config.load("smoke").to_yaml())
    code = sweep.main(["smoke", "--storage-path", str(tmp_path), "--set", "search.control=[transfer]",
                       "--set", "transfer={from: source}"])
    assert code == 2
    assert "transfer.select:" in capsys.readouterr().err and not (tmp_path / "smoke").exists()
