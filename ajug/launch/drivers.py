"""Submitting, listing and cancelling jobs for real: a batch system's commands (``BatchDriver``)
or a command run per job on this machine (``ExecDriver``). Every call is a subprocess awaited
with a timeout, so the coordinator's loop never waits on a scheduler that is slow to answer.
Failures become ``LaunchError`` with one line a user can act on."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import re
import shlex
import signal
from pathlib import Path

from ..errors import LaunchError
from .policy import ENDED, RUNNING, Listed
from .shapes import Shape, shape_for
from .systems import BatchSystem, JobSpec, LaunchParseError

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 60.0
#: never handed to a batch system: sbatch and qsub copy the environment into the job's record
SECRET_ENV = ("AJUG_TOKEN", "AJUG_READ_TOKEN")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in SECRET_ENV}


async def run_command(argv: list[str], stdin: bytes | None = None,
                      timeout_s: float = COMMAND_TIMEOUT_S) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a command; its own process group, killed on timeout."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, env=clean_env(),
        )
    except OSError as e:
        raise LaunchError(f"cannot run {argv[0]}: {e.strerror or e}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise LaunchError(f"{argv[0]} did not answer within {timeout_s:g}s") from None
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def error_line(cmd: str, rc: int, err: str) -> str:
    """The line of a command's error output that says what is wrong (sbatch prints the cause
    first, then "Batch job submission failed: ...")."""
    lines = [x.strip() for x in err.splitlines() if x.strip()]
    pick = next((x for x in lines if "error" in x.lower()), lines[0] if lines else "")
    pick = re.sub(rf"^{re.escape(cmd)}:\s*(error:\s*)?", "", pick)
    return pick or f"exit status {rc}"


class BatchDriver:
    """A batch system (SLURM, PBS, SGE, LSF) driven through its commands. Every job's worker
    offers what its job was given (``--resources cpus=N``, and ``memory`` with ``--job-mem``),
    not the whole node's CPUs and memory. Jobs may be sized for tasks that need resources
    (``shapes``): one script per shape, written when first needed, with the run's job name."""

    sizes_jobs = True

    def __init__(self, system: BatchSystem, spec: JobSpec, job_dir: Path, user: str) -> None:
        self.system = system
        self.kind = system.kind
        self.submit_name = system.submit_name
        self.spec = spec if spec.resources else dataclasses.replace(
            spec, resources=shape_for({}, spec.cpus, spec.mem_mib).offer_text())
        self.job_dir = job_dir
        self.user = user
        self.scripts: dict[bool, Path] = {}
        self.shape_scripts: dict[str, Path] = {}

    def prepare(self, with_base: bool) -> list[Path]:
        """Write the job scripts (one for jobs whose workers exit when idle, one for base jobs
        if --min-jobs asks for any); they hold no secret."""
        for base in (False, True) if with_base else (False,):
            self.scripts[base] = self._write(f"{'-base' if base else ''}", self.spec, base)
        return list(self.scripts.values())

    def _write(self, suffix: str, spec: JobSpec, base: bool = False) -> Path:
        path = self.job_dir / f"{self.spec.name}{suffix}.{self.kind}.sh"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.system.script(spec, base=base))
        tmp.replace(path)
        return path

    def script_for(self, shape: Shape) -> Path:
        """The script of jobs sized for ``shape`` (``<name>-<shape key>.<kind>.sh``)."""
        path = self.shape_scripts.get(shape.key)
        if path is None:
            path = self._write(f"-{shape.key}", shape.spec(self.spec))
            self.shape_scripts[shape.key] = path
        return path

    async def submit(self, base: bool, shape: Shape | None = None) -> str:
        script = self.scripts[base] if shape is None else self.script_for(shape)
        argv, stdin = self.system.submit_argv(str(script))
        rc, out, err = await run_command(argv, stdin)
        if rc != 0:
            raise LaunchError(f"{self.submit_name} refused the job: "
                              f"{error_line(argv[0], rc, err)}")
        try:
            return self.system.parse_submit(out)
        except LaunchParseError as e:
            raise LaunchError(str(e)) from None

    async def cancel(self, ids: list[str]) -> None:
        argv = self.system.cancel_argv(ids)
        rc, _out, err = await run_command(argv)
        if rc != 0:  # a job that ended meanwhile is no error worth more than a line
            log.info("%s: %s", " ".join(argv[:3]), error_line(argv[0], rc, err))

    def log_hint(self) -> str:
        return str(self.job_dir)

    async def list(self) -> list[Listed]:
        argv = self.system.list_argv(self.spec.name, self.user)
        rc, out, err = await run_command(argv)
        if rc != 0:
            raise LaunchError(f"{argv[0]} failed: {error_line(argv[0], rc, err)}")
        try:
            return self.system.parse_list(out, self.spec.name)
        except LaunchParseError as e:
            raise LaunchError(str(e)) from None


