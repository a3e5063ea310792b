"""One live driver per experiment: the lock's rules, on real files and real processes (the sweep
itself is refused and takes over in test_reliability's killed-driver test)."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tickets import lock
from tickets.errors import UsageError


def _lock_file(exp, host, pid, age=0.0, token="theirs"):
    path = exp / lock.LOCK_FILE
    path.write_text(json.dumps({"host": host, "pid": pid, "since": time.time() - age, "token": token}))
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_live_driver_refuses_another_and_a_dead_ones_lock_is_taken_over(tmp_path):
    me = socket.gethostname()
    # Alive: this node's live PID, or another node's fresh heartbeat.
    for host, pid in ((me, os.getpid()), ("another-node", 1)):
        _lock_file(tmp_path, host, pid)
        with pytest.raises(UsageError, match=f"another driver \\(host {host}, PID {pid}, since "):
            lock.check(tmp_path)
        with pytest.raises(UsageError, match="another driver"):
            lock.DriverLock(tmp_path).acquire()
    # Dead: this node's PID gone (at once), another node's heartbeat older than STALE_S.
    for host, pid, age in ((me, _dead_pid(), 0.0), ("another-node", 1, lock.STALE_S + 5)):
        path = _lock_file(tmp_path, host, pid, age)
        assert lock.check(tmp_path).pid == pid
        held = lock.DriverLock(tmp_path).acquire()
        try:
            assert held.taken_over.host == host and held.taken_over.pid == pid
            mine = json.loads(path.read_text())
            assert mine["pid"] == os.getpid() and mine["host"] == me and mine["token"] == held.token
            with pytest.raises(UsageError, match=f"PID {os.getpid()}"):  # now this driver's
                lock.DriverLock(tmp_path).acquire()
        finally:
            held.release()
        assert not path.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary or stale copies left


def test_the_heartbeat_keeps_the_lock_fresh_and_an_unreadable_lock_protects_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    held = lock.DriverLock(tmp_path).acquire()
    try:
        path = tmp_path / lock.LOCK_FILE
        os.utime(path, (time.time() - 1000, time.time() - 1000))
        deadline = time.time() + 10
        while lock.holder(tmp_path).age > 100 and time.time() < deadline:
            time.sleep(0.05)
        assert lock.holder(tmp_path).age < 100  # refreshed by the thread
    finally:
        held.release()
    (tmp_path / lock.LOCK_FILE).write_text("{\"host\": ")  # not one this module wrote
    assert lock.check(tmp_path) is None
    held = lock.DriverLock(tmp_path).acquire()
    held.release()


def test_on_this_node_the_process_decides_not_the_heartbeat(tmp_path):
    me, pid = socket.gethostname(), os.getpid()
    mine = lock._process_id(pid)
    if not mine:
        pytest.skip("no /proc here: the PID alone decides")
    path = _lock_file(tmp_path, me, pid, age=lock.STALE_S * 10)
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "process": mine}))
    os.utime(path, (time.time() - lock.STALE_S * 10,) * 2)
    with pytest.raises(UsageError, match="another driver"):  # suspended, not dead
        lock.check(tmp_path)
    path.write_text(json.dumps({**raw, "process": mine.split("/")[0] + "/1"}))  # the PID, reused
    assert lock.check(tmp_path).pid == pid
