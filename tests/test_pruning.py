"""Which kernels a spec prunes at which rates, and the collapse check, on real model layouts."""

import numpy as np
import pytest

from tickets import config, data, models, pruning, training
from tickets import runtime as runtime_lib


def _layout(arch="mobilenet_v2", shape=(32, 32, 3)):
    return pruning.Layout.of(models.layout(models.build(config.ModelSpec(arch=arch), shape, 10, seed=0)))


def test_groups_match_the_catalogue_in_config():
    for arch, groups in config.ARCH_GROUPS.items():
        shape = (28, 28, 1) if arch == "lenet_300_100" else (32, 32, 3)
        layout = _layout(arch, shape)
        assert {g for g, members in layout.groups.items() if members} == set(groups), arch


def test_rates_take_the_most_specific_group():
    layout = _layout("conv2")
    spec = config.from_dict({"model": {"arch": "conv2"}, "pruning": {
        "exclude": [], "rates": {"conv": 0.1, "first_conv": 0.05, "classifier": 0.1}}, "search": {"level": [1]}})
    assert pruning.own_rates(spec.pruning, layout) == {
        "conv1/kernel": 0.05, "conv2/kernel": 0.1, "predictions/kernel": 0.1}
    assert pruning.prunable(spec.pruning, layout) == list(layout.names)
    spec = config.from_dict({"model": {"arch": "conv2"}, "pruning": {"exclude": ["conv"]}})
    assert pruning.prunable(spec.pruning, layout) == ["fc1/kernel", "fc2/kernel", "predictions/kernel"]


def test_a_level_grid_point_prunes_each_kind_at_its_paper_rate():
    layout = _layout("conv2")
    weights = models.get_weights(models.build(config.ModelSpec(arch="conv2"), (32, 32, 3), 10, seed=0))
    spec = config.load("conv2-cifar10", ["pruning.mode=oneshot", "search.level=[3]"])
    mask, _ = pruning.oneshot_mask(spec.pruning, layout, weights, level=3)
    for name, rate in (("conv1/kernel", 0.1), ("fc1/kernel", 0.2), ("predictions/kernel", 0.1)):
        n = weights[name].size
        for _ in range(3):
            n -= round(rate * n)
        assert int(mask[name].sum()) == n, name


def test_collapse_names_an_emptied_layer_and_an_output_without_weights():
    layout = _layout("conv2")
    whole = {n: np.ones(layout.shapes[n], bool) for n in layout.names}
    assert pruning.collapsed(whole, layout) == {}

    mask = {n: m.copy() for n, m in whole.items()}
    mask["predictions/kernel"][:, 3] = False  # class 3's logit no longer depends on the input
    assert pruning.collapsed(mask, layout) == {"predictions/kernel": "1 of 10 outputs receive no signal from the input"}

    mask["fc2/kernel"][:] = False
    assert pruning.collapsed(mask, layout) == {
        "fc2/kernel": "no weights left (0 of 65,536)",
        "predictions/kernel": "10 of 10 outputs receive no signal from the input"}
    table = pruning.density_table({"s=0.9": mask}, layout)
    assert table[0].split()[:3] == ["layer", "weights", "s=0.9"]
    assert any(line.startswith("fc2/kernel") and line.endswith("0.00!") for line in table)


def test_a_layer_whose_inputs_are_all_cut_passes_no_signal_though_it_keeps_weights():
    layout = _layout("conv2")
    mask = {n: np.ones(layout.shapes[n], bool) for n in layout.names if n != "predictions/kernel"}
    mask["conv1/kernel"][..., 1:] = False  # conv1 keeps one output channel ...
    mask["conv2/kernel"][:, :, 0, :] = False  # ... which conv2 no longer reads
    assert pruning.collapsed(mask, layout) == {  # the cut, not every layer after it
        "conv2/kernel": "no signal passes (its kept weights connect none of 1 live inputs)",
        "predictions/kernel": "10 of 10 outputs receive no signal from the input"}
    live = pruning.live_outputs(mask, layout)
    assert live["conv1/kernel"].tolist() == [True] + [False] * 63


