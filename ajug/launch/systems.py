"""Batch systems as data: the job script each one reads, the commands that submit, list and
cancel jobs, and how to read their answers. No I/O here (``runner.py`` runs the commands), so
every script and every parser is tested without a cluster.

SLURM is tried against a real cluster in the tests. PBS/Torque, SGE and LSF are written from
their manuals and tested as generated text and parsers only: untried on real clusters.

A job runs one ``ajug work`` with ``-j CPUS`` processes, named ``KIND:JOBID/`` so that the
coordinator can tell which job each connected worker belongs to. A job sized for tasks that
need resources (``shapes.py``) asks for them (SLURM ``--gres=gpu:N``, LSF ``-gpu "num=N"``;
PBS and SGE name GPUs per site: ``--job-directive``) and its worker offers them
(``--resources``).
"""

from __future__ import annotations

import math
import re
import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from ..errors import UsageError
from .policy import ENDED, ENDING, PENDING, RUNNING, Listed


class LaunchParseError(ValueError):
    """A command's answer in a form we do not know."""


def _unreadable(out: str, what: str) -> LaunchParseError:
    return LaunchParseError(f"cannot read the job id from {what}'s output: {out.strip()[:200]!r}")


@dataclass
class JobSpec:
    """What every job of a run asks for, and what it runs."""

    name: str
    cpus: int = 1
    mem_mib: int | None = None
    gpus: int = 0  # a job sized for tasks that need GPUs (``shapes``)
    #: what the job's worker offers (``ajug work --resources``); empty: the host's defaults
    resources: str = ""
    time_s: int | None = None
    queue: str | None = None  # SLURM's partition
    account: str | None = None
    directives: list[str] = field(default_factory=list)  # extra lines, as given
    setup: list[str] = field(default_factory=list)  # shell lines run before the worker
    log_dir: str = "."
    comment: str = ""
    #: the worker command up to its arguments: ``[python, -m, ajug]`` or ``[ajug]``
    ajug: list[str] = field(default_factory=lambda: ["ajug"])
    address: str = "127.0.0.1:5555"
    token_file: str = ""
    idle_exit_s: float | None = 60.0
    connect_timeout_s: float = 300.0
    verbose: int = 0

    def worker_command(self, kind: str, job_id: str, base: bool = False) -> str:
        """The shell line that starts the job's worker; ``job_id`` may be a shell expression
        (``${SLURM_JOB_ID}``) and is left unquoted inside double quotes so that it expands."""
        args = [*self.ajug]
        if self.verbose:
            args.append("-" + "v" * self.verbose)
        args += ["work", self.address, "-j", str(self.cpus), "--token-file", self.token_file,
                 "--connect-timeout", f"{self.connect_timeout_s:g}"]
        if self.idle_exit_s is not None and not base:
            args += ["--idle-exit", f"{self.idle_exit_s:g}"]
        if self.resources:
            args += ["--resources", self.resources]
        return " ".join(shlex.quote(a) for a in args) + f' --name "{kind}:{job_id}/"'


def parse_mem(text: str) -> int:
    """``4G``, ``512M``, ``2048`` (MiB), ``1.5GB`` -> MiB."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise UsageError(f"--job-mem {text!r}: write a size such as 4G, 512M or 2048 (MiB)")
    n, unit = float(m.group(1)), m.group(2).upper() or "M"
    mib = n * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]
    if mib < 1:
        raise UsageError(f"--job-mem {text!r}: at least 1M")
    return int(math.ceil(mib))


def parse_time(text: str) -> int:
    """SLURM's forms: ``MINUTES``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]`` -> seconds."""
    t = text.strip()
    days = 0
    m = re.fullmatch(r"(\d+)-(.*)", t)
    if m:
        days, t = int(m.group(1)), m.group(2)
        parts = t.split(":")
        while len(parts) < 3:
            parts.append("0")
    else:
        parts = t.split(":")
        if len(parts) == 1:
            parts = ["0", parts[0], "0"]  # minutes
        elif len(parts) == 2:
            parts = ["0", *parts]
    try:
        h, mi, s = (int(p) for p in parts)
        if len(parts) != 3 or min(h, mi, s) < 0:
            raise ValueError
    except ValueError:
        raise UsageError(f"--job-time {text!r}: write MINUTES, HH:MM:SS or D-HH:MM:SS") from None
    total = ((days * 24 + h) * 60 + mi) * 60 + s
    if total <= 0:
        raise UsageError(f"--job-time {text!r}: must be more than 0")
    return total


