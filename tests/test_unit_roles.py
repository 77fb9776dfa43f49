"""Roles (R9) and disabled accounts (R10): who may broadcast, and what a disabled
account can no longer do."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task
from unit_support import Client, Services, build_services, result_of


def error(reply: dict[str, Any] | None) -> str:
    assert reply is not None and reply["type"] == "error", reply
    return str(reply["code"])


def set_flag(services: Services, uid: int, column: str, value: int) -> None:
    result_of(services.pool.runOperation(f"UPDATE users SET {column} = ? WHERE id = ?",
                                         (value, uid)))


@pytest.fixture
def services(clock: task.Clock) -> Any:
    """The daemon's default: only admins broadcast."""
    s = build_services(clock, broadcast_anyone=False)
    yield s
    s.close()


def test_by_default_only_admins_broadcast(services: Services) -> None:
    alice, bob = Client(services).signup("alice"), Client(services).signup("bob")
    assert error(bob.request({"type": "broadcast", "text": "hello all", "req": 1})) \
        == "forbidden"
    assert [f for f in alice.conn.take() if f["type"] == "message"] == []
    set_flag(services, bob.id or 0, "is_admin", 1)
    bob.ok({"type": "logout"})
    bob.login("bob")
    bob.ok({"type": "broadcast", "text": "maintenance at ten"})
    got = [f for f in alice.conn.take() if f["type"] == "message"]
    assert [(m["text"], m["broadcast"]) for m in got] == [("maintenance at ten", True)]


def test_broadcast_anyone_lets_every_user_broadcast(clock: task.Clock) -> None:
    services = build_services(clock, broadcast_anyone=True)
    try:
        bob = Client(services).signup("bob")
        bob.ok({"type": "broadcast", "text": "hello all"})
    finally:
        services.close()


@pytest.mark.parametrize("right_password", [True, False])
def test_a_disabled_account_cannot_log_in(services: Services, right_password: bool) -> None:
    client = Client(services)
    uid = client.register("alice")
    set_flag(services, uid, "disabled", 1)
    reply = client.request({"type": "login", "name": "alice", "req": 1,
                            "password": "secret-pw" if right_password else "wrong-pw"})
    # a wrong password says no more than for any account: disabled is not revealed
    assert error(reply) == ("account_disabled" if right_password else "bad_credentials")


def test_a_disabled_account_cannot_resume_by_token(services: Services) -> None:
    client = Client(services)
    uid = client.register("alice")
    client.conn.take()
    client.request({"type": "login", "name": "alice", "password": "secret-pw",
                    "remember": True, "req": 1})
    token = client.conn.take()[0]["token"]
    set_flag(services, uid, "disabled", 1)
    again = Client(services)
    assert error(again.request({"type": "login", "token": token, "req": 2})) \
        == "account_disabled"


def test_a_disabled_users_live_session_is_ended(services: Services,
                                                clock: task.Clock) -> None:
    alice = Client(services).signup("alice")
    bob = Client(services).signup("bob")
    set_flag(services, alice.id or 0, "disabled", 1)
    assert result_of(defer.Deferred.fromCoroutine(services.moderation.sweep())) == 1
    clock.advance(0)
    frames = alice.conn.take()
    assert {"type": "kicked", "code": "account_disabled", "reason": "account disabled"} in frames
    assert alice.conn.closed
    assert bob.conn.closed is False
    assert [u["name"] for u in bob.ok({"type": "who"})["users"]] == ["bob"]
