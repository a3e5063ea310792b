"""The dense run trained beside the starting grid, on a multi-node cluster.

The dense run takes one node whole; trials placed on the other nodes import TensorFlow, build and
trace their model while it trains, then wait on a `DenseBoard` for its snapshots, so they train as
soon as it ends. `DenseBeside` runs it from a driver thread, its node reserved by a placement group
before any trial is placed, and freed for trials when it ends. On one node (`overlaps` is false) the
sweep trains the dense run first instead (`dense.dense_refs`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

from tickets import config as config_lib
from tickets.dense import DenseRefs, announce, dense_task, put_snapshots, trained
from tickets.errors import last_line
from tickets.session import Resources, on_head_node


@ray.remote(num_cpus=0)
class DenseBoard:
    """Where trials that started beside the dense run (on resources it does not use) wait for its
    snapshots, already warmed up; the driver publishes the refs, or why there will be none."""

    def __init__(self):
        self._published = asyncio.Event()
        self._refs, self._error = None, None

    async def publish(self, refs: dict) -> None:
        self._refs = refs
        self._published.set()

    async def fail(self, message: str) -> None:
        self._error = message
        self._published.set()

    async def wait(self) -> dict:
        await self._published.wait()
        if self._error is not None:
            raise RuntimeError(self._error)
        return self._refs


def overlaps(res: Resources, nodes: list[dict]) -> bool:
    """Whether trials can start beside the dense run, on a node it leaves free: it takes one node
    whole, so at least one other must hold a trial. Never on one node, where it would slow the run."""
    return sum(n.get("CPU", 0) >= res.cpus and n.get("GPU", 0) >= res.gpus for n in nodes) >= 2


class _Stopped(Exception):
    """The sweep stopped (interrupted, or no trial left to wait) before the dense run ended."""


class DenseBeside:
    """The dense run trained on a thread of the driver while the grid starts: trials placed on the
    nodes it leaves free import TensorFlow, build and trace their model, then wait on a `DenseBoard`
    for the snapshots, so they train as soon as it ends. Its node is reserved (a placement group)
    before any trial is placed, and freed for trials when it ends."""

    LOST_AFTER_S = 60  # its node lost and no whole node free for the retry (trials hold them)

    def __init__(self, spec: config_lib.Spec, exp: Path, res: Resources, spe: int, data_ref: ray.ObjectRef):
        bundle = {"CPU": res.dense_cpus, **({"GPU": res.dense_gpus} if res.dense_gpus else {})}
        self.placement = placement_group([bundle], strategy="STRICT_PACK")
        ray.get(self.placement.ready())
        self.board = DenseBoard.options(**on_head_node()).remote()
        announce(spec, exp, spe, None)
        self.task = dense_task(spec, exp, res, data_ref, self.placement)
        self.refs = DenseRefs.of(spec, spe, {}, data_ref, board=self.board)
        self.error: BaseException | None = None
        self.stopping = False
        self._unplaced_since: float | None = None
        self.thread = threading.Thread(target=self._run, args=(spec, exp, spe, data_ref), daemon=True)
        self.thread.start()

    def _run(self, spec, exp, spe, data_ref) -> None:
        try:
            done = put_snapshots(spec, exp, spe, trained(spec, exp, spe, self.task, self._check), data_ref)
            self.board.publish.remote(done.snapshots)
        except _Stopped:
            self.board.fail.remote("the sweep stopped before the dense run ended")
        except BaseException as e:  # noqa: BLE001 - every failure must reach the waiting trials
            self.error = e
            self.board.fail.remote(f"the dense run failed: {last_line(e)}")
        finally:
            remove_placement_group(self.placement)  # frees its node for trials; kills the run if it still runs

    def _check(self) -> None:
        if self.stopping:
            raise _Stopped()
        if placement_group_table(self.placement).get("state") == "CREATED":
            self._unplaced_since = None
            return
        self._unplaced_since = self._unplaced_since or time.monotonic()
        if time.monotonic() - self._unplaced_since > self.LOST_AFTER_S:
            raise RuntimeError(f"the dense run's node was lost and no whole node has been free for "
                               f"{self.LOST_AFTER_S} s to train it again (trials wait on the others)")

    def join(self) -> BaseException | None:
        """Once the grid has stopped (before Ray stops): the dense run's error, if it failed. A run
        still going (the grid was interrupted, or every trial failed) is stopped: the sweep says why."""
        self.stopping = True
        self.thread.join()
        return self.error
