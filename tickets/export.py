"""python -m tickets.export <trial dir | ticket.npz> --format keras | saved_model | tflite --out PATH [--force]

A ticket out of the tool: the trained network of a finished trial (its `ticket.npz`: the mask and the
weights training ended with), as a plain Keras model -- no mask machinery, no tickets layers, loadable
with `keras.models.load_model` alone -- or a TensorFlow SavedModel or a TFLite flatbuffer.

Every channel no consumer reads any more (`tickets.channels`: the whole channels a channel ticket
removed, and any an unstructured mask happened to empty) is removed physically: the producer has fewer
filters, its BatchNorm and depthwise convolution fewer channels, the consumer fewer inputs. Such a
channel adds nothing to any logit, so the thinner model computes what the masked one does. The other
pruned weights stay in place as zeros; TFLite stores them in its sparse encoding where the converter
finds that worthwhile (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`).

The model takes what tickets' pipelines feed: float32 NHWC images of the spec's size, pixel values
scaled to [-1, 1] (x / 127.5 - 1), and returns logits (no softmax).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tickets import artifacts, channels
from tickets import config as config_lib
from tickets.errors import UsageError

FORMATS = ("keras", "saved_model", "tflite")
_SUFFIX = {"keras": ".keras", "tflite": ".tflite"}  # saved_model: a directory


@dataclass
class Exported:
    """What `export` wrote and what it checked."""

    path: Path
    format: str
    params: int  # the thinner model's parameters (all variables, BatchNorm statistics included)
    dense_params: int  # the same network's with every channel
    channels_removed: int
    bytes: int  # on disk (a directory: all its files)
    max_logit_error: float  # |thin - masked| over a random batch, relative to the largest |masked logit|
    sparse_tensors: list[str] = field(default_factory=list)  # TFLite: weights stored in the sparse encoding
    dense_tensors: list[str] = field(default_factory=list)  # TFLite: pruned weights the converter kept dense


def ticket_file(source: Path) -> Path:
    """The ticket file of a finished trial dir, or the file itself; UsageError, naming the path, when
    there is none."""
    source = Path(source).expanduser()
    if not source.exists():
        raise UsageError(f"source: {source} does not exist")
    if not source.is_dir():
        return source
    if (source / artifacts.SPEC_FILE).is_file():
        raise UsageError(f"source: {source} is an experiment dir; pass one of its trial dirs")
    if (source / artifacts.TICKET_FILE).is_file():
        return source / artifacts.TICKET_FILE
    if (source / artifacts.METRICS_FILE).is_file() or (source / artifacts.PARAMS_FILE).is_file():
        raise UsageError(f"source: {source} is an unfinished trial (no {artifacts.TICKET_FILE} yet)")
    raise UsageError(f"source: {source} holds no ticket ({artifacts.TICKET_FILE})")


def spec_file(ticket: Path) -> Path:
    """The spec of the experiment a ticket file lies in (<experiment>/<trial>/ticket.npz)."""
    spec = ticket.parent.parent / artifacts.SPEC_FILE
    if not spec.is_file():
        raise UsageError(f"source: no {artifacts.SPEC_FILE} in {ticket.parent.parent}, the experiment of "
                         f"{ticket}; pass --spec")
    return spec


def _check_out(out: Path, fmt: str, force: bool) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt in _SUFFIX and out.suffix != _SUFFIX[fmt]:
        raise UsageError(f"--out: {out} must end in {_SUFFIX[fmt]} for --format {fmt}")
    if not out.parent.is_dir():
        raise UsageError(f"--out: {out.parent} is not a directory")
    if (out.exists() or out.is_symlink()) and not force:
        raise UsageError(f"--out: {out} exists; pass --force to replace it")


def export(source, fmt: str, out, force: bool = False, spec=None) -> Exported:
    """Export a finished trial's ticket (module docstring); `spec` (a path or a `config.Spec`) when
    the ticket file lies outside its experiment. UsageError on bad input, before anything is written."""
    out = Path(out).expanduser()
    _check_out(out, fmt, force)
    ticket_path = ticket_file(Path(source))
    spec = spec if spec is not None else spec_file(ticket_path)
    spec = spec if isinstance(spec, config_lib.Spec) else config_lib.load(Path(spec))
    try:
        saved = artifacts.load_ticket(ticket_path, parts=("mask", "final"))
    except artifacts.ArtifactError as e:
        raise UsageError(f"source: {e}") from None
    if not saved["mask"] or not saved["final"]:
        raise UsageError(f"source: {ticket_path} holds no mask and trained weights")

    try:
        masked = masked_model(spec, saved["final"], saved["mask"])
        thin, removed = thinner(masked, saved["mask"])
    except ValueError as e:  # a --spec whose model is not the ticket's
        raise UsageError(f"source: {ticket_path} does not fit the spec's model: {str(e).splitlines()[0]}") from None
    error = _logit_error(masked, thin, spec.seed)
    result = Exported(out, fmt, thin.count_params(), masked.count_params(), removed, 0, error)
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    _remove(tmp)
    try:
        if fmt == "keras":
            thin.save(tmp)
        elif fmt == "saved_model":
            thin.export(str(tmp), format="tf_saved_model", verbose=False)
        else:
            tmp.write_bytes(to_tflite(thin, sparse=True))
            result.sparse_tensors, result.dense_tensors = sparse_report(tmp, thin)
        _remove(out)
        tmp.replace(out)
    finally:
        _remove(tmp)
    result.bytes = _size(out)
    return result


def masked_model(spec, final: dict, mask: dict):
    """The trial's network as tickets trains it, with its trained weights, masked."""
    from tickets import models

    classes = [v for k, v in final.items() if k.endswith("/kernel")][-1].shape[-1]
    size = spec.data.image_size
    model = models.build(spec.model, (size, size, 3), int(classes), seed=0)  # tickets' data is RGB
    weights = {k: (v * mask[k] if k in mask else v) for k, v in final.items()}
    models.set_weights(model, weights)
    return model


