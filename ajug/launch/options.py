"""``--workers slurm`` and its options on ``ajug serve`` and ``ajug run``: parsing and checking
them, the job directory and its token file, and starting the launcher beside a coordinator.

Like every option, each is also a setting (``AJUG_MAX_JOBS=8``, ``max-jobs = 8`` in
``[tool.ajug]`` or ajug.toml; see config.py)."""

from __future__ import annotations

import getpass
import hashlib
import ipaddress
import os
import secrets
import shlex
import shutil
import socket
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError

#: the settings this module takes out of a command's keyword arguments
KEYS = ("workers", "advertise", "min_jobs", "max_jobs", "job_cpus", "job_mem", "job_time",
        "partition", "account", "job_directive", "job_setup", "job_name", "idle_exit",
        "job_dir", "worker_command", "exec_hosts")
BATCH_KINDS = ("slurm", "pbs", "torque", "sge", "lsf")
#: how long a job's worker keeps trying to reach a coordinator that went away (a restart)
JOB_CONNECT_TIMEOUT_S = 300.0


def launch_options(f: Any) -> Any:
    opts = [
        click.option("--workers", default=None, metavar="KIND",
                     help="Start workers as batch jobs, scaled to the work: slurm, pbs, sge, lsf, "
                          "or 'exec:COMMAND' (docs/cluster.md). ajug run: local (default)."),
        click.option("--advertise", default=None, metavar="HOST",
                     help="Address the jobs' workers connect to (default: this host's name)."),
        click.option("--min-jobs", type=int, default=0, show_default=True,
                     help="Jobs kept while the run goes on, even idle."),
        click.option("--max-jobs", type=int, default=4, show_default=True,
                     help="Most jobs at once."),
        click.option("--job-cpus", type=int, default=1, show_default=True,
                     help="CPUs per job; its worker runs that many processes."),
        click.option("--job-mem", default=None, metavar="SIZE", help="Memory per job (4G, 512M)."),
        click.option("--job-time", default=None, metavar="TIME",
                     help="Time limit per job (MINUTES, HH:MM:SS or D-HH:MM:SS)."),
        click.option("--partition", "--queue", "partition", default=None,
                     help="SLURM partition (queue for PBS, SGE, LSF)."),
        click.option("--account", default=None, help="Account (project) charged for the jobs."),
        click.option("--job-directive", multiple=True, metavar="LINE",
                     help="Extra job script header line, e.g. '--gres=gpu:1' (repeatable)."),
        click.option("--job-setup", multiple=True, metavar="LINE",
                     help="Shell line a job runs before its worker, e.g. 'module load python' "
                          "(repeatable)."),
        click.option("--job-name", default="ajug", show_default=True,
                     help="Prefix of the jobs' names."),
        click.option("--idle-exit", type=float, default=60.0, show_default=True,
                     help="Seconds a job's worker waits without a task before it exits."),
        click.option("--job-dir", default=None, metavar="DIR",
                     help="Job scripts, logs and token file (default: <jugfile stem>.ajugjobs "
                          "beside the jugfile); the nodes must see it."),
        click.option("--worker-command", default=None, metavar="CMD",
                     help="How a job starts ajug (default: this Python, PYTHON -m ajug)."),
        click.option("--exec-hosts", default=None, metavar="H1,H2",
                     help="Hosts for {host} in --workers 'exec:...'."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@dataclass
class LaunchOptions:
    kind: str  # slurm, pbs, sge, lsf, exec
    template: str = ""  # exec's command
    advertise: str = ""
    min_jobs: int = 0
    max_jobs: int = 4
    cpus: int = 1
    mem_mib: int | None = None
    time_s: int | None = None
    partition: str | None = None
    account: str | None = None
    directives: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    name_prefix: str = "ajug"
    idle_exit_s: float = 60.0
    job_dir: Path | None = None
    ajug: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    token_file: Path | None = None

    @property
    def label(self) -> str:
        return "exec" if self.kind == "exec" else self.kind


def _lines(v: Any) -> list[str]:
    """A repeatable option's values; one string from the environment may hold several lines."""
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    out: list[str] = []
    for item in v:
        out += [x for x in str(item).splitlines() if x.strip()]
    return out


def pop_launch_options(kw: dict[str, Any], command: str) -> LaunchOptions | None:
    """Take the launcher's settings out of ``kw``; None when workers are not launched as jobs."""
    from .systems import parse_mem, parse_time

    v = {k: kw.pop(k, None) for k in KEYS}
    workers = (v["workers"] or "").strip()
    if workers in ("", "none") or command == "run" and workers == "local":
        return None
    if workers.startswith("exec:"):
        kind, template = "exec", workers[5:].strip()
        if "{command}" not in template and "{script}" not in template:
            raise UsageError("--workers 'exec:COMMAND': COMMAND must contain {command} or {script}, "
                             "e.g. 'exec:ssh {host} {command}'")
    elif workers.lower() in BATCH_KINDS:
        kind, template = workers.lower(), ""
        if kind == "torque":
            kind = "pbs"
    else:
        local = ", local" if command == "run" else ""
        raise UsageError(f"--workers {workers!r}: one of slurm, pbs, sge, lsf, 'exec:COMMAND'{local}")
    lo = LaunchOptions(kind, template)
    def num(key: str, default: int) -> int:
        return default if v[key] is None else int(v[key])

    lo.min_jobs, lo.max_jobs, lo.cpus = num("min_jobs", 0), num("max_jobs", 4), num("job_cpus", 1)
    if lo.max_jobs < 1:
        raise UsageError(f"--max-jobs {lo.max_jobs}: must be at least 1")
    if not 0 <= lo.min_jobs <= lo.max_jobs:
        raise UsageError(f"--min-jobs {lo.min_jobs}: must be from 0 to --max-jobs ({lo.max_jobs})")
    if lo.cpus < 1:
        raise UsageError(f"--job-cpus {lo.cpus}: must be at least 1")
    idle = v["idle_exit"]
    lo.idle_exit_s = 60.0 if idle is None else float(idle)
    if not lo.idle_exit_s > 0:
        raise UsageError(f"--idle-exit {idle}: must be a positive number of seconds")
    lo.mem_mib = parse_mem(v["job_mem"]) if v["job_mem"] else None
    lo.time_s = parse_time(str(v["job_time"])) if v["job_time"] else None
    lo.partition, lo.account = v["partition"] or None, v["account"] or None
    lo.directives, lo.setup = _lines(v["job_directive"]), _lines(v["job_setup"])
    prefix = v["job_name"] or "ajug"
    if not all(c.isalnum() or c in "-_." for c in prefix):
        raise UsageError(f"--job-name {prefix!r}: use letters, digits, '-', '_' and '.'")
    lo.name_prefix = prefix
    lo.advertise = (v["advertise"] or socket.gethostname()).strip()
    lo.job_dir = Path(v["job_dir"]).expanduser() if v["job_dir"] else None
    lo.ajug = shlex.split(v["worker_command"]) if v["worker_command"] else [sys.executable, "-m", "ajug"]
    lo.hosts = [h.strip() for h in (v["exec_hosts"] or "").split(",") if h.strip()]
    if kind == "exec" and "{host}" in template and not lo.hosts:
        raise UsageError("--workers 'exec:...{host}...' needs --exec-hosts H1,H2,...")
    if kind != "exec":
        from .systems import SYSTEMS

        submit = SYSTEMS[kind].submit_name
        if shutil.which(submit) is None:
            raise UsageError(f"--workers {kind}: {submit} is not on PATH here; run the coordinator "
                             f"where {kind}'s commands work (a login node)")
    return lo


def listen_host(lo: LaunchOptions) -> str:
    """Where to listen when --host was not given: where the workers were told to connect."""
    host = lo.advertise.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: reached from other machines
        loopback = False
    if loopback:
        return "::1" if ":" in host else "127.0.0.1"
    return "0.0.0.0"


def _check_private(path: Path, what: str) -> None:
    try:
        st = path.stat()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from None
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"{what} {path} can be read by other users or is not yours "
                         f"(mode {stat.S_IMODE(st.st_mode):o}): chmod 600 {path}")


def prepare(lo: LaunchOptions, jugfile: str, kw: dict[str, Any]) -> None:
    """Make the job directory (0700) and the token file the jobs' workers read (0600): the
    user's --token-file, else ``<job dir>/token`` holding AJUG_TOKEN, or a token made now and
    kept there, so that a restarted coordinator and the workers it adopts share it."""
    path = Path(jugfile).resolve()
    if lo.job_dir is None:
        lo.job_dir = path.parent / f"{path.stem}.ajugjobs"
    lo.job_dir = lo.job_dir.resolve()
    try:
        lo.job_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot make the job directory {lo.job_dir}: {e.strerror}") from None
    if kw.get("token_file"):
        lo.token_file = Path(kw["token_file"]).resolve()
        _check_private(lo.token_file, "--token-file")
        return
    tok = (kw.get("token") or os.environ.get("AJUG_TOKEN", "")).strip()
    tf = lo.job_dir / "token"
    if tf.exists():
        _check_private(tf, "the token file")
        if not tok or tf.read_text().strip() == tok:
            lo.token_file = tf
            kw["token_file"] = str(tf)
            return
    tok = tok or secrets.token_hex(16)
    tmp = tf.with_name(f".token.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(tok + "\n")
    tmp.replace(tf)
    lo.token_file = tf
    kw["token_file"] = str(tf)


def run_name(lo: LaunchOptions, jugfile: str, store_url: str) -> str:
    """The jobs' name: the prefix, the jugfile's stem and a digest of the jugfile's path and
    store, the same for every coordinator of this run (so a restarted one finds its jobs)."""
    path = Path(jugfile).resolve()
    store = store_url if "://" in store_url else str(Path(store_url).resolve())
    digest = hashlib.sha1(f"{path}\0{store}".encode()).hexdigest()[:6]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)[:20]
    return f"{lo.name_prefix}-{stem}-{digest}"


async def start_launcher(coord: Any, lo: LaunchOptions) -> Any:
    """The launcher for ``coord`` (listening and loaded): its jobs' scripts written, the queue
    looked at for jobs of an earlier coordinator of this run, its status in ``coord.status()``."""
    from .drivers import BatchDriver, ExecDriver
    from .policy import JobPolicy
    from .runner import Launcher
    from .systems import SYSTEMS, JobSpec

    assert lo.job_dir is not None and lo.token_file is not None
    name = run_name(lo, coord.s.jugfile, coord.s.store_url)
    host = f"[{lo.advertise}]" if ":" in lo.advertise else lo.advertise
    address = f"{host}:{coord.port}"
    spec = JobSpec(
        name=name, cpus=lo.cpus, mem_mib=lo.mem_mib, time_s=lo.time_s, queue=lo.partition,
        account=lo.account, directives=lo.directives, setup=lo.setup, log_dir=str(lo.job_dir),
        comment=f"ajug {Path(coord.s.jugfile).name} at {address}", ajug=lo.ajug,
        address=address, token_file=str(lo.token_file), idle_exit_s=lo.idle_exit_s,
        connect_timeout_s=JOB_CONNECT_TIMEOUT_S, verbose=1,
    )
    if lo.kind == "exec":
        driver: Any = ExecDriver(lo.template, spec, lo.job_dir, lo.hosts)
    else:
        driver = BatchDriver(SYSTEMS[lo.kind](), spec, lo.job_dir, getpass.getuser())
    policy = JobPolicy(max_jobs=lo.max_jobs, min_jobs=lo.min_jobs, slots_per_job=lo.cpus,
                       idle_exit_s=lo.idle_exit_s)
    # jobs of an earlier coordinator are adopted only if their workers will reach this one
    addr_file = lo.job_dir / f"{name}.address"
    try:
        previous = addr_file.read_text().strip()
    except OSError:
        previous = ""
    policy.adoptable = previous == address
    addr_file.write_text(address + "\n")
    launcher = Launcher(driver, policy, name, lo.job_dir)
    await launcher.start()
    coord.status_sections["jobs"] = launcher.status
    return launcher
