"""The Ray session a sweep runs in: start a local Ray (token authentication on, dashboard on
loopback) or join a cluster, size each trial and the dense run to its nodes, and the runtime env of
a process that trains."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import ray

from tickets import config as config_lib
from tickets.config import SpecError

HEAD_NODE = "node:__internal_head__"  # the resource Ray gives the head node alone


def on_head_node() -> dict:
    """Options that place a small driver-side actor (a board trials wait on) on the head node, as Ray's
    own controllers are: removing a worker node never takes it along."""
    return {"resources": {HEAD_NODE: 0.001}}


@dataclass(frozen=True)
class Resources:
    cpus: float  # per trial
    gpus: float
    dense_cpus: float  # the dense run: one whole node
    dense_gpus: float
    note: str = ""


def resolve_resources(spec: config_lib.Spec, nodes: list[dict]) -> Resources:
    """Per-trial CPUs and GPUs for this cluster; a request no node can ever meet is an error."""
    r = spec.resources
    max_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    note = ""
    if r.gpus_per_trial == "auto":
        gpus = 1.0 if max_gpus >= 1 else (max_gpus or 0.0)
        if not gpus:
            note = "the cluster has no GPUs: trials run on CPUs"
    else:
        gpus = float(r.gpus_per_trial)
    if r.cpus_per_trial == "auto":
        if gpus:
            # Share each GPU node's CPUs among the trials its GPUs can hold.
            cpus = min((max(1, int(n.get("CPU", 1) * gpus // n["GPU"])) for n in nodes if n.get("GPU", 0) >= gpus),
                       default=1)
        else:
            cpus = 1
    else:
        cpus = float(r.cpus_per_trial)
    if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        shape = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "no nodes"
        field = "resources.gpus_per_trial" if gpus > max_gpus else "resources.cpus_per_trial"
        value = r.gpus_per_trial if field.endswith("gpus_per_trial") else r.cpus_per_trial
        raise SpecError(field, f"{config_lib.show(value)} cannot be met by any node of this cluster ({shape}): "
                               f"trials would wait forever")
    # The dense run is the serial part of every sweep: it takes the largest node whole (the one with
    # the most GPUs when trials use GPUs), every CPU and GPU of it, while nothing else can run yet.
    node = max(nodes, key=lambda n: (n.get("GPU", 0) if gpus else 0, n.get("CPU", 0)))
    dense_gpus = node.get("GPU", 0) if gpus else 0
    if dense_gpus and r.dense_replicas != "auto":
        if r.dense_replicas > dense_gpus:
            raise SpecError("resources.dense_replicas", f"{r.dense_replicas} is more than the {dense_gpus:g} GPUs "
                                                        f"of the largest node, where the dense run trains")
        dense_gpus = r.dense_replicas  # one GPU per replica; the node's other GPUs stay free
    return Resources(cpus, gpus, node.get("CPU", 1), dense_gpus, note)


def local_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        return sum(1 for line in out.splitlines() if line.startswith("GPU "))
    return 0


def training_env(cpus: float, gpus: float, role: str) -> dict:
    """The runtime env of a task that trains. Ray keeps a worker pool per runtime env, so the task
    runs in a process that only such tasks use (never, say, the data-loading worker, whose
    `tf.data` has already started TensorFlow with its default pools); TensorFlow reads the thread
    counts from the environment whenever it starts, and `runtime_lib.configure` sets the same."""
    threads = max(1, int(cpus))
    return {"env_vars": {"TICKETS_WORKER": role, "TF_NUM_INTRAOP_THREADS": str(threads),
                         "TF_NUM_INTEROP_THREADS": str(min(2, threads) if gpus else 1)}}


def start_ray(args: argparse.Namespace) -> tuple[bool, str, str]:
    """Connect or start Ray; returns (whether we started it, a line describing the cluster, where
    the workers' output goes). Workers' output reaches this terminal only with --verbose."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # workers inherit it: no TensorFlow banner per trial
    quiet = {"log_to_driver": args.verbose, "logging_level": logging.INFO if args.verbose else logging.WARNING}
    if ray.is_initialized():
        return False, "the Ray instance this process already runs", "that Ray's session logs"
    if args.address:
        ctx = ray.init(address=args.address, **quiet)
        _keep_in_ray_log(ctx, args.verbose)
        return False, f"cluster at {args.address}", _logs(ctx)
    # Ray >= 2.59 (pyproject.toml requires it) turns token authentication on for local instances; the
    # token is created here, readable by this user only, before Ray starts (Ray would write it
    # world-readable first). The dashboard listens on loopback only (reach it from elsewhere through
    # an SSH tunnel). The embedded Ray is one node: it advertises a loopback address, so its traffic
    # stays on this machine (Ray replaces exactly 127.0.0.1 with the interface address, other
    # loopbacks it keeps).
    ctx = init_local(args.num_cpus, args.num_gpus, dashboard=args.dashboard, **quiet)
    _keep_in_ray_log(ctx, args.verbose)
    url = getattr(ctx, "dashboard_url", None)
    return True, f"local Ray (dashboard http://{url})" if url else "local Ray", _logs(ctx)


def init_local(num_cpus: int | None, num_gpus: int | None, dashboard: bool, **options):
    """Start an embedded one-node Ray on loopback, with a private token; returns its context.

    The address it advertises is a loopback one (TICKETS_NODE_IP, default 127.0.0.2: Ray replaces
    exactly 127.0.0.1 with the interface address, other loopbacks it keeps), so its traffic stays on
    this machine. `ray start` has a public --node-ip-address; `ray.init` only the private
    `_node_ip_address`: this is the one place that passes it. `address="local"`: without it
    `ray.init` joins the cluster another `ray start` on this machine last recorded (its
    /tmp/ray/ray_current_cluster); joining one is what `--address` is for.
    """
    private_token(Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"))
    return ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                    _node_ip_address=os.environ.get("TICKETS_NODE_IP", "127.0.0.2"), **options)


# Tune's and Ray Train's driver-side logging goes to Ray's logs (tickets-driver.log) unless --verbose,
# like the rest of their output: a failing storage makes each trial's traceback, the syncer's retries
# and every failed save of the experiment state a traceback of its own, where the CLI prints one
# paragraph (`storage`), and Ray prints each stopped trial's error again as "Unhandled error"; on
# --resume, ExperimentAnalysis warns about the trials that had not started.
# These are logger names, not APIs: Tune's syncer and checkpoint upload log under ray.train's and
# ray.air's internals even for a ray.tune-only program like this one.
_DRIVER_LOGGERS = ("ray.tune", "ray.train", "ray.air", "ray._private.worker")


def _keep_in_ray_log(ctx, verbose: bool) -> None:
    session = getattr(ctx, "address_info", {}).get("session_dir")
    if verbose or not session:
        return
    handler = logging.FileHandler(Path(session) / "logs" / "tickets-driver.log")
    handler.set_name("tickets-driver")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))
    for name in _DRIVER_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == "tickets-driver"]:  # an earlier sweep's
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
        logger.propagate = False


def _logs(ctx) -> str:
    session = getattr(ctx, "address_info", {}).get("session_dir")
    return f"{session}/logs on each node" if session else "Ray's session logs on each node"


def private_token(path: Path) -> None:
    """Ray's auth token at `path`, created with mode 600 if missing (cluster/ray-cluster.sbatch calls it too).

    Two sweeps started at once on a fresh account must not each write their own token, or the first
    one's Ray would run with a token the file no longer holds: the token is written whole to a file of
    this process's and linked into place, which fails if another process got there first.
    """
    if path.is_file() and path.stat().st_size:
        path.chmod(0o600)
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    mine = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(mine, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    try:
        os.link(mine, path)
    except FileExistsError:
        if path.stat().st_size:  # another process's token, whole: everyone uses it
            path.chmod(0o600)
        else:  # an empty file (one cut short) holds no token: replaced
            os.replace(mine, path)
    finally:
        mine.unlink(missing_ok=True)
