"""Tasks that report what a task can see of its environment, after one that kills its worker.

``AJUG_TEST_MARKS`` is a directory: ``kill_once`` exits its worker process the first time it
runs (a restarted worker must still get the token), each ``look`` leaves a file there, and the
last task waits for the file ``AJUG_TEST_GATE`` (so that a test can look at the processes
while the run is in progress).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

from ajug import TaskGenerator

MARKS = Path(os.environ.get("AJUG_TEST_MARKS", "."))


@TaskGenerator
def kill_once():
    try:
        os.close(os.open(MARKS / "killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return os.getpid()
    os._exit(3)


@TaskGenerator
def look(i, after):
    dump = "import os; print(sorted(os.environ.items()))"
    child = subprocess.run([sys.executable, "-c", dump], capture_output=True, text=True,
                           check=True).stdout
    shell = subprocess.run("env", shell=True, capture_output=True, text=True, check=True).stdout
    (MARKS / f"look.{i}").write_text(str(os.getpid()))
    return {
        "pid": os.getpid(),
        "token": os.environ.get("AJUG_TOKEN"),
        "read_token": os.environ.get("AJUG_READ_TOKEN"),
        "child_env": child,
        "shell_env": shell,
        "proc_environ": Path("/proc/self/environ").read_bytes().decode(errors="replace"),
    }


@TaskGenerator
def gate(seen):
    gate_file = os.environ.get("AJUG_TEST_GATE")
    deadline = time.monotonic() + 120
    while gate_file and not Path(gate_file).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(seen)


killed = kill_once()
seen = [look(i, killed) for i in range(6)]
done = gate(seen)
