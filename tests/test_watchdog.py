"""The timeout watchdog: the deadline decision with a fake clock, and the thread that takes a
stuck task's stack."""

from __future__ import annotations

import threading

from ajug.watchdog import Deadline, Expired, Watchdog, thread_stack


def test_deadline_expires_only_past_its_timeout() -> None:
    d = Deadline()
    assert d.wait_s(0.0) is None and not d.expired(1e9)  # nothing running
    d.start("k", 2.0, now=10.0)
    assert d.wait_s(10.5) == 1.5
    assert not d.expired(11.99)
    assert d.expired(12.0)
    d.finish()
    assert not d.expired(100.0) and d.wait_s(100.0) is None


def test_a_task_without_timeout_has_no_deadline() -> None:
    d = Deadline()
    for none in (None, 0, 0.0):
        d.start("k", none, now=0.0)
        assert not d.expired(1e12)


def stuck_in_here(release: threading.Event) -> None:
    release.wait(30)


def test_watchdog_reports_the_stuck_threads_stack_once() -> None:
    release = threading.Event()
    started = threading.Event()
    fired: list[Expired] = []
    done = threading.Event()

    def task() -> None:
        started.set()
        stuck_in_here(release)

    t = threading.Thread(target=task, daemon=True)
    t.start()
    assert started.wait(5)
    assert t.ident is not None

    def on_expire(e: Expired) -> None:
        fired.append(e)
        done.set()

    dog = Watchdog(on_expire, ident=t.ident)
    try:
        dog.start("abc123", 0.2)
        assert done.wait(10), "the watchdog never fired"
        assert [e.key for e in fired] == ["abc123"]
        assert fired[0].timeout_s == 0.2
        assert "stuck_in_here" in fired[0].stack and "release.wait" in fired[0].stack
        assert "0.2 s" in fired[0].message()
    finally:
        release.set()
        dog.close()
        t.join(5)
    assert len(fired) == 1


def test_a_task_that_finishes_in_time_is_not_stopped() -> None:
    fired: list[Expired] = []
    now = [0.0]
    dog = Watchdog(fired.append, clock=lambda: now[0])
    try:
        dog.start("fast", 5.0)
        dog.finish()
        now[0] = 100.0  # long past the deadline the finished task had
        dog.start("next", None)  # no timeout: nothing to watch
        assert not dog.deadline.expired(now[0])
    finally:
        dog.close()
    assert fired == []


def test_thread_stack_of_an_unknown_thread_is_empty() -> None:
    assert thread_stack(-1) == ""
