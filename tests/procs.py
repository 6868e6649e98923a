"""Real ajug processes for tests: a coordinator (`ajug serve`) and workers (`ajug work`).

Everything started here is stopped by PID by the fixture that started it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def ajug_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ajug", *args]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("AJUG_TOKEN", "test-token")
    e.update(extra)
    return e


class Procs:
    """Starts processes and stops whatever is left of them at the end (by PID)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, args: list[str], name: str, **kw: Any) -> subprocess.Popen[str]:
        return self.start_cmd(ajug_cmd(*args), name, **kw)

    def start_cmd(self, cmd: list[str], name: str, **kw: Any) -> subprocess.Popen[str]:
        """Any command, logged to ``<name>.<n>.log``, in a process group of its own (stopped as
        a group: the workers an ``ajug run`` or ``ajug work -j N`` started go with it)."""
        log = open(self.tmp / f"{name}.{len(self.procs)}.log", "w")
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(
            cmd, stdout=kw.pop("stdout", log), stderr=subprocess.STDOUT,
            env=kw.pop("env", env()), text=True, cwd=kw.pop("cwd", self.tmp), **kw,
        )
        log.close()  # the child has its own copy of the descriptor
        p.logfile = log.name  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def serve(self, jugfile: Path, *extra: str, port: int = 0, **kw: Any) -> tuple[subprocess.Popen[str], int]:
        """Start `ajug serve` and return it with the port it printed."""
        p = self.start(["-v", "serve", str(jugfile), "--port", str(port), *extra], "serve",
                       stdout=subprocess.PIPE, **kw)
        assert p.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        logfile = open(p.logfile, "a")  # type: ignore[attr-defined]

        def pump() -> None:
            assert p.stdout is not None
            for line in p.stdout:
                logfile.write(line)
                logfile.flush()
                lines.put(line)
            logfile.close()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 60
        seen = ""
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                if p.poll() is not None:
                    time.sleep(0.2)
                    raise AssertionError(f"ajug serve exited {p.returncode}: {read_log(p)}") from None
                continue
            seen += line
            m = re.search(r"serving .* on [\d.:\[\]a-f]+:(\d+)", line)
            if m:
                return p, int(m.group(1))
        raise AssertionError(f"ajug serve did not start: {seen}")

    def work(self, port: int, *extra: str, **kw: Any) -> subprocess.Popen[str]:
        return self.start(["-v", "work", f"127.0.0.1:{port}", *extra], "work", **kw)

    def stop_all(self) -> None:
        for p in self.procs:
            alive = p.poll() is None
            try:  # the group too: children outlive a parent that was killed or exited
                group = os.getpgid(p.pid) if alive else p.pid
                if group == p.pid:
                    os.killpg(group, signal.SIGCONT)
                    os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if alive:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                p.kill()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
            if p.stdout is not None:
                p.stdout.close()


def wait_for(pred: Any, timeout_s: float = 30.0, every_s: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def status(port: int, *extra: str) -> dict[str, Any]:
    out = subprocess.run(ajug_cmd("status", f"127.0.0.1:{port}", "--json", *extra),
                         capture_output=True, text=True, env=env(), timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def offline_status(jugfile: Path, *extra: str) -> dict[str, Any]:
    out = subprocess.run(ajug_cmd("status", str(jugfile), "--json", *extra),
                         capture_output=True, text=True, env=env(), timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def values(jugfile: Path, names: list[str], store: str | None = None, **extra_env: str) -> dict[str, Any]:
    """Load results in a fresh interpreter, as a user's script would (ajug.init + value)."""
    code = (
        "import json, sys, ajug\n"
        f"store, ns = ajug.init({str(jugfile)!r}, {store!r})\n"
        f"print(json.dumps({{n: ajug.value(ns[n]) for n in {names!r}}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env(**extra_env), timeout=60, cwd=jugfile.parent)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (from /proc), zombies included."""
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


def kill_mentioning(text: str) -> list[int]:
    """SIGKILL every process whose command line mentions ``text`` (a test's own temporary
    directory): what a test started outside its process groups, such as the workers of batch
    jobs or of exec commands, which run in sessions of their own. Returns their pids."""
    me = os.getpid()
    killed = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            try:
                os.kill(int(d.name), signal.SIGKILL)
                killed.append(int(d.name))
            except (ProcessLookupError, PermissionError):
                pass
    return killed


def read_log(p: subprocess.Popen[str]) -> str:
    return Path(p.logfile).read_text()  # type: ignore[attr-defined]


JUGFILES = Path(__file__).parent / "jugfiles"


def copy_jugfile(tmp_path: Path, name: str) -> Path:
    """A test jugfile copied into the test's own directory (its store goes beside it)."""
    import shutil

    dst = tmp_path / name
    shutil.copy(JUGFILES / name, dst)
    return dst


def run_records(runlog: Path) -> list[dict[str, Any]]:
    """The lines a recording jugfile (``jugfiles/recorded.py``) wrote: one at each start
    ``{task, pid, start}``, one at each end ``{task, pid, start, end}``."""
    if not runlog.exists():
        return []
    return [json.loads(line) for line in runlog.read_text().splitlines() if line.strip()]


def executions(runlog: Path) -> list[dict[str, Any]]:
    """Finished executions, from a recording jugfile's log."""
    return [r for r in run_records(runlog) if "end" in r]


def overlapping(runs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of executions of one task that ran at the same time."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_task.setdefault(r["task"], []).append(r)
    out = []
    for rs in by_task.values():
        rs.sort(key=lambda r: r["start"])
        for i, a in enumerate(rs):
            out.extend((a, b) for b in rs[i + 1 :] if b["start"] < a["end"])
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stamps(store_url: str) -> dict[str, float]:
    """key -> time written, for every result in the store (read in a fresh interpreter): a
    second run that computed nothing leaves them all unchanged."""
    code = (
        "import json\nfrom ajug.stores import open_store\n"
        f"s = open_store({store_url!r})\nkeys = sorted(s.list())\n"
        "print(json.dumps(dict(zip(keys, [m['ts'] for m in s.metadata(keys)]))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(),
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


# -- TLS certificates (the openssl command) ------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def _ca(d: Path, name: str) -> None:
    _openssl(
        "req",
        "-x509",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-subj",
        f"/CN=ajug test {name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )


def _leaf(d: Path, name: str, ca: str, usage: str, san: str) -> None:
    _openssl(
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN=ajug test {name}",
        cwd=d,
    )
    (d / f"{name}.ext").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\nsubjectAltName={san}\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        cwd=d,
    )


def make_certs(d: Path) -> dict[str, str]:
    """A CA, a server certificate (127.0.0.1, localhost) and a client one signed by it, and an
    unrelated CA: ``{"ca_pem": path, "server_key": path, ...}``."""
    _ca(d, "ca")
    _ca(d, "other-ca")
    _leaf(d, "server", "ca", "serverAuth", "IP:127.0.0.1,DNS:localhost")
    _leaf(d, "client", "ca", "clientAuth", "DNS:ajug-worker")
    return {f"{n.replace('-', '_')}_{k}": str(d / f"{n}.{k}")
            for n in ("ca", "other-ca", "server", "client") for k in ("pem", "key")}
