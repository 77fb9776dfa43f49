"""The dispatcher's contract with clients: request shape checks, field validation,
and how failures map to error frames (P1, P2, P5).

Requests go through the real Dispatcher and services on the threadless store,
so each assertion is on the exact frame a client would read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import task
from twisted.logger import capturedLogs
from unit_support import Client, Services, build_services

from qqchat.errors import ChatError, UnavailableError

MAX_ID = 2**53


@pytest.fixture
def services() -> Iterator[Services]:
    s = build_services(task.Clock())
    yield s
    s.close()


@pytest.fixture
def alice(services: Services) -> Client:
    """A logged-in client, so requests get past the login gate to field checks."""
    return Client(services).signup("alice")


def error_of(reply: dict[str, Any] | None) -> tuple[str, str | None]:
    """(code, field) of an error frame, checking the P2 shape on the way."""
    assert reply is not None and reply["type"] == "error", reply
    assert isinstance(reply["message"], str) and reply["message"], reply
    return reply["code"], reply.get("field")


# -- the request envelope ----------------------------------------------------


@pytest.mark.parametrize("msg", [[1, 2], "ping", 42, None, True])
def test_non_object_json_is_bad_request(services: Services, msg: Any) -> None:
    """Valid JSON that is not an object cannot be a request."""
    reply = Client(services).request(msg)
    assert error_of(reply) == ("bad_request", None)
    assert reply is not None and "req" not in reply


def test_missing_type_is_missing_field(services: Services) -> None:
    reply = Client(services).request({"req": 3})
    assert error_of(reply) == ("missing_field", "type")
    assert reply is not None and reply["req"] == 3


@pytest.mark.parametrize("typ", [5, True, ["ping"], {"t": 1}, 1.5])
def test_wrong_typed_type_is_bad_field(services: Services, typ: Any) -> None:
    reply = Client(services).request({"type": typ, "req": "x"})
    assert error_of(reply) == ("bad_field", "type")
    assert reply is not None and reply["req"] == "x"


@pytest.mark.parametrize("typ", ["fly", "", "PING", "handle_ping", "error", "message"])
def test_unknown_type(services: Services, typ: str) -> None:
    """Only the documented request names are served, whatever else the code has."""
    reply = Client(services).request({"type": typ, "req": 1})
    assert error_of(reply) == ("unknown_type", None)
    assert reply is not None and reply["req"] == 1


@pytest.mark.parametrize("typ", ["logout", "who", "chat", "ack", "broadcast", "friend_add",
                                 "friend_accept", "friend_decline", "friend_remove", "friends",
                                 "group_create", "group_join", "group_leave", "group_info",
                                 "groups", "group_chat", "history"])
def test_everything_but_register_login_ping_needs_login(services: Services, typ: str) -> None:
    reply = Client(services).request({"type": typ, "req": 9})
    assert error_of(reply) == ("not_logged_in", None)
    assert reply is not None and reply["req"] == 9


def test_anonymous_requests_are_served(services: Services) -> None:
    client = Client(services)
    assert client.request({"type": "ping", "req": 1}) == {"type": "pong", "req": 1}
    assert client.ok({"type": "register", "name": "bob", "password": "secret-pw"})["name"] \
        == "bob"


@pytest.mark.parametrize("req", ["abc", 0, -7, 1.25, True, False, None, MAX_ID, -MAX_ID])
def test_scalar_req_is_echoed_verbatim(services: Services, req: Any) -> None:
    """P1: any JSON scalar, null included, comes back unchanged in reply and error."""
    client = Client(services)
    assert client.request({"type": "ping", "req": req}) == {"type": "pong", "req": req}
    assert client.request({"type": "who", "req": req})["req"] == req  # type: ignore[index]


def test_absent_req_is_not_invented(services: Services) -> None:
    client = Client(services)
    assert client.request({"type": "ping"}) == {"type": "pong"}
    assert "req" not in client.request({"type": "who"})  # type: ignore[operator]


@pytest.mark.parametrize("req", [[1], {"a": 1}, []])
def test_non_scalar_req_is_bad_field(services: Services, req: Any) -> None:
    reply = Client(services).request({"type": "ping", "req": req})
    assert error_of(reply) == ("bad_field", "req")
    assert reply is not None and "req" not in reply


# -- field validators --------------------------------------------------------


@pytest.mark.parametrize(("msg", "field"), [
    ({"type": "chat", "text": "hi"}, "to"),
    ({"type": "chat", "to": None, "text": "hi"}, "to"),
    ({"type": "chat", "to": 1}, "text"),
    ({"type": "broadcast"}, "text"),
    ({"type": "ack"}, "id"),
    ({"type": "friend_add"}, "to"),
    ({"type": "friend_accept"}, "from"),
    ({"type": "friend_decline"}, "from"),
    ({"type": "friend_remove"}, "id"),
    ({"type": "group_create"}, "name"),
    ({"type": "group_join"}, "group"),
    ({"type": "group_leave"}, "group"),
    ({"type": "group_info"}, "group"),
    ({"type": "group_chat", "text": "hi"}, "group"),
    ({"type": "group_chat", "group": 1}, "text"),
    ({"type": "history"}, "with"),
])
def test_missing_field(alice: Client, msg: dict[str, Any], field: str) -> None:
    reply = alice.request({**msg, "req": "m"})
    assert error_of(reply) == ("missing_field", field)
    assert reply is not None and reply["req"] == "m"


@pytest.mark.parametrize(("msg", "field"), [
    ({"type": "register", "password": "secret-pw"}, "name"),
    ({"type": "register", "name": "zed"}, "password"),
    ({"type": "login", "name": "alice"}, "password"),
    ({"type": "login", "password": "secret-pw"}, "name"),
])
def test_missing_field_before_login(services: Services, msg: dict[str, Any],
                                    field: str) -> None:
    assert error_of(Client(services).request(msg)) == ("missing_field", field)


@pytest.mark.parametrize("value", ["2", 2.0, True, False, 0, -1, MAX_ID + 1, [2], {"id": 2}])
def test_bad_id_values(alice: Client, value: Any) -> None:
    """Ids are JSON integers in 1..2**53; bools are not integers, even though
    Python thinks True == 1."""
    reply = alice.request({"type": "chat", "to": value, "text": "hi"})
    assert error_of(reply) == ("bad_field", "to")


def test_largest_id_passes_validation(alice: Client) -> None:
    """2**53 is a valid id (the bound is inclusive): the refusal is about the user."""
    reply = alice.request({"type": "chat", "to": MAX_ID, "text": "hi"})
    assert error_of(reply) == ("no_such_user", None)


@pytest.mark.parametrize(("msg", "field"), [
    ({"type": "chat", "to": 1, "text": 5}, "text"),
    ({"type": "chat", "to": 1, "text": ["hi"]}, "text"),
    ({"type": "broadcast", "text": True}, "text"),
    ({"type": "group_create", "name": 7}, "name"),
    ({"type": "group_create", "name": "g", "desc": 7}, "desc"),
    ({"type": "chat", "to": 1, "text": "hi", "cid": True}, "cid"),
    ({"type": "chat", "to": 1, "text": "hi", "cid": 1.5}, "cid"),
    ({"type": "chat", "to": 1, "text": "hi", "cid": ["a"]}, "cid"),
    ({"type": "chat", "to": 1, "text": "hi", "cid": ""}, "cid"),
    ({"type": "chat", "to": 1, "text": "hi", "cid": "c" * 65}, "cid"),
    ({"type": "who", "limit": 0}, "limit"),
    ({"type": "who", "limit": 501}, "limit"),
    ({"type": "who", "limit": True}, "limit"),
    ({"type": "who", "offset": -1}, "offset"),
    ({"type": "history", "with": 1, "limit": 201}, "limit"),
    ({"type": "history", "with": 1, "before": 0}, "before"),
    ({"type": "history", "group": "1"}, "group"),
    ({"type": "history", "with": False}, "with"),
])
def test_bad_field(alice: Client, msg: dict[str, Any], field: str) -> None:
    reply = alice.request({**msg, "req": "b"})
    assert error_of(reply) == ("bad_field", field)
    assert reply is not None and reply["req"] == "b"


@pytest.mark.parametrize(("msg", "field"), [
    ({"type": "register", "name": 1, "password": "secret-pw"}, "name"),
    ({"type": "register", "name": "zed", "password": 123456}, "password"),
    ({"type": "login", "name": ["alice"], "password": "secret-pw"}, "name"),
    ({"type": "login", "id": "1", "password": "secret-pw"}, "id"),
    ({"type": "login", "id": True, "password": "secret-pw"}, "id"),
])
def test_bad_field_before_login(services: Services, msg: dict[str, Any], field: str) -> None:
    assert error_of(Client(services).request(msg)) == ("bad_field", field)


def test_boundary_values_are_accepted(alice: Client) -> None:
    """The edges of each range are inside it."""
    assert alice.ok({"type": "who", "limit": 500, "offset": 0})["total"] == 1
    assert alice.ok({"type": "who", "limit": 1})["users"] == [{"id": alice.id, "name": "alice"}]
    assert alice.ok({"type": "chat", "to": alice.id, "text": "x", "cid": "c" * 64})["id"] >= 1
    assert alice.ok({"type": "chat", "to": alice.id, "text": "y", "cid": 12})["id"] >= 1
    assert alice.ok({"type": "history", "with": alice.id, "limit": 200})["more"] is False


# -- failures below the dispatcher -------------------------------------------


@pytest.mark.logged_errors_ok
def test_plain_exception_becomes_internal_and_is_logged(
        alice: Client, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a service reaches the client as "internal", without its details, and
    the traceback goes to the log."""
    async def broken(*args: Any) -> dict[str, Any]:
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(services.friends, "list", broken)
    with capturedLogs() as events:
        reply = alice.request({"type": "friends", "req": 5})
    assert reply == {"type": "error", "req": 5, "code": "internal",
                     "message": "internal server error"}
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(ZeroDivisionError)
    assert failures[0]["type"] == "friends"
    # the connection is still usable
    assert alice.request({"type": "ping", "req": 6}) == {"type": "pong", "req": 6}


def test_chat_error_code_message_and_extras_pass_through(
        alice: Client, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ChatError is a deliberate refusal: the client sees its code, message and
    extra fields verbatim, and nothing is logged as an error."""
    async def refuse(*args: Any) -> dict[str, Any]:
        raise ChatError("rate_limited", "slow down", retry_after=3)

    monkeypatch.setattr(services.friends, "list", refuse)
    with capturedLogs() as events:
        reply = alice.request({"type": "friends", "req": "q"})
    assert reply == {"type": "error", "req": "q", "code": "rate_limited",
                     "message": "slow down", "retry_after": 3}
    assert not [e for e in events if e.get("log_failure") is not None or e.get("isError")]


def test_unavailable_storage_is_reported_as_unavailable(
        alice: Client, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """C4: a database outage is a retryable 'unavailable', not 'internal'."""
    async def down(*args: Any) -> dict[str, Any]:
        raise UnavailableError("the database")

    monkeypatch.setattr(services.groups, "mine", down)
    reply = alice.request({"type": "groups", "req": 1})
    assert error_of(reply) == ("unavailable", None)
