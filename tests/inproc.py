"""The engine in the test's own process: a real Coordinator served on 127.0.0.1 (port 0 unless
told) in a thread with its own event loop, and real Workers, each in a thread of its own (with
its network thread beside it), over real TCP. No interpreter is started, so an engine test runs
in milliseconds; what needs processes (signals, fork, a crash) stays with tests/procs.py.

Each worker thread keeps its own ``Task.store`` (ajug.taskstore.isolate), as a worker process
would; the coordinator's is the process's, as in ``ajug serve``.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console

from ajug import taskstore
from ajug.coordinator import Coordinator, Settings
from ajug.jugfile import default_store_url
from ajug.launch.options import pop_launch_options, prepare
from ajug.protocol.client import new_loop_runner, query_status
from ajug.servesetup import start_dashboard, start_launcher
from ajug.status import render
from ajug.watch import watch_live
from ajug.worker import Worker, WorkerOptions

TOKEN = b"test-token"


class InprocCoordinator:
    """``ajug serve`` in a thread: listening once ``start`` returns, stopped by ``stop``."""

    def __init__(self, jugfile: Path, store_url: str | None = None, port: int = 0, *,
                 dashboard: int | None = None, launch: dict[str, Any] | None = None,
                 **settings: Any) -> None:
        """``dashboard``: serve it on this port (``--dashboard``); ``launch``: start worker
        jobs as ``serve --workers ...`` does, its options by their Python names
        (``{"workers": "exec:bash {script}", "max_jobs": 2, ...}``; the token file is made
        in the job directory)."""
        self.settings = Settings(jugfile=str(jugfile),
                                 store_url=store_url or default_store_url(Path(jugfile)),
                                 host="127.0.0.1", port=port, token=TOKEN, **settings)
        self.dashboard = dashboard
        self.launch_options = None
        if launch is not None:
            kw: dict[str, Any] = {"advertise": "127.0.0.1", **launch, "token": TOKEN.decode()}
            lo = self.launch_options = pop_launch_options(kw, "serve")
            assert lo is not None, launch
            prepare(lo, str(jugfile), kw)
        self.coord: Coordinator | None = None
        self.launcher: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self.rc: int | None = None
        self.error: BaseException | None = None
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._main, name="test-coordinator", daemon=True)

    def start(self, timeout_s: float = 60.0) -> InprocCoordinator:
        """Listen and load the jugfile (as ``ajug serve`` does before it prints its port)."""
        self._thread.start()
        if not self._listening.wait(timeout_s):
            raise AssertionError(f"the coordinator did not start in {timeout_s} s")
        if self.error is not None:
            raise self.error
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # noqa: BLE001 - handed to the test by wait()
            self.error = e
        finally:
            self._listening.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        coord = self.coord = Coordinator(self.settings)
        await coord.listen()
        assert coord.port is not None
        self.port = coord.port
        await coord.load()
        dashboard = await start_dashboard(coord, self.dashboard, "127.0.0.1")
        launcher = self.launcher = await start_launcher(coord, self.launch_options)
        self._listening.set()
        try:
            self.rc = await coord.run(on_tick=None if launcher is None else launcher.tick)
        finally:
            if launcher is not None:
                await launcher.close(finished=coord.state == "finished")
            if dashboard is not None:  # a process leaves it to its exit; this one goes on
                dashboard.close()
                await asyncio.wait_for(dashboard.wait_closed(), 5)

    def call(self, fn: Any, *args: Any, timeout_s: float = 10.0) -> Any:
        """``fn(coordinator, *args)`` run in the coordinator's loop; its result."""
        async def call() -> Any:
            return fn(self.coord, *args)

        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout_s)

    def status(self, detail: bool = False) -> dict[str, Any]:
        """What ``ajug status --json`` would print."""
        return self.call(Coordinator.status, detail)  # type: ignore[no-any-return]

    def status_text(self, failed: bool = False, width: int = 120) -> str:
        """What ``ajug status 127.0.0.1:PORT [--failed]`` prints: asked over the protocol and
        rendered as the command does (plain TCP)."""
        st = asyncio.run(query_status("127.0.0.1", self.port, TOKEN, None, detail=failed))
        out = io.StringIO()
        render(st, Console(file=out, width=width, force_terminal=False),
               failed_tracebacks=failed)
        return out.getvalue()

    def watch(self, as_json: bool = False, interval_s: float = 0.3,
              timeout_s: float = 60.0) -> int:
        """``ajug status 127.0.0.1:PORT --watch [--json]`` until the run ends (at most
        ``timeout_s``): its exit status. It writes to sys.stdout and sys.stderr, as the
        command does (``capsys`` reads them)."""
        pool = ThreadPoolExecutor(1, thread_name_prefix="test-watch")
        try:
            return pool.submit(watch_live, "127.0.0.1", self.port, TOKEN, None, "full", False,
                               interval_s, as_json, new_loop_runner()).result(timeout_s)
        finally:
            pool.shutdown(wait=False)  # a watch still running ends when the coordinator stops

    def stop(self) -> None:
        """As Ctrl-C does to ``ajug serve``."""
        if self.loop is not None and self.coord is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self.coord.stop)
            except RuntimeError:  # the loop has just ended
                pass

    def wait(self, timeout_s: float = 60.0) -> int:
        """The exit status ``ajug serve`` would have (what it raised, raised here)."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"the coordinator still runs after {timeout_s} s")
        if self.error is not None:
            raise self.error
        assert self.rc is not None
        return self.rc


class InprocWorker:
    """``ajug work`` in a thread; ``wait`` gives its exit status."""

    def __init__(self, address: int | str, max_tasks: int | None = None, **opts: Any) -> None:
        host, port = "127.0.0.1", address
        if isinstance(address, str):
            host, _, p = address.rpartition(":")
            port = int(p)
        assert isinstance(port, int)
        opts.setdefault("connect_timeout_s", 30.0)
        self.worker = Worker(WorkerOptions(host=host, port=port, token=TOKEN,
                                           max_tasks=max_tasks, **opts))
        self.rc: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="test-worker", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        taskstore.isolate()  # its own Task.store, as in a process of its own
        try:
            self.rc = self.worker.run()
        except BaseException as e:  # noqa: BLE001 - handed to the test by wait()
            self.error = e

    def stop(self) -> None:
        """Stop between tasks (a task that runs is not interrupted)."""
        self.worker._stop_net()
        self.worker.leases.put(None)

    def wait(self, timeout_s: float = 60.0) -> int:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"the worker still runs after {timeout_s} s")
        if self.error is not None:
            raise self.error
        assert self.rc is not None
        return self.rc

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class Engine:
    """What the fixtures made, stopped (and the process's settings restored) at the end."""

    def __init__(self) -> None:
        self.coordinators: list[InprocCoordinator] = []
        self.workers: list[InprocWorker] = []
        self._store = taskstore.current()
        self._switch = sys.getswitchinterval()

    def make_coordinator(self, jugfile: Path, store_url: str | None = None, port: int = 0,
                         **settings: Any) -> InprocCoordinator:
        """``settings``: the coordinator's, and ``dashboard`` and ``launch`` (InprocCoordinator)."""
        c = InprocCoordinator(jugfile, store_url, port, **settings)
        self.coordinators.append(c)
        return c.start()

    def run_worker(self, address: int | str, max_tasks: int | None = None,
                   **opts: Any) -> InprocWorker:
        w = InprocWorker(address, max_tasks, **opts)
        self.workers.append(w)
        return w

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        for c in self.coordinators:
            c.stop()
        for t in [w._thread for w in self.workers] + [c._thread for c in self.coordinators]:
            t.join(30)
        taskstore.set_current(self._store)
        sys.setswitchinterval(self._switch)
        left = [t.name for t in [w._thread for w in self.workers] +
                [c._thread for c in self.coordinators] if t.is_alive()]
        assert not left, f"still running after the test: {left}"
