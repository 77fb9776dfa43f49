"""The per-connection rate limit: a token bucket, and the error a flooding client sees."""

from __future__ import annotations

import orjson
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from unit_support import build_services

from qqchat.net.protocol import ChatFactory
from qqchat.ratelimit import KeyedBuckets, TokenBucket


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


def test_keyed_buckets_are_separate_and_bounded() -> None:
    buckets = KeyedBuckets(rate=1, burst=2, max_keys=3)
    assert [buckets.take("a", 0.0) for _ in range(2)] == [0.0, 0.0]
    assert buckets.take("a", 0.0) > 0
    assert buckets.take("b", 0.0) == 0.0  # another key has its own budget
    buckets.take("c", 0.0)
    # the table is full; at t=10 every bucket has refilled, so they make room
    assert buckets.take("d", 10.0) == 0.0
    assert len(buckets) == 1
    # a bucket still in debt is kept when refilled ones are dropped
    for _ in range(3):
        buckets.take("d", 10.0)
    buckets.take("e", 10.0)
    buckets.take("f", 11.5)
    assert buckets.take("g", 11.5) == 0.0  # prunes "e" only: it has refilled
    assert len(buckets) == 3
    assert buckets.take("d", 11.5) == 0.0  # 1.5 tokens back since t=10 ...
    assert buckets.take("d", 11.5) > 0  # ... not a fresh bucket's 2
