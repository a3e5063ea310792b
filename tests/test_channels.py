"""Channel tickets (`pruning.granularity: channel`): which channels are removable, that a mask removes
them whole to the asked-for sparsity, its controls and IMP levels, the FLOPs it leaves, and that the
physically thinner model computes what the masked one does."""

import dataclasses

import numpy as np
import pytest

from tickets import channels, config, export, models, pruning
from tickets import ticket as ticket_lib


def _model(arch="mobilenet_v2", **model):
    spec = config.ModelSpec(arch=arch, width=0.35, **model) if arch == "mobilenet_v2" else config.ModelSpec(arch=arch)
    return models.build(spec, (32, 32, 3), 10, seed=0)


def _weights(model, seed=0):
    """The model's weights with distinct BatchNorm scales and kernels: a fresh model's gammas all tie at 1."""
    rng = np.random.default_rng(seed)
    return {k: v + rng.normal(0, 0.2 if k.endswith("gamma") else 0.02, v.shape).astype(v.dtype)
            for k, v in models.get_weights(model).items()}


def _spec(**pruning_fields):
    return config.PruningSpec(**{"granularity": "channel", "scope": "layerwise", **pruning_fields})


def _removed_whole(mask, group, shapes) -> bool:
    """Every weight of each channel the consumers no longer read is masked, in every kernel it touches."""
    gone = ~channels.live(mask, group)
    for name, slices in channels._members(group, shapes):
        for c in np.flatnonzero(gone):
            if mask[name][slices[c]].any():
                return False
    return True


def test_mobilenet_v2_prunes_hidden_channels_and_keeps_the_residual_streams():
    model = _model()
    lay = pruning.Layout.of(models.layout(model))
    groups = channels.prunable(lay, pruning.prunable(_spec(), lay))
    hidden = [g for g in groups if g.through]
    # Every block with an expand convolution: its expand output, its depthwise channel, its projection's input,
    # scored by the BatchNorm after the depthwise convolution.
    assert [g.producer for g in hidden] == [f"block_{i}_expand/kernel" for i in range(1, 17)]
    assert all(g.through == (f"block_{i}_depthwise/kernel",) and g.consumers == (f"block_{i}_project/kernel",)
               and g.scale == f"block_{i}_depthwise_BN/gamma" for i, g in enumerate(hidden, 1))
    # The two stream widths no Add joins (block 0's and block 16's outputs); the stem and Conv_1 (whose
    # consumer is the classifier) follow the exclusions; no projection feeding an Add is a group.
    assert [g.producer for g in groups if not g.through] == ["expanded_conv_project/kernel", "block_16_project/kernel"]
    everything = channels.prunable(lay, lay.names)
    assert {g.producer for g in everything} - {g.producer for g in groups} == {"Conv1/kernel", "Conv_1/kernel"}
    joined = [n for n in lay.names if len(lay.inputs[n]) > 1]
    assert joined and not any(set(g.consumers) & set(joined) for g in everything)


def test_conv_nets_prune_filters_and_units_and_the_flatten_repeats_channels():
    lay = pruning.Layout.of(models.layout(_model("conv2")))
    groups = {g.producer: g for g in channels.prunable(lay, pruning.prunable(_spec(exclude=()), lay))}
    assert list(groups) == ["conv1/kernel", "conv2/kernel", "fc1/kernel", "fc2/kernel"]
    assert groups["conv2/kernel"].consumers == ("fc1/kernel",) and groups["conv2/kernel"].scale is None
    mask, _ = pruning.oneshot_mask(_spec(exclude=()), lay, _weights(_model("conv2")), sparsity=0.5)
    for g in groups.values():
        assert _removed_whole(mask, g, lay.shapes)
    # fc1 reads conv2's 64 channels at each of 16 x 16 positions (channels last): a removed channel is
    # every 64th row of fc1's kernel, all of them.
    gone = np.flatnonzero(~channels.live(mask, groups["conv2/kernel"]))
    assert gone.size and not mask["fc1/kernel"][gone[0]::64].any() and not mask["conv2/kernel"][..., gone].any()


