"""Jobs sized for tasks that need resources (issue 16 with the launcher of issue 15), against a
real one-node SLURM cluster (tests/slurm_cluster.py; it has no GPU, so the shape is of CPUs and
memory). About 20 s, so marked slow. The task itself says what SLURM gave its job: the variables sbatch sets from
``--cpus-per-task`` and ``--mem``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from procs import Procs, read_log, values

JUGFILE = '''
import os
from ajug import TaskGenerator


def allocation():
    return {k: os.environ.get(k, "") for k in
            ("SLURM_JOB_ID", "SLURM_CPUS_PER_TASK", "SLURM_MEM_PER_NODE")}


@TaskGenerator
def plain(i):
    return i * i


@TaskGenerator(resources={"cpus": 2, "memory": "300MiB"})
def big(xs):
    return {"sum": sum(xs), **allocation()}


total = big([plain(i) for i in range(4)])
'''


@pytest.fixture(autouse=True)
def _no_job_left(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield
    from procs import kill_mentioning

    kill_mentioning(str(tmp_path))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_task_needing_cpus_and_memory_gets_a_job_sized_for_it(slurm: Any, procs: Procs,
                                                                  tmp_path: Path) -> None:
    if slurm.cpus < 2:
        pytest.skip("the test cluster's node has fewer than 2 CPUs")
    jugfile = tmp_path / "sized.py"
    jugfile.write_text(JUGFILE)
    coord, _port = procs.serve(jugfile, "--workers", "slurm", "--advertise", "127.0.0.1",
                               "--max-jobs", "2", "--idle-exit", "5",
                               "--job-directive", "--oversubscribe")
    assert coord.wait(100) == 0, read_log(coord)
    log = read_log(coord)
    got = values(jugfile, ["total"])["total"]
    # the task ran in a job that SLURM gave 2 CPUs and 300 MiB, as the job script asked
    assert got["sum"] == 0 + 1 + 4 + 9
    assert (got["SLURM_CPUS_PER_TASK"], got["SLURM_MEM_PER_NODE"]) == ("2", "300"), got
    sized = re.findall(r"submitted slurm job (\d+) sized for tasks that need "
                       r"cpus>=2, memory>=300 MiB \(--resources cpus=2,memory=300MiB\)", log)
    assert sized == [got["SLURM_JOB_ID"]], log
    # the plain tasks got plain jobs, whose workers offer only what their job has (1 CPU):
    # the sized task did not run there
    plain = re.findall(r"submitted slurm job (\d+)$", log, re.M)
    assert 1 <= len(plain) <= 2 and sized[0] not in plain, log
    jobs_dir = tmp_path / "sized.ajugjobs"
    scripts = sorted(p.name for p in jobs_dir.glob("*.slurm.sh"))
    name = next(re.finditer(r"jobs named (\S+)", log)).group(1)
    assert scripts == [f"{name}-cpus2-mem300M.slurm.sh", f"{name}.slurm.sh"]
    text = (jobs_dir / scripts[0]).read_text()
    assert "#SBATCH --cpus-per-task=2" in text and "#SBATCH --mem=300M" in text
    assert f"#SBATCH --job-name={name}\n" in text  # the run's name: listed and cancelled by it
    assert "--resources cpus=1 " in (jobs_dir / scripts[1]).read_text()
    assert slurm.squeue(name=name) == []
