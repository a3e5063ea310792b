import numpy as np
import pytest

from tickets import models
from tickets.config import ModelSpec


@pytest.mark.parametrize("arch, shape", [("conv2", (32, 32, 3)), ("conv4", (32, 32, 3)), ("conv6", (32, 32, 3)),
                                         ("lenet_300_100", (28, 28, 1)), ("mobilenet_v2", (32, 32, 3))])
def test_every_arch_builds_with_named_prunable_kernels(arch, shape):
    model = models.build(ModelSpec(arch=arch, width=0.35), shape, 10, seed=0)
    assert model.output_shape == (None, 10)
    names = list(models.prunable_variables(model))
    assert names and all(n.endswith("kernel") for n in names)
    g = models.groups(model)
    assert g["classifier"] == ["predictions/kernel"]
    assert len(g["first_conv"]) == (0 if arch == "lenet_300_100" else 1)
    excluded = models.prunable_variables(model, exclude=("first_conv", "classifier"))
    assert "predictions/kernel" not in excluded and len(excluded) == len(names) - 1 - len(g["first_conv"])


def test_conv2_matches_the_paper():
    model = models.build(ModelSpec(arch="conv2"), (32, 32, 3), 10, seed=0)
    shapes = {n: tuple(v.shape) for n, v in models.prunable_variables(model).items()}
    assert shapes == {"conv1/kernel": (3, 3, 3, 64), "conv2/kernel": (3, 3, 64, 64),
                      "fc1/kernel": (16 * 16 * 64, 256), "fc2/kernel": (256, 256), "predictions/kernel": (256, 10)}


def test_mobilenet_v2_names_are_stable_and_depthwise_is_a_group():
    a = models.build(ModelSpec(width=0.35), (32, 32, 3), 10, seed=0)
    b = models.build(ModelSpec(width=0.35), (32, 32, 3), 10, seed=1)
    assert list(models.get_weights(a)) == list(models.get_weights(b))
    g = models.groups(a)
    assert g["first_conv"] == ["Conv1/kernel"] and len(g["depthwise"]) == 17
    assert "expanded_conv_depthwise/kernel" in models.prunable_variables(a)
    assert "expanded_conv_depthwise/kernel" not in models.prunable_variables(a, exclude=("depthwise",))


def test_mobilenet_v2_at_imagenet_size():
    model = models.build(ModelSpec(width=0.35), (224, 224, 3), 1000, seed=0)
    assert model.output_shape == (None, 1000)


def test_same_seed_same_init_and_weights_round_trip():
    spec = ModelSpec(width=0.35)
    a, b = (models.build(spec, (32, 32, 3), 10, seed=3) for _ in range(2))
    wa, wb = models.get_weights(a), models.get_weights(b)
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert any("moving_variance" in k for k in wa)  # BatchNorm statistics are part of the weights
    c = models.build(spec, (32, 32, 3), 10, seed=4)
    models.set_weights(c, wa)
    wc = models.get_weights(c)
    assert all(np.array_equal(wa[k], wc[k]) for k in wa)


def test_bad_arguments_fail_fast():
    with pytest.raises(ValueError, match=r"Received `input_shape=\(16, 16, 3\)`"):
        models.build(ModelSpec(), (16, 16, 3), 10, seed=0)
    model = models.build(ModelSpec(arch="conv2"), (32, 32, 3), 10, seed=0)
    with pytest.raises(ValueError, match="unknown groups"):
        models.prunable_variables(model, exclude=("head",))
    with pytest.raises(ValueError, match="do not fit the model"):
        models.set_weights(model, {"x": np.zeros(1)})


def test_cifar_strides_keep_keras_layers_and_end_in_4x4_maps():
    keras_strides = models.build(ModelSpec(width=0.35), (32, 32, 3), 10, seed=0)
    cifar = models.build(ModelSpec(width=0.35, strides="cifar"), (32, 32, 3), 10, seed=0)
    assert cifar.get_layer("Conv_1").output.shape[1:3] == (4, 4)
    assert keras_strides.get_layer("Conv_1").output.shape[1:3] == (1, 1)
    a, b = models.get_weights(keras_strides), models.get_weights(cifar)
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)  # only the strides differ
    assert models.layout(cifar)["inputs"]["block_3_expand/kernel"] == ["block_1_project/kernel",
                                                                       "block_2_project/kernel"]


def test_batch_norm_is_fused_and_computes_what_keras_does():
    """MobileNetV2's BatchNormalization layers run TensorFlow's fused kernel (half the CPU step was
    Keras's composed ops); on a conv -> BN net it gives Keras's outputs, gradients and moving
    statistics (the biased variance) to float rounding, in training and in inference."""
    import keras
    import tensorflow as tf

    from tickets.layers import FusedBatchNormalization

    model = models.build(ModelSpec(width=0.35, strides="cifar"), (32, 32, 3), 10, seed=0)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 52 and all(isinstance(layer, FusedBatchNormalization) for layer in norms)
    assert all(layer.momentum == models.BN_MOMENTUM for layer in norms)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 4))
    features = keras.layers.Conv2D(6, 3, padding="same", use_bias=False)(inputs)  # as MobileNetV2

    def net(norm):
        head = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(norm(features))))
        return keras.Model(inputs, head)

    fused, plain = net(FusedBatchNormalization(momentum=0.9)), net(keras.layers.BatchNormalization(momentum=0.9))
    plain.set_weights(fused.get_weights())
    rng = np.random.default_rng(0)
    x, y = rng.normal(1.0, 2.0, (16, 8, 8, 4)).astype("float32"), np.arange(16) % 3

    def step(m):
        with tf.GradientTape() as tape:
            out = m(x, training=True)
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, out)
        grads = tape.gradient(loss, m.trainable_variables)
        return [out, *grads, *m.non_trainable_variables, m(x, training=False)]

    for a, b in zip(step(fused), step(plain)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 1e-5 * max(np.abs(b).max(), 1e-3)
    # ... through the fused kernel, not Keras's ops (which the comparison alone would not tell apart).
    for training in (True, False):
        graph = tf.function(lambda v, t=training: fused(v, training=t)).get_concrete_function(
            tf.TensorSpec((None, 8, 8, 4))).graph
        kinds = {op.type for op in graph.get_operations()}
        assert "FusedBatchNormV3" in kinds and "Rsqrt" not in kinds
