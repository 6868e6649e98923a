"""The launcher's decisions (ajug/launch/policy.py), driven by method calls and a fake clock:
no scheduler, no process, no sleep."""

from __future__ import annotations

import re

import pytest

from ajug.launch.policy import (
    BACKOFF_S,
    ENDED,
    MAX_EARLY_ENDS,
    PENDING,
    RUNNING,
    UNSEEN_GRACE_S,
    JobPolicy,
    Listed,
    ShapeDemand,
    WorkerView,
    share,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def policy(**kw: object) -> JobPolicy:
    p = JobPolicy(**{"max_jobs": 4, "idle_exit_s": 30.0, **kw})  # type: ignore[arg-type]
    p.listed([], 0.0, 0.0)  # the first listing: the queue holds nothing of this run
    return p


def submit_all(p: JobPolicy, n: int, now: float, first_id: int = 1, base: bool = False) -> list[str]:
    ids = [str(first_id + i) for i in range(n)]
    for i in ids:
        p.submitted(i, base, now)
    return ids


def idle(n: int, job: str | None = None) -> list[WorkerView]:
    return [WorkerView(job, False) for _ in range(n)]


def busy(n: int, job: str | None = None) -> list[WorkerView]:
    return [WorkerView(job, True) for _ in range(n)]


def test_nothing_is_submitted_before_the_first_listing() -> None:
    p = JobPolicy(max_jobs=4)
    d = p.decide(0.0, ready=100, workers=[])
    assert d.submit == 0 and "looking for jobs" in p.reason
    p.listed([], 0.0, 0.0)
    assert p.decide(0.0, ready=100, workers=[]).submit == 4


def test_jobs_follow_the_ready_work_up_to_the_maximum() -> None:
    p = policy(slots_per_job=4)
    d = p.decide(0.0, ready=6, workers=[])
    assert d.submit == 2  # ceil(6 / 4)
    assert "6 task(s) ready" in p.reason and "submitting 2" in p.reason
    # while those two are on their way nothing more is submitted for the same demand
    assert p.decide(1.0, ready=6, workers=[]).submit == 0
    submit_all(p, 2, 1.0)
    assert p.decide(2.0, ready=6, workers=[]).submit == 0
    assert "2 job(s) starting" in p.reason and "enough" in p.reason
    # more work: more jobs, up to the maximum
    d = p.decide(3.0, ready=100, workers=[])
    assert d.submit == 2 and "then at the maximum (--max-jobs 4)" in p.reason
    submit_all(p, 2, 3.0, first_id=3)
    assert p.decide(4.0, ready=100, workers=[]).submit == 0
    assert "at the maximum (--max-jobs 4, 4 job(s))" in p.reason


def test_idle_workers_take_the_ready_work_before_any_job_is_submitted() -> None:
    p = policy()
    assert p.decide(0.0, ready=3, workers=idle(3)).submit == 0
    assert "3 idle worker(s)" in p.reason and "enough" in p.reason
    assert p.decide(0.0, ready=5, workers=idle(3) + busy(2)).submit == 2
    # workers started by hand count too: they take work like any other
    assert p.decide(0.0, ready=2, workers=idle(2, job=None)).submit == 0


def test_a_job_counts_as_starting_until_one_of_its_workers_connects() -> None:
    p = policy()
    p.decide(0.0, ready=1, workers=[])
    submit_all(p, 1, 0.0)
    p.listed([Listed("1", RUNNING, "RUNNING", "node7")], 1.0, 1.0)
    assert p.decide(2.0, ready=1, workers=[]).submit == 0  # started, worker not yet there
    # its worker connected and took the task: one more task ready needs one more job
    assert p.decide(3.0, ready=1, workers=busy(1, job="1")).submit == 1
    assert p.jobs["1"].workers == 1 and p.jobs["1"].had_worker


def test_pending_jobs_not_needed_are_cancelled_after_idle_exit() -> None:
    clock = Clock()
    p = policy(idle_exit_s=30.0)
    p.decide(clock(), ready=4, workers=[])
    ids = submit_all(p, 4, clock())
    p.listed([Listed(i, PENDING, "PENDING") for i in ids], clock(), clock())
    # the work was taken by workers started elsewhere: the pending jobs are not needed
    clock.t += 1
    d = p.decide(clock(), ready=0, workers=idle(2))
    assert d.cancel == [] and "4 pending job(s) not needed" in p.reason
    clock.t += 29
    assert p.decide(clock(), ready=0, workers=idle(2)).cancel == []
    clock.t += 1
    d = p.decide(clock(), ready=0, workers=idle(2))
    assert sorted(d.cancel) == ids and "cancelling" in p.reason
    assert p.counts()["cancelling"] == 4 and p.counts()["pending"] == 0
    # a cancelled job is never counted again, and is not cancelled twice
    assert p.decide(clock(), ready=0, workers=idle(2)).cancel == []


def test_surplus_that_goes_away_resets_the_wait() -> None:
    clock = Clock()
    p = policy(idle_exit_s=10.0)
    p.decide(clock(), ready=2, workers=[])
    ids = submit_all(p, 2, clock())
    p.listed([Listed(i, PENDING) for i in ids], clock(), clock())
    p.decide(clock(), ready=0, workers=[])  # not needed from now on...
    clock.t += 8
    p.decide(clock(), ready=5, workers=[])  # ...but needed again
    clock.t += 8
    assert p.decide(clock(), ready=0, workers=[]).cancel == []
    clock.t += 10
    # only the newest go, as many as the surplus: here all of them
    assert sorted(p.decide(clock(), ready=0, workers=[]).cancel) == ids


def test_only_the_surplus_is_cancelled_newest_first() -> None:
    clock = Clock()
    p = policy(idle_exit_s=0.0, max_jobs=4)
    p.decide(clock(), ready=4, workers=[])
    for i in range(4):
        p.submitted(str(i + 1), False, clock())
        clock.t += 1
    p.listed([Listed(str(i + 1), PENDING) for i in range(4)], clock(), clock())
    d = p.decide(clock(), ready=2, workers=[])
    assert d.cancel == ["4", "3"]


def test_running_jobs_are_never_cancelled_while_the_run_goes_on() -> None:
    p = policy(idle_exit_s=0.0)
    p.decide(0.0, ready=2, workers=[])
    submit_all(p, 2, 0.0)
    p.listed([Listed("1", RUNNING), Listed("2", RUNNING)], 1.0, 1.0)
    d = p.decide(5.0, ready=0, workers=idle(1, "1") + idle(1, "2"))
    assert d.cancel == [] and "no task ready" in p.reason


def test_min_jobs_are_kept_and_replaced() -> None:
    p = policy(min_jobs=1, max_jobs=3)
    d = p.decide(0.0, ready=0, workers=[])
    assert (d.submit_base, d.submit) == (1, 0) and "--min-jobs 1" in p.reason
    p.submitted("1", True, 0.0)
    p.listed([Listed("1", PENDING)], 1.0, 1.0)
    assert p.decide(2.0, ready=0, workers=[]).submit_base == 0
    # a base job is not cancelled as surplus, even when nothing is ready
    assert p.decide(100.0, ready=0, workers=[]).cancel == []
    # it ends (time limit): a new base job replaces it
    p.listed([Listed("1", ENDED, "TIMEOUT")], 101.0, 101.0)
    assert p.decide(102.0, ready=0, workers=[]).submit_base == 1


def test_a_job_that_ends_mid_run_is_replaced_while_work_remains() -> None:
    p = policy(max_jobs=2)
    p.decide(0.0, ready=10, workers=[])
    submit_all(p, 2, 0.0)
    p.listed([Listed("1", RUNNING, node="n1"), Listed("2", RUNNING, node="n2")], 1.0, 1.0)
    assert p.decide(2.0, ready=8, workers=busy(1, "1") + busy(1, "2")).submit == 0
    events = p.listed([Listed("1", ENDED, "CANCELLED", "n1"), Listed("2", RUNNING)], 3.0, 3.0)
    assert events == ["job 1 ended (CANCELLED) on n1 while the run goes on"]
    # its worker is gone, its task is ready again: a replacement
    d = p.decide(4.0, ready=9, workers=busy(1, "2"))
    assert d.submit == 1
    assert [j.id for j in p.ended] == ["1"] and p.ended_total == 1


def test_a_job_missing_from_the_listing_has_ended() -> None:
    p = policy()
    p.decide(0.0, ready=1, workers=[])
    p.submitted("7", False, 0.0)
    # a listing asked before the submission came back does not count against it
    p.listed([], asked_at=-1.0, now=1.0)
    assert "7" in p.jobs
    p.listed([Listed("7", RUNNING)], 2.0, 2.0)
    p.listed([], 3.0, 3.0)  # seen, then gone (the queue forgot it)
    assert "7" not in p.jobs and p.ended[-1].raw == "GONE"
    # one never seen at all is given UNSEEN_GRACE_S
    p.submitted("8", False, 10.0)
    p.listed([], 11.0, 11.0)
    assert "8" in p.jobs
    p.listed([], 12.0, 10.0 + UNSEEN_GRACE_S + 1)
    assert "8" not in p.jobs


def test_a_failed_submission_backs_off_and_says_why_once() -> None:
    clock = Clock()
    p = policy()
    d = p.decide(clock(), ready=10, workers=[])
    assert d.submit == 4
    msg = "sbatch refused the job: invalid partition specified: nope"
    lines = p.submit_failed(msg, False, clock())
    assert lines == [f"{msg}; retrying in {BACKOFF_S:g}s"]
    for _ in range(3):  # the other submissions of that decision: no more lines
        assert p.submit_failed(msg, False, clock()) == []
    assert p.submitting == 0 and p.failures == 1
    assert p.decide(clock(), ready=10, workers=[]).submit == 0
    assert msg in p.reason and "next try in 5s" in p.reason
    clock.t += BACKOFF_S
    d = p.decide(clock(), ready=10, workers=[])
    assert d.submit == 4
    # the same failure again: no new line, a longer wait
    assert p.submit_failed(msg, False, clock()) == []
    assert p.retry_at == clock() + 2 * BACKOFF_S and p.failures == 2
    for _ in range(3):
        p.submit_failed(msg, False, clock())
    clock.t += 2 * BACKOFF_S
    assert p.decide(clock(), ready=10, workers=[]).submit == 4
    assert p.submitted("1", False, clock()) == ["submission works again (job 1)"]
    assert p.error is None and p.failures == 0


def test_jobs_that_end_before_their_worker_connects_back_off() -> None:
    p = policy(max_jobs=1)
    events: list[str] = []
    for k in range(MAX_EARLY_ENDS):
        t = 10.0 * k
        assert p.decide(t, ready=5, workers=[]).submit == 1
        p.submitted(str(k), False, t)
        events += p.listed([Listed(str(k), ENDED, "FAILED", "n1")], t + 1, t + 1)
    assert "before any of its workers connected" in events[0]
    (alert,) = p.take_alerts()
    assert alert.startswith("3 jobs in a row ended before their workers connected (last: job 2,"
                            " FAILED); see its log; retrying in 5s"), alert
    assert p.decide(21.0, ready=5, workers=[]).submit == 0
    assert "see its log" in p.reason


def test_a_restarted_coordinator_adopts_the_jobs_of_its_run() -> None:
    p = JobPolicy(max_jobs=2)
    events = p.listed([Listed("11", RUNNING, "RUNNING", "n1"), Listed("12", PENDING, "PENDING"),
                       Listed("9", ENDED, "COMPLETED")], 0.0, 0.0)
    assert events == ["job 11 (running) is this run's: adopted",
                      "job 12 (pending) is this run's: adopted"]
    assert sorted(p.jobs) == ["11", "12"] and p.adopted_total == 2
    # their workers reconnect: no duplicate submissions while they are the maximum
    assert p.decide(1.0, ready=50, workers=busy(1, "11")).submit == 0
    assert "at the maximum" in p.reason


def test_jobs_that_cannot_reach_this_coordinator_are_cancelled_not_adopted() -> None:
    p = JobPolicy(max_jobs=2)
    p.adoptable = False  # they were told another address
    events = p.listed([Listed("11", RUNNING), Listed("12", PENDING)], 0.0, 0.0)
    assert len(events) == 2 and "another address" in events[0]
    d = p.decide(1.0, ready=50, workers=[])
    assert sorted(d.cancel) == ["11", "12"] and d.submit == 2
    # later listings do not bring them back as live jobs
    p.listed([Listed("11", RUNNING), Listed("12", ENDED, "CANCELLED")], 2.0, 2.0)
    assert p.counts() == {"pending": 0, "running": 0, "submitting": 2, "cancelling": 1}


def test_a_submission_the_listing_saw_first_is_not_counted_twice() -> None:
    p = policy(max_jobs=2)
    p.decide(0.0, ready=5, workers=[])
    p.listed([Listed("5", PENDING)], 0.5, 1.0)  # in the queue before sbatch's answer came
    p.submitted("5", False, 1.0)
    assert sorted(p.jobs) == ["5"]


def test_when_the_run_is_finished_pending_jobs_go() -> None:
    p = policy()
    p.decide(0.0, ready=3, workers=[])
    submit_all(p, 3, 0.0)
    p.listed([Listed("1", RUNNING), Listed("2", PENDING), Listed("3", PENDING)], 1.0, 1.0)
    d = p.decide(2.0, ready=0, workers=idle(1, "1"), finished=True)
    assert sorted(d.cancel) == ["2", "3"]
    assert p.reason == "the run is finished: 1 job(s) ending"
    assert p.listed([Listed("1", ENDED, "COMPLETED")], 3.0, 3.0) == []  # no alarm


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        JobPolicy(max_jobs=0)
    with pytest.raises(ValueError):
        JobPolicy(max_jobs=2, min_jobs=3)


def test_the_coordinator_listens_where_it_tells_the_jobs_to_connect() -> None:
    from ajug.launch.options import LaunchOptions, listen_host

    for advertise, host in (("127.0.0.1", "127.0.0.1"), ("localhost", "127.0.0.1"),
                            ("::1", "::1"), ("[::1]", "::1"), ("login1", "0.0.0.0"),
                            ("10.1.2.3", "0.0.0.0")):
        assert listen_host(LaunchOptions("slurm", advertise=advertise)) == host, advertise


def test_run_names_are_stable_per_run_and_differ_between_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ajug.launch.options import LaunchOptions, run_name

    lo = LaunchOptions("slurm", name_prefix="ajug")
    a = run_name(lo, str(tmp_path / "analysis.py"), str(tmp_path / "analysis.ajugdata"))
    assert re.fullmatch(r"ajug-analysis-[0-9a-f]{6}", a)
    assert a == run_name(lo, str(tmp_path / "." / "analysis.py"), str(tmp_path / "analysis.ajugdata"))
    assert a != run_name(lo, str(tmp_path / "analysis.py"), "redis://db:6379/0")
    assert a != run_name(lo, str(tmp_path / "other" / "analysis.py"),
                         str(tmp_path / "analysis.ajugdata"))


# -- jobs sized for tasks that need resources ------------------------------------------------
def gpu(ready: int, startable: int = 0, per_job: int = 1) -> list[ShapeDemand]:
    return [ShapeDemand("gpus1", ready, startable, per_job, "gpus>=1")]


def test_tasks_that_need_resources_get_jobs_of_their_shape_and_no_plain_ones() -> None:
    p = policy()
    d = p.decide(0.0, ready=0, workers=idle(3), shapes=gpu(2))
    # three idle plain workers, none of which can hold a GPU task: two GPU jobs, no plain one
    assert (d.submit, d.submit_base, d.shaped) == (0, 0, {"gpus1": 2})
    assert "2 need gpus>=1, 0 startable" in p.reason and "2 sized for gpus1" in p.reason
    p.submitted("1", False, 0.0, shape="gpus1")
    p.submitted("2", False, 0.0, shape="gpus1")
    assert p.jobs["1"].shape == "gpus1" and p.submitting == 0 and p.submitting_shape == {"gpus1": 0}
    # pending: counted for their shape, so nothing is submitted again for the same tasks ...
    p.listed([Listed(i, PENDING, "PENDING") for i in ("1", "2")], 1.0, 1.0)
    for t in (2.0, 100.0):
        d = p.decide(t, ready=0, workers=idle(3), shapes=gpu(2))
        assert (d.submit, d.shaped, d.cancel) == (0, {}, [])
        assert "2 job(s) for them starting" in p.reason and "enough" in p.reason
    # ... and plain demand is not met by them
    assert p.decide(101.0, ready=5, workers=idle(3), shapes=gpu(2)).submit == 2


def test_a_shaped_job_holds_per_job_tasks_and_connected_hosts_count_first() -> None:
    p = policy()
    # one job holds 4 such tasks at once: 9 ready need 3 jobs; with 5 startable now, 1
    assert p.decide(0.0, ready=0, workers=[], shapes=gpu(9, per_job=4)).shaped == {"gpus1": 3}
    p = policy()
    assert p.decide(0.0, ready=0, workers=[], shapes=gpu(9, 5, per_job=4)).shaped == {"gpus1": 1}
    # a job whose worker connected and is busy is no longer on its way: more tasks, more jobs
    p.submitted("1", False, 0.0, shape="gpus1")
    assert p.decide(1.0, ready=0, workers=[], shapes=gpu(9, 5, per_job=4)).shaped == {}
    d = p.decide(2.0, ready=0, workers=busy(4, job="1"), shapes=gpu(9, 5, per_job=4))
    assert d.shaped == {"gpus1": 1}


def test_max_jobs_counts_plain_shaped_and_base_jobs_together() -> None:
    p = policy(max_jobs=4, min_jobs=1)
    shapes = gpu(10) + [ShapeDemand("mem64", 10, 0, 1, "memory>=64 GiB")]
    d = p.decide(0.0, ready=10, workers=[], shapes=shapes)
    # one base job (a plain one), then one job at a time to each kind that wants one
    assert d.submit_base == 1 and d.submit == 1 and d.shaped == {"gpus1": 1, "mem64": 1}
    assert "then at the maximum (--max-jobs 4)" in p.reason
    for i, (base, shape) in enumerate([(True, None), (False, None), (False, "gpus1"),
                                       (False, "mem64")]):
        p.submitted(str(i), base, 0.0, shape=shape)
    d = p.decide(1.0, ready=10, workers=[], shapes=shapes)
    assert (d.submit, d.submit_base, d.shaped) == (0, 0, {})
    assert "at the maximum (--max-jobs 4, 4 job(s))" in p.reason
    assert share(5, 1, {"a": 3, "b": 1}) == (1, {"a": 3, "b": 1})
    assert share(3, 4, {"a": 3}) == (2, {"a": 1})
    assert share(0, 4, {"a": 3}) == (0, {})


def test_a_pending_shaped_job_no_longer_needed_is_cancelled_but_a_needed_one_is_not() -> None:
    clock = Clock()
    p = policy(idle_exit_s=30.0)
    shapes = gpu(1) + [ShapeDemand("mem64", 1, 0, 1, "memory>=64 GiB")]
    assert p.decide(clock(), ready=0, workers=[], shapes=shapes).shaped == {"gpus1": 1,
                                                                            "mem64": 1}
    p.submitted("1", False, clock(), shape="gpus1")
    p.submitted("2", False, clock(), shape="mem64")
    p.listed([Listed(i, PENDING, "PENDING") for i in ("1", "2")], clock(), clock())
    # the memory task was taken by a worker started by hand; the GPU task still waits
    clock.t += 1
    assert p.decide(clock(), ready=0, workers=busy(1), shapes=gpu(1)).cancel == []
    assert "1 pending job(s) not needed" in p.reason
    clock.t += 30
    assert p.decide(clock(), ready=0, workers=busy(1), shapes=gpu(1)).cancel == ["2"]
    clock.t += 60
    assert p.decide(clock(), ready=0, workers=busy(1), shapes=gpu(1)).cancel == []


def test_a_failed_shaped_submission_backs_off_and_is_not_counted_as_on_its_way() -> None:
    p = policy()
    assert p.decide(0.0, ready=0, workers=[], shapes=gpu(1)).shaped == {"gpus1": 1}
    p.submit_failed("sbatch refused the job: Invalid generic resource (gres) specification",
                    False, 0.0, shape="gpus1")
    assert p.submitting == 0 and p.submitting_shape == {"gpus1": 0}
    d = p.decide(1.0, ready=0, workers=[], shapes=gpu(1))
    assert d.shaped == {} and "Invalid generic resource" in p.reason and "next try" in p.reason
    assert p.decide(1.0 + BACKOFF_S, ready=0, workers=[], shapes=gpu(1)).shaped == {"gpus1": 1}
