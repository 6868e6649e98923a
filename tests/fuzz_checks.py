"""Run one generated project every way ajug can run it, and with jug 2.7, and compare.

Each variant runs in its own copy of the project (its own store, files and run log). The
in-process executor is the reference: every variant must give every task the same value, run
each task as often as it did (``runlog.txt``; where a worker was killed, extra runs only of
what that worker ran, and no result that was in the store when it died written again), and
jug must give the same identities and names (and values, unless the project mutates its
inputs: jug's values then depend on where a task ran).
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from procs import ajug_cmd, children, env, free_port, stamps  # noqa: E402

RUN_TIMEOUT_S = 120
SLEEP_S = "0.03"  # per task, in the fault variants, so that a fault lands mid-run

VARIANTS = ["j1", "j2", "j3", "spawn", "serve", "kill-worker", "restart", "rerun", "crash"]

AJUG_VALUES = """\
import json, sys
from ajug.jugfile import load_jugfile, unique_tasks
from ajug.stores import open_store
from ajug.task import Task, value
from fz_log import canon
store = open_store(sys.argv[2])
Task.store = store
loaded = load_jugfile(sys.argv[1], store)
assert not loaded.hit_barrier, "a barrier is still in the way"
out = {t.key: [t.name, repr(canon(value(t)))] for t in unique_tasks(loaded.tasks)}
print(json.dumps(out))
"""

JUG_VALUES = """\
import json, sys
import jug.task
from jug import jug as J
from fz_log import canon
J.init(sys.argv[1], sys.argv[2], on_error="propagate")
out = {}
for t in jug.task.alltasks:
    out[t.hash().decode()] = [t.name, repr(canon(t.value()))]
