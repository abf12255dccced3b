"""A SLURM cluster on this machine for the tests: munged, slurmctld and a slurmd per node (Debian's ``munge`` and
``slurm-wlm``) started in the foreground as child processes, with their key, socket, config, state, spool and logs
under one directory, on 127.0.0.1 only and on ports other than SLURM's defaults, so that nothing of a real
installation is read or disturbed. ``SLURM_CONF`` (in :attr:`LocalCluster.env`) points sbatch, squeue and
scontrol at it. One node is ``localhost``; several are ``n1``, ``n2``, ..., each a slurmd of its own (``slurmd
-N``) on its own port of 127.0.0.1, with its own spool, pid file and log (``%n`` in their paths).

    with LocalCluster(tmp_path, nodes=2) as cluster:
        subprocess.run(["srun", "-N2", "hostname"], env=cluster.env)
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")
PARTITION = "debug"


def missing() -> Optional[str]:
    """Why the cluster cannot start here (for pytest's skip), or None."""
    absent = [d for d in DAEMONS if not shutil.which(d, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]
    if absent:
        return f"SLURM test cluster needs Debian's slurm-wlm and munge packages: {', '.join(absent)} not found"
    if os.geteuid() != 0:
        return "SLURM test cluster runs its daemons as root (SlurmUser=root)"
    return None


def which(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or name


def free_port(preferred: int = 0) -> int:
    """``preferred`` when nothing listens on it on 127.0.0.1, else a free one (another session's cluster)."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


def node_memory_mb(cap: int = 4096) -> int:
    """What ``slurmd -C`` finds (RealMemory), at most ``cap``: more than the node has would drain it."""
    out = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"RealMemory=(\d+)", out)
    return min(int(found.group(1)) if found else cap, cap)


class LocalCluster:
    """``nodes`` nodes on 127.0.0.1 (``cpus`` CPUs each), partition ``debug`` (default), controller on 127.0.0.1."""

    def __init__(self, root: Path, nodes: int = 1, cpus: int = 2, ctld_port: int = 16817,
                 slurmd_port: int = 16818) -> None:
        self.root = Path(root)
        self.cpus = cpus
        self.ctld_port = free_port(ctld_port)
        self.node_names = ["localhost"] if nodes == 1 else [f"n{k}" for k in range(1, nodes + 1)]
        self.slurmd_ports: list[int] = []
        for k in range(nodes):
            taken = {self.ctld_port, *self.slurmd_ports}
            wanted = slurmd_port + k
            self.slurmd_ports.append(free_port(wanted if wanted not in taken else 0))
        self.conf = self.root / "slurm.conf"
        self.socket = self.root / "munge" / "munge.socket"
        self.procs: dict[str, subprocess.Popen] = {}
        self.partition = PARTITION
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for var in ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_RESTART_COUNT", "SBATCH_PARTITION"):  # not a job's own
            self.env.pop(var, None)

    # ------------------------------------------------------------------ set-up
    def _write_config(self) -> None:
        for d in ("munge", "state", "spool", "log", "run"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o755)
        key = self.root / "munge" / "munge.key"
        subprocess.run([which("mungekey"), "--create", f"--keyfile={key}", "--force"], check=True,
                       capture_output=True, timeout=30)
        os.chmod(key, 0o600)
        r, memory = self.root, node_memory_mb()
        per_node = "%n" if len(self.node_names) > 1 else ""  # each slurmd its own files, named by its node
        nodes = "\n".join(
            f"NodeName={name} NodeAddr=127.0.0.1 NodeHostname=localhost Port={port} CPUs={self.cpus} "
            f"RealMemory={memory} State=UNKNOWN" for name, port in zip(self.node_names, self.slurmd_ports))
        self.conf.write_text(f"""\
# test cluster of {len(self.node_names)} node(s): everything on 127.0.0.1, under {r}
ClusterName=imgexptest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_ports[0]}
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket},cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/{per_node}
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd{per_node}.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd{per_node}.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=10
InactiveLimit=0
Waittime=0
{nodes}
PartitionName={PARTITION} Nodes={",".join(self.node_names)} Default=YES MaxTime=INFINITE State=UP
""")
        for name in self.node_names:
            (r / "spool" / (name if per_node else "")).mkdir(parents=True, exist_ok=True)

    def _start(self, name: str, *args: str, program: Optional[str] = None) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen([which(program or name), *args], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def _wait(self, what: str, ready, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode} while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"SLURM test cluster: no {what} after {timeout:.0f} s:\n{self.logs()}")

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([which(cmd[0]), *cmd[1:]], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start(self) -> "LocalCluster":
        self._write_config()
        m = self.root / "munge"
        self._start("munged", "--foreground", "--force", f"--socket={self.socket}", f"--key-file={m}/munge.key",
                    f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed")
        self._wait("munge socket", self.socket.exists)
        self._start("slurmctld", "-D", "-i", "-f", str(self.conf))
        self._wait("slurmctld", lambda: self.run("scontrol", "ping").stdout.count("is UP") >= 1)
        for name in self.node_names:
            self._start(f"slurmd-{name}", "-D", "-N", name, "-f", str(self.conf), program="slurmd")
        idle = ["idle"] * len(self.node_names)
        self._wait("idle nodes", lambda: self.run("sinfo", "-h", "-N", "-o", "%t").stdout.split() == idle)
        return self

    # ------------------------------------------------------------------ use
    def squeue(self) -> list[str]:
        """The job ids SLURM still holds (pending, running, completing)."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def wait_for_jobs(self, timeout: float = 60) -> None:
        """Until SLURM holds no job: a job's result is on disk a moment before SLURM sees the job end."""
        deadline = time.time() + timeout
        while self.squeue():
            if time.time() > deadline:
                raise RuntimeError(f"SLURM jobs still queued after {timeout:.0f} s: {self.squeue()}")
            time.sleep(0.5)

    def logs(self, tail: int = 40) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if f.is_file():
                lines = f.read_text(errors="replace").splitlines()[-tail:]
                out.append(f"==> {f.name} <==\n" + "\n".join(lines))
        return "\n".join(out)

    # ------------------------------------------------------------------ tear-down
    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            jobs = self.squeue()
            if jobs:
                self.run("scancel", *jobs)
                deadline = time.time() + 20
                while self.squeue() and time.time() < deadline:
                    time.sleep(0.5)
        for name in [f"slurmd-{n}" for n in self.node_names] + ["slurmctld", "munged"]:  # the reverse of start-up
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def __enter__(self) -> "LocalCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
