"""hotpath: the reactor thread's Python for one chat message, with nothing else.

The chat workload measures the whole daemon: its Python, the kernel's TCP work,
the database thread and the hand-offs between them, on a loaded core. A change to
the per-message Python path moves that total by a few per cent, inside the noise
of one sitting. This drives the same path in one process, deterministically:
``ChatProtocol`` connections on ``StringTransport``s (no sockets), the daemon's
dispatcher and services as the unit tests wire them (``tests/unit_support.py``), a
``task.Clock`` for the group commit, and a log store that answers every batch at
once (no SQL, no thread). It runs the source tree's ``qqchat`` (as ``bench.ab``
runs each tree's), so two trees compare by running it in each. ``--pairs``
senders each send one message a round to their partner, every batch is committed
between rounds, and every receiver acks every 16 rounds, as the chat workload's
clients do. With ``--members M`` it drives the group workload's path instead: one
sender's ``group_chat`` to a group of ``M`` (the log answering with the members,
as its transaction reads them), pushed to the other ``M - 1``, who ack every 16
rounds. It reports microseconds of wall time per message (per delivery with
``--members``; one thread, nothing waits), best and median of ``--repeat``
timings, and with ``--profile`` the top of a cProfile.

``python -m bench.hotpath [--pairs 50 | --members 200] [--rounds 400] [--repeat 5] [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import statistics
import sys
import time
from typing import Any

import orjson
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from bench.daemon import _load_test_helper
from bench.seed import map_qqchat_db

ACK_EVERY = 16


class Harness:
    """``pairs`` logged-in pairs on one dispatcher (or, with ``members``, one group of
    that many, the first member sending); the log answers at once."""

    def __init__(self, pairs: int, members: int = 0) -> None:
        map_qqchat_db()  # this tree's qqchat, its schema files included
        from qqchat.net.protocol import ChatFactory
        from qqchat.services.limits import Limits
        from qqchat.storage.log import NewMessage, Stored

        unit = _load_test_helper("unit_support.py", "qqbench_unit_support", "bench.hotpath")
        self.clock = task.Clock()
        self.services = unit.build_services(self.clock, Limits(register_rate=0, send_rate=0))
        self.pairs = pairs
        self.members = members
        self._factory = ChatFactory(self.services.dispatcher, self.clock, rate_limit=0)
        self.protos: list[tuple[Any, StringTransport]] = []
        ids = [self._login(i) for i in range(members or 2 * pairs)]
        group_ids: list[int] = []
        if members:
            gid = self._request(0, {"type": "group_create", "name": "g"})["group"]["id"]
            for i in range(1, members):
                self._request(i, {"type": "group_join", "group": gid})
            group_ids = ids
            self.lines = [orjson.dumps({"type": "group_chat", "group": gid, "text": "x" * 64,
                                        "req": 1}) + b"\n"]
            #: who sends (the first connection) and who receives (the rest)
            self.senders, self.receivers = self.protos[:1], self.protos[1:]
        else:
            self.lines = [orjson.dumps({"type": "chat", "to": ids[i + pairs], "text": "x" * 64,
                                        "req": 1}) + b"\n" for i in range(pairs)]
            self.senders, self.receivers = self.protos[:pairs], self.protos[pairs:]
        for _, transport in self.protos:
            transport.clear()
        store = self.services.stores.message_log
        next_id = itertools.count(10**6)

        def write_batch(messages: list[NewMessage], acks: Any, now: int,
                        *rest: Any) -> defer.Deferred[list[Any]]:
            # a group message's members, as the transaction reads them
            return defer.succeed([Stored(next(next_id), now, False,
                                         members=group_ids if m.group_id else None)
                                  for m in messages])

        store.write_batch = write_batch

    def _login(self, i: int) -> int:
        proto = self._factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1000 + i))
        proto.makeConnection(transport)
        self.protos.append((proto, transport))
        self._request(i, {"type": "register", "name": f"u{i}", "password": "password1"})
        return int(self._request(i, {"type": "login", "name": f"u{i}",
                                     "password": "password1"})["user"]["id"])

    def _request(self, i: int, request: dict[str, Any]) -> dict[str, Any]:
        """Send ``request`` on connection ``i``; its reply (of the same type)."""
        proto, transport = self.protos[i]
        transport.clear()
        proto.dataReceived(orjson.dumps(request) + b"\n")
        self.clock.advance(0)
        frames = [orjson.loads(line) for line in transport.value().splitlines()]
        return next(f for f in frames if f["type"] == request["type"])

    def per_round(self) -> int:
        """Messages (deliveries, with ``members``) a round makes."""
        return self.members - 1 if self.members else self.pairs

    def rounds(self, n: int) -> None:
        senders, receivers, lines, clock = self.senders, self.receivers, self.lines, self.clock
        for r in range(n):
            for (proto, _), line in zip(senders, lines, strict=True):
                proto.dataReceived(line)
            clock.advance(0)
            if r % ACK_EVERY == ACK_EVERY - 1:
                for proto, transport in receivers:
                    data = transport.value()
                    at = data.rfind(b'{"type":"message","id":') + 23
                    transport.clear()
                    proto.dataReceived(b'{"type":"ack","id":%d}\n'
                                       % int(data[at : data.index(b",", at)]))
                clock.advance(0)
            for _, transport in senders:
                transport.clear()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--members", type=int, default=0,
                        help="drive a group of this many instead of pairs (the group workload)")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print the top of a cProfile")
    args = parser.parse_args(argv)
    harness = Harness(args.pairs, args.members)
    harness.rounds(50)  # warm up
    per_msg = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        harness.rounds(args.rounds)
        per_msg.append((time.perf_counter() - started) / (args.rounds * harness.per_round())
                       * 1e6)
    what = (f"members={args.members}" if args.members else f"pairs={args.pairs}")
    unit = "delivery" if args.members else "msg"
    print(f"hotpath {what} rounds={args.rounds}: "
          f"{statistics.median(per_msg):.2f} us/{unit} median, {min(per_msg):.2f} best "
          f"of {args.repeat} (reactor-side Python; the log answers at once)")
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        harness.rounds(args.rounds)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
