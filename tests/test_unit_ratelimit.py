"""The per-connection rate limit: a token bucket, and the error a flooding client sees."""

from __future__ import annotations

import orjson
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from unit_support import build_services

from qqchat.net.protocol import ChatFactory
from qqchat.net.ratelimit import TokenBucket


def test_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert abs(bucket.take(0.0) - 0.1) < 1e-9  # one token in 1/10 s
    assert bucket.take(0.1) == 0.0
    assert bucket.take(0.1) > 0
    assert bucket.take(10.0) == 0.0  # refilled, but never past the burst
    assert [bucket.take(10.0) for _ in range(2)] == [0.0, 0.0]
    assert bucket.take(10.0) > 0


def test_zero_rate_means_no_limit() -> None:
    bucket = TokenBucket(rate=0, burst=1, now=0.0)
    assert all(bucket.take(0.0) == 0.0 for _ in range(1000))


def test_flooding_connection_gets_rate_limited_errors_and_recovers() -> None:
    clock = task.Clock()
    services = build_services(clock)
    try:
        factory = ChatFactory(services.dispatcher, clock, rate_limit=2, rate_burst=3)
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"".join(b'{"type":"ping","req":%d}\n' % n for n in range(5))
                           + b"not json\n")
        frames = [orjson.loads(x) for x in transport.value().splitlines()]
        assert [f["type"] for f in frames[:3]] == ["pong"] * 3
        limited = frames[3:]
        assert [f.get("req") for f in limited] == [3, 4, None]
        assert all(f["code"] == "rate_limited" and f["retry_after"] > 0 for f in limited)
        transport.clear()
        clock.advance(limited[-1]["retry_after"])
        proto.dataReceived(b'{"type":"ping","req":"again"}\n')
        assert orjson.loads(transport.value()) == {"type": "pong", "req": "again"}
    finally:
        services.close()