def test_an_emptied_residual_branch_is_skipped_not_a_cut():
    layout = _layout()
    mask = {n: np.ones(layout.shapes[n], bool) for n in layout.names}
    mask["block_2_project/kernel"][:] = False  # block_2 adds to block_1's output: the skip carries the signal
    health = pruning.check(mask, layout)
    assert health.cuts == {} and pruning.collapsed(mask, layout) == {}
    assert list(health.branches) == ["block_2_project/kernel"]
    assert health.branches["block_2_project/kernel"].startswith("no weights left (0 of 384); a residual connection")
    mask["block_4_expand/kernel"][:] = False  # inside block_4's branch: its depthwise and project see no input
    assert list(pruning.check(mask, layout).branches) == ["block_2_project/kernel", "block_4_expand/kernel"]
    table = pruning.density_table({"p": mask}, layout)
    assert any(line.startswith("block_4_expand/kernel") and line.endswith("0.00~") for line in table)

    mask["block_1_project/kernel"][:] = False  # no residual around block_1: everything after it is cut
    health = pruning.check(mask, layout)
    assert health.cuts == {  # after the cut no skip carries anything: emptied kernels there are cuts too
        "block_1_project/kernel": "no weights left (0 of 384)", "block_2_project/kernel": "no weights left (0 of 384)",
        "block_4_expand/kernel": "no weights left (0 of 1,536)",
        "predictions/kernel": "10 of 10 outputs receive no signal from the input"}
    assert health.branches == {}


def test_the_narrowest_layer_and_the_share_of_every_kernel_weight_kept():
    layout = _layout()
    whole = {n: np.ones(layout.shapes[n], bool) for n in layout.names}
    assert pruning.check(whole, layout).narrowest[1:] == (8, 8)  # width 0.35: the 8-channel projections
    mask = {n: m.copy() for n, m in whole.items() if n not in ("Conv1/kernel", "predictions/kernel")}
    mask["block_5_project/kernel"][..., 3:] = False  # 3 of its 16 output channels keep weights
    health = pruning.check(mask, layout)
    assert health.cuts == {} and health.narrowest == ("block_5_project/kernel", 3, 16)
    assert health.near_collapse(3) and not health.near_collapse(2)
    assert health.narrowest_text() == "block_5_project/kernel (3 of 16 live)"
    kept, total = pruning.kept_total(mask, layout)
    assert total == sum(int(np.prod(s)) for s in layout.shapes.values())
    pruned = int((~mask["block_5_project/kernel"]).sum())
    assert kept == total - pruned  # the excluded kernels (absent from the mask) count as kept


@pytest.fixture(scope="module")
def mobilenet_dense():
    """A short real dense run of MobileNetV2 (synthetic data, 2 epochs)."""
    runtime_lib.configure(2)
    spec = config.load("smoke", ["dense.epochs=2", "data.synthetic_size={train: 512, test: 128}"])
    trajectory = training.train_dense(spec, data.load(spec.data, spec.seed))
    return spec, pruning.Layout.of(trajectory.layout), trajectory.final


@pytest.mark.parametrize("sparsity", [0.9, 0.95, 0.98])
def test_global_pruning_of_mobilenet_v2_collapses_and_lamp_and_erk_do_not(mobilenet_dense, sparsity):
    spec, layout, final = mobilenet_dense
    cut = {}
    for scope in ("global", "lamp", "erk"):
        p = config.from_dict({**spec.to_dict(), "pruning": {**spec.to_dict()["pruning"], "scope": scope}}).pruning
        mask, _ = pruning.oneshot_mask(p, layout, final, sparsity=sparsity)
        n = sum(m.size for m in mask.values())
        assert sum(int((~m).sum()) for m in mask.values()) == round(sparsity * n)
        cut[scope] = pruning.collapsed(mask, layout)
    assert "Conv_1/kernel" in cut["global"]  # MobileNetV2's last 1x1 conv, 37 % of its prunable weights
    assert cut["lamp"] == {} and cut["erk"] == {}