def hms(seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    return f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}"


class BatchSystem:
    """One scheduler's dialect. Subclasses fill in the directives, commands and parsers."""

    kind = ""
    directive = "#"
    job_id_var = ""
    submit_name = ""  # the command a user would recognise in messages (sbatch, qsub, bsub)
    queue_option = "--partition"

    def directives(self, spec: JobSpec) -> list[str]:
        raise NotImplementedError

    def script(self, spec: JobSpec, base: bool = False) -> str:
        """The job script: directives, the user's extra directives and setup lines, then the
        worker. The token is not in it: the worker reads ``spec.token_file``."""
        lines = ["#!/bin/bash", *self.directives(spec)]
        for d in spec.directives:
            lines.append(d if d.lstrip().startswith("#") else f"{self.directive} {d}")
        lines.append(f"# an ajug worker job for a run ({spec.comment}); written by ajug, "
                     "which submits, counts and cancels these jobs")
        lines += spec.setup
        lines.append("exec " + spec.worker_command(self.kind, "${" + self.job_id_var + "}", base))
        return "\n".join(lines) + "\n"

    def submit_argv(self, script_path: str) -> tuple[list[str], bytes | None]:
        """The command (and its standard input) that submits the script."""
        raise NotImplementedError

    def parse_submit(self, out: str) -> str:
        raise NotImplementedError

    def list_argv(self, name: str, user: str) -> list[str]:
        raise NotImplementedError

    def parse_list(self, out: str, name: str) -> list[Listed]:
        raise NotImplementedError

    def cancel_argv(self, ids: list[str]) -> list[str]:
        raise NotImplementedError


# -- SLURM ------------------------------------------------------------------------------------
SLURM_STATES = {
    "PENDING": PENDING, "CONFIGURING": PENDING, "REQUEUED": PENDING, "REQUEUE_HOLD": PENDING,
    "REQUEUE_FED": PENDING, "RESV_DEL_HOLD": PENDING, "SPECIAL_EXIT": PENDING,
    "RUNNING": RUNNING, "SUSPENDED": RUNNING, "STOPPED": RUNNING, "SIGNALING": RUNNING,
    "RESIZING": RUNNING, "STAGE_OUT": ENDING, "COMPLETING": ENDING,
}


class Slurm(BatchSystem):
    kind = "slurm"
    directive = "#SBATCH"
    job_id_var = "SLURM_JOB_ID"
    submit_name = "sbatch"

    def directives(self, spec: JobSpec) -> list[str]:
        d = self.directive
        out = [f"{d} --job-name={spec.name}", f"{d} --ntasks=1", f"{d} --nodes=1",
               f"{d} --cpus-per-task={spec.cpus}",
               f"{d} --output={spec.log_dir}/{spec.name}-%j.out"]
        if spec.comment:
            out.append(f"{d} --comment={shlex.quote(spec.comment)}")
        if spec.mem_mib:
            out.append(f"{d} --mem={spec.mem_mib}M")
        if spec.gpus:
            out.append(f"{d} --gres=gpu:{spec.gpus}")
        if spec.time_s:
            days, rest = divmod(spec.time_s, 86400)
            out.append(f"{d} --time={days}-{hms(rest)}")
        if spec.queue:
            out.append(f"{d} --partition={spec.queue}")
        if spec.account:
            out.append(f"{d} --account={spec.account}")
        return out

    def submit_argv(self, script_path: str) -> tuple[list[str], bytes | None]:
        return ["sbatch", "--parsable", script_path], None

    def parse_submit(self, out: str) -> str:
        # "123" or "123;cluster"
        m = re.search(r"^(\d+)(?:;\S*)?\s*$", out.strip(), re.M)
        if m is None:
            raise _unreadable(out, "sbatch")
        return m.group(1)

    def list_argv(self, name: str, user: str) -> list[str]:
        # every state: a job that ended lately says how (TIMEOUT, PREEMPTED, NODE_FAIL, ...)
        return ["squeue", "--noheader", "--states=all", f"--name={name}", f"--user={user}",
                "--format=%i|%T|%N|%r"]

    def parse_list(self, out: str, name: str) -> list[Listed]:
        jobs = []
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) < 4 or not parts[0]:
                continue
            jid, raw, node, reason = parts[0], parts[1], parts[2], parts[3]
            state = SLURM_STATES.get(raw, ENDED)
            jobs.append(Listed(jid, state, raw, node if state != PENDING else "",
                               reason if state == PENDING and reason != "None" else ""))
        return jobs

    def cancel_argv(self, ids: list[str]) -> list[str]:
        return ["scancel", *ids]


