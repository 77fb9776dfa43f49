"""Interleavings that once lost or repeated messages, replayed deterministically."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task
from unit_support import Client, Services, dispatched, result_of

from qqchat.errors import UnavailableError


def user(services: Services, name: str) -> Client:
    return Client(services).signup(name)


def test_member_who_joins_while_a_group_message_is_queued_receives_it(
        services: Services, clock: task.Clock) -> None:
    """Recipients are read in the transaction that stores the message, so a join that
    commits first cannot be missed (the message is his: its id is past his since_id)."""
    alice, bob = user(services, "alice"), user(services, "bob")
    gid = alice.ok({"type": "group_create", "name": "g"})["group"]["id"]
    pending = dispatched(services, alice.session, {"type": "group_chat",
                                                           "group": gid, "text": "hi"})
    assert not pending.called
    # bob's join commits before the queued message does (inline pool: at once)
    joined = dispatched(services, bob.session, {"type": "group_join", "group": gid})
    clock.advance(0)
    sent = result_of(pending)
    assert result_of(joined)["type"] == "group_join"
    pushed = [f for f in bob.conn.take() if f["type"] == "message"]
    assert [m["id"] for m in pushed] == [sent["id"]]


def test_failed_backlog_closes_the_connection(services: Services,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Logged in but the backlog could not be read: the connection ends, so no live
    push plus cumulative ack can acknowledge the unsent backlog away."""
    alice, bob = user(services, "alice"), Client(services)
    bob.register("bob")
    alice.ok({"type": "chat", "to": bob.id, "text": "while you were away"})

    def down(*_: Any) -> defer.Deferred[Any]:
        return defer.fail(UnavailableError("the database"))

    monkeypatch.setattr(services.stores.message_log, "backlog_start", down)
    reply = bob.request({"type": "login", "name": "bob", "password": "secret-pw"})
    assert reply is None
    got = bob.conn.take()
    assert [f["type"] for f in got] == ["login", "error"]
    assert got[1]["code"] == "unavailable"
    assert bob.conn.closed
    monkeypatch.undo()
    again = Client(services)
    frames = again.login("bob")
    assert [f["text"] for f in frames if f["type"] == "message"] == ["while you were away"]


def test_ack_confirmed_to_the_old_session_holds_for_the_new_one(
        services: Services, clock: task.Clock) -> None:
    """An ack still being written when the same user logs in elsewhere is committed
    before the new session's backlog is read: acked messages never come back."""
    alice, bob = user(services, "alice"), user(services, "bob")
    ids = [alice.ok({"type": "chat", "to": bob.id, "text": f"m{n}"})["id"] for n in range(3)]
    acking = dispatched(services, bob.session, {"type": "ack", "id": ids[-1]})
    assert not acking.called
    other = Client(services)
    logging_in = dispatched(services,
        other.session, {"type": "login", "name": "bob", "password": "secret-pw"})
    clock.advance(0)
    clock.advance(0)
    assert result_of(acking)["type"] == "ack"
    assert result_of(logging_in) is None
    got = other.conn.take()
    assert [f["type"] for f in got] == ["login", "synced"]


def test_repeated_ack_after_reconnect_is_accepted(services: Services) -> None:
    alice, bob = user(services, "alice"), user(services, "bob")
    sent = alice.ok({"type": "chat", "to": bob.id, "text": "x"})
    bob.ok({"type": "ack", "id": sent["id"]})
    again = Client(services)
    again.login("bob")
    assert again.ok({"type": "ack", "id": sent["id"]})["id"] == sent["id"]
