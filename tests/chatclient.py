"""A small asynchronous test client: speaks the wire protocol over real TCP.

Replies are matched to requests by ``req``; pushes (frames without ``req``)
queue up and are taken with ``push``. Every wait has a deadline, so a missing
frame fails the test instead of hanging it.
"""

from __future__ import annotations

import inspect
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from twisted.internet import defer, endpoints, protocol
from twisted.protocols.basic import LineReceiver

Frame = dict[str, Any]
T = TypeVar("T")
DEFAULT_WAIT = 10.0


class ServerError(Exception):
    """The server answered a request with an error frame."""

    def __init__(self, frame: Frame) -> None:
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.frame = frame
        self.code = frame.get("code")


class ChatClient(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self) -> None:
        self._reqs = itertools.count(1)
        self._replies: dict[Any, defer.Deferred[Frame]] = {}
        self.pushes: list[Frame] = []
        self.frames: list[Frame] = []
        self._push_waiters: list[tuple[Callable[[Frame], bool], defer.Deferred[Frame]]] = []
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.user_id: int | None = None

    def lineReceived(self, line: bytes) -> None:
        frame = json.loads(line)
        self.frames.append(frame)
        if "req" in frame and frame["req"] in self._replies:
            self._replies.pop(frame["req"]).callback(frame)
            return
        for i, (match, d) in enumerate(self._push_waiters):
            if match(frame):
                del self._push_waiters[i]
                d.callback(frame)
                return
        self.pushes.append(frame)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        for d in list(self._replies.values()):
            d.errback(ConnectionError("connection closed before the reply"))
        self._replies.clear()
        self.closed.callback(None)

    def send_raw(self, data: bytes) -> None:
        self.transport.write(data)

    def send(self, frame: Frame) -> None:
        self.transport.write(json.dumps(frame).encode() + b"\n")

    async def call(self, type: str, wait: float = DEFAULT_WAIT, req: Any = None,
                   **fields: Any) -> Frame:
        """Send a request and return its reply frame, whatever it is (errors included)."""
        from twisted.internet import reactor

        if self.closed.called:
            raise ConnectionError(f"connection closed before the {type} request")
        req = next(self._reqs) if req is None else req
        d: defer.Deferred[Frame] = defer.Deferred()
        self._replies[req] = d
        self.send({"type": type, "req": req, **fields})
        d.addTimeout(wait, reactor)
        return await d

    async def ok(self, type: str, **fields: Any) -> Frame:
        """Send a request and return its success reply; raise ServerError on an error."""
        frame = await self.call(type, **fields)
        if frame["type"] == "error":
            raise ServerError(frame)
        return frame

    async def push(self, type: str | None = None, wait: float = DEFAULT_WAIT,
                   match: Callable[[Frame], bool] | None = None) -> Frame:
        """Take the next push of ``type`` (and matching ``match``), waiting if needed."""
        from twisted.internet import reactor

        def want(f: Frame) -> bool:
            return (type is None or f.get("type") == type) and (match is None or match(f))

        for i, frame in enumerate(self.pushes):
            if want(frame):
                del self.pushes[i]
                return frame
        d: defer.Deferred[Frame] = defer.Deferred()
        self._push_waiters.append((want, d))
        d.addTimeout(wait, reactor)
        return await d

    def take_pushes(self, type: str) -> list[Frame]:
        taken = [f for f in self.pushes if f.get("type") == type]
        self.pushes = [f for f in self.pushes if f.get("type") != type]
        return taken

    async def login(self, name: str, password: str) -> tuple[Frame, list[Frame]]:
        """Log in; returns the reply and the backlog messages (up to ``synced``)."""
        reply = await self.ok("login", name=name, password=password)
        self.user_id = reply["user"]["id"]
        synced = await self.push("synced")
        backlog = self.take_pushes("message")
        assert len(backlog) == synced["count"]
        return reply, backlog

    async def messages(self, n: int, wait: float = DEFAULT_WAIT) -> list[Frame]:
        return [await self.push("message", wait=wait) for _ in range(n)]

    async def fence(self) -> None:
        """A ``ping`` round trip on this connection.

        A push the server wrote to this connection before it read the ping comes
        before the ``pong``: once this returns, it is in ``pushes``. On one node a
        ``chat``, ``group_chat`` or ``broadcast`` pushes its message to the sessions
        of that node before the sender's reply is written (docs/architecture.md,
        step 5), so a fence after that reply catches any push it made here. Pushes
        relayed from another node are not ordered by it: there, wait for a marker
        sent after the event through the same path (``nothing_before``).
        """
        assert (await self.ok("ping"))["type"] == "pong"

    async def nothing_more(self, type: str = "message") -> None:
        """Fence, then fail if a push of ``type`` is waiting that no one took."""
        await self.fence()
        left = self.take_pushes(type)
        assert left == [], f"unexpected {type} pushes: {left}"

    async def nothing_before(self, type: str, marker: Callable[[Frame], bool],
                             wait: float = DEFAULT_WAIT) -> Frame:
        """Wait for the push of ``type`` that ``marker`` picks, then fail if another
        push of ``type`` is waiting that no one took; returns the marker.

        For pushes relayed from another node: a marker sent after the event through
        the same path (same channel) arrives after anything the event caused.
        """
        got = await self.push(type, wait=wait, match=marker)
        left = self.take_pushes(type)
        assert left == [], f"unexpected {type} pushes before {got}: {left}"
        return got

    def close(self) -> None:
        self.transport.loseConnection()


async def pause(seconds: float) -> None:
    """Let ``seconds`` pass. Only for tests whose subject is time itself (a rate to
    respect, a client that keeps talking); never to let something arrive: use a
    fence, a marker or ``wait_for`` for that."""
    from twisted.internet import reactor, task

    await task.deferLater(reactor, seconds, lambda: None)


async def wait_for(check: Callable[[], T | Awaitable[T]], what: str,
                   timeout: float = DEFAULT_WAIT, interval: float = 0.05) -> T:
    """Call ``check`` (plain or async) until it returns something true, and return
    that; fail with ``what`` if it has not within ``timeout`` seconds."""
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return cast(T, result)
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await pause(interval)


async def connect(port: int, host: str = "127.0.0.1") -> ChatClient:
    from twisted.internet import reactor

    endpoint = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=5)
    return await endpoints.connectProtocol(endpoint, ChatClient())
