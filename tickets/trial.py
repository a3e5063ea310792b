"""A trial in its training process: the grid point it trains, its ticket, the columns every row of
it carries, its training and its instability twin.

The trainable (`tickets.trainable`) owns everything Ray and Tune: it fetches the dense snapshots and
masks this needs, restores checkpoints and reports. It imports this module only after
`worker.start` has sized TensorFlow, since this imports the training stack (Keras, TensorFlow).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import keras

from tickets import artifacts, channels, instability, interpolation, pipeline, pruning, seeds, training
from tickets import masks as masks_lib
from tickets import ticket as ticket_lib
from tickets.config import GRID_KEYS, Spec, step_of
from tickets.data import Dataset
from tickets.early_stop import EarlyStop
from tickets.seeds import Stream
from tickets.ticket import Ticket
from tickets.training import Progress, SparseState


@dataclass(kw_only=True)
class Trial:
    """One grid point (`point`: the trial's config) trained in this process."""

    spec: Spec
    data: Dataset
    point: dict
    steps_per_epoch: int
    dense_hash: str
    process: dict  # where and how this process trains: the row's node, devices, threads and precision
    model: keras.Model = field(init=False)  # compiled once per worker process, reused by its trials

    def __post_init__(self):
        self.model = training.sparse_model(self.spec, self.data)

    @property
    def rewind_epoch(self) -> float:
        return float(self.point["rewind_epoch"])

    @property
    def rewind_step(self) -> int:
        return step_of(self.rewind_epoch, self.steps_per_epoch)

    @property
    def control(self) -> str:
        return str(self.point["control"])

    @property
    def replicate(self) -> int:
        return int(self.point["replicate"])

    @property
    def level(self) -> int | None:
        return int(self.point["level"]) if "level" in self.point else None

    def seed(self, stream: Stream = Stream.SPARSE_DATA) -> int:
        """The seed of one of this replicate's streams: by default its data order and augmentation."""
        return seeds.stream_seed(self.spec.seed, self.replicate, stream)

    def warm_up(self) -> None:
        """Trace the train and test steps now (started beside the dense run, which is still training)."""
        training.warm_up(self.spec, self.data)

    def ticket(self, final=None, rewind=None, chain_mask=None, source=None, known_mask=None) -> tuple[Ticket, dict]:
        """This point's ticket (`ticket.for_point`) and the columns every row of the trial carries.
        The sparsity column is the grid's value, or for a level the sparsity that level reached."""
        ticket, reinitialised = ticket_lib.for_point(self.spec, self.model, self.point, final, rewind,
                                                     chain_mask, source, self.score_batches, known_mask)
        base = {**self.columns(ticket), "classifier_reinitialised": reinitialised, "level": self.level}
        base["sparsity"] = float(self.point["sparsity"]) if "sparsity" in self.point else base["actual_sparsity"]
        return ticket, base

    def score_batches(self) -> list:
        """The training batches SNIP and GraSP score at initialization: `pruning.init_batches` of the
        replicate's INIT_SCORE stream, augmented as in training."""
        batches = pipeline.train_batches(self.data, self.spec.data, self.seed(Stream.INIT_SCORE), 0,
                                         self.spec.pruning.init_batches, self.process.get("data_threads", 0))
        return list(batches)

    def imp_level(self, level: int, trained: ticket_lib.Weights, previous: masks_lib.Mask | None,
                  rewind: ticket_lib.Weights) -> Ticket:
        """An IMP chain's `level` (`ticket.imp_level`); level 0, the dense network rewound, is its
        instability baseline (`ticket.dense_ticket`)."""
        if level == 0:
            return ticket_lib.dense_ticket(self.spec, self.model, rewind)
        return ticket_lib.imp_level(self.spec, self.model, trained, previous, rewind)

    def columns(self, ticket: Ticket) -> dict:
        """What a trial's every row says of its mask and process. A mask that cuts the network
        trains a network that cannot learn: every row says so; an emptied residual branch
        (skipped) and the narrowest layer (near-collapse) too."""
        summary = masks_lib.report(ticket.mask, ticket.threshold)
        lay = ticket_lib.layout(self.model)
        health = pruning.check(ticket.mask, lay)
        kept, kernels = pruning.kept_total(ticket.mask, lay)
        thin, _, dense = channels.flops(ticket.mask, lay)
        narrowest = health.narrowest or ("", -1, -1)
        return {"rewind_epoch": self.rewind_epoch, "control": self.control, "replicate": self.replicate,
                "collapsed_layers": ", ".join(health.cuts), "emptied_branches": ", ".join(health.branches),
                "narrowest_layer": narrowest[0], "narrowest_live_channels": narrowest[1],
                "narrowest_channels": narrowest[2],
                "rewind_step": self.rewind_step, "actual_sparsity": summary["sparsity"],
                "weights_remaining": summary["weights_remaining"], "weights_remaining_count": summary["remaining"],
                "prunable_weights": summary["total"], "weights_remaining_total": kept / kernels,
                "kernel_weights": kernels,
                "channels_removed": channels.removed_share(
                    ticket.mask, channels.prunable(lay, pruning.prunable(self.spec.pruning, lay))),
                "flops_left": thin / dense,
                "threshold": summary["threshold"] if summary["threshold"] is not None else float("nan"),
                "dense_hash": self.dense_hash, **self.process}

    def state(self, saved: dict) -> SparseState:
        """A run's state as a checkpoint (`artifacts.load_state`) or a level file saved it."""
        stop = EarlyStop(**saved["early_stop"]) if "early_stop" in saved else EarlyStop()
        return SparseState(saved["step"], saved["weights"], saved["optimizer"], stop)

    def train(self, ticket: Ticket, resume: SparseState | None = None) -> Iterator[tuple[Progress, SparseState]]:
        """Masked training from the rewind step to the end of the dense schedule (`training.train_sparse`)."""
        return training.train_sparse(self.spec, self.data, ticket, self.rewind_step, self.seed(), resume)

    def wants_twin(self) -> bool:
        return instability.wanted(self.spec.instability.enabled, self.control)

    def twin(self, ticket: Ticket, first: ticket_lib.Weights, trial_dir: Path, level: int | None = None) -> dict:
        """Instability analysis of the network the trial (or the IMP chain's `level`) trained to `first`:
        train its twin -- the same start, the TWIN stream's data order and augmentation, to the same
        end -- or continue it from its file after a restart, evaluate the line between the two
        copies, write it beside the trial, and return the row's instability columns."""
        started, path = time.perf_counter(), artifacts.twin_file(trial_dir, level)
        saved = artifacts.load_twin(path)
        resume = SparseState(saved["step"], saved["weights"], saved["optimizer"]) if saved else None
        seed = self.seed(Stream.TWIN)
        progress, state = (saved["progress"], resume) if saved else (None, None)
        for p, state in training.train_sparse(self.spec, self.data, ticket, self.rewind_step, seed, resume):
            progress = vars(p)
            artifacts.save_twin(path, state.step, state.weights, state.optimizer, progress)
        curve = interpolation.path(self.spec, self.data, self.model, first, state.weights, seed)
        artifacts.save_curve(artifacts.curve_file(trial_dir, level), curve)
        return {**instability.columns(curve, progress, self.spec.instability.batchnorm),
                "twin_resumed_from_step": saved["step"] if saved else -1,
                "twin_seconds": time.perf_counter() - started}

    def info(self, base: dict, **more) -> dict:
        """The `info` a ticket or level file keeps: the grid point, what it was made from, and `more`."""
        return {**{k: base.get(k) for k in GRID_KEYS}, "rewind_step": self.rewind_step,
                "spec_hash": self.spec.spec_hash(), "dense_hash": self.dense_hash, **more}
