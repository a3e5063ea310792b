"""Models, and the naming of their weights.

One public factory, `build`, for MobileNetV2 (Keras applications) and the reference networks
of Frankle & Carbin (2019, Figure 2): Conv-2/4/6 and LeNet-300-100. Written against `keras`
only, so the same code runs on TensorFlow and on JAX (used by the GPU benchmark).

Every weight is named by its Keras path (`block_1_expand/kernel`), stable across builds and
backends; the prunable weights are the kernels of Conv2D, DepthwiseConv2D and Dense layers.
"""

from __future__ import annotations

import keras
import numpy as np

from tickets.config import ModelSpec
from tickets.layers import FusedBatchNormalization

BN_MOMENTUM = 0.9
_PRUNABLE_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)

# Frankle & Carbin (2019), Figure 2: conv widths (pooling after each pair), then dense widths.
_CONV_NETS = {
    "conv2": ([64, 64], [256, 256]),
    "conv4": ([64, 64, 128, 128], [256, 256]),
    "conv6": ([64, 64, 128, 128, 256, 256], [256, 256]),
}


def build(spec: ModelSpec, input_shape: tuple[int, int, int], num_classes: int, seed: int) -> keras.Model:
    """A freshly initialised model; the same `seed` gives bit-identical initial weights."""
    if len(input_shape) != 3:
        raise ValueError(f"Received `input_shape={input_shape}`: expected (height, width, channels)")
    if num_classes < 2:
        raise ValueError(f"Received `num_classes={num_classes}`: expected at least 2")
    keras.utils.set_random_seed(seed)
    if spec.arch == "mobilenet_v2":
        if min(input_shape[:2]) < 32:
            raise ValueError(f"Received `input_shape={input_shape}`: MobileNetV2 needs at least 32x32")
        # Keras warns that sizes other than 96..224 have no pretrained weights; we train from scratch.
        model = keras.applications.MobileNetV2(
            input_shape=input_shape, alpha=spec.width, weights=None, classes=num_classes,
            classifier_activation=None)
        keras.utils.set_random_seed(seed)  # the rebuilt model draws the same initial weights
        model = _rebuilt(model, cifar_strides=spec.strides == "cifar")
    elif spec.arch in _CONV_NETS:
        model = _conv_net(spec.arch, input_shape, num_classes)
    elif spec.arch == "lenet_300_100":
        model = _mlp("lenet_300_100", input_shape, [300, 100], num_classes)
    else:
        raise ValueError(f"Received `arch={spec.arch!r}`")
    if keras.config.dtype_policy().name.startswith("mixed"):
        # Logits in float32, as Keras's mixed-precision guide asks: the softmax and the loss
        # see full-precision values; the rest of the network computes in 16 bits.
        model.layers[-1].dtype_policy = "float32"
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # Keras' 0.999 suits ImageNet-length runs; with CIFAR-length runs (a few hundred
            # steps per epoch) the moving statistics would lag the weights for many epochs.
            layer.momentum = BN_MOMENTUM
    return model


def _rebuilt(model: keras.Model, cifar_strides: bool) -> keras.Model:
    """Keras's MobileNetV2 rebuilt from its own config, so every layer, name and initializer stays
    Keras's, with its BatchNormalization layers fused on TensorFlow (`layers.FusedBatchNormalization`).

    With `cifar_strides`, stride 1 in the stem (`Conv1`) and in `block_1`, the usual CIFAR adaptation
    (e.g. kuangliu/pytorch-cifar): 32 px inputs end in 4x4 instead of 1x1 feature maps. `block_1`
    pads (0, 1) for its stride-2 'valid' depthwise conv; at stride 1 it pads (1, 1) to keep the size.
    """
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "BatchNormalization":
            layer |= {"module": FusedBatchNormalization.__module__, "class_name": FusedBatchNormalization.__name__,
                      "registered_name": keras.saving.get_registered_name(FusedBatchNormalization)}
    if not cifar_strides:
        return keras.Model.from_config(config)
    changed = set()
    for layer in config["layers"]:
        c = layer["config"]
        if c["name"] in ("Conv1", "block_1_depthwise"):
            c["strides"] = (1, 1)
            changed.add(c["name"])
        elif c["name"] == "block_1_pad":
            c["padding"] = ((1, 1), (1, 1))
            changed.add(c["name"])
    if changed != {"Conv1", "block_1_depthwise", "block_1_pad"}:  # Keras renamed its layers
        raise ValueError(f"Received a Keras MobileNetV2 without the layers the CIFAR strides change; found {changed}")
    return keras.Model.from_config(config)


