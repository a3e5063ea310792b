import pytest

from tickets import config
from tickets.config import SpecError


def test_defaults_make_a_valid_spec():
    spec = config.from_dict({})
    assert spec.model.arch == "mobilenet_v2" and spec.dense.epochs == 30
    assert spec.search.sparsity == (0.5, 0.8, 0.9, 0.95)


@pytest.mark.parametrize("name", config.presets())
def test_presets_load(name):
    spec = config.load(name)
    assert spec.name == name


def test_round_trip_through_yaml(tmp_path):
    spec = config.load("mobilenetv2-cifar10")
    path = tmp_path / "s.yaml"
    path.write_text(spec.to_yaml())
    assert config.load(path) == spec
    assert config.load(path).spec_hash() == spec.spec_hash()


def test_overrides_are_yaml_and_validated():
    spec = config.load("smoke", ["search.sparsity=[0.5,0.9]", "data.path=/data/x", "dense.epochs=6"])
    assert spec.search.sparsity == (0.5, 0.9)
    assert spec.data.path == "/data/x"
    assert spec.dense.epochs == 6
    with pytest.raises(SpecError, match=r"^search.sparsity\[1\]: 1.5 is outside \[0, 1\)"):
        config.load("smoke", ["search.sparsity=[0.5,1.5]"])


def test_dense_hash_ignores_the_grid_but_not_the_training():
    a = config.load("smoke")
    assert config.load("smoke", ["search.sparsity=[0.3]"]).dense_hash() == a.dense_hash()
    assert config.load("smoke", ["dense.epochs=5"]).dense_hash() != a.dense_hash()
    cached = config.load("smoke", ["data.cache=node"])  # same numbers, and allowed on --resume
    assert cached.dense_hash() == a.dense_hash() and cached.spec_hash() == a.spec_hash()
    assert config.load("smoke", ["data.shuffle_buffer=64"]).dense_hash() != a.dense_hash()
    # Another validation split is another dense run; the near-collapse threshold changes no number.
    assert config.load("smoke", ["data.validation=100"]).dense_hash() != a.dense_hash()
    assert config.load("smoke", ["data.validation=100"]).dense_hash() != config.load(
        "smoke", ["data.validation=200"]).dense_hash()
    low = config.load("smoke", ["pruning.min_live_channels=9"])
    assert low.dense_hash() == a.dense_hash() and low.spec_hash() == a.spec_hash()


def test_paper_presets_hold_out_the_papers_validation_split():
    for name in ("conv2-cifar10", "conv4-cifar10", "conv6-cifar10", "mobilenetv2-cifar10"):
        assert config.load(name).data.validation == 5000, name
    assert config.load("mobilenetv2-imagenet").data.validation == 10000


