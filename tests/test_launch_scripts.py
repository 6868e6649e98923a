"""The job scripts and the commands' answers of each batch system (ajug/launch/systems.py).

SLURM's are also tried on a real cluster (test_slurm.py). PBS/Torque, SGE and LSF are not
installed here: their generated scripts are checked line by line and then run by bash as those
schedulers would run them (the directives are comments to bash), against a real coordinator,
with the job id variable each one sets; their parsers are fed answers in the formats their
manuals document."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from procs import Procs, env, read_log, status, values, wait_for

from ajug.errors import UsageError
from ajug.launch.drivers import BatchDriver, ExecDriver
from ajug.launch.policy import ENDED, ENDING, PENDING, RUNNING
from ajug.launch.shapes import demands, shape_for
from ajug.launch.systems import SYSTEMS, JobSpec, LaunchParseError, parse_mem, parse_time
from ajug.taskopts import parse_resources

JUGFILE = '''
from ajug import TaskGenerator

@TaskGenerator
def sq(i):
    return i * i

total = [sq(i) for i in range(6)]
'''

GiB = 1024 ** 3


def spec(**kw: object) -> JobSpec:
    base: dict[str, object] = dict(
        name="ajug-demo-abc123", cpus=4, mem_mib=8192, time_s=2 * 86400 + 3600 + 61,
        queue="short", account="proj42", directives=["--gres=gpu:1", "#EXTRA as is"],
        setup=["module load python/3.11", "source /home/u/venv/bin/activate"],
        log_dir="/home/u/proj/demo.ajugjobs", comment="ajug demo.py at login1:5555",
        ajug=["/home/u/venv/bin/python", "-m", "ajug"], address="login1:5555",
        token_file="/home/u/proj/demo.ajugjobs/token", idle_exit_s=60.0,
        connect_timeout_s=300.0)
    base.update(kw)
    return JobSpec(**base)  # type: ignore[arg-type]


WORKER = ("exec /home/u/venv/bin/python -m ajug work login1:5555 -j 4 --token-file "
          "/home/u/proj/demo.ajugjobs/token --connect-timeout 300 --idle-exit 60 --name ")


def test_slurm_script() -> None:
    s = SYSTEMS["slurm"]().script(spec())
    assert s.splitlines() == [
        "#!/bin/bash",
        "#SBATCH --job-name=ajug-demo-abc123",
        "#SBATCH --ntasks=1",
        "#SBATCH --nodes=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --output=/home/u/proj/demo.ajugjobs/ajug-demo-abc123-%j.out",
        "#SBATCH --comment='ajug demo.py at login1:5555'",
        "#SBATCH --mem=8192M",
        "#SBATCH --time=2-01:01:01",
        "#SBATCH --partition=short",
        "#SBATCH --account=proj42",
        "#SBATCH --gres=gpu:1",
        "#EXTRA as is",
        "# an ajug worker job for a run (ajug demo.py at login1:5555); written by ajug, which "
        "submits, counts and cancels these jobs",
        "module load python/3.11",
        "source /home/u/venv/bin/activate",
        WORKER + '"slurm:${SLURM_JOB_ID}/"',
    ]


def test_a_base_job_has_no_idle_exit_and_options_left_out_are_not_written() -> None:
    s = SYSTEMS["slurm"]().script(spec(mem_mib=None, time_s=None, queue=None, account=None,
                                       directives=[], setup=[], comment=""), base=True)
    assert "--idle-exit" not in s
    for word in ("--mem", "--time", "--partition", "--account", "--comment"):
        assert word not in s


def test_pbs_script() -> None:
    s = SYSTEMS["pbs"]().script(spec())
    assert s.splitlines()[:9] == [
        "#!/bin/bash",
        "#PBS -N ajug-demo-abc12",  # PBS keeps 15 characters
        "#PBS -l nodes=1:ppn=4",
        "#PBS -j oe",
        "#PBS -o /home/u/proj/demo.ajugjobs/",
        "#PBS -l mem=8192mb",
        "#PBS -l walltime=49:01:01",
        "#PBS -q short",
        "#PBS -A proj42",
    ]
    assert "#PBS --gres=gpu:1" in s
    assert s.splitlines()[-1] == WORKER + '"pbs:${PBS_JOBID}/"'


def test_sge_script() -> None:
    s = SYSTEMS["sge"]().script(spec())
    assert s.splitlines()[:10] == [
        "#!/bin/bash",
        "#$ -N ajug-demo-abc123",
        "#$ -S /bin/bash",
        "#$ -j y",
        "#$ -o /home/u/proj/demo.ajugjobs/",
        "#$ -pe smp 4",
        "#$ -l h_vmem=2048M",  # per slot
        "#$ -l h_rt=49:01:01",
        "#$ -q short",
        "#$ -A proj42",
    ]
    assert s.splitlines()[-1] == WORKER + '"sge:${JOB_ID}/"'
    assert "-pe" not in SYSTEMS["sge"]().script(spec(cpus=1))


def test_lsf_script() -> None:
    s = SYSTEMS["lsf"]().script(spec())
    assert s.splitlines()[:9] == [
        "#!/bin/bash",
        "#BSUB -J ajug-demo-abc123",
        "#BSUB -n 4",
        '#BSUB -R "span[hosts=1]"',
        "#BSUB -o /home/u/proj/demo.ajugjobs/ajug-demo-abc123-%J.out",
        '#BSUB -M 8192 -R "rusage[mem=2048]"',
        "#BSUB -W 2942",  # minutes, rounded up
        "#BSUB -q short",
        "#BSUB -P proj42",
    ]
    assert s.splitlines()[-1] == WORKER + '"lsf:${LSB_JOBID}/"'


def test_a_job_sized_for_tasks_that_need_gpus_memory_and_cpus() -> None:
    """The run's job (4 CPUs, 8 GiB) grown for a task needing 2 GPUs, 64 GiB and 6 CPUs; its
    worker offers exactly what the job was given."""
    shape = shape_for({"gpus": 2, "memory": 64 * GiB, "cpus": 6}, cpus=4, mem_mib=8192)
    assert shape.key == "cpus6-mem65536M-gpus2" and shape.per_job() == 1
    s = SYSTEMS["slurm"]().script(shape.spec(spec(directives=[])))
    lines = s.splitlines()
    assert lines[4] == "#SBATCH --cpus-per-task=6"
    assert "#SBATCH --mem=65536M" in lines and "#SBATCH --gres=gpu:2" in lines
    assert lines[0:2] == ["#!/bin/bash", "#SBATCH --job-name=ajug-demo-abc123"]  # the run's name
    assert lines[-1] == (
        "exec /home/u/venv/bin/python -m ajug work login1:5555 -j 6 --token-file "
        "/home/u/proj/demo.ajugjobs/token --connect-timeout 300 --idle-exit 60 --resources "
        'cpus=6,memory=65536MiB,gpus=2 --name "slurm:${SLURM_JOB_ID}/"')
    assert parse_resources(shape.offer_text()) == shape.offer() == {
        "cpus": 6.0, "memory": 64.0 * GiB, "gpus": 2.0}
    # LSF asks for GPUs its own way; PBS and SGE leave them to --job-directive
    assert '#BSUB -gpu "num=2"' in SYSTEMS["lsf"]().script(shape.spec(spec()))
    for kind in ("pbs", "sge"):
        text = SYSTEMS[kind]().script(shape.spec(spec(directives=[])))
        assert "gpu" not in text.split("exec ")[0] and "--resources cpus=6," in text
    # a plain job is unchanged: no --gres, no --resources
    plain = SYSTEMS["slurm"]().script(spec(directives=[]))
    assert "--gres" not in plain and "--resources" not in plain


def test_shapes_round_up_keep_the_run_job_when_larger_and_count_tasks_per_job() -> None:
    # 500 MB is 476.8 MiB: asked as 477M, offered as 477 MiB, which holds the task
    small = shape_for({"memory": 500e6}, cpus=1)
    assert (small.cpus, small.mem_mib, small.gpus) == (1, 477, 0)
    assert small.offer()["memory"] >= 500e6 and small.key == "cpus1-mem477M"
    # the run's 8 CPUs and 16 GiB hold four tasks of 2 CPUs and 1 GiB at once
    four = shape_for({"cpus": 2, "memory": GiB}, cpus=8, mem_mib=16384)
    assert (four.cpus, four.mem_mib) == (8, 16384) and four.per_job() == 4
    # half a GPU: one GPU asked, two tasks per job (but no more than the worker's processes)
    half = shape_for({"gpus": 0.5}, cpus=4)
    assert half.gpus == 1 and half.per_job() == 2
    assert shape_for({"gpus": 0.5}, cpus=1).per_job() == 1
    # other names: no directive, offered as needed
    lic = shape_for({"licence": 1, "cpus": 1.5}, cpus=1)
    assert lic.cpus == 2 and lic.offer_text() == "cpus=2,licence=1"
    assert lic.key == "cpus2-licence1" and lic.what == "cpus>=1.5, licence>=1"
    text = SYSTEMS["slurm"]().script(lic.spec(spec(directives=[])))
    assert "licence" not in text.split("exec ")[0] and "--resources cpus=2,licence=1" in text


def test_batch_jobs_offer_what_they_were_given_and_sized_scripts_are_written_once(
        tmp_path: Path) -> None:
    driver = BatchDriver(SYSTEMS["slurm"](), spec(directives=[]), tmp_path, "u")
    (plain,) = driver.prepare(False)
    # a plain job's worker offers the job's CPUs and memory, not the node's
    assert plain.name == "ajug-demo-abc123.slurm.sh"
    assert "--resources cpus=4,memory=8192MiB --name" in plain.read_text()
    shape = shape_for({"gpus": 1}, 4, 8192)
    path = driver.script_for(shape)
    assert path.name == "ajug-demo-abc123-cpus4-mem8192M-gpus1.slurm.sh"
    assert driver.script_for(shape) == path and driver.shape_scripts == {shape.key: path}
    text = path.read_text()
    assert "#SBATCH --gres=gpu:1" in text and "--resources cpus=4,memory=8192MiB,gpus=1" in text
    assert "--resources" not in ExecDriver("{command}", spec(), tmp_path, []).spec.worker_command(
        "exec", "1")  # an exec job is a host: it offers what the host has


def test_needs_that_round_to_one_shape_are_one_demand() -> None:
    waiting = [({"cpus": 1.5}, 3, 1), ({"cpus": 2.0}, 2, 0), ({"gpus": 1.0}, 1, 0)]
    sds, shapes = demands(waiting, cpus=1, mem_mib=None)
    assert [(d.key, d.ready, d.startable, d.per_job) for d in sds] == [
        ("cpus2", 5, 1, 1), ("cpus1-gpus1", 1, 0, 1)]
    assert sds[0].what == "cpus>=1.5; cpus>=2" and set(shapes) == {"cpus2", "cpus1-gpus1"}


def test_no_script_holds_the_token() -> None:
    token = "s3cret-token-value"
    for system in SYSTEMS.values():
        assert token not in system().script(spec())


@pytest.mark.parametrize("kind,var,job_id", [("slurm", "SLURM_JOB_ID", "77"),
                                             ("pbs", "PBS_JOBID", "78.pbs-server"),
                                             ("sge", "JOB_ID", "79"),
                                             ("lsf", "LSB_JOBID", "80")])
def test_generated_script_runs_a_worker(kind: str, var: str, job_id: str, procs: Procs,
                                        tmp_path: Path) -> None:
    """bash runs the script as the scheduler would (its directives are comments): the setup
    lines run, and the worker reaches the coordinator with the token from the file, named after
    its job, and does the run's work."""
    jug = tmp_path / "sq.py"
    jug.write_text(JUGFILE)
    token = tmp_path / "token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"test-token\n")
    os.close(fd)
    coord, port = procs.serve(jug, "--stay")
    marker = tmp_path / "setup-ran"
    s = spec(address=f"127.0.0.1:{port}", token_file=str(token), cpus=1, idle_exit_s=2.0,
             ajug=shlex.split(f"{sys.executable} -m ajug"), log_dir=str(tmp_path),
             setup=[f"touch {marker}"], directives=[], verbose=1)
    script = tmp_path / f"job.{kind}.sh"
    script.write_text(SYSTEMS[kind]().script(s))
    e = env(**{var: job_id})
    del e["AJUG_TOKEN"]  # the token comes from the file only
    w = procs.start_cmd(["bash", str(script)], "job", env=e)
    st = wait_for(lambda: (x := status(port))["totals"]["done"] == 6 and x, 30,
                  what="the job's worker to do the work")
    assert [x["name"] for x in st["workers"]] == [f"{kind}:{job_id}/"]
    assert marker.exists()
    # with nothing left to do, it exits after --idle-exit (the coordinator --stay's)
    assert w.wait(30) == 0, read_log(w)
    assert "no task for 2s (--idle-exit): exiting" in read_log(w)
    assert values(jug, ["total"]) == {"total": [i * i for i in range(6)]}


