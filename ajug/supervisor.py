"""Worker processes that die: why, whether to start another, and telling the coordinator.

``ajug run`` and ``ajug work -j N`` start worker processes and see each one's exit status.
That status says whether the worker died by itself or was killed from outside, which decides
whether the tasks it was running are held responsible (``Scheduler.worker_exited``):

- it exited with a status (``os._exit(n)`` in a task, a fatal interpreter error), or it died of
  a signal the process raises on itself (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGSYS,
  SIGTRAP, SIGXCPU, SIGXFSZ): **the task**, counted as an attempt;
- SIGKILL while the memory cgroup's count of OOM kills went up: the OOM killer, **the task**;
- SIGKILL while that count is readable and did not move, or SIGTERM, SIGINT, SIGHUP, SIGQUIT,
  SIGUSR1/2, SIGPIPE, SIGALRM: **from outside** (a person, a scheduler ending a job, a
  health checker), not counted;
- SIGKILL with no cgroup to ask (no ``memory.events``/``memory.oom_control``): **unknown**,
  counted, as a connection lost with no report at all (another machine, a frozen worker).

What cannot be told: a task that sends its own worker SIGKILL or SIGTERM (``os.kill(os.getpid(),
...)``) looks like an outside kill; an outside ``kill -SEGV`` looks like the task's.

Replacing dead workers: a rate, not a lifetime budget. Deaths are free up to ``FREE_PER_JOB``
per job within ``WINDOW_S``; beyond that each replacement waits, twice as long each time up to
``MAX_DELAY_S``, and the wait shrinks back once deaths are rare again. A worker that exits 0
(all done) or 2 (an ajug error every new process would hit too, such as an unreachable
coordinator) is not replaced.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConnectError
from .watchdog import EXIT_REPLACE

log = logging.getLogger(__name__)

#: Signals a process raises on itself: a crash of the code it runs.
SELF_SIGNALS = frozenset(
    getattr(signal, n) for n in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT", "SIGSYS",
                                 "SIGTRAP", "SIGXCPU", "SIGXFSZ") if hasattr(signal, n)
)
WINDOW_S = 10.0
FREE_PER_JOB = 20
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0
#: ``ajug work -j N``: once a worker has seen the run finish, the others have this long to exit
#: by themselves.
FINISH_GRACE_S = 5.0
#: ``ajug run`` gives up after this many deaths in a row (at least; 3 per job) during which no
#: task finished, failed or lost its worker: the workers die before they take any work.
BARREN_DEATHS = 10


@dataclass(frozen=True)
class Death:
    """How one worker process ended."""

    pid: int
    status: int  # as Popen.returncode: an exit status, or minus the signal number
    cause: str  # "task" (it died by itself), "outside" (killed), "unknown"
    detail: str  # one phrase for logs and failure records

    @property
    def counts(self) -> bool:
        """Whether its running tasks are held responsible (an attempt each)."""
        return self.cause != "outside"


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def classify(pid: int, status: int, oom_before: int | None, oom_after: int | None) -> Death:
    """Why a worker process with this exit status died (see the module docstring)."""
    if status == EXIT_REPLACE:
        return Death(pid, status, "outside", "replaced: a task ran past its timeout")
    if status >= 0:
        return Death(pid, status, "task", f"exit status {status} (the worker exited by itself)")
    sig = -status
    name = _signame(sig)
    if sig in SELF_SIGNALS:
        return Death(pid, status, "task", f"{name} (raised by the worker itself)")
    if sig == signal.SIGKILL:
        if oom_before is None or oom_after is None:
            return Death(pid, status, "unknown", "SIGKILL (from outside or the OOM killer)")
        if oom_after > oom_before:
            return Death(pid, status, "task", "SIGKILL by the OOM killer (out of memory)")
    return Death(pid, status, "outside", f"{name} from outside")


def oom_kills() -> int | None:
    """How many processes the OOM killer has killed in this process's memory cgroup (v2
    ``memory.events``, v1 ``memory.oom_control``), or None where that cannot be read."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    paths = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            paths.append(Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.events")
        elif "memory" in controllers.split(","):
            paths.append(Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.oom_control")
            paths.append(Path("/sys/fs/cgroup/memory/memory.oom_control"))  # a namespaced mount
    for p in paths:
        try:
            for line in p.read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            continue
    return None


class RestartPolicy:
    """When to replace a dead worker: at once while deaths are rare, later and later while
    they come fast (see the module docstring). A decision, no I/O: the clock is passed in."""

    def __init__(self, jobs: int, clock: Callable[[], float] = time.monotonic,
                 window_s: float = WINDOW_S, free_per_job: int = FREE_PER_JOB,
                 first_delay_s: float = FIRST_DELAY_S, max_delay_s: float = MAX_DELAY_S) -> None:
        self.clock = clock
        self.window_s = window_s
        self.free = max(1, jobs) * free_per_job
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.deaths: deque[float] = deque()
        self.delay_s = first_delay_s
        self.restarts = 0

    def died(self, status: int) -> float | None:
        """Seconds to wait before starting another worker, or None: do not."""
        if status in (0, 2):
            return None
        if status == EXIT_REPLACE:  # it ended to be replaced (a task timed out): not a crash
            self.restarts += 1
            return 0.0
        now = self.clock()
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - self.window_s:
            self.deaths.popleft()
        self.restarts += 1
        if len(self.deaths) <= self.free:
            self.delay_s = self.first_delay_s
            return 0.0
        delay, self.delay_s = self.delay_s, min(self.delay_s * 2, self.max_delay_s)
        return delay


class Workers:
    """Worker processes kept running: a dead one is replaced (after the policy's delay) and its
    death reported. ``spawn(i)`` starts the process for slot ``i``; ``report(death)`` tells the
    coordinator."""

    def __init__(self, procs: list[Any], spawn: Callable[[int], Any],
                 report: Callable[[Death], None], clock: Callable[[], float] = time.monotonic,
                 policy: RestartPolicy | None = None) -> None:
        self.procs: list[Any | None] = list(procs)
        self.spawn = spawn
        self.report = report
        self.clock = clock
        self.policy = policy or RestartPolicy(len(procs), clock)
        self.restart_at: dict[int, float] = {}  # slot -> when to start its next process
        self.codes: dict[int, int] = {}  # slots left empty for good -> last exit status
        self.last: Death | None = None
        #: False once the run is over: the dead are no longer replaced
        self.replace = True
        self._oom = oom_kills()

    def alive(self) -> list[Any]:
        return [p for p in self.procs if p is not None]

    def poll(self) -> list[Death]:
        """Look at every process once: report and schedule replacements for the dead ones,
        start those whose wait is over. Returns the deaths seen now."""
        deaths = []
        now = self.clock()
        for i, p in enumerate(self.procs):
            if p is None:
                if i in self.restart_at and now >= self.restart_at[i]:
                    del self.restart_at[i]
                    if self.replace:
                        self.procs[i] = self.spawn(i)
                    else:
                        self.codes[i] = self.last.status if self.last else 1
                continue
            rc = p.poll()
            if rc is None:
                continue
            self.procs[i] = None
            oom = oom_kills() if rc == -signal.SIGKILL else self._oom
            death = classify(p.pid, rc, self._oom, oom)
            self._oom = oom
            self.last = death
            if rc != 0 and self.replace:  # (once the run is over, a death tells nothing)
                deaths.append(death)
                self.report(death)
            delay = self.policy.died(rc)
            if delay is None or not self.replace:
                self.codes[i] = rc
                continue
            log.warning("worker pid %d died (%s); starting another%s", p.pid, death.detail,
                        f" in {delay:g}s (workers die fast)" if delay else "")
            if delay:
                self.restart_at[i] = now + delay
            else:
                self.procs[i] = self.spawn(i)
        return deaths

    def none_left(self) -> bool:
        """Every slot empty for good: nothing will run the rest of the graph."""
        return len(self.codes) == len(self.procs)


class RunWatch:
    """``ajug run`` never waits on a graph that no worker will run: it stops, saying why, when
    every worker has exited for good (an ajug error every new one would hit too), or when
    workers keep dying while nothing moves (no task done, failed, or losing its worker)."""

    def __init__(self, jobs: int) -> None:
        self.limit = max(BARREN_DEATHS, 3 * jobs)
        self.barren = 0
        self.progress: tuple[int, ...] | None = None
        self.reason: str | None = None

    def why_stop(self, workers: Workers, deaths: list[Death],
                 progress: tuple[int, ...]) -> str | None:
        if deaths:
            self.barren = self.barren + len(deaths) if progress == self.progress else 0
        if self.progress != progress:
            self.progress = progress
            if not deaths:
                self.barren = 0
        last = workers.last
        if workers.none_left() and last is not None:
            why = (" (an ajug error, which every new worker would hit too: see its message "
                   "above)" if last.status == 2 else "")
            return f"no worker left to run the rest of the graph: the last one ended with " \
                   f"{last.detail}{why}"
        if self.barren >= self.limit and last is not None:
            return (f"workers keep dying before they run anything ({self.barren} in a row, the "
                    f"last: {last.detail}); see their errors above")
        return None


class LocalCrew:
    """The local workers of ``ajug run`` while the run lasts: kept going (``Workers``),
    watched for a run that no worker will finish (``RunWatch``), stopped before the
    coordinator on a signal, and ended with the run (``end_workers``)."""

    def __init__(self, jobs: int) -> None:
        self.procs: list[Any] = []  # subprocess.Popen or ForkedProcess, once started
        self.workers: Workers | None = None
        self.watch = RunWatch(jobs)
        self.stopping = False

    def start(self, procs: list[Any], spawn: Callable[[int], Any],
              report: Callable[[Death], None]) -> None:
        """Keep ``procs`` going (none: nothing to do); ``spawn(i)`` replaces slot ``i``."""
        self.procs = procs
        self.workers = Workers(procs, spawn, report)

    def stop(self) -> None:
        """Stopped by a signal: the workers go first, so that none of them sees the
        coordinator close and logs that it lost it."""
        self.stopping = True
        if self.workers is not None:
            self.workers.replace = False
        for p in (self.workers.alive() if self.workers is not None else self.procs):
            p.send_signal(signal.SIGTERM)

    def tick(self, progress: tuple[int, ...]) -> str | None:
        """The restart tick of a run that is not over: replace the dead, report them, and
        say why the run must stop (None: it goes on). ``progress`` moves when a task is done,
        failed or lost its worker."""
        if not self.procs or self.stopping or self.workers is None:
            return None
        deaths = self.workers.poll()
        self.watch.reason = self.watch.why_stop(self.workers, deaths, progress)
        return self.watch.reason

    async def end(self, finished: bool) -> None:
        if self.workers is not None:
            await end_workers(self.workers, finished)


async def end_workers(workers: Workers, finished: bool) -> None:
    """After the coordinator stopped: a finished run's workers have heard so and leave; a
    replacement started just before the end (still connecting) or the workers of a stopped
    run would keep trying to reach a coordinator that is gone: they get SIGTERM."""
    loop = asyncio.get_running_loop()
    workers.replace = False
    procs = workers.alive()
    deadline = time.monotonic() + (2.0 if finished else 0.0)
    while finished and any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            await loop.run_in_executor(None, p.wait, 10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def supervise(arg_lists: list[list[str]], start: Callable[[list[str]], Any],
              report: Callable[[Death], None] | None = None, poll_s: float = 0.2,
              finish_grace_s: float | None = FINISH_GRACE_S) -> int:
    """``ajug work -j N``: run N worker processes (``start(arguments)`` starts one) until they
    are done; replace those that die (``RestartPolicy``) and report each death (``report``,
    e.g. ``report_death``).

    A worker that exits 0 saw the run finish: the others are not replaced any more, and those
    still there ``finish_grace_s`` later (a replacement still trying to reach a coordinator
    that has gone) get SIGTERM. None: wait for them (``--max-tasks``: exiting 0 then means
    "my share is done", not "the run is")."""

    def spawn(i: int) -> Any:
        return start(arg_lists[i])

    def tell(death: Death) -> None:
        if report is not None:
            try:
                report(death)
            except Exception as e:  # noqa: BLE001 - a missing report costs only precision
                log.debug("could not report the death of worker %d: %s", death.pid, e)

    workers = Workers([spawn(i) for i in range(len(arg_lists))], spawn, tell)
    finished_at: float | None = None
    stopped: set[int] = set()  # stopped by us once the run was over: not a failure
    try:
        while not workers.none_left():
            time.sleep(poll_s)
            if 0 in workers.codes.values() and finished_at is None:
                # one worker saw the run finish: the others are finishing too, and none of
                # them is replaced any more
                finished_at = time.monotonic()
                workers.replace = False
                workers.restart_at = dict.fromkeys(workers.restart_at, 0.0)
            if (finished_at is not None and finish_grace_s is not None
                    and time.monotonic() - finished_at > finish_grace_s):
                for p in workers.alive():
                    p.send_signal(signal.SIGTERM)
                    stopped.add(p.pid)
                finish_grace_s = None
            workers.poll()
    except KeyboardInterrupt:
        for p in workers.alive():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in workers.alive():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        return 130
    codes = [0 if stopped and c == -signal.SIGTERM else c for c in workers.codes.values()]
    return 0 if all(c == 0 for c in codes) else max((c for c in codes if c), key=abs, default=1)


def report_death(host: str, port: int, token: bytes, ssl: Any, death: Death,
                 timeout_s: float = 5.0) -> None:
    """Tell the coordinator at ``host:port`` how a worker of this machine ended (an ``exited``
    message over a client connection of its own)."""
    from .protocol import connection as conn_mod
    from .protocol import messages as m
    from .protocol.client import ask, hang_up

    async def send() -> None:
        conn = await asyncio.wait_for(conn_mod.open_connection(
            host, port, token=token, role="client", access="full", ssl=ssl, name="supervisor"),
            timeout_s)
        try:
            await ask(conn, m.exited(1, socket.gethostname(), death.pid, death.status,
                                     death.cause, death.detail), timeout_s,
                      ConnectError(f"the coordinator at {host}:{port} did not answer"))
        finally:
            await hang_up(conn)

    asyncio.run(send())