@pytest.mark.parametrize("raw, message", [
    ({"search": {"sparsity": 1.2}}, "search.sparsity: 1.2 is outside [0, 1)"),
    ({"search": {"sparsity": -0.1}}, "search.sparsity: -0.1 is outside [0, 1)"),
    ({"dense": {"epochs": 30}, "search": {"rewind_epoch": 40}}, "search.rewind_epoch: 40 is past dense.epochs (30)"),
    ({"search": {"sparsity": []}}, "search.sparsity: [] is empty"),
    ({"search": {"control": ["tickett"]}}, "search.control[0]: 'tickett' is not one of"),
    ({"modle": {}}, "modle: unknown field (did you mean 'model'?)"),
    ({"model": {"arch": "resnet50"}}, "model.arch: 'resnet50' is not one of"),
    ({"model": {"widht": 1.0}}, "model.widht: unknown field (did you mean 'width'?)"),
    ({"data": {"dataset": "mnist"}}, "data.dataset: 'mnist' is not one of"),
    ({"data": {"dataset": "parquet"}}, "data.path: None must name a directory"),
    ({"data": {"batch_size": "big"}}, "data.batch_size: 'big' must be an integer"),
    ({"data": {"augment": "yes"}}, "data.augment: 'yes' must be true or false"),
    ({"data": {"half": "c"}}, "data.half: 'c' is not one of a, b"),
    ({"data": {"cache": "disk"}}, "data.cache: 'disk' is not one of none, node"),
    ({"data": {"shuffle_buffer": 0}}, "data.shuffle_buffer: 0 must be >= 1"),
    ({"dense": {"optimizer": {"name": "rmsprop"}}}, "dense.optimizer.name: 'rmsprop' is not one of"),
    ({"dense": {"optimizer": {"learning_rate": 0}}}, "dense.optimizer.learning_rate: 0 must be > 0"),
    ({"dense": {"schedule": {"name": "linear"}}}, "dense.schedule.name: 'linear' is not one of"),
    ({"pruning": {"scope": "local"}}, "pruning.scope: 'local' is not one of"),
    ({"pruning": {"exclude": ["head"]}}, "pruning.exclude[0]: 'head' is not one of"),
    ({"resources": {"gpus_per_trial": "many"}}, "resources.gpus_per_trial: 'many' is not one of auto"),
    ({"resources": {"cpus_per_trial": 0}}, "resources.cpus_per_trial: 0 must be >= 1"),
    ({"search": {"replicate": [0, 0]}}, "search.replicate: [0, 0] has repeated values"),
    ({"dense": "fast"}, "dense: 'fast' must be a mapping"),
    ({"pruning": {"scope": "lamp2"}}, "pruning.scope: 'lamp2' is not one of global, layerwise, lamp, erk"),
    ({"model": {"arch": "lenet_300_100"}}, "pruning.exclude[0]: 'first_conv' is not a group of lenet_300_100"),
    ({"model": {"arch": "conv2"}, "pruning": {"exclude": ["depthwise"]}},
     "pruning.exclude[0]: 'depthwise' is not a group of conv2 (its groups: conv, dense, first_conv, classifier)"),
    ({"pruning": {"exclude": ["conv", "classifier"]}}, "pruning.exclude: ['conv', 'classifier'] leaves no weights"),
    ({"pruning": {"mode": "imp", "levels": 2, "rates": {"classifier": 0.1}}},
     "pruning.rates: 'classifier' is in pruning.exclude"),
    ({"pruning": {"mode": "imp", "levels": 2, "exclude": [], "rates": {"classifier": 1.5}}},
     "pruning.rates.classifier: 1.5 is outside [0, 1)"),
    ({"search": {"level": [2], "sparsity": [0.5]}}, "search.level: [2] conflicts with search.sparsity"),
    ({"search": {"level": [0]}}, "search.level: 0 is outside [1, 100]"),
    ({"pruning": {"mode": "imp", "levels": 2}, "search": {"level": [2]}}, "search.level: [2] conflicts with pruning.mode"),
    ({"model": {"arch": "conv2", "strides": "cifar"}}, "model.strides: 'cifar' applies to mobilenet_v2 only"),
    ({"model": {"strides": "tiny"}}, "model.strides: 'tiny' is not one of imagenet, cifar"),
    ({"references": [{"source": "", "points": [{"test_accuracy": 50}]}]}, "references[0].source: '' must cite"),
    ({"references": [{"source": "x", "points": [{"weights_remaining": 5}]}]},
     "references[0].points[0]: 'test_accuracy/gain' needs exactly one of test_accuracy and gain"),
    ({"data": {"validation": -1}}, "data.validation: -1 must be >= 0"),
    ({"data": {"validation": 2.5}}, "data.validation: 2.5 must be an integer"),
    ({"data": {"validation": "5k"}}, "data.validation: '5k' must be an integer"),
    ({"pruning": {"min_live_channels": -1}}, "pruning.min_live_channels: -1 must be >= 0"),
    ({"pruning": {"mode": "imp", "levels": 2}, "search": {"control": ["random_reinit"]}},
     "search.control: ['random_reinit'] has no 'ticket': IMP controls train the ticket chain's masks"),
    ({"search": {"control": ["snipp"]}}, "search.control[0]: 'snipp' is not one of ticket, random_reinit"),
    ({"search": {"control": ["ticket+shuffle"]}}, "search.control[0]: 'ticket+shuffle' is the papers' random_prune"),
    ({"search": {"control": ["snip+prune"]}}, "search.control[0]: 'snip+prune' is not one of"),
    ({"pruning": {"mode": "imp", "levels": 2}, "search": {"control": ["ticket", "synflow"]}},
     "search.control[1]: 'synflow' prunes at initialization, in one shot; pruning.mode 'imp' prunes iteratively"),
    ({"search": {"control": ["ticket", "grasp+reinit"], "rewind_epoch": [1, 2]}},
     "search.control[1]: 'grasp+reinit' prunes at initialization and trains from it (rewind epoch 0), which "
     "search.rewind_epoch [1.0, 2.0] lacks: add 0"),
    ({"pruning": {"synflow_rounds": 0}}, "pruning.synflow_rounds: 0 must be >= 1"),
    ({"search": {"control": ["ticket", "snip+shuffle", "synflow+shuffle"], "rewind_epoch": [0]}},
     "search.control: ['snip+shuffle', 'synflow+shuffle'] are the same random masks under pruning.scope 'lamp'"),
    ({"pruning": {"init_batches": 0}}, "pruning.init_batches: 0 must be >= 1"),
    ({"report": {"match": "best"}}, "report.match: 'best' is not one of final, early_stop"),
    ({"report": {"match": "early_stop"}, "data": {"validation": 0}},
     "report.match: 'early_stop' needs a validation split to stop early on (data.validation)"),
    ({"instability": {"points": 0}}, "instability.points: 0 must be >= 2"),
    ({"instability": {"batchnorm": "recompute"}}, "instability.batchnorm: 'recompute' is not one of interpolate, reestimate"),
    ({"instability": {"enabled": True}, "search": {"level": [1], "sparsity": [], "control": ["random_prune"]}},
     "instability.enabled: True has nothing to analyse"),
])
def test_bad_values_name_field_and_value(raw, message):
    with pytest.raises(SpecError) as e:
        config.from_dict(raw)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_level_grids_and_null_lists():
    spec = config.from_dict({"search": {"level": [3, 6]}, "pruning": {"rates": {"conv": 0.1}, "exclude": []}})
    assert spec.search.sparsity == () and spec.search.level == (3, 6)  # the default sparsities step aside
    assert config.load("smoke", ["pruning.mode=imp", "pruning.levels=2", "search.sparsity=null"]).search.sparsity == ()
    assert config.load("smoke", ["dense.optimizer.weight_decay=5e-4"]).dense.optimizer.weight_decay == 5e-4