class ExecDriver:
    """``--workers 'exec:COMMAND'``: each job is COMMAND run on this machine by the shell, with
    ``{command}`` (the worker's shell command, as one quoted word: ``ssh {host} {command}``),
    ``{script}`` (a script file that runs it), ``{id}`` and ``{host}`` (the next of
    ``--exec-hosts``, the one with the fewest jobs) replaced. A job lives as long as COMMAND
    runs; cancelling it sends SIGTERM to COMMAND's process group."""

    kind = "exec"
    submit_name = "the exec command"
    #: its jobs run where COMMAND puts them, with what that host has: never sized
    sizes_jobs = False

    def __init__(self, template: str, spec: JobSpec, job_dir: Path, hosts: list[str]) -> None:
        self.template = template
        self.spec = spec
        self.job_dir = job_dir
        self.hosts = hosts
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.host_of: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._reapers: set[asyncio.Task[int]] = set()

    def prepare(self, with_base: bool) -> list[Path]:
        return []

    def _pick_host(self) -> str:
        # jobs whose command has not ended, those still being started included
        live = [h for i, h in self.host_of.items()
                if i not in self.procs or self.procs[i].returncode is None]
        return min(self.hosts, key=lambda h: (live.count(h), self.hosts.index(h)))

    def render(self, job_id: str, base: bool) -> tuple[str, Path]:
        """The command line that starts job ``job_id``, and its script file."""
        spec = self.spec
        worker = spec.worker_command(self.kind, job_id, base)
        line = "; ".join([*spec.setup, f"exec {worker}"])
        script = self.job_dir / f"{spec.name}-{job_id}.exec.sh"
        script.write_text("#!/bin/bash\n" + "\n".join([*spec.setup, f"exec {worker}"]) + "\n")
        script.chmod(0o700)
        values = {"command": shlex.quote(line), "script": shlex.quote(str(script)),
                  "id": job_id, "host": ""}
        if "{host}" in self.template:
            host = self._pick_host()
            self.host_of[job_id] = host
            values["host"] = shlex.quote(host)
        cmd = self.template
        for k, v in values.items():
            cmd = cmd.replace("{" + k + "}", v)
        return cmd, script

    async def submit(self, base: bool, shape: Shape | None = None) -> str:
        job_id = f"{os.getpid()}.{next(self._ids)}"
        cmd, _script = self.render(job_id, base)
        logf = open(self.job_dir / f"{self.spec.name}-{job_id}.out", "ab")
        try:
            proc = await asyncio.create_subprocess_shell(
                cmd, stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf,
                start_new_session=True, env={**clean_env(), "AJUG_JOB_ID": job_id},
            )
        except OSError as e:
            raise LaunchError(f"cannot run the exec command: {e.strerror or e}") from None
        finally:
            logf.close()
        self.procs[job_id] = proc
        reaper = asyncio.ensure_future(proc.wait())
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)
        return job_id

    async def cancel(self, ids: list[str]) -> None:
        for jid in ids:
            p = self.procs.get(jid)
            if p is not None and p.returncode is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass

    def log_hint(self) -> str:
        return str(self.job_dir)

    async def list(self) -> list[Listed]:
        out = []
        for jid, p in list(self.procs.items()):
            if p.returncode is None:
                out.append(Listed(jid, RUNNING, "RUNNING", self.host_of.get(jid, "")))
            else:
                rc = p.returncode
                raw = f"SIGNAL {-rc}" if rc < 0 else f"EXIT {rc}"
                out.append(Listed(jid, ENDED, raw, self.host_of.pop(jid, "")))
                del self.procs[jid]
        return out