def test_submit_answers() -> None:
    assert SYSTEMS["slurm"]().parse_submit("1234\n") == "1234"
    assert SYSTEMS["slurm"]().parse_submit("1234;cluster2\n") == "1234"
    assert SYSTEMS["pbs"]().parse_submit("5678.pbs01.example.org\n") == "5678.pbs01.example.org"
    assert SYSTEMS["sge"]().parse_submit("91011\n") == "91011"
    lsf = "Job <1213> is submitted to queue <normal>.\n"
    assert SYSTEMS["lsf"]().parse_submit(lsf) == "1213"
    for kind in ("slurm", "pbs", "sge", "lsf"):
        with pytest.raises(LaunchParseError):
            SYSTEMS[kind]().parse_submit("something else entirely\n")


def test_slurm_listing() -> None:
    out = ("101|RUNNING|node7|None\n102|PENDING||Priority\n103|TIMEOUT|node3|None\n"
           "104|COMPLETING|node7|None\n105|PREEMPTED|node2|None\n106|CONFIGURING|node9|None\n")
    jobs = SYSTEMS["slurm"]().parse_list(out, "x")
    assert [(j.id, j.state, j.raw, j.node, j.reason) for j in jobs] == [
        ("101", RUNNING, "RUNNING", "node7", ""),
        ("102", PENDING, "PENDING", "", "Priority"),
        ("103", ENDED, "TIMEOUT", "node3", ""),
        ("104", ENDING, "COMPLETING", "node7", ""),
        ("105", ENDED, "PREEMPTED", "node2", ""),
        ("106", PENDING, "CONFIGURING", "", ""),
    ]
    argv = SYSTEMS["slurm"]().list_argv("ajug-x-1", "alice")
    assert "--name=ajug-x-1" in argv and "--user=alice" in argv and "--states=all" in argv