def thinner(model, mask: dict):
    """A plain Keras model without the channels no consumer reads (`channels.widths`) and with
    Keras's own BatchNormalization, carrying `model`'s weights; and how many channels went."""
    import keras

    from tickets import models, pruning

    lay = pruning.Layout.of(models.layout(model))
    full = {n: np.asarray(mask[n], bool) if n in mask else np.ones(lay.shapes[n], bool) for n in lay.names}
    widths = channels.widths(full, lay)
    by_layer = {n.split("/")[0]: w for n, w in widths.items()}
    config = model.get_config()
    keep: dict[str, np.ndarray | None] = {}  # layer -> its output channels kept (None: all)
    slices: dict[str, tuple] = {}  # layer -> (input keep, output keep) for its variables
    removed = 0
    for layer in config["layers"]:
        name, cls = layer["config"]["name"], layer["class_name"]
        parents = models.inbound(layer)
        incoming = keep.get(parents[0]) if len(parents) == 1 else None
        if len(parents) > 1 and any(keep.get(p) is not None and not keep[p].all() for p in parents):
            raise ValueError(f"Received a mask that thins an input of {name!r}, which joins several layers")
        if name in by_layer:
            ins, outs = by_layer[name]
            if cls == "DepthwiseConv2D":
                outs = ins
            elif cls == "Conv2D":
                layer["config"]["filters"] = int(outs.sum())
                removed += int((~outs).sum())
            elif cls == "Dense":
                layer["config"]["units"] = int(outs.sum())
                removed += int((~outs).sum())
            slices[name] = (ins, outs)
            keep[name] = outs
        elif cls == "Flatten" and incoming is not None:
            keep[name] = np.resize(incoming, int(np.prod(model.get_layer(name).output.shape[1:])))
        else:
            keep[name] = incoming
            if incoming is not None and cls.endswith("BatchNormalization"):
                slices[name] = (incoming, incoming)
        layer.pop("build_config", None)  # widths as they were: the layers are built anew from their inputs
        if cls == "FusedBatchNormalization":  # Keras's own layer: the model loads without tickets
            layer.update(module="keras.layers", class_name="BatchNormalization", registered_name=None)
    thin = keras.Model.from_config(config)
    for old in model.layers:
        new = thin.get_layer(old.name)
        values = [keras.ops.convert_to_numpy(v) for v in old.weights]
        if old.name in slices:
            ins, outs = slices[old.name]
            values = [_slice(v, ins, outs, type(old).__name__) for v in values]
        new.set_weights(values)
    return thin, removed


