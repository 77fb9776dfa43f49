"""Session tokens (K3): login with ``remember``, resume by token, revoke, expiry,
password change. Against real SQL on the threadless store."""

from __future__ import annotations

from typing import Any

from unit_support import Client, Services, build_services, result_of

from qqchat.storage.tokens import token_hash


def error(reply: dict[str, Any] | None) -> str:
    assert reply is not None and reply["type"] == "error", reply
    return str(reply["code"])


def login(client: Client, **fields: Any) -> list[dict[str, Any]]:
    """Send a login; returns every frame the connection got (reply or error first)."""
    client.conn.take()
    reply = client.request({"type": "login", "req": "l", **fields})
    return [reply] if reply is not None else client.conn.take()


def remembered(services: Services, name: str) -> str:
    """Log ``name`` in (registering it first if needed) with ``remember``, then drop the
    connection; returns the token."""
    client = Client(services)
    client.request({"type": "register", "name": name, "password": "secret-pw"})  # or taken
    got = login(client, name=name, password="secret-pw", remember=True)
    assert got[0]["type"] == "login", got
    token = got[0]["token"]
    assert isinstance(token, str) and len(token) >= 32
    client.ok({"type": "ping"})
    client.session.closed = True  # the connection drops; the token stays valid
    result_of(services.dispatcher.connection_lost(client.session))
    return token


def stored_hashes(services: Services) -> list[str]:
    return [r[0] for r in result_of(services.pool.runQuery("SELECT hash FROM session_tokens"))]


def test_login_without_remember_gets_no_token(services: Services) -> None:
    client = Client(services)
    client.register("alice")
    got = login(client, name="alice", password="secret-pw")
    assert "token" not in got[0]
    assert stored_hashes(services) == []


def test_token_resumes_on_a_new_connection_without_password(services: Services) -> None:
    token = remembered(services, "alice")
    again = Client(services)
    got = login(again, token=token)
    assert got[0]["type"] == "login" and got[0]["user"]["name"] == "alice", got
    assert got[0]["token"] == token
    assert got[-1] == {"type": "synced", "count": 0}
    assert again.ok({"type": "who"})["users"] == [{"id": got[0]["user"]["id"],
                                                  "name": "alice"}]


def test_only_a_hash_of_the_token_is_stored(services: Services) -> None:
    token = remembered(services, "alice")
    assert stored_hashes(services) == [token_hash(token)]
    assert token not in stored_hashes(services)


def test_unknown_or_mismatched_token_is_bad_token(services: Services) -> None:
    token = remembered(services, "alice")
    Client(services).register("bob")
    assert error(login(Client(services), token="x" * 32)[0]) == "bad_token"
    assert error(login(Client(services), token=token, name="bob")[0]) == "bad_token"
    # the name, if given, may differ in case only
    assert login(Client(services), token=token, name="ALICE")[0]["type"] == "login"


def test_token_expires_after_the_ttl_unused(clock: Any) -> None:
    services = build_services(clock, token_ttl=60.0)
    try:
        token = remembered(services, "alice")
        clock.advance(59)
        first = Client(services)
        assert login(first, token=token)[0]["type"] == "login"  # use moves the expiry on
        first.session.closed = True
        result_of(services.dispatcher.connection_lost(first.session))
        clock.advance(59)
        second = Client(services)
        assert login(second, token=token)[0]["type"] == "login"
        second.session.closed = True
        result_of(services.dispatcher.connection_lost(second.session))
        clock.advance(61)
        assert error(login(Client(services), token=token)[0]) == "bad_token"
        assert stored_hashes(services) == []  # the lapsed token is gone
    finally:
        services.close()


def test_logout_revokes_that_sessions_token(services: Services) -> None:
    token = remembered(services, "alice")
    other = remembered(services, "alice")  # a second browser of alice's
    client = Client(services)
    assert login(client, token=token)[0]["type"] == "login"
    client.ok({"type": "logout"})
    assert error(login(Client(services), token=token)[0]) == "bad_token"
    assert login(Client(services), token=other)[0]["type"] == "login"


def test_password_change_revokes_every_token_and_keeps_the_session(
        services: Services) -> None:
    first = remembered(services, "alice")
    client = Client(services)
    assert login(client, token=remembered(services, "alice"))[0]["type"] == "login"
    reply = client.ok({"type": "password_change", "old": "secret-pw", "new": "new-secret"})
    fresh = reply["token"]
    assert error(login(Client(services), token=first)[0]) == "bad_token"
    assert client.ok({"type": "ping"})["type"] == "pong"  # still logged in
    assert client.ok({"type": "who"})["total"] == 1
    client.ok({"type": "logout"})  # revokes the fresh token too
    assert error(login(Client(services), token=fresh)[0]) == "bad_token"
    assert error(login(Client(services), name="alice", password="secret-pw")[0]) \
        == "bad_credentials"
    assert login(Client(services), name="alice", password="new-secret")[0]["type"] == "login"


def test_password_change_refuses_a_wrong_old_password(services: Services) -> None:
    token = remembered(services, "alice")
    client = Client(services)
    assert login(client, token=token)[0]["type"] == "login"
    reply = client.request({"type": "password_change", "old": "wrong-pw", "new": "new-secret",
                            "req": 1})
    assert error(reply) == "bad_credentials"
    assert error(client.request({"type": "password_change", "old": "secret-pw",
                                 "new": "short", "req": 2})) == "weak_password"
    assert login(Client(services), token=token)[0]["type"] == "login"  # nothing changed


def test_remember_must_be_a_boolean(services: Services) -> None:
    client = Client(services)
    client.register("alice")
    reply = login(client, name="alice", password="secret-pw", remember="yes")[0]
    assert error(reply) == "bad_field" and reply["field"] == "remember"
    assert stored_hashes(services) == []


def test_login_needs_a_password_or_a_token(services: Services) -> None:
    client = Client(services)
    client.register("alice")
    reply = login(client, name="alice")[0]
    assert error(reply) == "missing_field" and reply["field"] == "password"