def test_pbs_listing() -> None:
    out = """
pbs01:
                                                            Req'd  Req'd   Elap
Job ID               Username Queue    Jobname    SessID NDS TSK Memory Time  S Time
-------------------- -------- -------- ---------- ------ --- --- ------ ----- - -----
5678.pbs01           alice    short    ajug-demo-     123   1   4  8192m 49:01 R 00:10
5679.pbs01           alice    short    ajug-demo-      --   1   4  8192m 49:01 Q   --
5680.pbs01           alice    short    other-job       --   1   4  8192m 49:01 Q   --
"""
    jobs = SYSTEMS["pbs"]().parse_list(out, "ajug-demo-abc123")
    assert [(j.id, j.state) for j in jobs] == [("5678.pbs01", RUNNING), ("5679.pbs01", PENDING)]


def test_sge_listing() -> None:
    out = """<?xml version='1.0'?>
<job_info xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>91011</JB_job_number><JB_name>ajug-demo-abc123</JB_name>
      <state>r</state><queue_name>all.q@node4.example.org</queue_name>
    </job_list>
    <job_list state="running">
      <JB_job_number>91013</JB_job_number><JB_name>ajug-demo-abc123</JB_name>
      <state>dr</state><queue_name>all.q@node5</queue_name>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>91012</JB_job_number><JB_name>ajug-demo-abc123</JB_name>
      <state>qw</state><queue_name></queue_name>
    </job_list>
    <job_list state="pending">
      <JB_job_number>91014</JB_job_number><JB_name>someone-else</JB_name><state>qw</state>
    </job_list>
  </job_info>
</job_info>"""
    jobs = SYSTEMS["sge"]().parse_list(out, "ajug-demo-abc123")
    assert [(j.id, j.state, j.node) for j in jobs] == [
        ("91011", RUNNING, "node4.example.org"), ("91013", ENDING, "node5"),
        ("91012", PENDING, "")]
    with pytest.raises(LaunchParseError):
        SYSTEMS["sge"]().parse_list("error: not xml", "x")


