"""ReadyTimer: periodic storage work that begins once the schema is in place."""

from __future__ import annotations

from twisted.internet import defer, task

from qqchat.storage.timer import ReadyTimer


def test_calls_begin_when_ready_and_stopping_waits_for_a_call_in_hand() -> None:
    clock = task.Clock()
    ready: defer.Deferred[None] = defer.Deferred()
    calls: list[defer.Deferred[None]] = []

    def call() -> defer.Deferred[None]:
        calls.append(defer.Deferred())
        return calls[-1]

    timer = ReadyTimer(1.0, call, clock, after=ready)
    timer.startService()
    clock.advance(5)
    assert calls == []  # the schema is not there yet
    ready.callback(None)
    assert len(calls) == 1  # the first call at once
    calls[0].callback(None)
    clock.advance(1)
    assert len(calls) == 2
    stopped = timer.stopService()
    assert stopped is not None and not stopped.called  # the second call is in hand
    calls[1].callback(None)
    assert stopped.called and not timer.running
    clock.advance(5)
    assert len(calls) == 2


def test_stopped_before_ready_it_never_calls() -> None:
    clock = task.Clock()
    ready: defer.Deferred[None] = defer.Deferred()
    calls: list[int] = []
    timer = ReadyTimer(1.0, lambda: calls.append(1), clock, after=ready)
    timer.startService()
    timer.stopService()
    ready.callback(None)
    clock.advance(5)
    assert calls == [] and not timer.running