def test_set_on_a_missing_key_is_an_error():
    with pytest.raises(SpecError, match=r"--set search.sparsty: no such field \(did you mean 'sparsity'\?\)"):
        config.load("smoke", ["search.sparsty=[0.5]"])
    with pytest.raises(SpecError, match="is not KEY=VALUE"):
        config.load("smoke", ["search.sparsity"])


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsearch: {sparsity: [0.5,\n")
    with pytest.raises(SpecError, match=r"bad.yaml: is not valid YAML at line"):
        config.load(path)


def test_unknown_preset_suggests_one():
    with pytest.raises(SpecError, match=r"'smok' is neither a YAML file nor a preset \(did you mean 'smoke'\?\)"):
        config.load("smok")


def test_a_bad_control_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    from tickets import sweep

    assert sweep.main(["smoke", "--storage-path", str(tmp_path), "--set", "search.control=[ticket,synflw]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: search.control[1]: 'synflw' is not one of") and "did you mean 'synflow'" in err
    assert err.count("\n") == 1 and not list(tmp_path.iterdir())


def test_controls_name_a_method_and_an_ablation():
    assert config.split_control("random_prune") == ("ticket", "shuffle")
    assert config.split_control("random_reinit") == ("ticket", "reinit")
    assert config.split_control("synflow+shuffle") == ("synflow", "shuffle")
    assert config.split_control("snip") == ("snip", None)
    assert {config.split_control(c)[0] for c in config.CONTROLS} == {"ticket", "transfer", *config.INIT_METHODS}
