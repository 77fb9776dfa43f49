"""The raw-RESP publisher: what it writes is what Redis parses, and it reads the replies."""

from __future__ import annotations

import pytest
from twisted.internet.testing import StringTransport

from qqchat.relay.publisher import PublishProtocol, resp_command


def connected(password: str | None = None) -> tuple[PublishProtocol, StringTransport,
                                                    list[str]]:
    events: list[str] = []
    proto = PublishProtocol(password, lambda p: events.append("ready"),
                            lambda p: events.append("lost"))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, events


def test_publish_writes_one_resp_command_with_binary_safe_lengths() -> None:
    proto, transport, events = connected()
    assert events == ["ready"] and transport.value() == b""
    payload = b'M 7 {"text":"\xe4\xbd\xa0\xe5\xa5\xbd\\r\\n"}\n'
    proto.publish(b"qq:u:42", payload)
    assert transport.value() == resp_command(b"PUBLISH", b"qq:u:42", payload)
    assert transport.value() == (b"*3\r\n$7\r\nPUBLISH\r\n$7\r\nqq:u:42\r\n$%d\r\n%b\r\n"
                                 % (len(payload), payload))


def test_a_password_is_sent_first() -> None:
    proto, transport, _ = connected("s3cret")
    proto.publish(b"qq:all", b"B x")
    assert transport.value() == (resp_command(b"AUTH", b"s3cret")
                                 + resp_command(b"PUBLISH", b"qq:all", b"B x"))


def test_replies_are_counted_across_reads() -> None:
    proto, transport, _ = connected()
    proto.dataReceived(b":1\r\n:0")
    proto.dataReceived(b"\r\n:3\r\n")
    assert proto.replies == 3 and transport.connected


@pytest.mark.logged_errors_ok
def test_an_auth_failure_drops_the_connection_for_a_retry() -> None:
    proto, transport, _ = connected("wrong")
    proto.dataReceived(b"-WRONGPASS invalid username-password pair\r\n")
    assert transport.disconnecting


def test_losing_the_connection_is_reported() -> None:
    proto, _, events = connected()
    proto.connectionLost()
    assert events == ["ready", "lost"]
