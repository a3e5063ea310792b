"""Figure 13: tickets' masked training step against the PyTorch peer's, on the same CPU.

OpenLTH, the tool users would otherwise pick, trains with PyTorch. The peer here is the same network
— the preset's Keras model translated layer by layer (`TorchTwin`), the same initial weights, the same
ticket's masks — trained by a plain PyTorch loop as OpenLTH's would be: eager, NCHW, the preset's
optimizer, the masks multiplied in after every step. Each side runs warm in a process of its own
(`programs/peer_worker.py`), and the rounds alternate between them, so a noisy neighbour or a clock
change hits both; the figure is the median of each side's rounds. PyTorch is a bench extra
(`pip install torch`); without it the figure says "skipped".
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from benchmarks.bench import PROGRAMS, Bench, env, log

# (preset, sparsity of the ticket): the preset's model and batch, a 90 % ticket's masks.
MODELS = {"mobilenet_v2": "mobilenetv2-cifar10", "conv2": "conv2-cifar10"}
SPARSITY = 0.9
PAUSE_S = 1.0


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


class _Side:
    """A warm worker process: one side of the comparison."""

    def __init__(self, side: str, preset: str, threads: int):
        self.proc = subprocess.Popen([sys.executable, str(PROGRAMS / "peer_worker.py"), side, preset, str(threads),
                                      str(SPARSITY)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env(OMP_NUM_THREADS=str(threads)))
        self.setup = self._answer()

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"peer_worker.py failed ({self.proc.returncode}); run it by hand to see why")
        return json.loads(line)

    def run(self, steps: int) -> dict:
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def compare(preset: str, threads: int, steps: int, rounds: int, sides=("tickets", "torch")) -> dict:
    """Images/s of each side, median of `rounds` interleaved rounds of `steps` steps."""
    warm = {}
    try:
        for side in sides:  # one at a time: each traces or warms up on every core
            warm[side] = _Side(side, preset, threads)
        rates = {side: [] for side in sides}
        masked = 0.0
        for _ in range(rounds):
            for side, worker in warm.items():
                # Idle thread pools spin a while before they sleep (OpenMP's, Eigen's): the next
                # side starts once the last one's have gone quiet.
                time.sleep(PAUSE_S)
                answer = worker.run(steps)
                rates[side].append(answer["images_per_s"])
                masked = max(masked, answer["masked_max"])
    finally:
        for worker in warm.values():
            worker.close()
    out = {"preset": preset, "threads": threads, "steps": steps, "rounds": rounds,
           "batch": warm[sides[0]].setup["batch"], "masked_weight_max": masked,
           "images_per_s": {side: statistics.median(r) for side, r in rates.items()},
           "rounds_images_per_s": rates, "setup": {side: w.setup for side, w in warm.items()}}
    return out


def peer_step(bench: Bench) -> dict:
    """Figure 13: tickets over PyTorch, images/s, for MobileNetV2 and Conv-2 at every thread count
    asked for; `measured` is the worst ratio."""
    if _torch() is None:
        return {"skipped": "PyTorch is not installed (pip install torch)"}
    s = bench.size["peer"]
    out = {"runs": []}
    for arch, preset in MODELS.items():
        for threads in [t or bench.machine["cpus"] for t in s["threads"]]:  # None: every core
            log(f"figure 13: {arch}, {threads} thread(s)")
            run = compare(preset, threads, s["steps"], s["rounds"], tuple(s["sides"]))
            run["arch"] = arch
            run["ratio"] = run["images_per_s"]["tickets"] / run["images_per_s"]["torch"]
            out["runs"].append(run)
    out["measured"] = min(r["ratio"] for r in out["runs"])
    return out


# ---------------------------------------------------------------------------------------------
# The PyTorch twin of a Keras model.


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same': the extra row or column goes after (bottom, right)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class TorchTwin:
    """The Keras functional model as PyTorch modules run in the graph's order, NCHW, holding copies
    of the Keras weights (kernels transposed to PyTorch's layouts). Supports the layers of tickets'
    models: Conv2D, DepthwiseConv2D, BatchNormalization, ReLU, ZeroPadding2D, Add, MaxPooling2D,
    GlobalAveragePooling2D, Flatten, Dense."""

    def __init__(self, model):
        import keras
        import torch
        from torch import nn

        from tickets import models

        self.torch, self.nn = torch, nn
        self.modules = nn.ModuleDict()
        # Keras weight path -> (PyTorch parameter name, the array in PyTorch's layout): masks too.
        self.layout: dict[str, tuple[str, object]] = {}
        self.graph = []  # (layer name, kind, inbound names, options)
        configs = {c["name"]: c for c in model.get_config()["layers"]}
        for layer in model.layers:
            kind, opts = type(layer).__name__, {}
            inbound = models.inbound(configs[layer.name])
            opts["relu"] = getattr(layer, "activation", None) is keras.activations.relu
            kernel = None  # the kernel's layout in PyTorch
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                kh, kw, cin, mult = layer.kernel.shape
                m = nn.Conv2d(cin, cin * mult, (kh, kw), stride=layer.strides, groups=cin, bias=layer.use_bias)
                kernel = lambda a, s=(cin * mult, 1, kh, kw): a.transpose(2, 3, 0, 1).reshape(s)  # noqa: E731
                opts |= {"padding": layer.padding, "kernel": (kh, kw), "stride": layer.strides}
            elif isinstance(layer, keras.layers.Conv2D):
                kh, kw, cin, cout = layer.kernel.shape
                m = nn.Conv2d(cin, cout, (kh, kw), stride=layer.strides, bias=layer.use_bias)
                kernel = lambda a: a.transpose(3, 2, 0, 1)  # noqa: E731
                opts |= {"padding": layer.padding, "kernel": (kh, kw), "stride": layer.strides}
            elif isinstance(layer, keras.layers.Dense):
                cin, cout = layer.kernel.shape
                m = nn.Linear(cin, cout, bias=layer.use_bias)
                source = model.get_layer(inbound[0])
                if isinstance(source, keras.layers.Flatten):  # Keras flattens (h, w, c), PyTorch (c, h, w)
                    h, w, c = source.input.shape[1:]
                    kernel = lambda a, s=(h, w, c, cout), n=cin: a.reshape(s).transpose(2, 0, 1, 3).reshape(n, -1).T  # noqa: E731,E501
                else:
                    kernel = lambda a: a.T  # noqa: E731
            elif isinstance(layer, keras.layers.BatchNormalization):
                m = nn.BatchNorm2d(layer.gamma.shape[0], eps=layer.epsilon, momentum=1 - layer.momentum)
                self._keep(layer.gamma, f"{layer.name}.weight", m.weight)
                self._keep(layer.beta, f"{layer.name}.bias", m.bias)
                m.running_mean.copy_(torch.from_numpy(layer.moving_mean.numpy()))
                m.running_var.copy_(torch.from_numpy(layer.moving_variance.numpy()))
            elif isinstance(layer, keras.layers.ReLU):
                m = nn.ReLU6() if layer.max_value is not None and float(layer.max_value) == 6.0 else nn.ReLU()
            elif isinstance(layer, keras.layers.ZeroPadding2D):
                (top, bottom), (left, right) = layer.padding
                m, opts["pad"] = None, (left, right, top, bottom)
            elif isinstance(layer, keras.layers.MaxPooling2D):
                m = nn.MaxPool2d(layer.pool_size, layer.strides)
            elif isinstance(layer, (keras.layers.InputLayer, keras.layers.Add, keras.layers.GlobalAveragePooling2D,
                                    keras.layers.Flatten, keras.layers.Dropout)):
                m = None
            else:
                raise ValueError(f"TorchTwin: no translation for {kind} ({layer.name})")
            if kernel is not None:
                self._keep(layer.kernel, f"{layer.name}.weight", m.weight, kernel)
                if layer.use_bias:
                    self._keep(layer.bias, f"{layer.name}.bias", m.bias)
            if m is not None:
                self.modules[layer.name] = m
            self.graph.append((layer.name, kind, inbound, opts))
        self.output = model.layers[-1].name

    def _keep(self, variable, name: str, param, layout=lambda a: a) -> None:
        self.layout[variable.path] = (name, layout)
        with self.torch.no_grad():
            param.copy_(self.torch.from_numpy(layout(variable.numpy()).copy()))

    def torch_array(self, path: str, value):
        """A Keras-layout array of the weight at `path` (its mask) in its PyTorch parameter's layout."""
        name, layout = self.layout[path]
        return name, self.torch.from_numpy(layout(value).copy())

    def parameters(self):
        return self.modules.parameters()

    def train(self, mode: bool = True):
        self.modules.train(mode)

    def __call__(self, x):
        F = self.nn.functional
        values = {}
        for name, kind, inbound, opts in self.graph:
            if kind == "InputLayer":
                values[name] = x
                continue
            inputs = [values[i] for i in inbound]
            y = inputs[0]
            if kind in ("Conv2D", "DepthwiseConv2D"):
                if opts["padding"] == "same":
                    top, bottom = _same_padding(y.shape[2], opts["kernel"][0], opts["stride"][0])
                    left, right = _same_padding(y.shape[3], opts["kernel"][1], opts["stride"][1])
                    if top == bottom and left == right:
                        m = self.modules[name]
                        y = F.conv2d(y, m.weight, m.bias, m.stride, (top, left), groups=m.groups)
                    else:
                        y = self.modules[name](F.pad(y, (left, right, top, bottom)))
                else:
                    y = self.modules[name](y)
            elif kind == "ZeroPadding2D":
                y = F.pad(y, opts["pad"])
            elif kind == "Add":
                y = sum(inputs[1:], inputs[0])
            elif kind == "GlobalAveragePooling2D":
                y = y.mean((2, 3))
            elif kind == "Flatten":
                y = y.flatten(1)
            elif kind != "Dropout":
                y = self.modules[name](y)
            if opts.get("relu"):
                y = F.relu(y)
            values[name] = y
        return values[self.output]

    def check(self, model, x) -> float:
        """The largest absolute difference of the two models' logits on `x`, relative to the largest
        logit, in training mode (batch statistics: at initialisation MobileNetV2's inference-mode
        logits are ~1e-10, its activations halving layer after layer)."""
        import numpy as np

        with self.torch.no_grad():
            mine = self(self.torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        theirs = model(x, training=True).numpy()
        return float(np.abs(mine - theirs).max() / np.abs(theirs).max())


def torch_trainer(twin: TorchTwin, spec, mask: dict):
    """One training step of `twin` as a plain PyTorch loop would take it (the preset's optimizer,
    the masks multiplied in after the update, as Keras's constraint does), and a check that the
    masks held: the largest absolute weight where the mask is 0."""
    torch = twin.torch
    o = spec.dense.optimizer
    params = dict(twin.modules.named_parameters())
    if o.name == "sgd":
        optimizer = torch.optim.SGD(twin.parameters(), lr=o.learning_rate, momentum=o.momentum,
                                    nesterov=o.nesterov, weight_decay=o.weight_decay)
    else:
        optimizer = torch.optim.Adam(twin.parameters(), lr=o.learning_rate, weight_decay=o.weight_decay)
    masked = []
    for path, m in mask.items():
        name, value = twin.torch_array(path, m.astype("float32"))
        param = params[name]
        with torch.no_grad():
            param.mul_(value)
        masked.append((param, value))
    loss_fn = torch.nn.CrossEntropyLoss()
    twin.train(True)

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(twin(x), y).backward()
        optimizer.step()
        with torch.no_grad():
            for param, value in masked:
                param.mul_(value)

    def held() -> float:
        return max(float(p.detach()[v == 0].abs().max()) if (v == 0).any() else 0.0 for p, v in masked)

    return step, held
