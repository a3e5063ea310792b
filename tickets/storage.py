"""The experiment's storage while a sweep runs: a write that fails there is one condition, not a
cascade of tracebacks.

The driver probes the experiment dir every few seconds (a small file written, synced and removed)
and reads every failed trial's error. The first storage fault (no space, quota exceeded, read-only
file system, the directory removed or unmounted, permissions changed, an I/O error) stops the sweep
as Ctrl-C does — Tune starts nothing new and saves what it can, running trials keep their last
checkpoint — and the CLI prints one paragraph and exits `EXIT_STORAGE`. While the storage is
healthy it warns once when its free space falls below what the remaining trials are expected to
write, estimated from the finished ones.

Tune saves its experiment state by copying files into the experiment dir, not atomically: a full
disk leaves them cut short, and Tune then restores a broken grid. So the watch holds a reserve
(`RESERVE_FILE`, `TICKETS_RESERVE_MB`) that it frees the moment the disk is full, for Tune's last
save and the results to fit; and it keeps a whole copy of Tune's state files (`STATE_COPIES`), which
`repair_state` puts back before a `--resume` where a save was cut short all the same.
"""

from __future__ import annotations

import errno
import json
import os
import pickletools
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from tickets import artifacts

EXIT_STORAGE = 74  # sysexits.h's EX_IOERR: the sweep stopped because its storage failed
PROBE_EVERY_S = 5.0

# The errors of a storage that cannot take the experiment's writes. Not ENOENT in general (a missing
# input file is not a storage fault): the probe reports a removed experiment dir itself.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ESTALE}
# These say which storage failed without a path; the others only of a path in the experiment (a
# data file that cannot be read is bad input, not a storage fault).
_ANYWHERE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\]", re.IGNORECASE)
_QUOTED_PATH = re.compile(r"'(/[^'\n]*)'")


@dataclass(frozen=True)
class Fault:
    """What failed: the path written to, the errno and its text, the free space there when known."""

    path: Path
    errno: int
    strerror: str
    free_bytes: int | None

    def describe(self) -> str:
        free = f", {self.free_bytes / 2**20:.0f} MiB free" if self.free_bytes is not None else ""
        return f"writing to {self.path} failed: [Errno {self.errno}] {self.strerror}{free}"


_SESSION = re.compile(r"-(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})\.")  # Tune's session in a state file's name
ORPHANS = ".tickets-orphans"  # trial dirs a repaired state no longer knows: kept, never read
STATE_COPIES = ".tickets-state"  # in the experiment dir: the last whole copy of each of Tune's state files
RESERVE_FILE = ".tickets-reserve"  # in the experiment dir while a sweep runs: space kept for its last writes
RESERVE_MB = int(os.environ.get("TICKETS_RESERVE_MB", "64"))


def free_bytes(path: Path) -> int | None:
    """Free space of the file system holding `path` (its nearest existing ancestor); None when the
    storage cannot tell (a stale handle, no permission)."""
    try:
        while not path.exists() and path != path.parent:
            path = path.parent
        return shutil.disk_usage(path).free
    except OSError:
        return None


def fault_of(error: BaseException | str, where: Path) -> Fault | None:
    """The storage fault `error` (an exception, a chained or remote one, or a traceback's text) is,
    or None when it is none."""
    seen = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and _storage(error.errno, error.filename, where):
            path = Path(os.fsdecode(error.filename)) if error.filename else where
            return _fault(path, error.errno, error.strerror or os.strerror(error.errno), where)
        cause = getattr(error, "cause", None) or error.__cause__ or error.__context__
        if cause is None:
            break
        error = cause
    text = error if isinstance(error, str) else str(error)
    for line in text.splitlines() or [text]:
        for number in _ERRNO_TEXT.findall(line):
            # The path: Python's "…: '/path'", or pyarrow's "Failed to open local file '/path'".
            quoted = _QUOTED_PATH.search(line)
            filename = quoted.group(1) if quoted else None
            if _storage(int(number), filename, where):
                path = Path(filename) if filename else where
                # The system's words for it: pyarrow's own ("Error writing bytes to file") say less.
                return _fault(path, int(number), os.strerror(int(number)), where)
    return None


