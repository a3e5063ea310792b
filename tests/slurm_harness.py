"""A real two-node SLURM on this one machine: munged, slurmctld and two slurmd (n1, n2).

Each node has its own loopback address (127.0.0.2, 127.0.0.3) and slurmd port. Every daemon is
started here as a child process and stopped by its PID, never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from helpers import wait_until

NODES = {"n1": ("127.0.0.2", 17001), "n2": ("127.0.0.3", 17002)}

CONF = """\
ClusterName=tickets-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=16817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={work}/state
SlurmdSpoolDir={work}/spool-%n
SlurmctldPidFile={work}/slurmctld.pid
SlurmdPidFile={work}/slurmd-%n.pid
SlurmctldLogFile={work}/slurmctld.log
SlurmdLogFile={work}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
KillWait=30
InactiveLimit=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
{nodes}
PartitionName=test Nodes={names} Default=YES MaxTime=INFINITE State=UP
"""


def available() -> str | None:
    """Why a real SLURM cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (slurmd and munged)"
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if not shutil.which(b)]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install slurmctld slurmd slurm-client munge)"
    return None


class Slurm:
    def __init__(self, work: Path, cpus_per_node: int = 1):
        self.work = work
        self.conf = work / "slurm.conf"
        self.cpus = cpus_per_node
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        (self.work / "state").mkdir(parents=True, exist_ok=True)
        nodes = "\n".join(f"NodeName={n} NodeAddr={addr} Port={port} CPUs={self.cpus} RealMemory=4000 State=UNKNOWN"
                          for n, (addr, port) in NODES.items())
        self.conf.write_text(CONF.format(work=self.work, nodes=nodes, names=",".join(NODES)))
        self._start_munge()
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        for name in NODES:
            self._spawn(f"slurmd-{name}", ["slurmd", "-D", "-N", name, "-f", str(self.conf)])
        self._wait_idle()

    def _start_munge(self) -> None:
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
        run = Path("/run/munge")
        run.mkdir(exist_ok=True)
        shutil.chown(run, "munge", "munge")
        self._spawn("munged", ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups",
                               "munged", "--foreground", "--force"])
        wait_until((run / "munge.socket.2").exists, timeout=30, every=0.2,
                   what=lambda: "munged to start: " + self._tail("munged"))

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.work / f"{name}.stdout", "w")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)

    def _tail(self, name: str) -> str:
        path = self.work / f"{name}.stdout"
        return path.read_text()[-2000:] if path.exists() else ""

    def _wait_idle(self) -> None:
        sinfo = [""]

        def idle() -> bool:
            sinfo[0] = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False).stdout
            states = dict(line.split() for line in sinfo[0].splitlines() if line.strip())
            if len(states) == len(NODES) and all(s.startswith("idle") for s in states.values()):
                return True
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}): {self._tail(name)}")
            return False

        wait_until(idle, timeout=60, every=0.5, what=lambda: f"the SLURM nodes to become idle: {sinfo[0]}\n"
                                                             f"{(self.work / 'slurmctld.log').read_text()[-2000:]}")

    def run(self, argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env={**self.env, **kw.pop("env", {})}, capture_output=True, text=True,
                              check=check, **kw)

    def job_state(self, job: str) -> str:
        out = self.run(["scontrol", "show", "job", job], check=False).stdout
        for token in out.split():
            if token.startswith("JobState="):
                return token.split("=", 1)[1]
        return "UNKNOWN"

    def wait_job(self, job: str, timeout: float = 900) -> str:
        state = [""]

        def ended() -> tuple[str] | None:
            state[0] = self.job_state(job)
            return None if state[0] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED") else (state[0],)

        return wait_until(ended, timeout=timeout, every=1, what=lambda: f"job {job} to end (still {state[0]})")[0]

    def stop(self) -> None:
        """Stop every daemon started here, by PID: slurmd first, munged last."""
        for name in sorted(self.procs, key=lambda n: (n == "munged", n == "slurmctld")):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
