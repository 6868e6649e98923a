"""A command on a pseudo-terminal, as a user at a terminal runs it: what rich draws there (bars,
live lines), what Ctrl-C does (the terminal sends SIGINT to the whole foreground group).

``Pty`` starts the command as the leader of a new session with the pty as its controlling
terminal, at a chosen window size; ``close`` kills that session's process group.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable

from procs import ajug_cmd

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]|\r")


def plain(text: str) -> str:
    """Terminal output without escape sequences and carriage returns."""
    return ANSI.sub("", text)


#: Run in the child before the command: make the pty (its stdin) the controlling terminal of
#: its new session, so that Ctrl-C and the window size reach it as at a real terminal.
_TAKE_TTY = "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); " \
    "os.execvp(sys.argv[1], sys.argv[1:])"


class Pty:
    def __init__(self, args: list[str], env: dict[str, str], cwd: str, columns: int = 120,
                 rows: int = 40) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        env = dict(env, COLUMNS=str(columns), LINES=str(rows), TERM="xterm-256color")
        self.proc = subprocess.Popen([sys.executable, "-c", _TAKE_TTY, *args], stdin=slave,
                                     stdout=slave, stderr=slave, env=env, cwd=cwd,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.pid, self.fd = self.proc.pid, master
        self.raw = b""
        self.returncode: int | None = None

    @classmethod
    def ajug(cls, *args: str, **kw: object) -> Pty:
        return cls(ajug_cmd(*args), **kw)  # type: ignore[arg-type]

    @property
    def text(self) -> str:
        return plain(self.raw.decode("utf-8", "replace"))

    def _read(self, timeout_s: float) -> bool:
        """Read what is there within ``timeout_s``; False at end of output."""
        ready, _, _ = select.select([self.fd], [], [], timeout_s)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError as e:  # EIO: every process on the terminal has closed it
            if e.errno == errno.EIO:
                return False
            raise
        if not chunk:
            return False
        self.raw += chunk
        return True

    def wait_for(self, pred: Callable[[str], object], timeout_s: float, what: str) -> object:
        """Read until ``pred(text)`` is true; fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = pred(self.text)
            if got:
                return got
            if not self._read(0.1):
                got = pred(self.text)
                if got:
                    return got
                raise AssertionError(f"output ended before {what}:\n{self.text}")
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}:\n{self.text}")

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout_s: float) -> int:
        """Read to the end and reap the command; its exit status (-N: killed by signal N)."""
        deadline = time.monotonic() + timeout_s
        while self.returncode is None:
            self._read(0.05)
            rc = self.proc.poll()
            if rc is not None:
                end = time.monotonic() + 2
                while self._read(0.05) and time.monotonic() < end:  # what it wrote last
                    pass
                self.returncode = rc
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout_s}s:\n{self.text}")
        return self.returncode

    def close(self) -> None:
        """Kill whatever is left of the command's process group, reap it, close the pty."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass
