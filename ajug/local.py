"""The local workers of ``ajug run``, forked before the coordinator starts.

A fresh interpreter per worker costs ~120 ms (start-up and imports) on the critical path of a
run. A fork costs a millisecond, and is safe while the process has no thread, no event loop, no
socket and no store open, which is how ``ajug run`` is before its coordinator starts. The
children wait on a pipe each until the coordinator listens and has work; then each gets the
arguments of an ``ajug work`` command and runs it in place (no exec). The token is in their
memory from the fork on; it is never put in their environment.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import NoReturn

from .cliparams import verbosity
from .errors import UsageError

#: ``spawn``: start the workers as fresh interpreters, as on systems without fork.
START_ENV = "AJUG_WORKER_START"


def ajug_args(args: list[str]) -> list[str]:
    """A command's arguments with this process's -v flags."""
    flags = ["-" + "v" * verbosity()] if verbosity() else []
    return [*flags, *args]


def worker_command(args: list[str]) -> list[str]:
    """The command line of a spawned local worker: ``ajug ARGS`` in this interpreter."""
    return [sys.executable, "-m", "ajug", *ajug_args(args)]


def fork_workers(n: int, command: Callable[[list[str], bytes], object], token: bytes,
                 store_url: str) -> ForkedWorkers | None:
    """``ForkedWorkers`` on Linux, or None: spawn them (``AJUG_WORKER_START=spawn``, other
    systems, or a thread already running: a fork copies only the calling thread, with whatever
    locks the others held)."""
    mode = os.environ.get(START_ENV, "").strip().lower()
    if mode not in ("", "fork", "spawn"):
        raise UsageError(f"{START_ENV}={mode!r}: write fork (the default on Linux) or spawn")
    if mode == "spawn" or not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return None
    preload(store_url)
    if threading.active_count() > 1:
        return None
    return ForkedWorkers(n, command, token)


def preload(store_url: str) -> None:
    """Import before the fork what each worker would import after the port arrives, on the
    critical path: the worker, its event loop, the store's module (which the coordinator
    imports anyway)."""
    from . import worker  # noqa: F401

    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover
        pass
    scheme = store_url.partition(":")[0].lower()
    kind = {"redis": "redis", "rediss": "redis", "unix": "redis", "memory": "memory"}
    importlib.import_module(f".stores.{kind.get(scheme, 'file')}", __package__)


class ForkedProcess:
    """A forked child with the part of ``subprocess.Popen`` that ``ajug run`` uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): as Popen, call it 0
                self.returncode = 0
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            if self.returncode is None:
                try:
                    _, status = os.waitpid(self.pid, 0)
                    self.returncode = os.waitstatus_to_exitcode(status)
                except ChildProcessError:
                    self.returncode = 0
            return self.returncode
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while (rc := self.poll()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(f"forked worker {self.pid}", timeout)
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)
        return rc

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never signal a pid that was reaped (it may be reused)
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkedWorkers:
    """``n`` children forked now, each blocked reading its own pipe.

    ``start`` writes each one its command line and closes the pipes: the child runs
    ``command(args, token)`` and exits with its status. ``cancel`` (or the parent dying) closes
    the pipes unwritten: the children read EOF and exit 0 without a word."""

    def __init__(self, n: int, command: Callable[[list[str], bytes], object],
                 token: bytes) -> None:
        self.procs: list[ForkedProcess] = []
        self._pipes: list[int] = []  # write ends, one per child, until start or cancel
        sys.stdout.flush()  # or the children would print the parent's buffered output again
        sys.stderr.flush()
        # a Ctrl-C is held until each side knows who it is (and the parent has the child's pid)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for _ in range(n):
                r, w = os.pipe()
                try:
                    pid = os.fork()
                except BaseException:
                    os.close(r)
                    os.close(w)
                    raise
                if pid == 0:
                    _child(r, [w, *self._pipes], command, token, mask)
                os.close(r)
                self._pipes.append(w)
                self.procs.append(ForkedProcess(pid))
        except BaseException:
            self.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def start(self, arg_lists: list[list[str]]) -> list[ForkedProcess]:
        """Hand each child its ``ajug`` arguments (with the coordinator's port): they work."""
        for w, args in zip(self._pipes, arg_lists):
            try:
                os.write(w, json.dumps(args).encode())
            except OSError:  # that child is gone: run's tick sees its status and replaces it
                pass
        self.cancel()
        return list(self.procs)

    def cancel(self) -> None:
        """Close the pipes: children without arguments exit 0."""
        pipes, self._pipes = self._pipes, []
        for w in pipes:
            os.close(w)

    def close(self, timeout_s: float = 10.0) -> None:
        """Cancel, and reap every child (killed if it outlives ``timeout_s``)."""
        self.cancel()
        for p in self.procs:
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _child(r: int, close: list[int], command: Callable[[list[str], bytes], object],
           token: bytes, mask: set[int | signal.Signals]) -> NoReturn:
    """A forked worker's whole life: wait for the arguments, run them, ``os._exit`` — never
    back into the parent's code (its click context, its ``finally`` blocks, its atexit)."""
    rc = 1
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for fd in close:  # our pipe's write end and the earlier siblings': EOF must mean it
            os.close(fd)
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        os.close(r)
        if not chunks:  # nothing to do, or the parent died
            rc = 0
        else:
            command(json.loads(b"".join(chunks)), token)
            rc = 0
    except KeyboardInterrupt:  # a Ctrl-C while waiting: the whole process group got it
        rc = 130
    except SystemExit as e:  # how the ajug command ends; as the interpreter would exit
        if e.code is None or isinstance(e.code, int):
            rc = e.code or 0
        else:
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except BaseException:  # noqa: BLE001 - nothing to report it to
                pass
        os._exit(rc)
