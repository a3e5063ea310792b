"""IMP's hand-off from its ticket chains to their controls, through Ray.

An IMP ticket chain (one per rewind epoch and replicate) prunes, rewinds and retrains level after
level; each other control at each level is a trial of its own that trains the chain's mask of that
level, as OpenLTH runs controls as branches of a stored level. Three parts, each one thing:

- `LevelBoard`, a small actor on the head node: a chain publishes each level's mask there as soon
  as the level is trained; a control asks it for its level's mask and waits until it is there, or
  until the chain has failed for good (then the control fails with the chain's one-line error).
- `GridQueue`, the searcher: every chain at once, and a control of level k only once its chain has
  reported level k (its mask is on the board by then), so no control holds a slot waiting and
  controls train beside the chains' next levels. (It also queues a one-shot grid that is not a
  whole product, which Tune's grid search cannot express.)
- `ChainErrors`, a Tune callback: a chain that failed for good fails its controls on the board.

The board lives as long as the driver. On `--resume` a new board starts with the levels the chains
wrote to their trial dirs before (`level_board`); a failed chain trains again, so its controls wait
for it instead of failing.
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from pathlib import Path

import ray
from ray import tune
from ray.tune.search import Searcher

from tickets import artifacts, grid
from tickets.config import Spec
from tickets.errors import trial_error
from tickets.session import on_head_node

Chain = tuple[float, int]  # grid.chain_of: (rewind epoch, replicate)


@ray.remote(num_cpus=0)
class LevelBoard:
    """Each IMP chain's masks by level, and the chains that failed for good with their errors."""

    def __init__(self):
        self._masks: dict[tuple[Chain, int], ray.ObjectRef] = {}
        self._errors: dict[Chain, str] = {}
        self._changed = asyncio.Condition()

    async def publish(self, chain: Chain, level: int, mask: dict) -> None:
        # Put by the board, so the board owns it: the chain's worker may die before a control reads it.
        ref = ray.put(mask)
        async with self._changed:
            self._masks[(tuple(chain), level)] = ref
            self._changed.notify_all()

    async def fail(self, chain: Chain, error: str) -> None:
        async with self._changed:
            self._errors[tuple(chain)] = error
            self._changed.notify_all()

    async def wait(self, chain: Chain, level: int) -> tuple[list[ray.ObjectRef], str | None]:
        """([the ref of the chain's mask of `level`], None) once it is published, or ([], the chain's
        error) once the chain has failed without reaching `level`."""
        key = (tuple(chain), level)
        async with self._changed:
            await self._changed.wait_for(lambda: key in self._masks or key[0] in self._errors)
        if key in self._masks:  # the level exists: a later failure of its chain does not undo it
            return [self._masks[key]], None
        return [], self._errors[key[0]]


def board_name(exp: Path) -> str:
    """The board's actor name, one per experiment dir (`ChainErrors` finds it by name)."""
    return f"tickets-levels-{hashlib.sha256(str(exp).encode()).hexdigest()[:16]}"


def level_board(spec: Spec, exp: Path, dense_hash: str, resume: bool):
    """A new board for the sweep in `exp`; on `--resume`, with the levels its chains wrote before
    (read once, from the chains' own trial dirs: their `level_<k>.npz`, of this dense run)."""
    try:  # an earlier sweep of `exp` in this Ray session left its board
        ray.kill(ray.get_actor(board_name(exp)))
    except ValueError:
        pass
    board = LevelBoard.options(name=board_name(exp), **on_head_node()).remote()
    if resume:
        published = []
        for trial, config in artifacts.trial_params(exp).items():
            if not grid.is_chain(config):
                continue
            for level in range(1, spec.pruning.num_levels() + 1):
                path = artifacts.level_file(trial, level)
                try:
                    saved = artifacts.load_ticket(path, parts=("mask",)) if path.is_file() else None
                except artifacts.ArtifactError:  # cut short when its chain was killed: trained again
                    saved = None
                if saved is None:
                    break
                if saved["info"].get("dense_hash") == dense_hash:
                    published.append(board.publish.remote(grid.chain_of(config), level, saved["mask"]))
        ray.get(published)
    return board


def chain_mask(board, config: dict) -> dict:
    """The mask an IMP control trains (`config`: the control's point): its chain's mask of its level,
    waited for on the board. A chain that failed for good fails the control with its error."""
    chain, level = grid.chain_of(config), int(config["level"])
    found, error = ray.get(board.wait.remote(chain, level))
    if error is not None:
        raise RuntimeError(f"the ticket chain (rewind epoch {chain[0]:g}, replicate {chain[1]}) failed before "
                           f"level {level}: {error}")
    return ray.get(found[0])


class GridQueue(Searcher):
    """A grid's trials in `grid.trial_points` order, each suggested once it can train. IMP: every
    ticket chain at once, a control at level k once its chain has reported level k, or has failed for
    good (the control then fails with the chain's error). A one-shot grid that is not the whole
    product of its axes (`grid.is_product`): every point at once."""

    imp = True  # a class default: queues pickled before one-shot grids had one were IMP's

    def __init__(self, points: list[dict], imp: bool = True):
        super().__init__()
        self.points, self.imp = points, imp
        self.suggested: set[int] = set()
        self.chains: dict[str, Chain] = {}  # trial id -> chain, for the chains suggested
        self.reached: dict[Chain, int] = {}  # chain -> the last level it reported
        self.failed: set[Chain] = set()

    def _ready(self, point: dict) -> bool:
        if not self.imp or grid.is_chain(point):
            return True
        chain = grid.chain_of(point)
        return point["level"] <= self.reached.get(chain, 0) or chain in self.failed

    def suggest(self, trial_id: str):
        if len(self.suggested) == len(self.points):
            return Searcher.FINISHED
        for i, point in enumerate(self.points):
            if i not in self.suggested and self._ready(point):
                self.suggested.add(i)
                if self.imp and grid.is_chain(point):
                    self.chains[trial_id] = grid.chain_of(point)
                return dict(point)
        return None  # nothing can train yet: Tune asks again

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.chains and result.get("level"):
            chain = self.chains[trial_id]
            self.reached[chain] = max(self.reached.get(chain, 0), int(result["level"]))
            self.failed.discard(chain)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.chains and error:
            self.failed.add(self.chains[trial_id])

    def get_state(self) -> dict:
        return {"suggested": self.suggested, "chains": self.chains, "reached": self.reached, "failed": self.failed}

    def set_state(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))


class ChainErrors(tune.Callback):
    """When an IMP ticket chain fails for good, its one-line error goes to the board, where its
    control trials wait for their masks: they fail with it instead of waiting. It holds no handle:
    Tune restores its callbacks from the experiment's saved state on `--resume`, so it finds the
    new driver's board by name."""

    def on_trial_error(self, iteration, trials, trial, **info):
        if not grid.is_chain(trial.config):
            return
        # The experiment dir as this driver names it (Tune moves `trial.path` with a restored experiment).
        name = board_name(Path(trial.path).parent)
        try:
            board = ray.get_actor(name)
        except ValueError:  # no board: a sweep that failed before the grid started
            print(f"warning: the IMP board {name} is gone; the chain's controls fail on their own", flush=True)
            return
        board.fail.remote(grid.chain_of(trial.config), trial_error(trial))