def _conv_net(name: str, input_shape, num_classes: int) -> keras.Model:
    convs, denses = _CONV_NETS[name]
    inputs = keras.Input(input_shape)
    x = inputs
    for i, width in enumerate(convs):
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        if i % 2 == 1:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i // 2 + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for i, width in enumerate(denses):
        x = keras.layers.Dense(width, activation="relu", name=f"fc{i + 1}")(x)
    outputs = keras.layers.Dense(num_classes, name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def _mlp(name: str, input_shape, widths: list[int], num_classes: int) -> keras.Model:
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i, width in enumerate(widths):
        x = keras.layers.Dense(width, activation="relu", name=f"fc{i + 1}")(x)
    outputs = keras.layers.Dense(num_classes, name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


# ---------------------------------------------------------------------------------------------
# Naming weights.


def _kernel_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if isinstance(layer, _PRUNABLE_LAYERS)]


def _kernel(layer: keras.layers.Layer):
    return layer.kernel


def groups(model: keras.Model) -> dict[str, list[str]]:
    """The named groups of prunable kernels (`config.GROUPS`), each in layer order; empty when the
    model has no such layer."""
    layers = _kernel_layers(model)
    convs = [la for la in layers if isinstance(la, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    plain = [la for la in convs if isinstance(la, keras.layers.Conv2D)]
    denses = [la for la in layers if isinstance(la, keras.layers.Dense)]
    return {
        "conv": [_kernel(la).path for la in convs],
        "dense": [_kernel(la).path for la in denses[:-1]],
        "depthwise": [_kernel(la).path for la in convs if isinstance(la, keras.layers.DepthwiseConv2D)],
        "first_conv": [_kernel(plain[0]).path] if plain else [],
        "classifier": [_kernel(denses[-1]).path] if denses else [],
    }


def layout(model: keras.Model) -> dict:
    """What pruning needs to know of a model, as plain data (`tickets.pruning.Layout`): its prunable
    kernels in layer order with their shapes, its groups, and which kernels feed each kernel. Stored with the dense run,
    so the driver can check masks without building the model."""
    layers = _kernel_layers(model)
    kernels = [_kernel(la) for la in layers]
    return {"names": [k.path for k in kernels], "groups": groups(model), "inputs": _kernel_inputs(model),
            "shapes": {k.path: list(k.shape) for k in kernels}, "scales": _scales(model),
            # Output positions (height x width; 1 for a dense layer): a kernel's multiply-adds per image
            # are its kept weights times these.
            "positions": {_kernel(la).path: int(np.prod(la.output.shape[1:-1])) for la in layers}}


def _scales(model: keras.Model) -> dict[str, str]:
    """For each kernel whose layer feeds a BatchNormalization directly, that layer's gamma: what
    scales each of the kernel's output channels (a channel's score, `channels.scores`)."""
    kernels = {la.name: _kernel(la).path for la in _kernel_layers(model)}
    out = {}
    for config in model.get_config()["layers"]:
        parents = inbound(config)
        if len(parents) == 1 and parents[0] in kernels:
            layer = model.get_layer(config["name"])
            if isinstance(layer, keras.layers.BatchNormalization) and layer.scale:
                out[kernels[parents[0]]] = layer.gamma.path
    return out


def _kernel_inputs(model: keras.Model) -> dict[str, list[str]]:
    """For each kernel, the kernels whose output channels reach its input through layers that keep
    channels apart (BatchNorm, activations, padding, pooling, Add, Flatten); "input" is the model's
    input. Read from the model's config, Keras's documented serialisation of the layer graph."""
    kernels = {la.name: _kernel(la).path for la in _kernel_layers(model)}
    reach: dict[str, set[str]] = {}  # layer name -> kernels (or "input") its output carries
    out = {}
    for layer in model.get_config()["layers"]:  # in topological order
        parents = _parents(layer["inbound_nodes"])
        incoming = set().union(*(reach[p] for p in parents)) if parents else {"input"}
        kernel = kernels.get(layer["name"])
        if kernel is not None:
            out[kernel] = sorted(incoming)
        reach[layer["name"]] = {kernel} if kernel is not None else incoming
    return out


def inbound(layer_config: dict) -> list[str]:
    """The names of the layers feeding a layer, from its entry in a functional model's config."""
    return _parents(layer_config["inbound_nodes"])


def _parents(node) -> list[str]:
    if isinstance(node, dict):
        if "keras_history" in node:
            return [node["keras_history"][0]]
        return [p for v in node.values() for p in _parents(v)]
    if isinstance(node, (list, tuple)):
        return [p for v in node for p in _parents(v)]
    return []


def prunable_variables(model: keras.Model, exclude=()) -> dict:
    """Prunable kernel variables by name, in layer order, without the excluded groups."""
    named = groups(model)
    unknown = [g for g in exclude if g not in named]
    if unknown:
        raise ValueError(f"Received `exclude={list(exclude)}`: unknown groups {unknown}; known: {sorted(named)}")
    skip = {path for g in exclude for path in named[g]}
    out = {}
    for layer in _kernel_layers(model):
        var = _kernel(layer)
        if var.path not in skip:
            out[var.path] = var
    return out


def get_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """Every variable of the model (BatchNorm statistics included) as numpy, by path."""
    return {v.path: keras.ops.convert_to_numpy(v.value) for v in model.weights}


def set_weights(model: keras.Model, weights: dict[str, np.ndarray]) -> None:
    """Assign every variable of `model` by path; the names must match exactly (ValueError otherwise)."""
    variables = {v.path: v for v in model.weights}
    if set(variables) != set(weights):
        missing, extra = set(variables) - set(weights), set(weights) - set(variables)
        raise ValueError(f"Received weights that do not fit the model: missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(extra)[:3]}")
    for path, var in variables.items():
        value = weights[path]
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"Received `{path}` of shape {value.shape}; the model has {tuple(var.shape)}")
        var.assign(value)
