"""Pruning at initialization on the grid: each method's mask, its ablations, trained from the dense
run's initialisation, on real Ray."""

import numpy as np
from helpers import LOCAL, ONE_AT_A_TIME, run, sets

from tickets import artifacts, config


def test_methods_prune_the_initialisation_exactly_and_their_ablations_keep_what_they_should(tmp_path):
    exp = tmp_path / "init"
    controls = ["ticket", "magnitude_init", "snip", "grasp", "synflow", "synflow+shuffle", "snip+reinit"]
    code, out = run(["smoke", "--storage-path", str(tmp_path), "--name", "init", *LOCAL, *ONE_AT_A_TIME,
                     *sets("model.arch=conv2", "pruning.exclude=[]", "pruning.scope=global", "dense.epochs=2",
                           "data.synthetic_size={train: 512, test: 128}", "search.sparsity=[0.98]",
                           "search.rewind_epoch=[0,1]", f"search.control=[{','.join(controls)}]")])
    assert code == 0, out[-3000:]
    # The methods train from initialisation: rewind epoch 0 is their one point.
    assert "grid: 8 trials = " in out and "less magnitude_init, snip, grasp, synflow" in out, out[-3000:]
    tickets = {}
    for path in exp.glob(f"*/{artifacts.TICKET_FILE}"):
        t = artifacts.load_ticket(path, parts=("mask", "start"))
        tickets[t["info"]["control"], t["info"]["rewind_epoch"]] = t
    assert sorted(tickets) == sorted([(c, 0.0) for c in controls] + [("ticket", 1.0)])
    init = artifacts.load_weights(artifacts.snapshot_file(exp / artifacts.DENSE_DIR, 0))
    total = sum(m.size for m in tickets["ticket", 0.0]["mask"].values())
    for (control, _), t in tickets.items():
        mask = t["mask"]
        assert sum(int(m.sum()) for m in mask.values()) == total - round(0.98 * total), control  # exact
        method, ablation = config.split_control(control)
        if method != "ticket" and ablation != "reinit":  # the initialisation, masked
            assert all(np.array_equal(t["start"][k], np.where(m, init[k], 0)) for k, m in mask.items()), control
    # Every method chose its own per-layer counts (scope global), and differs from the others.
    counts = {c: [int(m.sum()) for m in tickets[c, 0.0]["mask"].values()] for c in controls}
    assert len({tuple(v) for c, v in counts.items() if c in config.INIT_METHODS}) == 4, counts
    assert counts["synflow+shuffle"] == counts["synflow"]  # shuffled within each tensor
    assert not all(np.array_equal(tickets["synflow+shuffle", 0.0]["mask"][k], m)
                   for k, m in tickets["synflow", 0.0]["mask"].items())
    snip, reinit = tickets["snip", 0.0], tickets["snip+reinit", 0.0]
    assert all(np.array_equal(reinit["mask"][k], m) for k, m in snip["mask"].items())  # the same mask...
    assert not all(np.array_equal(reinit["start"][k], init[k] * m) for k, m in snip["mask"].items())  # ...anew
    assert min(counts["synflow"]) > 0, counts  # SynFlow empties no layer
