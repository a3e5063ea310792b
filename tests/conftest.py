"""The environment every test runs in, and the sweeps that several test modules read.

A sweep costs about a minute here whatever its size (Ray, TensorFlow and tracing in every process),
so a sweep whose run serves tests in more than one module runs once per session, and the tests that
read it share a test process. Helpers live in helpers.py.
"""

import os
import re
import signal
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")

from helpers import LOCAL, ONE_AT_A_TIME, cli, wait_until  # noqa: E402  (after the environment above)

# The sweeps below are session fixtures, run once per test process (pyproject runs the suite in two,
# `-n 2 --dist loadgroup`): the tests that read one share a group, whatever their module, so it runs
# once. Every other test stays with its module (module fixtures, and TensorFlow configured once per
# process), unless it names a group of its own (`xdist_group`), as the bench's halves do.
SHARED_RUNS = ("smoke_run", "interrupted")
# xdist hands the groups out in the order of the collection (`--no-loadscope-reorder`; by default it
# starts with the groups of most tests, so the single long tests started last and ran alone): the
# longest groups first, as the durations at the end of a run list them (the run this order comes
# from: docs/performance.md, "The test suite's CPU"). Groups not named here (quick ones) follow in
# file order.
LONGEST_FIRST = ("test_training", "test_stream", "test_reliability", "bench-sweeps", "bench-others", "test_papers",
                 "test_imp_transfer", "test_cluster", "interrupted", "test_sweep", "test_export", "test_analysis",
                 "test_instability", "smoke_run")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    # Shared runs read together by one test go in one group with all their other readers.
    together = {name: {name} for name in SHARED_RUNS}
    for item in items:
        joined = set().union(*(together[n] for n in set(SHARED_RUNS) & set(item.fixturenames)))
        for name in joined:
            together[name] = joined
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        reads = set(SHARED_RUNS) & set(item.fixturenames)
        group = "+".join(sorted(together[next(iter(reads))])) if reads else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))
    rank = {group: i for i, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.get_closest_marker("xdist_group").args[0], len(rank)))


@dataclass
class SmokeRun:
    exp: Path
    code: int
    out: str
    dashboard: dict  # HTTP status of each dashboard request made while the sweep ran
    token: str = field(repr=False)  # the Ray token it ran with


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> SmokeRun:
    """The README's first command as a new user runs it (`python -m tickets.sweep smoke`, nothing
    else set), for test_sweep (what it trains and prints) and test_reliability (token authentication
    and secrets). While it runs, its dashboard is asked for two pages without the token and one with it."""
    storage = tmp_path_factory.mktemp("smoke")
    p = cli(["smoke", "--storage-path", str(storage), "--num-cpus", "2"])
    lines, dashboard = [], {}
    try:
        for line in p.stdout:
            lines.append(line)
            match = re.search(r"dashboard (http://127\.0\.0\.1:\d+)", line)
            if match:
                dashboard = _ask_dashboard(match.group(1), _token())
                break
        rest, _ = p.communicate(timeout=400)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    return SmokeRun(storage / "smoke", p.returncode, "".join(lines) + rest, dashboard, _token())


def _token() -> str:
    """The token a local sweep runs with (the file `session.private_token` keeps)."""
    return (Path.home() / ".ray" / "auth_token").read_text().strip()


def _ask_dashboard(url: str, token: str) -> dict:
    asked = {}
    for path in ("/api/version", "/api/jobs/"):
        asked[path] = _status(urllib.request.Request(url + path))
    authorised = urllib.request.Request(url + "/api/version", headers={"Authorization": f"Bearer {token}"})
    asked["/api/version with the token"] = _status(authorised)
    return asked


def _status(request) -> int | str:
    # What went wrong is kept as the answer, for the test that reads it to show, rather than
    # failing the sweep's other readers here.
    try:
        return urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return repr(e)


@dataclass
class Interrupted:
    exp: Path
    trial: Path  # the trial that was between epochs when the sweep stopped
    code: int
    out: str
    mid_run: object  # analysis.load(exp) while that trial ran
    after: object  # analysis.load(exp) once the sweep had stopped


@pytest.fixture(scope="session")
def interrupted(tmp_path_factory) -> Interrupted:
    """A sweep stopped (Ctrl-C) while a trial was between epochs, for test_reliability (corrupted
    snapshots and checkpoints on resume) and test_analysis (loading while it runs and after). Its
    loads are kept here because test_reliability's corrupted-checkpoint test resumes it in place."""
    from tickets import analysis, artifacts

    storage = tmp_path_factory.mktemp("interrupted")
    exp = storage / "smoke"
    # Eight epochs a trial: Tune takes a few seconds to stop after SIGINT, during which the running
    # trial keeps training; it must still be unfinished when the sweep has exited.
    p = cli(["smoke", "--storage-path", str(storage), *LOCAL, "--set", "dense.epochs=8",
             "--set", "search.rewind_epoch=[0]", "--set", "search.sparsity=[0.5,0.9]", "--set", "search.control=[ticket]",
             "--set", "data.synthetic_size={train: 2048, test: 256}",
             *ONE_AT_A_TIME, "--set", "resources.max_failures=1"],
            start_new_session=True)

    def unfinished(trial: Path) -> bool:
        return (not (trial / artifacts.TICKET_FILE).exists() and bool(artifacts.read_metrics(trial))
                and bool(list(trial.glob("checkpoint_*"))))

    # Two epochs reported: rows are written before they are `tune.report`ed, one at a time, so by
    # the second row Tune holds the first epoch's checkpoint and will restore the trial from it.
    def loaded_mid_run():  # loading as the sweep writes, as a user watching it would
        df = analysis.load(exp) if exp.exists() else None
        if [t for t in artifacts.trial_dirs(exp) if unfinished(t) and len(artifacts.read_metrics(t)) >= 2]:
            return (df,)  # a DataFrame has no truth value
        return None

    try:
        (mid_run,) = wait_until(loaded_mid_run, every=0.3, process=p, what="an unfinished trial's second epoch")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
        out, _ = p.communicate(timeout=120)
    (trial,) = [t for t in artifacts.trial_dirs(exp) if unfinished(t)]
    return Interrupted(exp, trial, p.returncode, out, mid_run, analysis.load(exp))