@pytest.mark.parametrize("scope", ["global", "lamp", "layerwise"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.75])
def test_a_channel_mask_removes_whole_channels_to_the_sparsity(scope, sparsity):
    model = _model()
    lay, weights = pruning.Layout.of(models.layout(model)), _weights(model)
    spec = _spec(scope=scope)
    mask, threshold = pruning.oneshot_mask(spec, lay, weights, sparsity=sparsity)
    again, _ = pruning.oneshot_mask(spec, lay, weights, sparsity=sparsity)
    assert all(np.array_equal(mask[n], m) for n, m in again.items())
    groups = channels.prunable(lay, pruning.prunable(spec, lay))
    total = sum(m.size for m in mask.values())
    pruned = total - sum(int(m.sum()) for m in mask.values())
    # At least round(s * N) pruned, and not a whole channel of the costliest group more.
    biggest = max(sum(int(np.prod(lay.shapes[n])) for n in g.kernels) // g.size for g in groups)
    assert round(sparsity * total) <= pruned < round(sparsity * total) + biggest
    assert threshold > 0
    for g in groups:
        assert _removed_whole(mask, g, lay.shapes), g.producer
        assert channels.live(mask, g).sum() >= min(g.size, spec.min_live_channels), g.producer
    # Kernels outside every group keep every weight (the stem, the classifier are not even in the mask).
    touched = {n for g in groups for n in g.kernels}
    assert all(mask[n].all() for n in mask if n not in touched)
    assert not pruning.check(mask, lay).cuts
    if scope == "layerwise":  # every group loses the same share, within a channel or two
        shares = [1 - channels.live(mask, g).mean() for g in groups if g.size >= 24]
        assert max(shares) - min(shares) < 0.1, shares


def test_the_scope_decides_which_groups_lose_channels():
    model = _model()
    lay, weights = pruning.Layout.of(models.layout(model)), _weights(model)
    # Shrink one block's BatchNorm scales: one ranking of all channels (global) takes that block first.
    weights["block_5_depthwise_BN/gamma"] = weights["block_5_depthwise_BN/gamma"] * 0.01
    group = next(g for g in channels.groups(lay) if g.producer == "block_5_expand/kernel")
    shares = {}
    for scope in ("global", "layerwise"):
        mask, _ = pruning.oneshot_mask(_spec(scope=scope), lay, weights, sparsity=0.3)
        shares[scope] = 1 - channels.live(mask, group).mean()
    assert shares["global"] > 0.8 and shares["layerwise"] < 0.5, shares


def test_a_sparsity_the_channels_cannot_reach_is_a_clear_error():
    model = _model()
    lay, weights = pruning.Layout.of(models.layout(model)), _weights(model)
    with pytest.raises(ValueError, match=r"removing every channel above pruning.min_live_channels \(4 per group\) prunes"):
        pruning.oneshot_mask(_spec(), lay, weights, sparsity=0.99)
    with pytest.raises(ValueError, match="no removable channels"):
        pruning.oneshot_mask(_spec(exclude=("conv", "classifier")), lay, weights, sparsity=0.1)


def test_imp_levels_remove_more_channels_of_the_survivors():
    model = _model()
    lay, weights = pruning.Layout.of(models.layout(model)), _weights(model)
    spec = _spec(mode="imp", levels=3, rate=0.2)
    first, _ = pruning.imp_mask(spec, lay, weights, None)
    second, _ = pruning.imp_mask(spec, lay, _weights(model, seed=1), first)
    kept = [sum(int(m.sum()) for m in mask.values()) for mask in (first, second)]
    total = sum(m.size for m in first.values())
    assert all(not second[n][~first[n]].any() for n in first)  # a subset of the level before
    assert kept[0] <= round(0.8 * total) and kept[1] <= kept[0] - round(0.2 * kept[0])
    assert kept[1] > 0.6 * kept[0]


def test_random_prune_of_a_channel_ticket_keeps_the_channel_counts_of_every_group():
    model = _model()
    spec = config.from_dict({"model": {"arch": "mobilenet_v2", "width": 0.35},
                             "pruning": {"granularity": "channel", "scope": "layerwise"}})
    lay, weights = pruning.Layout.of(models.layout(model)), _weights(model)
    mask, _ = pruning.oneshot_mask(spec.pruning, lay, weights, sparsity=0.5)
    shuffled = ticket_lib.control_ticket(spec, model, mask, None, weights, "random_prune", 0).mask
    again = ticket_lib.control_ticket(spec, model, mask, None, weights, "random_prune", 0).mask
    for g in channels.prunable(lay, pruning.prunable(spec.pruning, lay)):
        assert channels.live(shuffled, g).sum() == channels.live(mask, g).sum()
        assert _removed_whole(shuffled, g, lay.shapes)
    assert any(not np.array_equal(shuffled[n], mask[n]) for n in mask)
    assert all(np.array_equal(shuffled[n], again[n]) for n in mask)  # seeded: the replicate's stream


def test_flops_count_what_a_thinner_network_computes():
    model = _model()
    lay, weights = pruning.Layout.of(models.layout(model)), _weights(model)
    ones = {n: np.ones(lay.shapes[n], bool) for n in pruning.prunable(_spec(), lay)}
    thin, nonzero, dense = channels.flops(ones, lay)
    assert thin == nonzero == dense > 1e6
    mask, _ = pruning.oneshot_mask(_spec(), lay, weights, sparsity=0.5)
    thin, nonzero, dense = channels.flops(mask, lay)
    assert nonzero <= thin < 0.7 * dense
    # An unstructured mask removes (nearly) no channel: its weights are zeros a dense kernel still multiplies.
    unstructured, _ = pruning.oneshot_mask(config.PruningSpec(), lay, weights, sparsity=0.5)
    thin_u, nonzero_u, _ = channels.flops(unstructured, lay)
    assert thin_u > 0.95 * dense and nonzero_u < 0.85 * dense
    old = dataclasses.replace(lay, positions=None)  # a dense run's manifest from before positions were kept
    assert all(np.isnan(v) for v in channels.flops(mask, old))


@pytest.mark.parametrize("arch", ["mobilenet_v2", "conv2", "lenet_300_100"])
def test_the_thinner_model_computes_what_the_masked_one_does(arch):
    model = _model(arch, **({"strides": "cifar"} if arch == "mobilenet_v2" else {}))
    lay, weights = pruning.Layout.of(models.layout(model)), _weights(model)
    spec = _spec(exclude=("first_conv", "classifier") if arch == "mobilenet_v2" else ())
    mask, _ = pruning.oneshot_mask(spec, lay, weights, sparsity=0.6)
    models.set_weights(model, {k: v * mask[k] if k in mask else v for k, v in weights.items()})
    thin, removed = export.thinner(model, mask)
    groups = channels.prunable(lay, pruning.prunable(spec, lay))
    assert removed == sum(int((~channels.live(mask, g)).sum()) for g in groups) > 0
    assert thin.count_params() < 0.75 * model.count_params()
    assert not any("tickets" in type(layer).__module__ for layer in thin.layers)
    x = np.random.default_rng(1).uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32)
    a, b = np.asarray(model(x, training=False)), np.asarray(thin(x, training=False))
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    assert (a.argmax(1) == b.argmax(1)).all()


