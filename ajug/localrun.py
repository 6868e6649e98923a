"""A whole run on one machine, as ``ajug run`` does it: a coordinator, local worker processes
over loopback (or worker jobs of a launcher), the progress display and the end-of-run report.

``run_local`` needs no click: it takes the coordinator's ``Settings`` and the run's options
and returns a ``RunSummary`` (exit status, final counts, failures), so that a Python caller
gets what the command prints.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from .access import spawn_with_token
from .coordinator import Coordinator, Settings
from .errors import UsageError
from .local import ajug_args, fork_workers, worker_command
from .progress import RunProgress
from .runreport import RunContext, end_of_run, install_stop, look_for_stale, nothing_to_do
from .servesetup import start_dashboard, start_launcher
from .supervisor import LocalCrew
from .workoffer import child_args, default_group

log = logging.getLogger("ajug")

#: Once the graph is done, the local workers have this long to hang up before the coordinator
#: exits (they are on this machine and leave at once).
FINISH_GRACE_S = 5.0


@dataclass
class LocalRun:
    """What a local run does besides what the coordinator's ``Settings`` say."""

    settings: Settings
    #: how the user named the jugfile and the store (for the commands the report names)
    context: RunContext
    #: local worker processes (0: none, the workers are a launcher's jobs)
    jobs: int
    #: tasks leased ahead per worker (None: adapts)
    prefetch: int | None = None
    progress: bool = True
    #: a port for the dashboard (0: a free one), or None: no dashboard
    dashboard: int | None = None
    dashboard_host: str = "127.0.0.1"
    #: the launch options of ``--workers`` (``ajug.launch.options``), or None
    launch: Any = None
    #: what a forked worker runs with its ``work ...`` arguments and the token (``ajug.cli``
    #: passes its ``forked_main``); None: the workers are spawned, never forked
    fork_main: Callable[[list[str], bytes], object] | None = None
    #: what this machine offers its workers together (``--resources``); None: CPUs and memory
    resources: str | None = None
    #: called once the coordinator is open, in its loop, with what stops the run as Ctrl-C
    #: does (``ajug.run`` from a thread: to stop it from the caller's)
    on_start: Callable[[Callable[[], None]], None] | None = None


@dataclass
class RunSummary:
    """How a run ended: its exit status (0 all done, 1 failures or stopped, 128+N a signal),
    the coordinator's final status, and why the run was stopped when no worker could go on."""

    code: int
    status: dict[str, Any]
    reason: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Tasks per state (``done``, ``failed``, ``blocked``, ...)."""
        return dict(self.status["totals"])

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Each failed task once: function, key, kind, exception and traceback."""
        return list(self.status["failures"])


def run_local(run: LocalRun) -> RunSummary:
    """Run the jugfile of ``run.settings`` to its end, on this machine's worker processes."""
    from .protocol.client import new_loop_runner

    settings = run.settings
    settings.finish_grace_s = FINISH_GRACE_S
    # forked now, before any thread or socket exists; they get the port once there is work
    forks = None
    if run.jobs and run.fork_main is not None:
        forks = fork_workers(run.jobs, run.fork_main, settings.token, settings.store_url)
    if forks is not None:
        log.info("started %d local workers by fork", run.jobs)
    try:
        return new_loop_runner()(_run(run, forks))
    finally:
        if forks is not None:
            forks.close()  # those never handed a port exit at EOF; none is left a zombie


async def _run(run: LocalRun, forks: Any) -> RunSummary:
    settings, ctx, n = run.settings, run.context, run.jobs
    coord = Coordinator(settings)
    # (spawning the workers while the jugfile loads was tried: on 2 cores their start-up
    # competes with the loading for CPU and the whole run got slower. Forked workers have
    # no start-up: they wait on a pipe, using no CPU, until the port is written to them.)
    await coord.open()
    if settings.ssl is not None:
        raise UsageError("ajug run uses loopback only; TLS options are for serve/work")
    crew = LocalCrew(n)
    stop = install_stop(coord, before=crew.stop)
    if run.on_start is not None:
        def interrupt() -> None:
            stop.setdefault("signal", signal.SIGINT)
            crew.stop()
            coord.stop()

        run.on_start(interrupt)
    await start_dashboard(coord, run.dashboard, run.dashboard_host)
    launcher = await start_launcher(coord, run.launch)
    args = ["work", f"127.0.0.1:{coord.port}", "-j", "1", "--connect-timeout", "30",
            "--announce", "none", *child_args(run.resources, default_group())]
    if run.prefetch is not None:
        args += ["--prefetch", str(run.prefetch)]
    arg_lists = [[*args, "--name", f"local{i}"] for i in range(n)]

    def spawn(i: int) -> Any:
        return spawn_with_token(worker_command(arg_lists[i]), settings.token)

    st0 = coord.status()
    nothing = not (st0["tasks"] > st0["totals"]["done"] or st0["barrier"])
    procs: list[Any] = []
    if nothing:
        if forks is not None:
            forks.cancel()
        click.echo(nothing_to_do(ctx, st0), err=True)
    elif forks is not None:
        procs = forks.start([ajug_args(a) for a in arg_lists])
    else:
        procs = [spawn(i) for i in range(n)]
    stale = look_for_stale(coord, ctx)
    prog = RunProgress(enabled=run.progress and not nothing)
    here = socket.gethostname()
    # spawned when replaced, even if the first ones were forked: this process has threads now
    crew.start(procs, spawn, lambda d: coord.worker_exited(here, d.pid, d.cause, d.detail))

    def tick(c: Any) -> None:
        prog.update(c.status())
        if launcher is not None:
            launcher.tick(c)
        if c.state == "finished":
            return
        sched = c.sched
        if crew.tick((sched.completed, sched.reclaimed, len(sched.failures))):
            c.stop()

    try:
        code = await coord.run(on_tick=tick)
    finally:
        if launcher is not None:
            await launcher.close(finished=coord.state == "finished")
        await crew.end(finished=coord.state == "finished")
    code, st = await end_of_run(coord, ctx, prog, stop, stale, code, nothing)
    reason = crew.watch.reason
    return RunSummary(1 if reason else code, st, reason)
