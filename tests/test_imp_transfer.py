"""Iterative magnitude pruning chains and transfer tickets, on real Ray."""

import os
import re
import signal
import time

import numpy as np
from helpers import LOCAL, SMALL, cli, run, sets, wait_until

from tickets import analysis, artifacts, config, deployment, sweep


def test_imp_controls_train_the_ticket_chains_masks_and_fail_with_it_then_resume(tmp_path):
    exp = tmp_path / "imp"
    # Levels of several seconds each, so the kill lands while level 2 trains; no retries, so the
    # chain fails for good and its controls of later levels fail with it.
    args = ["smoke", "--storage-path", str(tmp_path), "--name", "imp", *LOCAL, *SMALL,
            *sets("data.synthetic_size={train: 1024, test: 128}", "pruning.mode=imp", "pruning.levels=3",
                  "search.sparsity=[]", "search.control=[ticket,random_reinit,random_prune]",
                  "resources.max_failures=0")]
    p = cli(args, start_new_session=True)

    def chain_dir():
        for level_1 in exp.glob("*/level_1.npz"):
            if artifacts.load_ticket(level_1)["info"]["control"] == "ticket":
                return level_1.parent
        return None

    def kill_mid_level_2():
        # Level files are written by the chain the moment a level ends, before the level is reported;
        # once its checkpoint is persisted, a second's grace lets Tune take the report, so the chain
        # resumes from level 1's checkpoint rather than from scratch.
        chain = chain_dir()
        if chain is None or not (chain / "checkpoint_000000").exists():
            return None
        time.sleep(1.0)
        if artifacts.level_file(chain, 2).exists():
            return None
        pid = artifacts.load_ticket(artifacts.level_file(chain, 1))["info"]["pid"]
        os.kill(pid, signal.SIGKILL)  # the chain's worker, mid level 2
        return pid

    killed = wait_until(kill_mid_level_2, process=p, what="level 1 checkpointed while level 2 trains")
    out, _ = p.communicate(timeout=400)
    assert killed and p.returncode == 1, out[-3000:]
    # Its controls of levels 2 and 3 fail with the chain's one-line error; level 1's trained.
    failed = [line for line in out.splitlines() if re.match(
        r"  0 +random_(reinit|prune) +0 +([23]) +error: RuntimeError: the ticket chain \(rewind epoch 0, "
        r"replicate 0\) failed before level \2: ", line)]
    assert len(failed) == 4, out[-3000:]
    assert re.search(r"^  0 +ticket +0 +- +error: ", out, re.M) and "5 trial(s) errored" in out

    code, out = run(["--resume", "--name", "imp", "--storage-path", str(tmp_path), *LOCAL])
    assert code == 0, out[-3000:]
    chain = chain_dir()
    rows = artifacts.read_metrics(chain)
    assert [r["level"] for r in rows] == [1, 2, 3]  # level 1 was not trained again
    assert [r["resumed_from_level"] for r in rows] == [0, 1, 1]
    n = rows[0]["prunable_weights"]
    expected, remaining = [], n
    for _ in range(3):
        remaining -= round(0.2 * remaining)
        expected.append(remaining)
    assert [r["weights_remaining_count"] for r in rows] == expected
    assert [round(r["weights_remaining_count"] / n, 3) for r in rows] == [0.8, 0.64, 0.512]

    masks = [artifacts.load_ticket(artifacts.level_file(chain, k))["mask"] for k in (1, 2, 3)]
    for outer, inner in zip(masks, masks[1:]):
        assert all(not (inner[k] & ~outer[k]).any() for k in outer)  # each level is a subset of the last
    assert sum(int(m.sum()) for m in masks[2].values()) == expected[2]

    # Each control at each level trained on the ticket chain's mask of that level (Frankle & Carbin):
    # random_reinit that very mask, random_prune a random one with its count in every tensor.
    controls = {}
    for trial in exp.glob("*/level_*.npz"):
        ticket = artifacts.load_ticket(trial)
        controls[ticket["info"]["control"], ticket["info"]["level"]] = ticket
    assert sorted(controls) == sorted((c, k) for c in ("ticket", "random_reinit", "random_prune") for k in (1, 2, 3))
    for k, mask in zip((1, 2, 3), masks):
        reinit, prune = controls["random_reinit", k], controls["random_prune", k]
        assert all(np.array_equal(reinit["mask"][name], m) for name, m in mask.items()), k
        assert all(int(prune["mask"][name].sum()) == int(m.sum()) for name, m in mask.items()), k
        assert sum(not np.array_equal(prune["mask"][name], m) for name, m in mask.items()) > len(mask) // 2, k
        start = controls["ticket", k]["start"]
        assert any(not np.array_equal(reinit["start"][name], start[name]) for name in mask)  # a new initialisation

    df = analysis.load(exp)
    assert df[df.control == "ticket"].level.tolist() == [1, 2, 3]
    s = analysis.summary(df)
    assert s.level.tolist() == [1, 2, 3] * 3 and (s.replicates == 1).all()
    by_control = s.set_index(["control", "level"]).weights_remaining
    assert all(by_control["random_reinit", k] == by_control["random_prune", k] == by_control["ticket", k]
               for k in (1, 2, 3))
    # The report's deployment table finds a winning level's ticket in the chain's level file.
    wins = s[s.control == "ticket"].iloc[[1]]
    assert deployment.winning_files(exp, wins, imp=True) == {
        f"ticket, level 2, rewind {wins.rewind_epoch.iloc[0]:g}": artifacts.level_file(chain, 2)}


def test_imp_and_sparsity_together_is_bad_input(tmp_path, capsys):
    code = sweep.main(["smoke", "--storage-path", str(tmp_path), "--set", "pruning.mode=imp",
                       "--set", "pruning.levels=2", "--set", "search.sparsity=[0.5]"])
    assert code == 2 and "search.sparsity: [0.5] conflicts with pruning.mode 'imp'" in capsys.readouterr().err


def test_per_group_rates_prune_the_output_layer_at_half_rate():
    spec = config.from_dict({"pruning": {"mode": "imp", "levels": 1, "rate": 0.2, "exclude": [],
                                         "rates": {"classifier": 0.1}}})
    from tickets import masks, models
    from tickets import ticket as ticket_lib

    model = models.build(spec.model, (32, 32, 3), 10, seed=0)
    weights = models.get_weights(model)
    ticket = ticket_lib.imp_level(spec, model, weights, None, weights)
    report = masks.report(ticket.mask)["layers"]
    assert report["predictions/kernel"]["pruned"] == round(0.1 * report["predictions/kernel"]["total"])
    rest = [v for k, v in report.items() if k != "predictions/kernel"]
    assert sum(v["pruned"] for v in rest) == round(0.2 * sum(v["total"] for v in rest))


def test_transfer_from_a_missing_trial_is_bad_input(tmp_path, capsys):
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / artifacts.SPEC_FILE).write_text(config.load("smoke").to_yaml())
    code = sweep.main(["smoke", "--storage-path", str(tmp_path), "--set", "search.control=[transfer]",
                       "--set", "transfer={from: source}"])
    assert code == 2
    assert "transfer.select:" in capsys.readouterr().err and not (tmp_path / "smoke").exists()