def test_channel_granularity_is_checked_and_weight_granularity_keeps_the_hashes():
    base = {"model": {"arch": "mobilenet_v2"}}
    spec = config.from_dict(base)
    assert "granularity" not in spec._hashed()["pruning"]  # specs from before the field hash as they did
    channel = config.from_dict({**base, "pruning": {"granularity": "channel", "scope": "layerwise"}})
    assert channel.spec_hash() != spec.spec_hash() and channel.dense_hash() == spec.dense_hash()
    # min_live_channels is a warning's threshold for weight tickets, but channel tickets' floor: their masks.
    assert config.from_dict({**base, "pruning": {"min_live_channels": 8}}).spec_hash() == spec.spec_hash()
    assert config.from_dict({**base, "pruning": {"granularity": "channel", "scope": "layerwise",
                                                 "min_live_channels": 8}}).spec_hash() != channel.spec_hash()
    bad = [({"granularity": "filter"}, {}, r"^pruning.granularity: 'filter' is not one of"),
           ({"granularity": "channel", "scope": "erk"}, {}, r"^pruning.scope: 'erk' does not allocate channels"),
           ({"granularity": "channel", "rates": {"conv": 0.1}}, {"level": [1]}, r"^pruning.rates: "),
           ({"granularity": "channel"}, {"control": ["ticket", "snip"], "rewind_epoch": [0]},
            r"^search.control\[1\]: 'snip' prunes at initialization, where channels do not rank"),
           ({"granularity": "channel"}, {"control": ["ticket", "magnitude_init"], "rewind_epoch": [0]},
            r"every BatchNorm gamma is 1")]
    for pruning_fields, search, message in bad:
        with pytest.raises(config.SpecError, match=message):
            config.from_dict({**base, "pruning": pruning_fields, "search": search})


