import subprocess
import sys

import keras
import numpy as np
import pytest

from tickets import config, data, instability, interpolation, masks, models, pipeline, training
from tickets import runtime as runtime_lib
from tickets import ticket as ticket_lib


def _spec(**over):
    raw = {"name": "t", "data": {"dataset": "synthetic", "batch_size": 32, "augment": True,
                                 "synthetic_size": {"train": 256, "test": 64}},
           "model": {"arch": "mobilenet_v2", "width": 0.35},
           "dense": {"epochs": 2, "optimizer": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9,
                                                "weight_decay": 1e-3},
                     "schedule": {"name": "cosine", "warmup_epochs": 0.5}},
           "pruning": {"exclude": []}, "search": {"sparsity": [0.8], "rewind_epoch": [0.5]}}
    for key, value in over.items():
        raw = config.apply_override(raw, f"{key}={value}")
    return config.from_dict(raw)


@pytest.fixture(scope="module")
def small():
    runtime_lib.configure(2)
    spec = _spec()
    return spec, data.load(spec.data, spec.seed)


@pytest.fixture(scope="module")
def trajectory(small):
    spec, d = small
    return training.train_dense(spec, d)


def test_pruned_weights_stay_exactly_zero_after_every_step(small):
    spec, d = small
    model = models.build(spec.model, d.input_shape, d.num_classes, seed=0)
    weights = models.get_weights(model)
    prunable = models.prunable_variables(model, exclude=())
    assert any("depthwise" in n for n in prunable)
    mask, _ = masks.magnitude_mask({n: weights[n] for n in prunable}, 0.8)
    training.install_mask(model, mask)
    training.compile_model(model, training.make_optimizer(spec.dense, d.steps_per_epoch(32)))

    seen = []

    class Check(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            changed = 0
            for name, var in prunable.items():
                w = keras.ops.convert_to_numpy(var.value)
                assert np.all(w[~mask[name]] == 0.0), f"{name} has non-zero pruned weights after step {batch}"
                changed += bool(np.any(w[mask[name]] != weights[name][mask[name]]))
            assert changed > len(prunable) // 2  # the survivors do train
            seen.append(batch)

    model.fit(pipeline.train_batches(d, spec.data, 0, 0, 6), epochs=1, verbose=0, callbacks=[Check()])
    assert seen == list(range(6))


def test_schedule_resumes_at_the_rewind_step():
    spec = _spec()
    dense = training.Schedule(spec.dense, steps_per_epoch=10)
    resumed = training.Schedule(spec.dense, steps_per_epoch=10, offset=7)
    for k in range(0, 13):
        assert float(resumed(k)) == pytest.approx(float(dense(k + 7)))
    assert float(dense(0)) == pytest.approx(0.05 / 5)  # warm-up over half an epoch = 5 steps
    assert float(dense(19)) < 0.001  # cosine decays to ~0 at the end


def test_a_traced_step_builds_its_learning_rate_once(small):
    # Keras's TensorFlow optimizer asks for the rate once per weight it decays: the traced step
    # builds it once, a new trace builds it again, and eager calls are never served a traced value.
    spec, d = small
    schedule = training.Schedule(spec.dense, steps_per_epoch=8)
    rate, built = schedule._rate, []
    schedule._rate = lambda step: built.append(step) or rate(step)
    model = models.build(spec.model, d.input_shape, d.num_classes, seed=0)
    training.compile_model(model, training.make_optimizer(spec.dense, 8, schedule))
    for _ in range(2):  # the second fit runs the traced step again, without tracing
        model.fit(pipeline.train_batches(d, spec.data, 0, 0, 2), epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    assert len(built) == 1 and int(model.optimizer.iterations) == 4
    model.make_train_function(force=True)
    model.fit(pipeline.train_batches(d, spec.data, 0, 4, 1), epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    assert len(built) == 2
    assert [float(schedule(k)) for k in (0, 3)] == pytest.approx([0.05 / 4, 0.05])  # warm-up: 4 steps


def test_step_schedule_and_fractional_rewind():
    spec = _spec(**{"dense.schedule": "{name: step, milestones: [1]}"})
    s = training.Schedule(spec.dense, steps_per_epoch=10)
    assert float(s(9)) == pytest.approx(0.05) and float(s(10)) == pytest.approx(0.005)
    assert training.step_of(0.5, 8) == 4 and spec.record_steps(8) == [0, 4, 16]


def test_same_seed_gives_bit_identical_snapshots_and_masks(small, trajectory):
    spec, d = small
    a, b = trajectory, training.train_dense(spec, d)
    assert sorted(a.snapshots) == [0, 4, 16]
    for step in a.snapshots:
        for name in a.snapshots[step]:
            assert np.array_equal(a.snapshots[step][name], b.snapshots[step][name]), (step, name)
    model = models.build(spec.model, d.input_shape, d.num_classes, seed=0)
    ta = ticket_lib.make_ticket(spec, model, a.final, a.snapshots[4], 0.8, "ticket", 0)
    tb = ticket_lib.make_ticket(spec, model, b.final, b.snapshots[4], 0.8, "ticket", 0)
    assert all(np.array_equal(ta.mask[k], tb.mask[k]) for k in ta.mask)


def test_configure_says_when_tensorflow_already_runs_with_other_thread_pools(caplog):
    import tensorflow as tf

    tf.constant(1.0) + 1  # the runtime is up: thread pools can no longer change
    runtime_lib.configure(7)
    assert "not the 7 / 1 asked for" in caplog.text


@pytest.mark.parametrize("replicas", [1, 2])
def test_cifar_strides_train_bit_identically_on_two_threads(tmp_path, replicas):
    # Large feature maps made TensorFlow's inter-op parallelism sum gradients in a varying order:
    # `configure` runs one op at a time on CPU, so two runs of one seed match to the bit. It must
    # run before TensorFlow starts, which this test process did long ago: a fresh process checks it.
    # With 2 replicas (two logical CPU devices, as a GPU node's dense run uses its GPUs) the dense
    # run is data-parallel under MirroredStrategy: same batches and steps, still bit-reproducible.
    spec = _spec(**{"model.strides": "cifar", "dense.epochs": 1, "search.rewind_epoch": "[0]",
                    "data.batch_size": 128, "data.synthetic_size": "{train: 256, test: 128}"})
    (tmp_path / "spec.yaml").write_text(spec.to_yaml())
    script = ("import sys, keras, numpy as np, tensorflow as tf\n"
              "from tickets import config, data, training\n"
              "from tickets import runtime as runtime_lib\n"
              "runtime = runtime_lib.configure(2, replicas=int(sys.argv[2]))\n"
              "spec = config.load(sys.argv[1])\n"
              "d = data.load(spec.data, spec.seed)\n"
              "models, average = [], runtime_lib.average_replicas\n"
              "runtime_lib.average_replicas = lambda m: models.append(m) or average(m)\n"
              "a, b = (training.train_dense(spec, d) for _ in range(2))\n"
              "stats = [v for l in models[-1].layers if isinstance(l, keras.layers.BatchNormalization)\n"
              "         for v in (l.moving_mean, l.moving_variance)]\n"
              "copies = [[np.asarray(c) for c in getattr(v.value, 'values', [v.value])] for v in stats]\n"
              "print(sum(not np.array_equal(a.final[n], a.snapshots[0][n]) for n in a.final), len(a.final),\n"
              "      a.runtime['replicas'], sum(not all(np.array_equal(c[0], x) for x in c) for c in copies))\n"
              "print(tf.config.threading.get_intra_op_parallelism_threads(),\n"
              "      tf.config.threading.get_inter_op_parallelism_threads(), runtime.replicas,\n"
              "      [n for n in a.final if not np.array_equal(a.final[n], b.final[n])])\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "spec.yaml"), str(replicas)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    changed, total, recorded, differ = map(int, out.stdout.splitlines()[-2].split())
    assert changed > total // 2 and recorded == replicas  # it trains, on `replicas` devices
    assert differ == 0  # every replica holds the same (averaged) BatchNorm moving statistics
    assert out.stdout.splitlines()[-1] == f"2 1 {replicas} []"  # threads as configured; no weight differs


@pytest.mark.parametrize("policy, compute", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")])
def test_masked_step_under_mixed_precision_keeps_float32_weights_and_exact_zeros(small, policy, compute):
    # Mixed precision computes in 16 bits but keeps float32 master weights, so the mask constraint
    # still leaves pruned weights at exactly 0.0 and snapshots stay float32; under float16 Keras
    # scales the loss (LossScaleOptimizer), and the mask still applies after its unscaled update.
    spec, d = small
    runtime_lib.set_precision(policy)
    try:
        model = training.sparse_model(spec, d)
        assert model.layers[-2].compute_dtype == compute and model.layers[-1].compute_dtype == "float32"
        scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert scaled == (policy == "mixed_float16")
        weights = models.get_weights(model)
        ticket = ticket_lib.make_ticket(spec, model, weights, weights, 0.8, "ticket", 0)
        (progress, state), = training.train_sparse(spec, d, ticket, d.steps_per_epoch(32), seed=1)
        assert np.isfinite(progress.train_loss)
        assert {w.dtype for w in state.weights.values()} == {np.dtype("float32")}
        for name, m in ticket.mask.items():
            assert np.all(state.weights[name][~m] == 0.0), name
            assert np.any(state.weights[name][m] != ticket.start[name][m]), name  # survivors trained
    finally:
        runtime_lib.set_precision("float32")
        training._COMPILED.clear()


def test_controls_share_counts_and_differ_where_they_should(small, trajectory):
    spec, d = small
    traj = trajectory
    model = models.build(spec.model, d.input_shape, d.num_classes, seed=0)
    t = ticket_lib.make_ticket(spec, model, traj.final, traj.snapshots[4], 0.8, "ticket", 0)
    rp = ticket_lib.make_ticket(spec, model, traj.final, traj.snapshots[4], 0.8, "random_prune", 0)
    ri = ticket_lib.make_ticket(spec, model, traj.final, traj.snapshots[4], 0.8, "random_reinit", 0)
    for k in t.mask:
        assert rp.mask[k].sum() == t.mask[k].sum() and np.array_equal(ri.mask[k], t.mask[k])
    k = next(iter(t.mask))
    assert not np.array_equal(rp.mask[k], t.mask[k])
    assert np.array_equal(t.start[k], np.where(t.mask[k], traj.snapshots[4][k], 0))
    assert not np.array_equal(ri.start[k], t.start[k])


def test_sparse_run_resumes_exactly_from_its_state(small, trajectory):
    spec, d = small
    traj = trajectory
    model = training.sparse_model(spec, d)
    ticket = ticket_lib.make_ticket(spec, model, traj.final, traj.snapshots[4], 0.8, "ticket", 0)
    full = list(training.train_sparse(spec, d, ticket, 4, seed=1))
    assert [p.epoch for p, _ in full] == [1, 2]  # from half an epoch to the end of the schedule
    first_state = full[0][1]
    resumed = list(training.train_sparse(spec, d, ticket, 4, seed=1, resume=first_state))
    assert [p.epoch for p, _ in resumed] == [2]
    end_a, end_b = full[-1][1].weights, resumed[-1][1].weights
    assert all(np.array_equal(end_a[k], end_b[k]) for k in end_a)

    # The compiled model is reused by the next run in this process (as by the next trial in a Tune
    # worker): nothing of the previous run may leak into it.
    other = ticket_lib.make_ticket(spec, model, traj.final, traj.snapshots[0], 0.5, "random_prune", 1)
    list(training.train_sparse(spec, d, other, 0, seed=2))
    again = list(training.train_sparse(spec, d, ticket, 4, seed=1))
    training._COMPILED.clear()
    fresh = list(training.train_sparse(spec, d, ticket, 4, seed=1))
    # A trial that warmed up beside the dense run (steps traced with all-ones masks) trains the same.
    training._COMPILED.clear()
    training.warm_up(spec, d)
    warmed = list(training.train_sparse(spec, d, ticket, 4, seed=1))
    for run in (again, warmed):
        for (pa, sa), (pb, sb) in zip(run, fresh, strict=True):
            assert pa.test_loss == pb.test_loss
            assert all(np.array_equal(sa.weights[k], sb.weights[k]) for k in sa.weights)
    assert all(np.all(warmed[-1][1].weights[k][~m] == 0.0) for k, m in ticket.mask.items())


@pytest.fixture(scope="module")
def twins(small, trajectory):
    """A ticket trained three times from its rewind point: twice on data order 1, once on order 2.
    Training reads nothing of `instability.*`, so both BatchNorm modes below share these runs."""
    spec, d = small
    model = training.sparse_model(spec, d)
    ticket = ticket_lib.make_ticket(spec, model, trajectory.final, trajectory.snapshots[4], 0.8, "ticket", 0)

    def train(seed):
        *_, last = training.train_sparse(spec, d, ticket, 4, seed=seed)
        return last

    return ticket, (train(1), train(1), train(2))


@pytest.mark.parametrize("batchnorm", ["interpolate", "reestimate"])
def test_instability_twin_on_the_same_seed_is_bit_identical_and_the_path_ends_at_both_copies(small, twins,
                                                                                            batchnorm):
    _, d = small
    spec = _spec(**{"instability.batchnorm": batchnorm, "instability.points": 5})
    model = training.sparse_model(spec, d)
    ticket, ((pa, a), (_, b), (pc, c)) = twins
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)  # same data order: same network
    same = interpolation.path(spec, d, model, a.weights, b.weights, seed=3)
    assert instability.barrier(same["test_accuracy"]) == 0.0
    assert not any(np.array_equal(a.weights[k], c.weights[k]) for k in ticket.mask)  # another order: another one
    curve = interpolation.path(spec, d, model, a.weights, c.weights, seed=3)
    assert list(curve["alpha"]) == [0.0, 0.25, 0.5, 0.75, 1.0] and np.isnan(curve["val_accuracy"]).all()
    if batchnorm == "interpolate":  # the end points are the two copies, BatchNorm statistics and all
        assert (curve["test_accuracy"][0], curve["test_accuracy"][-1]) == (pa.test_accuracy, pc.test_accuracy)
        assert (curve["test_loss"][0], curve["test_loss"][-1]) == (pa.test_loss, pc.test_loss)
    else:  # statistics recomputed from training batches: the ends are evaluated with other statistics
        assert curve["test_loss"][0] != pa.test_loss
    assert instability.barrier(curve["test_accuracy"]) >= 0
    middle = instability.interpolate(a.weights, c.weights, 0.5)
    assert all(np.all(middle[k][~m] == 0.0) for k, m in ticket.mask.items())  # the ticket's zeros, all along
    assert instability.barrier([0.9, 0.5, 0.8]) == pytest.approx(0.5 - 0.15)  # error 0.5 - mean(0.1, 0.2)