def test_lsf_listing() -> None:
    out = "1213|RUN|4*node12\n1214|PEND|-\n1215|DONE|node3\n1216|EXIT|node4\n"
    jobs = SYSTEMS["lsf"]().parse_list(out, "x")
    assert [(j.id, j.state, j.node) for j in jobs] == [
        ("1213", RUNNING, "node12"), ("1214", PENDING, ""), ("1215", ENDED, "node3"),
        ("1216", ENDED, "node4")]


def test_submit_and_cancel_commands() -> None:
    assert SYSTEMS["slurm"]().submit_argv("/j/w.sh") == (["sbatch", "--parsable", "/j/w.sh"], None)
    assert SYSTEMS["pbs"]().submit_argv("/j/w.sh") == (["qsub", "/j/w.sh"], None)
    assert SYSTEMS["sge"]().submit_argv("/j/w.sh") == (["qsub", "-terse", "/j/w.sh"], None)
    assert SYSTEMS["slurm"]().cancel_argv(["1", "2"]) == ["scancel", "1", "2"]
    assert SYSTEMS["pbs"]().cancel_argv(["1"]) == ["qdel", "1"]
    assert SYSTEMS["sge"]().cancel_argv(["1"]) == ["qdel", "1"]
    assert SYSTEMS["lsf"]().cancel_argv(["1"]) == ["bkill", "1"]


