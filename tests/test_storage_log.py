"""The log writer's own Deferreds: a failure in handling a transaction's outcome is
logged when it happens, and no caller is left waiting for ever."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher
from unit_support import result_of

from qqchat.storage.log import KIND_DIRECT, NewMessage, Stored
from qqchat.storage.writer import LogWriter


class ShortStore:
    """Answers every transaction with one result too few: a bug in the outcome's
    handling, as a caller of the log would never see one otherwise."""

    def write_batch(self, messages: Any, acks: Any, now: int) -> defer.Deferred[list[Stored]]:
        return defer.succeed([Stored(n + 1, now, False) for n in range(len(messages) - 1)])

    def checked_acks(self, acks: Any) -> defer.Deferred[list[int]]:
        return defer.succeed([0] * (len(acks) - 1))


def _errors(events: list[dict[str, Any]]) -> list[str]:
    return [e["log_format"] for e in events if e.get("log_failure") is not None]


@pytest.mark.logged_errors_ok
def test_a_failure_handling_a_batch_is_logged_at_once_and_fails_its_callers() -> None:
    clock = task.Clock()
    log = LogWriter(ShortStore(), clock)  # type: ignore[arg-type]
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        sent = [log.append(NewMessage(KIND_DIRECT, 1, t, recipient=2)) for t in "ab"]
        acked = log.ack(2, 1)
        clock.advance(0)
        assert _errors(events) == ["handling the outcome of a log batch failed"]
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert result_of(sent[0]).id == 1
    for d in (sent[1], acked):
        with pytest.raises(ValueError):
            result_of(d)
    assert result_of(log.idle()) is None


@pytest.mark.logged_errors_ok
def test_a_failure_handling_checked_acks_is_logged_at_once_and_fails_its_callers() -> None:
    clock = task.Clock()
    log = LogWriter(ShortStore(), clock)  # type: ignore[arg-type]
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        checks = [log.checked_ack(7, 0, 5, frozenset({5})),
                  log.checked_ack(8, 0, 6, frozenset({6}))]
        clock.advance(0)
        assert _errors(events) == ["handling the outcome of checked acks failed"]
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert result_of(checks[0]) == 0
    with pytest.raises(ValueError):
        result_of(checks[1])
    # nothing is left marked as in flight: a login of user 8 does not wait
    assert result_of(log.acks_written(8)) is None