GONE = "the experiment dir is gone (removed or unmounted)"


def _fault(path: Path, number: int, reason: str, where: Path) -> Fault:
    if number == errno.ENOENT:  # only a storage fault where the experiment dir itself is gone
        return Fault(where, number, GONE, None)
    return Fault(path, number, reason, free_bytes(path))


def _storage(number: int | None, filename, where: Path) -> bool:
    if number in _ANYWHERE:
        return True
    if not filename or not Path(os.fsdecode(filename)).absolute().is_relative_to(where.absolute()):
        return False
    if number in STORAGE_ERRNOS:
        return True
    try:
        return number == errno.ENOENT and not where.is_dir()
    except OSError:  # the experiment dir cannot even be looked at
        return True


def hold(exp: Path) -> int | None:
    """An open handle on the experiment dir, for `probe` to tell it from whatever later takes its
    place (while it is open, its inode number cannot be reused)."""
    try:
        return os.open(exp, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None


def probe(exp: Path, held: int | None = None) -> Fault | None:
    """Write, sync and remove a small file in `exp`: None when the storage takes it. `held`, a
    handle from `hold` when the sweep started, tells a removed or unmounted dir from its replacement."""
    try:
        now = exp.stat()
        then = os.fstat(held) if held is not None else now
        moved = then.st_nlink == 0 or (then.st_dev, then.st_ino) != (now.st_dev, now.st_ino)
    except FileNotFoundError:
        moved = True
    except OSError as e:  # a stale handle, no permission on a parent
        return Fault(exp, e.errno or 0, e.strerror or str(e), None)
    if moved:  # the free space where it was says nothing
        return Fault(exp, errno.ENOENT, GONE, None)
    path = exp / f".tickets-probe-{os.getpid()}"
    try:
        with open(path, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return fault_of(e, exp) or Fault(exp, e.errno or 0, e.strerror or str(e), free_bytes(exp))
    finally:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
    return None


@dataclass(frozen=True)
class TrialEnd:
    path: Path
    errored: bool


class StorageWatch(tune.Callback):
    """A Tune callback in the driver: probes the experiment dir, reads failed trials' errors, stops
    the sweep on the first storage fault (`fault`), and warns once about free space. It also keeps
    how each trial ended (`ended`), for the CLI to count without Tune's ResultGrid, which reads every
    failed trial's error pickle back and fails on one a full disk cut short.

    A restored experiment runs the copy of this callback Tune saved with it: that copy takes the
    current experiment (`expect`) when Tune sets it up, and `watching()` finds it."""

    _expected: tuple[Path, int] | None = None  # the grid `expect` says runs next in this process
    _current: StorageWatch | None = None  # the watch Tune set up last in this process

    def __init__(self, exp: Path, total_trials: int):
        self.exp, self.total = exp, total_trials
        self.fault: Fault | None = None
        self.ended: list[TrialEnd] | None = None
        self.warned = False
        self._last = self._copied = 0.0
        self.held: int | None = None
        self._sizes: dict[Path, int] = {}  # finished trials' dirs: their size in bytes

    @classmethod
    def expect(cls, exp: Path, total_trials: int) -> None:
        """The grid about to run: a watch Tune restores with a moved experiment still holds its old
        path, and takes this one instead."""
        cls._expected = (exp, total_trials)

    def setup(self, **info):
        if StorageWatch._expected is not None:
            (self.exp, self.total), StorageWatch._expected = StorageWatch._expected, None
        self.fault, self.ended, self.warned, self._last, self._copied = None, None, False, 0.0, 0.0
        self._sizes = {}
        self.held = hold(self.exp)
        reserve(self.exp)
        StorageWatch._current = self

    def on_experiment_end(self, trials, **info):
        self.ended = [TrialEnd(Path(t.path), t.status == "ERROR") for t in trials]

    def healthy(self) -> bool:
        """Whether the experiment dir takes writes now (after a fault: space freed meanwhile); the
        handle on the dir is let go."""
        release_reserve(self.exp)
        ok = self.fault is None or probe(self.exp, self.held) is None
        if self.held is not None:
            os.close(self.held)
            self.held = None
        return ok

    def __getstate__(self):  # Tune saves its callbacks with the experiment: not the handle
        return {**self.__dict__, "held": None}

    def on_step_begin(self, iteration, trials, **info):
        if self.fault is None and time.monotonic() - self._last >= PROBE_EVERY_S:
            self._last = time.monotonic()
            found = probe(self.exp, self.held)
            if found is not None:
                self._stop(found)

    def on_step_end(self, iteration, trials, **info):
        if self.fault is None and time.monotonic() - self._copied >= PROBE_EVERY_S:
            self._copied = time.monotonic()
            try:
                keep_state(self.exp)
            except OSError:
                pass  # the probe reports it

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.fault is not None:
            return
        try:
            text = Path(trial.error_file).read_text()
        except (OSError, TypeError):  # the error file itself could not be written: probe
            found = probe(self.exp, self.held)
        else:  # the exception's own lines, at the end of the traceback
            found = fault_of("\n".join(text.splitlines()[-5:]), self.exp)
        if found is not None:
            self._stop(found)

    # A trial Tune will retry (resources.max_failures) failed all the same: on a full disk, its
    # retries would fail too.
    on_trial_recover = on_trial_error

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.warned or self.fault is not None:
            return
        done = Path(trial.path)
        if (done / artifacts.TICKET_FILE).exists() and done not in self._sizes:
            self._sizes[done] = _size(done)  # once per trial: a finished trial's dir no longer grows
        left = self.total - sum((Path(t.path) / artifacts.TICKET_FILE).exists() for t in trials)
        free = free_bytes(self.exp)
        if not self._sizes or left <= 0 or free is None:
            return
        each = sum(self._sizes.values()) / len(self._sizes)
        if free < each * left:
            self.warned = True
            print(f"warning: {self.exp} has {free / 2**20:.0f} MiB free; the {left} remaining trial(s) are expected "
                  f"to write about {each * left / 2**20:.0f} MiB ({each / 2**20:.1f} MiB each, as the finished ones "
                  f"did). Free space now, or the sweep stops when it runs out (--resume continues it)", flush=True)

    def _stop(self, fault: Fault) -> None:
        # The Ctrl-C path: Tune stops scheduling, keeps every trial resumable and saves what it can,
        # into the space the reserve held.
        self.fault = fault
        release_reserve(self.exp)
        os.kill(os.getpid(), signal.SIGINT)


def reserve(exp: Path) -> None:
    """Set `RESERVE_MB` aside in `exp` (really allocated), or less where a tenth of the free space is
    less; nothing where the storage cannot allocate."""
    size = min(RESERVE_MB * 2**20, (free_bytes(exp) or 0) // 10)
    if size <= 0:
        return
    try:
        fd = os.open(exp / RESERVE_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except OSError:
        release_reserve(exp)


def release_reserve(exp: Path) -> None:
    try:
        (exp / RESERVE_FILE).unlink(missing_ok=True)
    except OSError:
        pass


def _state_files(directory: Path) -> list[Path]:
    """Tune's saved state: the experiment dir's top-level .json and .pkl files (what Tune reads back)."""
    return sorted(p for p in directory.iterdir() if p.suffix in (".json", ".pkl") and p.is_file())


def whole(path: Path) -> bool:
    """Whether a state file is whole: a pickle (Tune's searcher state is one, whatever its suffix)
    that ends with its STOP opcode, or JSON that parses."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data.startswith(b"\x80"):  # a pickle's PROTO opcode: read to its STOP, which must end the file
        try:
            last = None
            for last in pickletools.genops(data):
                pass
        except Exception:
            return False
        return last is not None and last[0].name == "STOP" and last[2] == len(data) - 1
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def keep_state(exp: Path) -> None:
    """Copy Tune's state files into `STATE_COPIES` when every one of them is whole (one save's set,
    so the grid's and the searcher's states agree), each written then renamed."""
    copies = exp / STATE_COPIES
    files = _state_files(exp)
    changed = [p for p in files if not (copies / p.name).exists()
               or (copies / p.name).stat().st_mtime < p.stat().st_mtime]
    # Read and parsed only when Tune saved again: its state grows with the grid.
    if not changed or not all(whole(p) for p in files):
        return
    copies.mkdir(exist_ok=True)
    for path in changed:
        with artifacts.atomic(copies / path.name) as tmp:
            shutil.copy2(path, tmp)


def repair_state(exp: Path) -> list[str]:
    """Before a `--resume`: Tune's state and the trials' checkpoints, where a save was cut short.
    Returns one line for each thing found or done."""
    return _repair_tune_state(exp) + _checkpoints(exp)


def _repair_tune_state(exp: Path) -> list[str]:
    """Where one of Tune's state files is cut short, it is put back from its whole copy. Where it
    has none (the first save of a driver's session was cut short), every file of that session is
    moved aside (`<name>.broken`) and Tune restores the last whole save of an earlier session; with
    none left, or its `tuner.pkl` lost, everything is moved aside and the grid starts again. Trial
    dirs that the restored save does not know — Tune would start their grid points again in new
    dirs — move to `ORPHANS`: their grid points train again, as they trained before (the same
    seeds, bit-identical on CPU). Nothing is deleted."""
    broken = [p for p in _state_files(exp) if not whole(p)]
    if not broken:
        return []
    copies = exp / STATE_COPIES
    notes, lost = [], set()  # the sessions (None: no session, tuner.pkl) without a whole copy
    restored = [p.name for p in broken if whole(copies / p.name)]
    for path in broken:
        if path.name in restored:
            with artifacts.atomic(path) as tmp:
                shutil.copy2(copies / path.name, tmp)
        else:
            lost.add(_session(path.name))
    if restored:
        taken = time.strftime('%H:%M:%S', time.localtime(max((copies / n).stat().st_mtime for n in restored)))
        notes.append(f"Tune's saved state was cut short ({', '.join(restored)}): using its copy from {taken}")
    # Tune restores its newest experiment state, and the newest searcher state, each by name.
    saves = [p for p in _state_files(exp) if p.name.startswith("experiment_state-") and _session(p.name) not in lost]
    fresh = bool(lost) and (None in lost or not saves)
    if lost:
        aside = [p for p in _state_files(exp) if fresh or _session(p.name) in lost]
        for path in aside:
            path.replace(path.with_name(path.name + ".broken"))
        names = ", ".join(p.name for p in broken if p.name not in restored)
        then = "the grid starts again" if fresh else f"Tune continues from the save before ({max(saves).name})"
        notes.append(f"Tune's saved state was cut short ({names}) and no whole copy of it was kept: {then}; "
                     f"{len(aside)} state file(s) moved aside to <name>.broken")
    known = set() if fresh else set(re.findall(r'trial_id\W+(\w+)', max(saves).read_text()))
    trials = {p.parent for p in [*exp.glob(f"*/{artifacts.PARAMS_FILE}"), *exp.glob(f"*/{artifacts.METRICS_FILE}")]}
    for trial in sorted(trials - {exp / artifacts.DENSE_DIR}):
        # Finished ones too: Tune starts their grid points again in new dirs, which would count twice.
        if not any(f"_{trial_id}_" in trial.name for trial_id in known):
            orphans = exp / ORPHANS
            orphans.mkdir(exist_ok=True)
            trial.replace(orphans / trial.name)
            notes.append(f"{trial.name} is not in that save: moved to {ORPHANS}/; its grid point trains again")
    return notes


def _session(name: str) -> str | None:
    """The driver session a state file belongs to (`experiment_state-<session>.json`); None for
    the files every session shares (`tuner.pkl`)."""
    found = _SESSION.search(name)
    return found.group(1) if found else None


def _checkpoints(exp: Path) -> list[str]:
    """Each unfinished trial continues from the checkpoint Tune's newest save names, which Tune
    may have deleted since (it keeps two: a save restored from its copy, or one from before the
    driver died, can name an older one), and Ray then fails the trial before it starts. A missing
    one is put back from the trial's newest readable checkpoint (the trial continues from there:
    its step is in the checkpoint), else left empty (the trial trains again from its start).
    An unreadable one gives way to the one before it (`tickets.trainable`). One line each."""
    notes = []
    saves = [p for p in _state_files(exp) if p.name.startswith("experiment_state-")]
    registered = {}
    if saves:
        try:
            for config, meta in json.loads(max(saves).read_text())["trial_data"]:
                names = re.findall(r"checkpoint_\d{6}", meta)
                ids = re.findall(r'trial_id\W+(\w+)', config)
                if names and ids:
                    registered[ids[0]] = max(names)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # Tune reports its own state
    for trial in artifacts.trial_dirs(exp):
        saved = sorted(trial.glob("checkpoint_*"))
        if (trial / artifacts.TICKET_FILE).exists():
            continue
        name = next((n for t, n in registered.items() if f"_{t}_" in trial.name), None)
        if name is not None and not (trial / name).is_dir():
            _, newest = artifacts.readable_state(sorted(saved, reverse=True))
            if newest is not None:
                shutil.copytree(newest, trial / name)
                notes.append(f"{trial.name}: {name}, where Tune's save resumes it, is gone; put back from "
                             f"{newest.name}, where the trial continues")
            else:
                (trial / name).mkdir()
                notes.append(f"{trial.name}: {name}, where Tune's save resumes it, is gone and no other "
                             f"checkpoint can be read: the trial trains again from its start")
            continue
        _, used, broken = artifacts.state_or_earlier(saved[-1]) if saved else (None, None, None)
        if broken is not None:  # what `tickets.trainable` will do, said where the user reads it
            then = f"continues from {used.name}" if used else "trains again from its start"
            notes.append(f"{broken}; {trial.name} {then}")
    return notes


def watching() -> StorageWatch | None:
    """The watch of the grid this process ran last, once (None for an experiment started before there
    was one, whose saved callbacks lack it)."""
    watch, StorageWatch._current = StorageWatch._current, None
    return watch


def _size(directory: Path) -> int:
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def paragraph(fault: Fault, finished: int, total: int, resume: str, results_written: bool, logs: str = "") -> str:
    """What the CLI prints when a sweep stopped on a storage fault (`logs`: Ray's log dir, where the
    tracebacks went)."""
    results = ("results.parquet has every epoch reported so far" if results_written else
               "results.parquet could not be updated; every reported epoch is in its trial's metrics.jsonl, "
               "and --resume rebuilds the file")
    safe = (f"Finished results are safe: {finished}/{total} trials finished; {results}" if fault.strerror != GONE else
            "Finished results are safe where they were written (every reported epoch in its trial's "
            "metrics.jsonl), once the directory or its mount is back")
    where = f" The errors in full are in Ray's logs: {logs}" if logs else ""
    return (f"storage fault: {fault.describe()}.\n"
            f"  The sweep stopped: no new trial started, and running trials keep their last checkpoint.{where}\n"
            f"  {safe}.\n"
            f"  Free space (or restore the directory, its mount or its permissions), then continue with:\n"
            f"  {resume}")