# -- PBS / Torque -----------------------------------------------------------------------------
PBS_STATES = {"Q": PENDING, "H": PENDING, "W": PENDING, "T": PENDING, "S": RUNNING,
              "R": RUNNING, "B": RUNNING, "E": ENDING, "X": ENDED, "F": ENDED, "C": ENDED}


class Pbs(BatchSystem):
    """PBS Pro, OpenPBS and Torque: ``-l nodes=1:ppn=N`` is Torque's form, which PBS Pro
    also accepts."""

    kind = "pbs"
    directive = "#PBS"
    job_id_var = "PBS_JOBID"
    submit_name = "qsub"
    queue_option = "--queue"

    def directives(self, spec: JobSpec) -> list[str]:
        d = self.directive
        out = [f"{d} -N {spec.name[:15]}", f"{d} -l nodes=1:ppn={spec.cpus}", f"{d} -j oe",
               f"{d} -o {spec.log_dir}/"]
        if spec.mem_mib:
            out.append(f"{d} -l mem={spec.mem_mib}mb")
        if spec.time_s:
            out.append(f"{d} -l walltime={hms(spec.time_s)}")
        if spec.queue:
            out.append(f"{d} -q {spec.queue}")
        if spec.account:
            out.append(f"{d} -A {spec.account}")
        return out

    def submit_argv(self, script_path: str) -> tuple[list[str], bytes | None]:
        return ["qsub", script_path], None

    def parse_submit(self, out: str) -> str:
        m = re.search(r"^(\d+(?:\[\])?(?:\.\S+)?)\s*$", out.strip(), re.M)
        if m is None:
            raise _unreadable(out, "qsub")
        return m.group(1)

    def list_argv(self, name: str, user: str) -> list[str]:
        return ["qstat", "-u", user]

    def parse_list(self, out: str, name: str) -> list[Listed]:
        """``qstat -u USER``: a table whose columns are Job ID, Username, Queue, Jobname,
        SessID, NDS, TSK, Memory, Time, S, Time (the job name cut to its width)."""
        jobs = []
        for line in out.splitlines():
            cols = line.split()
            if len(cols) < 10 or not re.match(r"^\d", cols[0]):
                continue
            jobname, st = cols[3], cols[9]
            if not name.startswith(jobname.rstrip("*")) or st not in PBS_STATES:
                continue
            jobs.append(Listed(cols[0], PBS_STATES[st], st))
        return jobs

    def cancel_argv(self, ids: list[str]) -> list[str]:
        return ["qdel", *ids]


