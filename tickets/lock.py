"""One live driver per experiment: `<experiment>/driver.lock`.

Two drivers on one experiment (a requeued SLURM job while the old one lingers, a `--resume` from a
second terminal) would both train the same trials into the same trial dirs. The driver that runs an
experiment holds this file and refreshes its modification time every `HEARTBEAT_S` seconds from a
thread; another driver, on this node or on another one sharing the file system, is refused while the
holder is alive. A driver that died without cleaning up (SIGKILL, a lost node, a time limit) must not
lock the experiment forever: on this node its process is gone (its PID, with its start time, so a
reused PID does not count), on another its heartbeat stops, and after `STALE_S` seconds without one
the next `--resume` takes the experiment over; the driver it was taken from stops itself.

The file is created whole or not at all (`os.link` of a finished temporary file fails if the lock
exists, also on NFS), and a stale lock is moved aside by one `rename`, which only one of two racing
drivers can win.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tickets.errors import UsageError

LOCK_FILE = "driver.lock"
HEARTBEAT_S = 10.0
# Generous against a heartbeat delayed by a busy file server and against clock skew between nodes
# (an NFS server stamps the modification time, a node's clock judges its age).
STALE_S = float(os.environ.get("TICKETS_LOCK_STALE_S", "90"))


@dataclass(frozen=True)
class Holder:
    """Who holds an experiment's lock, as its file says, and how long ago it last said so."""

    host: str
    pid: int
    since: float  # when that driver took the lock (epoch seconds)
    token: str
    age: float  # seconds since the last heartbeat
    process: str = ""  # this node's boot and the process's start (`_process_id`), where known

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"host {self.host}, PID {self.pid}, since {started}, last heartbeat {self.age:.0f} s ago"

    def alive(self) -> bool:
        """On this node (same host, same boot), a driver is alive while its process is — the same
        PID started at the same time, however late its heartbeat (a suspended driver is alive); on
        another node, while its heartbeat is fresh."""
        if self.host == socket.gethostname() and self.process and self.process.split("/")[0] == _boot():
            return _process_id(self.pid) == self.process
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return False
        return self.age <= STALE_S


def _boot() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_id(pid: int) -> str:
    """"<boot id>/<start time>" of process `pid` on this node (Linux), "" where unknown or gone: a PID
    reused by another process has another start time."""
    boot = _boot()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return f"{boot}/{fields[19]}" if boot else ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def holder(exp: Path) -> Holder | None:
    """The experiment's lock holder, or None when there is no lock (or only an unreadable one: a
    lock is written whole, so an unreadable file was left by something else and protects nothing)."""
    try:
        # Opened first: on NFS, opening revalidates the attributes a bare stat may serve from cache.
        with open(exp / LOCK_FILE) as f:
            age = time.time() - os.fstat(f.fileno()).st_mtime
            raw = json.loads(f.read())
        return Holder(str(raw["host"]), int(raw["pid"]), float(raw["since"]), str(raw["token"]), max(age, 0.0),
                      str(raw.get("process", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check(exp: Path) -> Holder | None:
    """Before anything starts: refuse (UsageError, one line) when a live driver runs `exp`; return a
    dead driver's lock (to be taken over), or None."""
    h = holder(exp)
    if h is not None and h.alive():
        raise UsageError(f"--name: experiment {exp} is being run by another driver ({h.describe()}); wait for it to "
                         f"end or stop it, then --resume (a dead driver's lock is taken over {STALE_S:.0f} s after "
                         f"its last heartbeat)")
    return h


class DriverLock:
    """This driver's hold on `exp`: `acquire` takes it (or raises UsageError naming the live holder),
    a daemon thread keeps the heartbeat, `release` removes the lock file."""

    def __init__(self, exp: Path):
        self.exp, self.path = exp, exp / LOCK_FILE
        self.token = uuid.uuid4().hex
        self.taken_over: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> DriverLock:
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "token": self.token,
                "process": _process_id(os.getpid())}
        tmp = self.exp / f".{LOCK_FILE}.{self.token}"
        tmp.write_text(json.dumps(mine) + "\n")
        try:
            for _ in range(2):
                try:
                    os.link(tmp, self.path)
                    break
                except FileExistsError:
                    dead = check(self.exp)  # raises while the holder lives
                    self._move_aside(dead)
            else:
                raise UsageError(f"--name: another driver took experiment {self.exp} at the same time; try again")
        finally:
            tmp.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._beat, name="tickets-driver-lock", daemon=True)
        self._thread.start()
        return self

    def _move_aside(self, dead: Holder | None) -> None:
        """Rename a dead driver's lock away: of two drivers racing to take it over, one rename wins;
        the loser finds the winner's fresh lock next and is refused."""
        aside = self.exp / f".{LOCK_FILE}.stale.{self.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if holder_token(aside) != (dead.token if dead else None):  # a fresh lock slipped in: put it back
            try:
                os.link(aside, self.path)
            finally:
                aside.unlink(missing_ok=True)
            raise UsageError(f"--name: another driver took experiment {self.exp} at the same time; try again")
        aside.unlink(missing_ok=True)
        self.taken_over = dead

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                token = holder_token(self.path)
                if token == self.token:
                    os.utime(self.path)
                    continue
            except OSError:
                continue  # the storage is failing: the sweep's storage watch reports it
            if token is not None:  # another driver's lock: two drivers must not train the same trials
                print(f"error: {self.path} is another driver's now (it took the experiment over after this one "
                      f"missed its heartbeats for {STALE_S:.0f} s): stopping this one", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGINT)
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if holder_token(self.path) == self.token:
                self.path.unlink()
        except OSError:
            pass


def holder_token(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text())["token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