print(json.dumps(out))
"""


class Failed(Exception):
    pass


@dataclass
class Outcome:
    values: dict[str, list[str]]
    runs: collections.Counter[str]
    note: str = ""
    killed: int = 0  # the pid of the worker a fault killed
    runners: dict[str, set[int]] = field(default_factory=dict)


@dataclass
class Checker:
    """The runs of one project (written by ``write(root, package)``) under ``root``."""

    root: Path
    write: Callable[[Path, str], None]
    mutates: bool
    rng: random.Random
    notes: list[str] = field(default_factory=list)

    # -- processes ------------------------------------------------------------------------------
    def run(self, cmd: list[str], cwd: Path, timeout_s: float = RUN_TIMEOUT_S,
            **extra: str) -> subprocess.CompletedProcess[str]:
        """A command in its own process group, killed as a group on timeout and after it."""
        p = subprocess.Popen(cmd, cwd=cwd, env=env(**extra), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(p.pid)
            out, err = p.communicate()
            err += f"\n[fuzz] timed out after {timeout_s}s"
        finally:
            _kill_group(p.pid)
        return subprocess.CompletedProcess(cmd, p.returncode, out, err)

    def project(self, name: str, package: str = "ajug") -> Path:
        d = self.root / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        self.write(d, package)
        return d

    def ok(self, what: str, out: subprocess.CompletedProcess[str], want_rc: int = 0) -> None:
        if out.returncode != want_rc:
            raise Failed(f"{what}: exit {out.returncode}\n{out.stdout[-3000:]}\n"
                         f"{out.stderr[-3000:]}")

    def outcome(self, d: Path, store: str | None = None) -> Outcome:
        store = store or str(d / "jf.ajugdata")
        out = self.run([sys.executable, "-c", AJUG_VALUES, str(d / "jf.py"), store], cwd=d)
        self.ok("loading the values", out)
        return Outcome(json.loads(out.stdout.strip().splitlines()[-1]), runs(d),
                       runners=runners(d))

    # -- variants -------------------------------------------------------------------------------
    def executor(self) -> Outcome:
        d = self.project("exec")
        code = ("import sys\nfrom ajug.executor import execute_jugfile\n"
                "execute_jugfile(sys.argv[1]).raise_for_failures()\n")
        self.ok("the in-process executor", self.run([sys.executable, "-c", code, "jf.py"], d))
        return self.outcome(d)

    def jug(self) -> Outcome:
        d = self.project("jug", "jug")
        cmd = [sys.executable, "-c", "from jug.jug import main; main()", "execute", "jf.py",
               "--jugdir", "jf.jugdata", "--will-cite"]
        self.ok("jug execute", self.run(cmd, d))
        out = self.run([sys.executable, "-c", JUG_VALUES, "jf.py", "jf.jugdata"], cwd=d)
        self.ok("loading jug's values", out)
        return Outcome(json.loads(out.stdout.strip().splitlines()[-1]), runs(d))

    def ajug_run(self, name: str, jobs: int, **extra: str) -> Outcome:
        d = self.project(name)
        self.ok(f"ajug run -j {jobs}", self.run(
            ajug_cmd("run", "jf.py", "-j", str(jobs), "--no-progress"), d, **extra))
        return self.outcome(d)

    def rerun(self) -> Outcome:
        """``ajug run -j 2`` twice on one store: the second computes nothing (and runs no
        CachedFunction again), whatever barriers and compound tasks the jugfile has."""
        d = self.project("rerun")
        for i in range(2):
            self.ok(f"ajug run -j 2 (run {i + 1} of 2)", self.run(
                ajug_cmd("run", "jf.py", "-j", "2", "--no-progress"), d))
        return self.outcome(d)

    def crash(self) -> Outcome:
        """``ajug run -j 2`` SIGKILLed whole (coordinator and workers, as a machine that
        crashes) at a random moment, then run again: what reached the store is not rewritten."""
        d = self.project("crash")
        p = self.start(ajug_cmd("-v", "run", "jf.py", "-j", "2", "--no-progress"), d,
                       "crash-run", FUZZ_SLEEP_S=SLEEP_S)
        try:
            self.first_task_done(d, p)
            time.sleep(self.rng.uniform(0.0, 0.4))
            crashed = p.poll() is None
        finally:
            _kill_group(p.pid)
            p.wait(10)
        store = str(d / "jf.ajugdata")
        before = stamps(store) if (d / "jf.ajugdata").exists() else {}
        self.ok("ajug run -j 2 after the crash", self.run(
            ajug_cmd("run", "jf.py", "-j", "2", "--no-progress"), d))
        after = stamps(store)
        got = self.outcome(d)
        got.note = (f"crashed with {len(before)} results stored" if crashed
                    else "the run ended before it could be crashed")
        rewritten = sorted(k[:12] for k, ts in before.items() if after.get(k) != ts)
        if rewritten:
            raise Failed(f"crash: {len(rewritten)} stored results computed again: {rewritten}")
        return got

    def serve_work(self, name: str, restart: bool = False) -> Outcome:
        """``ajug serve`` in the project, ``ajug work -j 2`` from another directory; with
        ``restart``, the coordinator is SIGKILLed once at a random moment and started again."""
        d = self.project(name)
        elsewhere = self.root / f"{name}-elsewhere"
        elsewhere.mkdir(exist_ok=True)
        port = free_port()
        extra = {"FUZZ_SLEEP_S": SLEEP_S} if restart else {}
        serve = self.start(ajug_cmd("-v", "serve", "jf.py", "--port", str(port)), d,
                           f"{name}-serve", **extra)
        work = self.start(ajug_cmd("-v", "work", f"127.0.0.1:{port}", "-j", "2",
                                   "--connect-timeout", "60"), elsewhere, f"{name}-work",
                          **extra)
        procs = [serve, work]
        note = ""
        try:
            if restart:
                self.first_task_done(d, serve)
                time.sleep(self.rng.uniform(0.0, 0.4))
                if serve.poll() is None:
                    _kill_group(serve.pid)
                    serve.wait(10)
                    time.sleep(0.3)
                    serve = self.start(ajug_cmd("-v", "serve", "jf.py", "--port", str(port)),
                                       d, f"{name}-serve2", **extra)
                    procs.append(serve)
                    note = "coordinator restarted"
                else:
                    note = "the run ended before the coordinator could be killed"
            rc_serve = _wait(serve)
            rc_work = _wait(work)
        finally:
            for p in procs:
                _kill_group(p.pid)
        if rc_serve != 0 or rc_work != 0:
            raise Failed(f"{name}: serve exit {rc_serve}, work exit {rc_work}\n"
                         + self.tail(f"{name}-serve") + self.tail(f"{name}-serve2")
                         + self.tail(f"{name}-work"))
        got = self.outcome(d)
        got.note = note
        return got

    def kill_worker(self) -> Outcome:
        """``ajug run -j 2``; one of its worker processes SIGKILLed at a random moment."""
        d = self.project("kill-worker")
        p = self.start(ajug_cmd("-v", "run", "jf.py", "-j", "2", "--no-progress"), d,
                       "kill-worker-run", FUZZ_SLEEP_S=SLEEP_S)
        note = "the run ended before a worker could be killed"
        killed = 0
        before: dict[str, float] = {}
        try:
            self.first_task_done(d, p)
            time.sleep(self.rng.uniform(0.0, 0.4))
            kids = children(p.pid)
            if p.poll() is None and kids:
                victim = self.rng.choice(sorted(kids))
                try:
                    os.kill(victim, signal.SIGKILL)
                    note = f"worker {victim} killed"
                    killed = victim
                    if (d / "jf.ajugdata").exists():
                        before = stamps(str(d / "jf.ajugdata"))
                except ProcessLookupError:
                    pass
            rc = _wait(p)
        finally:
            _kill_group(p.pid)
        if rc != 0:
            raise Failed(f"kill-worker ({note}): exit {rc}\n" + self.tail("kill-worker-run"))
        after = stamps(str(d / "jf.ajugdata"))
        rewritten = sorted(k[:12] for k, ts in before.items() if after.get(k) != ts)
        if rewritten:
            raise Failed(f"kill-worker: {len(rewritten)} stored results computed again: "
                         f"{rewritten}")
        got = self.outcome(d)
        got.note, got.killed = note, killed
        return got

    def first_task_done(self, d: Path, p: subprocess.Popen[str]) -> None:
        """Wait (bounded) until a task has run, so that a fault lands after work began."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None and not runs(d):
            time.sleep(0.05)

    def start(self, cmd: list[str], cwd: Path, log: str, **extra: str) -> subprocess.Popen[str]:
        f = open(self.root / f"{log}.log", "w")
        try:
            return subprocess.Popen(cmd, cwd=cwd, env=env(**extra), stdout=f,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
        finally:
            f.close()

    def tail(self, log: str) -> str:
        p = self.root / f"{log}.log"
        return f"--- {log}\n{p.read_text()[-3000:]}\n" if p.exists() else ""

    def variant(self, name: str) -> Outcome:
        if name in ("j1", "j2", "j3"):
            return self.ajug_run(name, int(name[1]))
        if name == "spawn":
            return self.ajug_run(name, 2, AJUG_WORKER_START="spawn")
        if name == "serve":
            return self.serve_work(name)
        if name == "restart":
            return self.serve_work(name, restart=True)
        if name == "kill-worker":
            return self.kill_worker()
        if name == "rerun":
            return self.rerun()
        if name == "crash":
            return self.crash()
        raise ValueError(f"unknown variant {name!r}")


def runs(d: Path) -> collections.Counter[str]:
    """How many times each (function, arguments) ran."""
    return collections.Counter(" ".join(line.split()[:2]) for line in _runlog(d))


def runners(d: Path) -> dict[str, set[int]]:
    """The pids that ran each (function, arguments)."""
    out: dict[str, set[int]] = collections.defaultdict(set)
    for line in _runlog(d):
        name, digest, pid = line.split()
        out[f"{name} {digest}"].add(int(pid))
    return dict(out)


def _runlog(d: Path) -> list[str]:
    log = d / "runlog.txt"
    return [ln for ln in log.read_text().splitlines() if ln.strip()] if log.exists() else []


def compare(name: str, ref: Outcome, got: Outcome, extra_runs_allowed: int = 0) -> list[str]:
    """What differs between a variant and the reference, one line each (empty: nothing)."""
    problems = []
    if set(got.values) != set(ref.values):
        only_ref = sorted(set(ref.values) - set(got.values))
        only_got = sorted(set(got.values) - set(ref.values))
        problems.append(f"{name}: task sets differ: missing {[ref.values[k][0] for k in only_ref]},"
                        f" extra {[got.values[k][0] for k in only_got]}")
    for k in sorted(set(ref.values) & set(got.values)):
        if got.values[k] != ref.values[k]:
            problems.append(f"{name}: task {k[:12]} {ref.values[k][0]}: {got.values[k][1]} "
                            f"!= reference {ref.values[k][1]}")
    extra = got.runs - ref.runs
    missing = ref.runs - got.runs
    if missing:
        problems.append(f"{name}: executions missing: {dict(missing)}")
    # each task at most once more: a call made n times in the reference (mapreduce's blocks
    # call the mapper once per element, duplicates included) may come back n times
    if sum(extra.values()) > extra_runs_allowed or any(n > ref.runs[k] for k, n in extra.items()):
        problems.append(f"{name}: tasks computed again ({got.note}): {dict(extra)}")
    # a task run again is allowed only if the killed worker ran it (its result was lost with
    # it, before it reached the store): never a result another worker had stored
    again = [k for k in extra if got.killed not in got.runners.get(k, set())]
    if again:
        problems.append(f"{name}: tasks computed again, not by the killed worker "
                        f"({got.note}): {again}")
    return problems


def compare_jug(ref: Outcome, jug: Outcome, mutates: bool) -> list[str]:
    problems = []
    if set(jug.values) != set(ref.values):
        only_ref = sorted(set(ref.values) - set(jug.values))
        only_jug = sorted(set(jug.values) - set(ref.values))
        problems.append(f"jug: identities differ: ajug only {[ref.values[k][0] for k in only_ref]}"
                        f", jug only {[jug.values[k][0] for k in only_jug]}")
    for k in sorted(set(ref.values) & set(jug.values)):
        (rname, rval), (jname, jval) = ref.values[k], jug.values[k]
        if rname != jname:
            problems.append(f"jug: task {k[:12]} named {jname!r} by jug, {rname!r} by ajug")
        if rval != jval and not mutates:
            problems.append(f"jug: task {k[:12]} {rname}: jug {jval} != ajug {rval}")
    return problems


def check(root: Path, write: Callable[[Path, str], None], mutates: bool, seed: int,
          variants: list[str], with_jug: bool = True) -> tuple[list[str], list[str]]:
    """Every problem found with one project (empty: none), and what the faults hit."""
    c = Checker(root, write, mutates, random.Random(seed))
    try:
        ref = c.executor()
    except Failed as e:
        return [f"exec: {e}"], c.notes
    problems: list[str] = []
    if with_jug:
        try:
            problems += compare_jug(ref, c.jug(), mutates)
        except Failed as e:
            problems.append(f"jug: {e}")
    for v in variants:
        try:
            got = c.variant(v)
        except Failed as e:
            problems.append(f"{v}: {e}")
            continue
        if got.note:
            c.notes.append(f"{v}: {got.note}")
        if v == "crash":  # runs lost in the crash run again (the stamps above: nothing stored)
            got.runs = collections.Counter({k: min(n, ref.runs[k]) for k, n in got.runs.items()})
        # the killed worker's task runs again, and a map block calls its function per element:
        # any number of extra calls, if the killed worker made them (and the store stamps
        # above show nothing stored was rewritten)
        problems += compare(v, ref, got, extra_runs_allowed=10**6 if v == "kill-worker" else 0)
    return problems, c.notes


def _wait(p: subprocess.Popen[str]) -> int:
    try:
        return p.wait(RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_group(p.pid)
        p.wait(10)
        return -999


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def variants_arg(text: str) -> list[str]:
    names = [v for v in text.split(",") if v]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise ValueError(f"unknown variants {bad}; known: {VARIANTS}")
    return names

