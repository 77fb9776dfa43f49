"""Abuse limits (R2): connections and registrations per address, sends per user, and the
caps on group size and friends. Each refusal is an error the client sees, and changes
nothing."""

from __future__ import annotations

import pytest
import pytest_twisted
from chatclient import ChatClient
from conftest import Running
from twisted.internet import endpoints

from qqchat.services.limits import Limits


async def connect_from(port: int, source: str) -> ChatClient:
    """A client whose connection comes from ``source`` (any 127/8 address on Linux)."""
    from twisted.internet import reactor

    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5,
                                            bindAddress=(source, 0))
    return await endpoints.connectProtocol(endpoint, ChatClient())


@pytest.mark.settings(max_per_address=2)
@pytest_twisted.ensureDeferred
async def test_connections_past_the_per_address_cap_are_told_and_closed(server: Running
                                                                        ) -> None:
    first, second = await server.client(), await server.client()
    third = await server.client()
    await third.closed
    assert [f["code"] for f in third.frames] == ["too_many_connections"]
    # the two admitted ones work, and so does a client from another address
    assert (await first.ok("ping"))["type"] == "pong"
    assert (await second.ok("ping"))["type"] == "pong"
    other = await connect_from(server.port, "127.0.0.2")
    server.clients.append(other)
    assert (await other.ok("ping"))["type"] == "pong"
    # a closed connection frees its place
    first.close()
    await first.closed
    fourth = await server.client()
    assert (await fourth.ok("ping"))["type"] == "pong"


@pytest.mark.settings(limits=Limits(register_rate=1, register_burst=2, send_rate=0))
@pytest_twisted.ensureDeferred
async def test_registrations_are_throttled_per_address(server: Running) -> None:
    c = await server.client()
    await c.ok("register", name="one", password="password1")
    await c.ok("register", name="two", password="password1")
    refused = await c.call("register", name="three", password="password1")
    assert refused["code"] == "rate_limited"
    assert refused["retry_after"] >= 50  # one a minute
    # refused means not created: the name cannot log in
    assert (await c.call("login", name="three", password="password1"))["code"] == \
        "bad_credentials"
    # a new connection from the same address is still throttled ...
    again = await server.client()
    assert (await again.call("register", name="three", password="password1"))["code"] == \
        "rate_limited"
    # ... another address is not
    other = await connect_from(server.port, "127.0.0.3")
    server.clients.append(other)
    await other.ok("register", name="three", password="password1")


@pytest.mark.settings(limits=Limits(send_rate=0.01, send_burst=3, register_rate=0))
@pytest_twisted.ensureDeferred
async def test_sends_are_limited_per_user_across_connections(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    for n in range(3):
        await alice.ok("chat", to=bob.user_id, text=f"hi {n}")
    refused = await alice.call("chat", to=bob.user_id, text="one too many")
    assert refused["code"] == "rate_limited" and refused["retry_after"] > 1
    # logging in again on a new connection does not reset the user's budget
    alice.close()
    again = await server.client()
    await again.login("alice", "password1")
    assert (await again.call("broadcast", text="still too many"))["code"] == "rate_limited"
    # bob got exactly the three accepted messages, and other users are unaffected
    got = await bob.messages(3)
    assert [m["text"] for m in got] == ["hi 0", "hi 1", "hi 2"]
    await bob.nothing_more()
    await bob.ok("chat", to=again.user_id, text="bob is fine")


@pytest.mark.settings(limits=Limits(group_members_max=2, send_rate=0, register_rate=0))
@pytest_twisted.ensureDeferred
async def test_a_full_group_refuses_joins(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    carol = await server.user("carol")
    gid = (await alice.ok("group_create", name="pair"))["group"]["id"]
    await bob.ok("group_join", group=gid)
    refused = await carol.call("group_join", group=gid)
    assert refused["code"] == "group_full"
    info = await carol.ok("group_info", group=gid)
    assert sorted(m["name"] for m in info["group"]["members"]) == ["alice", "bob"]
    # a place freed is a place taken
    await bob.ok("group_leave", group=gid)
    await carol.ok("group_join", group=gid)


@pytest.mark.settings(limits=Limits(friends_max=1, send_rate=0, register_rate=0))
@pytest_twisted.ensureDeferred
async def test_friend_cap_refuses_the_accept_that_would_pass_it(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    carol = await server.user("carol")
    await alice.ok("friend_add", to=bob.user_id)
    await bob.ok("friend_accept", **{"from": alice.user_id})
    # carol asks alice, who has her one friend already
    await carol.ok("friend_add", to=alice.user_id)
    refused = await alice.call("friend_accept", **{"from": carol.user_id})
    assert refused["code"] == "too_many_friends"
    # crossing requests meet the same cap
    crossed = await alice.call("friend_add", to=carol.user_id)
    assert crossed["code"] == "too_many_friends"
    assert [f["name"] for f in (await alice.ok("friends"))["friends"]] == ["bob"]
    assert (await carol.ok("friends"))["friends"] == []
    # after a removal there is room again, and the request is still there
    await alice.ok("friend_remove", id=bob.user_id)
    await alice.ok("friend_accept", **{"from": carol.user_id})
    assert [f["name"] for f in (await alice.ok("friends"))["friends"]] == ["carol"]


@pytest_twisted.ensureDeferred
async def test_history_page_size_is_capped(server: Running) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    refused = await alice.call("history", **{"with": bob.user_id, "limit": 201})
    assert refused["code"] == "bad_field" and refused["field"] == "limit"
    assert (await alice.ok("history", **{"with": bob.user_id, "limit": 200}))["messages"] == []


class RawClient(ChatClient):
    """A client behind a proxy: its first bytes are the proxy's PROXY v1 header."""

    def __init__(self, header: bytes) -> None:
        super().__init__()
        self.header = header

    def connectionMade(self) -> None:
        if self.header:
            self.transport.write(self.header)


async def via_proxy(port: int, client_host: str, header: bool = True) -> ChatClient:
    from twisted.internet import reactor

    line = f"PROXY TCP4 {client_host} 127.0.0.1 40000 {port}\r\n".encode() if header else b""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    return await endpoints.connectProtocol(endpoint, RawClient(line))


@pytest.mark.settings(proxy_protocol=True, max_per_address=1,
                      limits=Limits(register_rate=1, register_burst=1, send_rate=0))
@pytest_twisted.ensureDeferred
async def test_behind_a_proxy_limits_count_the_client_the_header_names(server: Running
                                                                        ) -> None:
    first = await via_proxy(server.port, "203.0.113.7")
    server.clients.append(first)
    await first.ok("register", name="first", password="password1")
    # the same client again, through the same proxy address: over its cap
    second = await via_proxy(server.port, "203.0.113.7")
    await second.closed
    assert [f["code"] for f in second.frames] == ["too_many_connections"]
    # another client through that same proxy has its own cap and registration budget
    other = await via_proxy(server.port, "198.51.100.9")
    server.clients.append(other)
    await other.ok("register", name="other", password="password1")
    await other.login("other", "password1")
    assert (await first.call("register", name="third", password="password1"))["code"] == \
        "rate_limited"
    # a connection without the header is dropped without an answer
    bare = await via_proxy(server.port, "", header=False)
    bare.send({"type": "ping", "req": 1})
    await bare.closed
    assert bare.frames == []
