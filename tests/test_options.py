"""Options checked before anything starts: every value in range, from the command line, a
config file or the environment alike; a port in use, a redis URL with a bad database, a store
that is a file: one line and exit status 2, nothing started. -v/-q/-h after the command too;
help for every option; exit statuses in `run --help` and `serve --help`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import click
import pytest
from procs import ajug_cmd, copy_jugfile, env

pytestmark = pytest.mark.timeout(60)


def ajug(*args: str, cwd: Path, timeout: float = 30, **e: str) -> subprocess.CompletedProcess[str]:
    """Run ajug in a process group of its own; a command that does not end in ``timeout`` (a
    server started with a value it should have refused) is killed with its group and fails."""
    p = subprocess.Popen(ajug_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env(**e), cwd=cwd, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise AssertionError(f"ajug {' '.join(args)} did not refuse it: still running after "
                             f"{timeout}s\n{out}\n{err}") from None
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def refused(out: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2 with one line that says what is wrong; no traceback, nothing else printed."""
    text = (out.stdout + out.stderr).strip()
    assert out.returncode == 2, text
    assert len(text.splitlines()) == 1 and text.startswith("ajug: error: "), text
    assert "Traceback" not in text
    for w in words:
        assert w in text, text


BAD = [
    (["serve", "J", "--port", "99999"], "--port", "99999"),  # served on 34463 (modulo 65536)
    (["serve", "J", "--port", "-1"], "--port", "-1"),
    (["run", "J", "-j", "-1"], "--jobs", "-1"),  # started no worker, waited forever
    (["run", "J", "-j", "0"], "--jobs", "0"),  # silently one per core
    (["run", "J", "--lease-ttl", "-5"], "--lease-ttl", "-5"),
    (["serve", "J", "--lease-ttl", "0"], "--lease-ttl", "0"),
    (["run", "J", "--lease-ttl", "nan"], "--lease-ttl", "nan"),
    (["run", "J", "--retries", "-1"], "--retries", "-1"),
    (["run", "J", "--max-attempts", "0"], "--max-attempts", "0"),
    (["run", "J", "--prefetch", "-1"], "--prefetch", "-1"),
    (["run", "J", "--dashboard", "70000"], "--dashboard", "70000"),
    (["work", "127.0.0.1:1", "--connect-timeout", "-1"], "--connect-timeout", "-1"),
    (["work", "127.0.0.1:1", "-j", "0"], "--jobs", "0"),
    (["work", "127.0.0.1:1", "--max-tasks", "0"], "--max-tasks", "0"),
    (["status", "J", "--watch", "--interval", "0"], "--interval", "0"),
    (["sleep-until", "J", "--interval", "-2"], "--interval", "-2"),
]