def _slice(value: np.ndarray, ins: np.ndarray, outs: np.ndarray, cls: str) -> np.ndarray:
    if cls.endswith("BatchNormalization"):  # gamma, beta and the statistics: per channel it passes on
        return value[ins]
    if value.ndim == 1:  # a bias: per output channel (a depthwise convolution's outputs are its inputs)
        return value[outs]
    if cls == "DepthwiseConv2D":
        return value[:, :, ins, :]
    return value[..., ins, :][..., outs]


def _logit_error(masked, thin, seed: int) -> float:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(8, *masked.input_shape[1:])).astype(np.float32)
    a = np.asarray(masked(x, training=False))
    b = np.asarray(thin(x, training=False))
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def to_tflite(model, sparse: bool = True) -> bytes:
    """A Keras model as a TFLite flatbuffer (float32); with `sparse`, weights the converter finds sparse
    enough stored in TFLite's sparse encoding."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    with contextlib.redirect_stdout(io.StringIO()):  # the SavedModel it goes through lists every variable
        return converter.convert()


def sparse_report(path: Path, model) -> tuple[list[str], list[str]]:
    """Which of the model's pruned kernels the TFLite file stores sparse, and which it kept dense
    (LiteRT's interpreter: a tensor with sparsity parameters is stored in the sparse encoding)."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(path)).get_tensor_details()
    sparse = [(int(np.prod(d["shape"])), d["name"]) for d in details if d.get("sparsity_parameters")]

    def stored(path: str, size: int) -> bool:  # the converter names a constant after the layer using it
        layer = re.escape(path.split("/")[0])
        return any(n == size and re.search(rf"(^|[/;]){layer}(_\d+)?/", name) for n, name in sparse)

    pruned = [(v.path, int(np.size(v))) for v in model.weights
              if v.path.endswith("/kernel") and np.count_nonzero(np.asarray(v.value) == 0) > 0]
    return ([p for p, n in pruned if stored(p, n)], [p for p, n in pruned if not stored(p, n)])


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tickets.export", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="a finished trial dir, or its ticket.npz")
    p.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--out", required=True, type=Path, help="the file (.keras, .tflite) or SavedModel dir to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--spec", type=Path, help="the experiment's spec.yaml, when the ticket lies outside its experiment")
    args = p.parse_args(argv)
    try:
        if args.spec is not None and not args.spec.is_file():
            raise UsageError(f"--spec: {args.spec} is not a file")
        spec = config_lib.load(args.spec) if args.spec is not None else None
        done = export(args.source, args.format, args.out, args.force, spec)
    except (UsageError, config_lib.SpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {done.format} to {done.path} ({done.bytes / 1e6:.2f} MB): {done.params:,} parameters "
          f"({100 * done.params / done.dense_params:.1f} % of the network with every channel), "
          f"{done.channels_removed:,} channels removed; logits within {done.max_logit_error:.1e} (relative) "
          "of the masked model's on a random batch")
    if done.format == "tflite":
        print(f"tflite: {len(done.sparse_tensors)} pruned kernels stored sparse, {len(done.dense_tensors)} kept dense "
              f"by the converter{': ' + ', '.join(done.dense_tensors) if done.dense_tensors else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
