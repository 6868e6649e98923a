"""A real one-node SLURM cluster for tests: munged, slurmdbd, slurmctld and slurmd of Debian's
``slurm-wlm`` and ``munge`` packages, each on its own files and ports in a temporary directory.

Nothing system-wide is used or touched: the munge key, socket and seed are the cluster's own,
``slurm.conf`` is passed by absolute path (``-f``) to the daemons and through ``SLURM_CONF`` to
the client commands, and every daemon runs in the foreground as a child of this process, in a
process group of its own, and is stopped by its pid. slurmdbd (needed by ``sacct`` in 22.05)
keeps its accounting in a database of its own on the local MariaDB (``AJUG_SLURM_MYSQL``,
default 127.0.0.1:3306, user root, no password), dropped at the end; without a reachable
MariaDB the cluster runs without accounting and ``has_sacct`` is False.

Run this file to try the cluster by hand: ``python tests/slurm_cluster.py`` starts it, prints
the environment to use, and stops it on Enter.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo")
ACCOUNTING = ("slurmdbd", "sacct", "mariadb")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def _free_port() -> int:
    from procs import free_port  # tests/ is on sys.path: under pytest, and run as a script

    return free_port()


def missing_binaries(accounting: bool = True) -> list[str]:
    names = DAEMONS + CLIENTS + (ACCOUNTING if accounting else ())
    return [b for b in names if shutil.which(b) is None]


def mysql_address() -> tuple[str, int]:
    host, _, port = os.environ.get("AJUG_SLURM_MYSQL", "127.0.0.1:3306").rpartition(":")
    return host or "127.0.0.1", int(port)


def mysql_reachable(timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection(mysql_address(), timeout=timeout_s):
            return True
    except OSError:
        return False


@dataclass
class Job:
    id: str
    name: str
    state: str
    node: str
    comment: str


class SlurmCluster:
    """Start with ``start()``, stop with ``stop()``; ``env`` is what a client command needs."""

    def __init__(self, workdir: Path, accounting: bool = True) -> None:
        self.dir = workdir
        self.accounting = accounting
        self.node = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.ports = {"ctld": _free_port(), "slurmd": _free_port(), "dbd": _free_port()}
        self.db = f"ajug_slurm_{uuid.uuid4().hex[:10]}"
        self.cluster_name = "ajugtest"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.conf = self.dir / "slurm.conf"
        self.started_in_s = 0.0

    # -- the environment ------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """The variables that point SLURM's client commands at this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def full_env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **self.env, **extra}

    @property
    def has_sacct(self) -> bool:
        return "slurmdbd" in self.procs

    # -- configuration --------------------------------------------------------------------
    def _write_conf(self) -> None:
        d = self.dir
        for sub in ("state", "spool", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        key = d / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(1024))
        sock = d / "munge.socket"
        mem_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
        lines = [
            f"ClusterName={self.cluster_name}",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={self.ports['ctld']}",
            f"SlurmdPort={self.ports['slurmd']}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={sock}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            # quick to answer: jobs are scheduled on submission and as soon as others end
            "SchedulerParameters=defer_batch=0",
            "MessageTimeout=10",
            "KillWait=2",
            "MinJobAge=300",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem_mib} "
            "State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP "
            "OverSubscribe=YES",
        ]
        if self.accounting:
            lines += [
                "AccountingStorageType=accounting_storage/slurmdbd",
                "AccountingStorageHost=127.0.0.1",
                f"AccountingStoragePort={self.ports['dbd']}",
                # the munge socket that slurmctld uses to reach slurmdbd
                f"AccountingStoragePass={sock}",
                "AccountingStoreFlags=job_comment",
            ]
        self.conf.write_text("\n".join(lines) + "\n")
        if self.accounting:
            host, port = mysql_address()
            dbd = [
                "AuthType=auth/munge",
                f"AuthInfo=socket={sock}",
                "DbdAddr=127.0.0.1",
                "DbdHost=localhost",
                f"DbdPort={self.ports['dbd']}",
                "SlurmUser=root",
                "StorageType=accounting_storage/mysql",
                f"StorageHost={host}",
                f"StoragePort={port}",
                "StorageUser=root",
                f"StorageLoc={self.db}",
                f"PidFile={d / 'slurmdbd.pid'}",
                f"LogFile={d / 'log' / 'slurmdbd.log'}",
            ]
            path = d / "slurmdbd.conf"  # read from beside SLURM_CONF; must be 0600
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("\n".join(dbd) + "\n")

    # -- processes ------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.dir / "log" / f"{name}.out", "ab")
        try:
            self.procs[name] = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.full_env(), cwd=self.dir, start_new_session=True,
            )
        finally:
            log.close()

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}:\n{self.logs(name)}")

    def logs(self, name: str | None = None, tail: int = 30) -> str:
        files = sorted((self.dir / "log").glob(f"{name or ''}*"))
        out = []
        for f in files:
            lines = f.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"== {f.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def _wait(self, what: str, pred: Any, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"SLURM test cluster: timed out waiting for {what}\n"
                                   f"{self.logs()}")
            time.sleep(0.05)

    def start(self) -> None:
        t0 = time.monotonic()
        self._write_conf()
        sock = self.dir / "munge.socket"
        try:
            self._spawn("munged", [
                "munged", "--foreground", "--force", f"--key-file={self.dir / 'munge.key'}",
                f"--socket={sock}", f"--pid-file={self.dir / 'munged.pid'}",
                f"--seed-file={self.dir / 'munged.seed'}",
                f"--log-file={self.dir / 'log' / 'munged.log'}", "--num-threads=4",
            ])
            self._wait("munged's socket", sock.exists)
            if self.accounting:
                self._spawn("slurmdbd", ["slurmdbd", "-D"])
                self._wait("slurmdbd's port", lambda: self._listening(self.ports["dbd"]))
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.node])
            self._wait("the node to be idle", lambda: self.node_state() == "idle")
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - t0

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop what this cluster started, by pid: its jobs first (scancel, then any process
        left that runs with this cluster's SLURM_CONF), then the daemons in reverse order,
        SIGTERM, then SIGKILL to the group."""
        ctld = self.procs.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            import getpass

            self.run("scancel", f"--user={getpass.getuser()}", check=False)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while time.monotonic() < deadline:
                out = self.run("squeue", "--noheader", check=False)
                if out.returncode != 0 or not out.stdout.strip():
                    break
                time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "slurmdbd", "munged"):
            p = self.procs.get(name)
            if p is None:
                continue
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    pass
            try:  # the group too: job steps and scripts slurmd started
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if p.poll() is None:
                p.kill()
            p.wait(STOP_TIMEOUT_S)
        self.procs.clear()
        self._kill_jobs_left()
        if self.accounting:
            self._drop_database()

    def _kill_jobs_left(self) -> None:
        """Job processes run in sessions of their own (slurmstepd's); those still alive carry
        this cluster's SLURM_CONF in their environment."""
        mark = f"SLURM_CONF={self.conf}".encode()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                environ = (d / "environ").read_bytes()
            except OSError:
                continue
            if mark in environ.split(b"\0"):
                try:
                    os.kill(int(d.name), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _drop_database(self) -> None:
        host, port = mysql_address()
        if shutil.which("mariadb") is None:
            return
        subprocess.run(
            ["mariadb", "-h", host, "-P", str(port), "-u", "root", "-e",
             f"DROP DATABASE IF EXISTS `{self.db}`"],
            capture_output=True, timeout=30, check=False,
        )

    # -- client commands ------------------------------------------------------------------
    def run(self, *args: str, check: bool = True, timeout_s: float = 30.0
            ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(list(args), capture_output=True, text=True, env=self.full_env(),
                             timeout=timeout_s, check=False)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {out.returncode}: {out.stderr.strip()}")
        return out

    def node_state(self) -> str:
        out = self.run("sinfo", "--noheader", "--format=%T", check=False)
        return out.stdout.strip().rstrip("*") if out.returncode == 0 else ""

    def squeue(self, name: str | None = None, all_states: bool = False) -> list[Job]:
        """Jobs as plain ``squeue`` shows them (pending, running, completing), or every job
        slurmctld still remembers with ``all_states``."""
        args = ["squeue", "--noheader", "--format=%i|%j|%T|%N|%k"]
        if name:
            args.append(f"--name={name}")
        if all_states:
            args.append("--states=all")
        return [Job(*line.split("|", 4)) for line in self.run(*args).stdout.splitlines() if line]

    def sacct(self, name: str) -> list[Job]:
        """Jobs of that name in the accounting database (allocations, not steps)."""
        out = self.run("sacct", "--noheader", "--parsable2", "--allocations", "--allusers",
                       f"--name={name}", "--starttime=now-1days",
                       "--format=JobID,JobName,State,NodeList,Comment")
        return [Job(*line.split("|", 4)) for line in out.stdout.splitlines() if line]

    def scancel(self, *ids: str) -> None:
        self.run("scancel", *ids)

    def wait_for(self, pred: Any, timeout_s: float = 60.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            v = pred()
            if v:
                return v
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
            time.sleep(0.2)


if __name__ == "__main__":  # pragma: no cover - by hand
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ajug-slurm-") as tmp:
        c = SlurmCluster(Path(tmp), accounting=mysql_reachable())
        c.start()
        print(f"cluster up in {c.started_in_s:.1f}s; node {c.node} idle; accounting "
              f"{'on' if c.has_sacct else 'off'}\n  export SLURM_CONF={c.conf}\nEnter stops it.")
        try:
            input()
        finally:
            c.stop()