def test_a_sparsity_beyond_whole_channels_is_one_line_exit_2_before_anything_starts(tmp_path, capsys):
    from tickets import sweep

    args = ["smoke", "--storage-path", str(tmp_path), "--set", "pruning.granularity=channel",
            "--set", "search.sparsity=[0.5,0.99]"]
    assert sweep.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: search.sparsity[1]: 0.99 is beyond whole channels: keeping "
                          "pruning.min_live_channels (4) in every channel group, they remove at most 0.9")
    assert err.count("\n") == 1 and not list(tmp_path.iterdir())


def test_a_lenet_ticket_exports_from_its_spec(tmp_path):
    # The model is rebuilt from the spec and the ticket's weights (RGB images; LeNet's first kernel reads
    # every pixel of them); a spec that does not fit the ticket is bad input, not a traceback.
    spec = config.from_dict({"model": {"arch": "lenet_300_100"}, "data": {"dataset": "synthetic"},
                             "pruning": {"exclude": ["classifier"]}})
    model = models.build(spec.model, (32, 32, 3), 10, seed=0)
    lay, weights = pruning.Layout.of(models.layout(model)), _weights(model)
    mask, _ = pruning.oneshot_mask(spec.pruning, lay, weights, sparsity=0.8)
    from tickets import artifacts

    artifacts.save_ticket(tmp_path / "ticket.npz", mask, weights, weights, {})
    done = export.export(tmp_path / "ticket.npz", "keras", tmp_path / "t.keras", spec=spec)
    assert done.max_logit_error < 1e-5 and done.params == model.count_params()
    other = config.from_dict({"model": {"arch": "conv2"}, "data": {"dataset": "synthetic"}})
    with pytest.raises(export.UsageError, match=r"^source: .*ticket.npz does not fit the spec's model"):
        export.export(tmp_path / "ticket.npz", "keras", tmp_path / "u.keras", spec=other)
    assert not (tmp_path / "u.keras").exists()


def test_a_dense_run_from_before_channel_tickets_is_not_checked_with_the_wrong_scores(capsys):
    spec = config.from_dict({"model": {"arch": "mobilenet_v2", "width": 0.35},
                             "pruning": {"granularity": "channel", "scope": "layerwise"}})
    model = _model()
    plain = models.layout(model)
    old = pruning.Layout.of({k: v for k, v in plain.items() if k not in ("scales", "positions")})
    pruning.check_collapse(spec, old, _weights(model))
    assert "predates channel tickets" in capsys.readouterr().out