def test_lsf_reads_the_script_on_stdin(tmp_path: Path) -> None:
    p = tmp_path / "w.sh"
    p.write_text("#BSUB -J x\n")
    assert SYSTEMS["lsf"]().submit_argv(str(p)) == (["bsub"], b"#BSUB -J x\n")


def test_sizes_and_times() -> None:
    assert parse_mem("4G") == 4096 and parse_mem("512M") == 512 and parse_mem("2048") == 2048
    assert parse_mem("1.5GB") == 1536 and parse_mem("1T") == 1024 * 1024
    assert parse_mem("4gib") == 4096
    assert parse_time("90") == 5400  # minutes, as sbatch reads it
    assert parse_time("1:30:00") == 5400 and parse_time("30:00") == 1800
    assert parse_time("2-00:00:00") == 2 * 86400 and parse_time("1-12") == 36 * 3600
    for bad in ("lots", "-4G", "0", "0K"):
        with pytest.raises(UsageError, match="--job-mem"):
            parse_mem(bad)
    for bad in ("soon", "1:2:3:4", "0", "1-x"):
        with pytest.raises(UsageError, match="--job-time"):
            parse_time(bad)


def test_slurm_listing_command_runs_where_squeue_is(slurm: object) -> None:
    """The listing command and its parser against the real squeue (no job of that name)."""
    import getpass

    argv = SYSTEMS["slurm"]().list_argv("ajug-nothing-000000", getpass.getuser())
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                         env={**os.environ, **slurm.env})  # type: ignore[attr-defined]
    assert out.returncode == 0, out.stderr
    assert SYSTEMS["slurm"]().parse_list(out.stdout, "x") == []