# -- SGE --------------------------------------------------------------------------------------
class Sge(BatchSystem):
    """Sun/Son of/Univa Grid Engine. The parallel environment that gives one job several slots
    on one host is site-specific: ``smp`` here; change it with ``--job-directive '-pe NAME N'``
    (and ``--job-cpus 1``)."""

    kind = "sge"
    directive = "#$"
    job_id_var = "JOB_ID"
    submit_name = "qsub"
    queue_option = "--queue"
    parallel_env = "smp"

    def directives(self, spec: JobSpec) -> list[str]:
        d = self.directive
        out = [f"{d} -N {spec.name}", f"{d} -S /bin/bash", f"{d} -j y",
               f"{d} -o {spec.log_dir}/"]
        if spec.cpus > 1:
            out.append(f"{d} -pe {self.parallel_env} {spec.cpus}")
        if spec.mem_mib:  # per slot
            out.append(f"{d} -l h_vmem={-(-spec.mem_mib // spec.cpus)}M")
        if spec.time_s:
            out.append(f"{d} -l h_rt={hms(spec.time_s)}")
        if spec.queue:
            out.append(f"{d} -q {spec.queue}")
        if spec.account:
            out.append(f"{d} -A {spec.account}")
        return out

    def submit_argv(self, script_path: str) -> tuple[list[str], bytes | None]:
        return ["qsub", "-terse", script_path], None

    def parse_submit(self, out: str) -> str:
        m = re.search(r"^(\d+)", out.strip(), re.M)
        if m is None:
            raise _unreadable(out, "qsub")
        return m.group(1)

    def list_argv(self, name: str, user: str) -> list[str]:
        return ["qstat", "-xml", "-u", user]

    def parse_list(self, out: str, name: str) -> list[Listed]:
        try:
            root = ET.fromstring(out)
        except ET.ParseError as e:
            raise LaunchParseError(f"qstat -xml gave no XML: {e}") from None
        jobs = []
        for jl in root.iter("job_list"):
            if (jl.findtext("JB_name") or "") != name:
                continue
            st = jl.findtext("state") or ""
            if "d" in st:
                state = ENDING
            elif "r" in st or "t" in st or "s" in st.lower():
                state = RUNNING
            elif "q" in st or "h" in st:
                state = PENDING
            else:
                state = ENDED
            queue = jl.findtext("queue_name") or ""
            jobs.append(Listed(jl.findtext("JB_job_number") or "", state, st,
                               queue.partition("@")[2]))
        return jobs

    def cancel_argv(self, ids: list[str]) -> list[str]:
        return ["qdel", *ids]


# -- LSF --------------------------------------------------------------------------------------
LSF_STATES = {"PEND": PENDING, "PSUSP": PENDING, "WAIT": PENDING, "RUN": RUNNING,
              "USUSP": RUNNING, "SSUSP": RUNNING, "PROV": PENDING, "DONE": ENDED,
              "EXIT": ENDED, "ZOMBI": ENDED, "UNKWN": RUNNING}


class Lsf(BatchSystem):
    """IBM Spectrum LSF. bsub reads ``#BSUB`` lines only from a script on its standard input.
    Memory is given in MB (``LSF_UNIT_FOR_LIMITS=MB``, the usual setting)."""

    kind = "lsf"
    directive = "#BSUB"
    job_id_var = "LSB_JOBID"
    submit_name = "bsub"
    queue_option = "--queue"

    def directives(self, spec: JobSpec) -> list[str]:
        d = self.directive
        out = [f"{d} -J {spec.name}", f"{d} -n {spec.cpus}", f'{d} -R "span[hosts=1]"',
               f"{d} -o {spec.log_dir}/{spec.name}-%J.out"]
        if spec.mem_mib:
            out.append(f'{d} -M {spec.mem_mib} -R "rusage[mem={-(-spec.mem_mib // spec.cpus)}]"')
        if spec.gpus:
            out.append(f'{d} -gpu "num={spec.gpus}"')
        if spec.time_s:
            out.append(f"{d} -W {max(1, -(-spec.time_s // 60))}")
        if spec.queue:
            out.append(f"{d} -q {spec.queue}")
        if spec.account:
            out.append(f"{d} -P {spec.account}")
        return out

    def submit_argv(self, script_path: str) -> tuple[list[str], bytes | None]:
        with open(script_path, "rb") as f:  # a small file we just wrote
            return ["bsub"], f.read()

    def parse_submit(self, out: str) -> str:
        m = re.search(r"Job <(\d+)> is submitted", out)
        if m is None:
            raise _unreadable(out, "bsub")
        return m.group(1)

    def list_argv(self, name: str, user: str) -> list[str]:
        return ["bjobs", "-a", "-noheader", "-u", user, "-J", name, "-o",
                "jobid stat exec_host delimiter='|'"]

    def parse_list(self, out: str, name: str) -> list[Listed]:
        jobs = []
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) < 3 or not parts[0].isdigit():
                continue
            st = parts[1]
            host = parts[2].split("*")[-1].split(":")[0] if parts[2] != "-" else ""
            jobs.append(Listed(parts[0], LSF_STATES.get(st, ENDED), st, host))
        return jobs

    def cancel_argv(self, ids: list[str]) -> list[str]:
        return ["bkill", *ids]


SYSTEMS: dict[str, type[BatchSystem]] = {"slurm": Slurm, "pbs": Pbs, "torque": Pbs, "sge": Sge,
                                         "lsf": Lsf}
