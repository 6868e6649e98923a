"""Shared fixtures: free ports, a real redis-server per session, stores of every kind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the repo is not installed: import ajug from the checkout
    sys.path.insert(0, str(ROOT))

REDIS_START_TIMEOUT_S = 10.0
STORE_KINDS = ("file", "redis", "memory")


def _free_port() -> int:
    from procs import free_port

    return free_port()


@pytest.fixture
def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    return _free_port()


class RedisServer:
    """One redis-server process on 127.0.0.1, without persistence; killed by its pid."""

    def __init__(self, binary: str, workdir: Path, *config: str) -> None:
        self.binary = binary
        self.config = config
        self.port = _free_port()
        self.workdir = workdir / f"redis-{self.port}"  # its own --dir: AOF files survive restarts
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.workdir), *self.config]
        log = open(self.workdir / "redis.log", "ab")
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        import redis

        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    pytest.fail(
                        f"redis-server exited with {self.proc.returncode}; see {self.workdir}"
                    )
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"redis-server on port {self.port} did not answer PING in time")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        """SIGKILL it and start again on the same port, after ``down_s`` without a server.

        Data survives only if it was started with persistence (``"--appendonly", "yes"``)."""
        self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server binary not found on PATH"
        if os.environ.get("AJUG_REQUIRE_REDIS") == "1":
            pytest.fail(f"{reason} (AJUG_REQUIRE_REDIS=1)")
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="session")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(_redis_binary(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(redis_process: RedisServer) -> str:
    """The URL of the session's redis-server (``redis://127.0.0.1:<port>/0``)."""
    return redis_process.url


@pytest.fixture
def restart_redis(redis_process: RedisServer) -> Callable[..., None]:
    """Kill the session's redis-server and start it again on the same port (data is lost)."""
    return redis_process.restart


@pytest.fixture
def make_redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start extra redis-servers with their own config (e.g. ``"--maxmemory", "2mb"``)."""
    made: list[RedisServer] = []

    def make(*config: str) -> RedisServer:
        server = RedisServer(_redis_binary(), tmp_path, *config)
        made.append(server)
        server.start()
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, namespace: str
) -> Iterator[Callable[..., Any]]:
    """``make_store(kind, **options)`` -> a fresh store of that kind, closed at the end."""
    from ajug.stores.file import FileStore
    from ajug.stores.memory import MemoryStore

    made: list[Any] = []

    def make(kind: str, **options: Any) -> Any:
        if kind == "file":
            store: Any = FileStore(tmp_path / f"store{len(made)}", **options)
        elif kind == "redis":
            from ajug.stores.redis import RedisStore

            options.setdefault("namespace", namespace)
            options.setdefault("retry_s", 5.0)
            store = RedisStore(request.getfixturevalue("redis_server"), **options)
        elif kind == "memory":
            store = MemoryStore(**options)
        else:
            raise ValueError(kind)
        made.append(store)
        return store

    yield make
    for store in made:
        if hasattr(store, "r"):
            try:
                keys = list(store.r.scan_iter(match=store.keys.ns + "*", count=1000))
                if keys:
                    store.r.delete(*keys)
            except Exception:
                pass
        store.close()


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, make_store: Callable[..., Any]) -> Any:
    """Each kind of store in turn; redis with small chunks so the chunked path is exercised."""
    if request.param == "redis":
        return make_store("redis", chunk_bytes=256 << 10)
    return make_store(request.param)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Any]:
    """Starts real `ajug serve` / `ajug work` processes; stops what is left of them by PID."""
    from procs import Procs

    p = Procs(tmp_path)
    yield p
    p.stop_all()


@pytest.fixture
def engine() -> Iterator[Any]:
    """The engine in this process (tests/inproc.py): ``engine.make_coordinator(jugfile)`` and
    ``engine.run_worker(port, max_tasks=...)``; all of it stopped at the end."""
    from inproc import Engine

    e = Engine()
    yield e
    e.close()


@pytest.fixture
def make_coordinator(engine: Any) -> Any:
    """``make_coordinator(jugfile, store_url=None, port=0, **settings)``: serving, loaded."""
    return engine.make_coordinator


@pytest.fixture
def run_worker(engine: Any) -> Any:
    """``run_worker(address, max_tasks=None, **worker_options)``: a Worker in a thread."""
    return engine.run_worker


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real one-node SLURM cluster (tests/slurm_cluster.py) for the session: munged,
    slurmdbd (accounting on the local MariaDB, for sacct), slurmctld and slurmd on their own
    ports and files, stopped by pid at the end. Skipped where the binaries are missing, a
    failure with AJUG_REQUIRE_SLURM=1 (CI)."""
    from slurm_cluster import SlurmCluster, missing_binaries, mysql_reachable

    required = os.environ.get("AJUG_REQUIRE_SLURM") == "1"
    missing = missing_binaries(accounting=False)
    if missing:
        reason = f"SLURM binaries not found on PATH: {', '.join(missing)}"
        if required:
            pytest.fail(f"{reason} (AJUG_REQUIRE_SLURM=1)")
        pytest.skip(reason)
    accounting = not missing_binaries(accounting=True) and mysql_reachable()
    if required and not accounting:
        pytest.fail("slurmdbd, sacct or a MariaDB on AJUG_SLURM_MYSQL (127.0.0.1:3306) is "
                    "missing: accounting (sacct) is required with AJUG_REQUIRE_SLURM=1")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), accounting=accounting)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def slurm(slurm_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The session's SLURM cluster, with SLURM_CONF set for this test's commands."""
    for k, v in slurm_cluster.env.items():
        monkeypatch.setenv(k, v)
    return slurm_cluster