@pytest.mark.parametrize("args,option,value", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_a_bad_option_value_is_refused_before_anything_starts(
        args: list[str], option: str, value: str, tmp_path: Path) -> None:
    copy_jugfile(tmp_path, "taskraise.py")
    args = ["taskraise.py" if a == "J" else a for a in args]
    refused(ajug(*args, cwd=tmp_path), "Invalid value for '", option, value)
    assert not (tmp_path / "taskraise.ajugdata").exists()  # nothing was started


def test_config_file_and_environment_values_get_the_same_checks(tmp_path: Path) -> None:
    copy_jugfile(tmp_path, "taskraise.py")
    (tmp_path / "ajug.toml").write_text("lease-ttl = -5\n")
    refused(ajug("run", "taskraise.py", cwd=tmp_path), "lease-ttl", "ajug.toml", "-5")
    (tmp_path / "ajug.toml").write_text("[work]\njobs = 0\n")
    refused(ajug("work", "127.0.0.1:1", cwd=tmp_path), "jobs", "ajug.toml", "0")
    (tmp_path / "ajug.toml").write_text("[serve]\nport = 70000\n")
    refused(ajug("serve", "taskraise.py", cwd=tmp_path), "port", "70000")
    (tmp_path / "ajug.toml").unlink()
    refused(ajug("run", "taskraise.py", cwd=tmp_path, AJUG_RETRIES="-1"), "AJUG_RETRIES", "-1")
    refused(ajug("work", "127.0.0.1:1", cwd=tmp_path, AJUG_WORK_PREFETCH="-3"),
            "AJUG_WORK_PREFETCH")
    assert not (tmp_path / "taskraise.ajugdata").exists()


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    copy_jugfile(tmp_path, "taskraise.py")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        refused(ajug("serve", "taskraise.py", "--port", str(port), cwd=tmp_path),
                f"127.0.0.1:{port}", "in use", "--port")
        refused(ajug("run", "taskraise.py", "--port", str(port), cwd=tmp_path), "in use")
        refused(ajug("serve", "taskraise.py", "--port", "0", "--dashboard", str(port),
                     cwd=tmp_path), f"{port}")
    # and the store's owner lock went with the refused coordinator: the next one serves
    out = ajug("run", "taskraise.py", "-j", "1", "--no-progress", cwd=tmp_path,
               AJUG_TEST_FIXED="1")
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root may listen on a privileged port")
def test_a_privileged_port_is_one_line(tmp_path: Path) -> None:
    copy_jugfile(tmp_path, "taskraise.py")
    refused(ajug("serve", "taskraise.py", "--port", "80", cwd=tmp_path), "permission denied")


def test_stores_that_cannot_be(tmp_path: Path) -> None:
    copy_jugfile(tmp_path, "taskraise.py")
    (tmp_path / "results.txt").write_text("not a directory\n")
    refused(ajug("run", "taskraise.py", "--store", "results.txt", cwd=tmp_path),
            "results.txt is a file", "directory")
    refused(ajug("status", "taskraise.py", "--store", "results.txt/sub", cwd=tmp_path),
            "results.txt", "a file")
    assert (tmp_path / "results.txt").read_text() == "not a directory\n"
    # redis-py read a database that is not a number as 0: the wrong data, silently
    refused(ajug("run", "taskraise.py", "--store", "redis://127.0.0.1:6379/notanint",
                 cwd=tmp_path), "notanint", "must be a number")
    refused(ajug("run", "taskraise.py", "--store", "redis://127.0.0.1:6379/0?db=x",
                 cwd=tmp_path), "'x'", "must be a number")


def test_verbosity_and_help_after_the_command(tmp_path: Path) -> None:
    copy_jugfile(tmp_path, "taskraise.py")
    helped = ajug("run", "taskraise.py", "-h", cwd=tmp_path)
    assert helped.returncode == 0 and "ajug run [OPTIONS] JUGFILE" in helped.stdout, helped.stderr
    for cmd in ("status", "check", "invalidate", "graph", "cleanup"):
        out = ajug(cmd, "taskraise.py", "-h", cwd=tmp_path)
        assert out.returncode == 0 and f"ajug {cmd} [OPTIONS]" in out.stdout, (cmd, out.stderr)
    # the error lines say "run with -v": it works where people put it, after the command
    missing = ajug("run", "nosuch.py", "-v", cwd=tmp_path)
    assert missing.returncode == 2 and "Traceback" in missing.stderr, missing.stderr
    assert "jugfile 'nosuch.py' not found" in missing.stderr
    quiet = ajug("check", "taskraise.py", "-q", cwd=tmp_path)
    assert quiet.returncode == 1 and "tasks done" in quiet.stdout, quiet.stderr
    loud = ajug("run", "taskraise.py", "-j", "1", "--no-progress", "-vv", cwd=tmp_path,
                AJUG_TEST_FIXED="1")
    assert loud.returncode == 0 and " D ajug" in loud.stderr, loud.stderr  # debug lines


def test_every_option_has_help_and_run_and_serve_list_exit_statuses(tmp_path: Path) -> None:
    from ajug.cli import cli

    missing = [f"ajug {name} {p.opts[0]}" for name, cmd in cli.commands.items()
               for p in cmd.params
               if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()]
    assert missing == []
    for cmd in ("run", "serve"):
        text = ajug(cmd, "--help", cwd=tmp_path).stdout
        assert "Exit status:" in text, text
        for code, words in (("0", "every task is done"), ("1", "failed"), ("2", "usage error"),
                            ("130", "interrupted")):
            assert any(ln.split()[:1] == [code] and words in ln for ln in text.splitlines()), \
                (code, text)
