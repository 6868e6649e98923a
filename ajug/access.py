"""Who may connect: where tokens come from, how they reach worker processes, which binds need one.

- A token is read once, from ``--token-file``, ``--token`` or ``AJUG_TOKEN``, and then kept in
  memory only: ``forget_tokens`` takes ``AJUG_TOKEN``/``AJUG_READ_TOKEN`` out of the process's
  environment before any jugfile or task code runs, so that neither that code nor a subprocess
  it starts sees them. A worker process started by ``ajug run`` or ``ajug work -j N`` gets the
  token through a file descriptor (``--token-fd``), never through its environment or argv, so
  a restarted worker gets it the same way.
- Whether a coordinator may listen without a token is decided from the addresses it binds
  (before, from what the host resolves to as a listening address; after, from its sockets),
  never from the host string: ``""`` means every interface.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path

from .errors import UsageError

TOKEN_ENV = ("AJUG_TOKEN", "AJUG_READ_TOKEN")


def read_token(token: str | None, token_file: str | None, env: str = "AJUG_TOKEN") -> bytes:
    """The token from a file, the (visible) ``--token`` flag, or the environment, in that order."""
    if token_file:
        try:
            return Path(token_file).read_text().strip().encode()
        except OSError as e:
            raise UsageError(f"cannot read the token file {token_file}: {e.strerror}") from None
    if token:
        return token.encode()
    return os.environ.get(env, "").strip().encode()


def read_token_fd(fd: int) -> bytes:
    """The token handed over on ``fd`` (read to its end; the descriptor is closed)."""
    try:
        with os.fdopen(fd, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read the token from file descriptor {fd}: {e.strerror}") from None


def forget_tokens() -> None:
    """Remove the tokens from this process's environment (``os.environ`` and the C library's,
    which subprocesses inherit). The process keeps what it read in memory."""
    for name in TOKEN_ENV:
        os.environ.pop(name, None)


def spawn_with_token(command: list[str], token: bytes) -> subprocess.Popen[bytes]:
    """Start ``command`` (an ``ajug ... work ...`` command line) with ``--token-fd N`` appended
    and the token written to that pipe: not in its environment, not in its argv."""
    r, w = os.pipe()
    try:
        proc = subprocess.Popen([*command, "--token-fd", str(r)], pass_fds=(r,))
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    try:
        view = memoryview(token)
        while view:  # the child reads as it starts: a token bigger than the pipe cannot block
            view = view[os.write(w, view) :]
    except BrokenPipeError:  # the child died at once; its exit status says so
        pass
    finally:
        os.close(w)
    return proc


def token_fd(token: bytes) -> int:
    """A file descriptor holding ``token`` (read from its start to EOF), for ``--token-fd`` in
    this very process (a forked worker): an anonymous in-memory file, or a pipe."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("ajug-token", getattr(os, "MFD_CLOEXEC", 0))
        os.write(fd, token)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd
    r, w = os.pipe()  # pragma: no cover - fork is only used on Linux, which has memfd
    os.write(w, token)
    os.close(w)
    return r


# -- binding ----------------------------------------------------------------------------------


def listen_addresses(host: str, port: int) -> list[str]:
    """The addresses that listening on ``host`` binds, as asyncio would (``""``: all)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"cannot listen on {host!r}: {e.strerror}") from None
    return sorted({str(info[4][0]) for info in infos})


def all_loopback(addresses: Iterable[str]) -> bool:
    """Whether every address is a loopback address (and there is at least one)."""
    addresses = list(addresses)
    if not addresses:
        return False
    for a in addresses:
        try:
            if not ipaddress.ip_address(a.split("%", 1)[0]).is_loopback:
                return False
        except ValueError:
            return False
    return True


def bound_addresses(sockets: Iterable[socket.socket]) -> list[str]:
    """The local addresses of listening sockets (a server's ``sockets``)."""
    out = []
    for s in sockets:
        name = s.getsockname()
        out.append(str(name[0]) if isinstance(name, tuple) else str(name))
    return out


def refuse_open_bind(host: str, addresses: list[str]) -> UsageError:
    """The error for listening on non-loopback ``addresses`` without a token."""
    shown = f"{host!r} (every interface: {', '.join(addresses)})" if not host else (
        f"{host} ({', '.join(addresses)})" if addresses != [host] else host)
    return UsageError(
        f"refusing to listen on {shown} without a token: anyone who can reach it could run "
        "code on your workers. Set AJUG_TOKEN or --token-file (or bind to 127.0.0.1)"
    )


def check_listen(host: str, port: int, token: bytes) -> None:
    """Before anything is opened: refuse a bind beyond loopback without a token."""
    if token:
        return
    addresses = listen_addresses(host, port)
    if not all_loopback(addresses):
        raise refuse_open_bind(host, addresses)


def check_bound(host: str, sockets: Iterable[socket.socket], token: bytes) -> None:
    """After binding, from the sockets themselves: the check that counts."""
    if token:
        return
    addresses = bound_addresses(sockets)
    if not all_loopback(addresses):
        raise refuse_open_bind(host, addresses)
