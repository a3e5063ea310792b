"""cluster/ray-cluster.sbatch on a real two-node SLURM (Debian's slurmctld, slurmd, munge)."""

import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import ONE_AT_A_TIME, ROOT, SMALL, dense_runs, read_results, ticket_files, wait_until
from slurm_harness import Slurm, available

from tickets import artifacts

SBATCH = ROOT / "cluster" / "ray-cluster.sbatch"

pytestmark = pytest.mark.skipif(available() is not None, reason=f"no real SLURM here: {available()}")


def _ray_processes() -> list[str]:
    """Ray daemons and workers of SLURM jobs still alive (listed, never killed by name). A job's
    processes carry SLURM_JOB_ID in their environment; a Ray that another test runs beside these
    (the suite runs in two processes) does not."""
    out = subprocess.run(["ps", "-eo", "pid=,comm=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()
            if re.search(r"\b(raylet|gcs_server)\b|ray::|/tmp/ray-\d+", line) and "ps -eo" not in line
            and _in_a_slurm_job(int(line.split()[0]))]


def _in_a_slurm_job(pid: int) -> bool:
    try:
        return b"\0SLURM_JOB_ID=" in b"\0" + Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # it has exited
        return False


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    assert not _ray_processes(), "a SLURM job's Ray is already running on this machine"
    harness = Slurm(tmp_path_factory.mktemp("slurm"))
    try:
        harness.start()
        yield harness
    finally:
        harness.stop()
        wait_until(lambda: not subprocess.run(["pgrep", "-x", "slurmstepd"], capture_output=True).stdout,
                   timeout=60, every=0.5, what="slurmstepd to exit")


@pytest.fixture
def token_file(tmp_path):
    return tmp_path / "token"


def _submit(slurm, tmp_path, token_file, *args) -> tuple[str, Path]:
    out = tmp_path / f"job-{len(list(tmp_path.glob('job-*')))}.out"
    env = {"TICKETS_PYTHON": sys.executable, "TICKETS_TOKEN_FILE": str(token_file),
           "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", "TICKETS_CACHE_DIR": str(tmp_path / "node-cache")}
    job = slurm.run(["sbatch", "--parsable", "--nodes=2", f"--output={out}", str(SBATCH), *args],
                    env=env, cwd=tmp_path).stdout.strip()
    return job, out


SMOKE = ["smoke", *SMALL, "--set", "data.synthetic_size={train: 640, test: 128}"]


@pytest.fixture
def ports_taken_but_one():
    """Another job's Ray holding the head port of every port block but one."""
    free_block = 20000 + 7 * 600
    taken = []
    try:
        for base in range(20000, 32000, 600):
            if base != free_block:
                s = socket.socket()
                taken.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past earlier runs' TIME_WAIT
                s.bind(("", base))
                s.listen()
        yield free_block
    finally:
        for s in taken:
            s.close()


def test_sweep_across_two_slurm_nodes_survives_scancel_and_resumes(slurm, tmp_path, token_file, ports_taken_but_one):
    storage = tmp_path / "results"
    exp = storage / "smoke"
    job, out = _submit(slurm, tmp_path, token_file, *SMOKE, "--storage-path", str(storage),
                       "--set", "search.sparsity=[0.5,0.7,0.9]", *ONE_AT_A_TIME)
    line = wait_until(lambda: out.exists() and re.search(r"dashboard: on n1 at (127\.0\.0\.1:\d+)", out.read_text()),
                      timeout=300, every=0.5, what="the dashboard line")
    url = f"http://{line.group(1)}"
    token = token_file.read_text().strip()
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url + "/api/version", timeout=10)
    assert e.value.code == 401
    request = urllib.request.Request(url + "/api/version", headers={"Authorization": f"Bearer {token}"})
    assert urllib.request.urlopen(request, timeout=10).status == 200

    # Cancelled once a trial has finished: no Ray process of the job outlives it.
    wait_until(lambda: ticket_files(exp), timeout=400, every=0.5, what="a finished trial")
    slurm.run(["scancel", job])
    assert slurm.wait_job(job, timeout=120) == "CANCELLED"
    wait_until(lambda: not _ray_processes(), timeout=90, every=0.5, what="Ray processes to exit after scancel")
    done = len(ticket_files(exp))
    assert done < 3, "the sweep finished before it was cancelled"
    log = out.read_text()
    assert "2/2 nodes joined" in log and token not in log
    assert f"TICKETS_CACHE_DIR={tmp_path / 'node-cache'} TICKETS_DECODE_CACHE_MB=2048" in log  # passed to nodes
    assert f"ports {ports_taken_but_one}-{ports_taken_but_one + 599}" in log  # the one free block
    # Both nodes worked: the dense run holds one whole while the first trial warms up on the other.
    runs = (exp / artifacts.DENSE_DIR / artifacts.DENSE_RUNS_LOG).read_text().splitlines()
    nodes = {r["node_id"] for t in artifacts.trial_dirs(exp) for r in artifacts.read_metrics(t)}
    assert len(nodes | {json.loads(line)["node_id"] for line in runs}) == 2

    job, out = _submit(slurm, tmp_path, token_file, "--resume", "--name", "smoke", "--storage-path", str(storage))
    state = slurm.wait_job(job)
    log = out.read_text()
    assert state == "COMPLETED", log[-4000:]
    assert "2/2 nodes joined" in log and "sweep exited with 0" in log and token not in log
    df = read_results(exp)
    trials = df[df.control != "dense"]
    assert trials.trial_id.nunique() == 3 and set(trials.status) == {"finished"} and len(trials) == 6
    assert not trials.duplicated(["trial_id", "epoch"]).any()
    assert dense_runs(exp) == 1
    assert wait_until(lambda: not _ray_processes(), timeout=60, every=0.5, what="Ray processes to exit")
