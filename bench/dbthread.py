"""dbthread: where the database thread's time per message goes.

The daemon's log writer (``LogWriter``) hands each batch of appends and acks to
the database thread as one ``LogStore.write_batch`` transaction. This drives that
transaction directly, outside the daemon, with batches shaped like the chat
workload's (``--min-batch``..``--max-batch`` one-to-one messages of 64 bytes
between ``--pairs`` pairs, each receiver acking every 16 messages), and splits
its cost per message into parts, timed with ``time.perf_counter_ns`` on the
database thread:

- ``write_batch``: the daemon's own call, BEGIN to COMMIT on the database
  thread (``adbapi`` ``_runInteraction`` wrapped), its CPU time there, and the
  whole round trip as the reactor sees it;
- the same statements again, replayed step by step inside one transaction
  (``parts``): id reservation, the message INSERT, the derived conversation
  rows, the ack UPDATEs, on SQLite the staged-row move (each of its statements,
  spread over the messages it moves), and the commit (fsync) after the function
  returns. On MariaDB, where the daemon sends a batch as one multi-statement,
  the replay sends each part as its own statement, so each part carries a round
  trip; the commit and the server's CPU are what matter there;
- an INSERT of the same rows as one multi-row statement instead of
  ``executemany`` (SQLite), to see whether statement preparation matters;
- a transaction that changes one row and commits (the commit and fsync alone);
- an empty ``runInteraction`` (the hand-off to the thread and back, and an
  empty commit).

With ``--db mysql`` a throwaway MariaDB is started (as ``bench --db mysql``
does) and its CPU time per message, from /proc, is reported per variant.

``python -m bench.dbthread --db sqlite|mysql [--batches N] [--json]``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

BODY = "m" * 64
ACK_EVERY = 16

#: the parts of the replayed transaction, in the order they run
PARTS = ("reserve", "prepare", "insert", "derived", "acks", "one_trip", "stage_check",
         "move", "move_derived", "move_rows", "rest", "commit")


class Timer:
    """Nanoseconds and messages per name, summed over the batches of a variant."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = {}

    def add(self, name: str, ns: int) -> None:
        self.ns[name] = self.ns.get(name, 0) + ns

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter_ns()
        try:
            yield
        finally:
            self.add(name, time.perf_counter_ns() - start)


class Workload:
    """Chat-shaped batches: pair i is users i and pairs + i, each side sending in
    turn; each receiver acks its newest message every ``ACK_EVERY`` it receives."""

    def __init__(self, pairs: int, low: int, high: int, seed: int) -> None:
        self.pairs = pairs
        self.low, self.high = low, high
        self.rng = random.Random(seed)
        self.sent = 0
        self.received: dict[int, int] = {}

    def batch(self, kind: int, message: Callable[..., Any]) -> tuple[list[Any], list[int]]:
        """Messages of one batch, and the receivers whose ack falls due in it (their
        ack is for the batch's last id: the ids are only known once written)."""
        n = self.rng.randint(self.low, self.high)
        messages, acking = [], []
        for _ in range(n):
            pair = self.sent % self.pairs
            a, b = 1 + pair, 1 + self.pairs + pair
            sender, recipient = (a, b) if (self.sent // self.pairs) % 2 == 0 else (b, a)
            self.sent += 1
            messages.append(message(kind, sender, BODY, recipient=recipient))
            got = self.received[recipient] = self.received.get(recipient, 0) + 1
            if got % ACK_EVERY == 0:
                acking.append(recipient)
        return messages, acking


def _proc_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Site:
    """One variant's database, pool, engine and store: each variant pays its own
    staged-row moves and WAL checkpoints, not another's."""

    def __init__(self, pool: Any, engine: Any, store: Any, service: Any) -> None:
        self.pool, self.engine, self.store, self.service = pool, engine, store, service
        self.timer = Timer()
        self.messages = 0
        self.server_cpu = 0.0
        #: (BEGIN to COMMIT, thread CPU, interaction function) per transaction, ns
        self.on_thread: list[tuple[int, int, int]] = []
        run_interaction = pool._runInteraction

        def timed(interaction: Any, *a: Any, **kw: Any) -> Any:
            fn: list[int] = []

            def inner(*args: Any, **kwargs: Any) -> Any:
                begin = time.perf_counter_ns()
                try:
                    return interaction(*args, **kwargs)
                finally:
                    fn.append(time.perf_counter_ns() - begin)

            start, cpu = time.perf_counter_ns(), time.thread_time_ns()
            try:
                return run_interaction(inner, *a, **kw)
            finally:
                self.on_thread.append((time.perf_counter_ns() - start,
                                       time.thread_time_ns() - cpu, fn[0] if fn else 0))

        pool._runInteraction = timed  # adbapi looks it up per call

    def time_method(self, obj: Any, method: str, name: str) -> None:
        """Time ``obj.method`` as part ``name`` wherever the daemon's code calls it."""
        original = getattr(obj, method)
        timer = self.timer

        def wrapped(*a: Any, **kw: Any) -> Any:
            with timer.part(name):
                return original(*a, **kw)

        setattr(obj, method, wrapped)

    async def call(self, n: int, server_pid: int | None, call: Callable[[], Any]) -> Any:
        """One transaction of ``n`` messages, timed from the reactor and on the thread."""
        before = len(self.on_thread)
        cpu0 = _proc_cpu(server_pid)
        start = time.perf_counter_ns()
        result = await call()
        self.timer.add("round_trip", time.perf_counter_ns() - start)
        self.server_cpu += _proc_cpu(server_pid) - cpu0
        for wall, cpu, fn in self.on_thread[before:]:
            self.timer.add("on_thread", wall)
            self.timer.add("thread_cpu", cpu)
            self.timer.add("commit", wall - fn)
        self.messages += n
        return result


async def open_site(reactor: Any, url: str, pairs: int) -> Site:
    """A fresh database with the daemon's schema and 2 * ``pairs`` users."""
    from qqchat.storage.engines import create_engine
    from qqchat.storage.log import LogStore
    from qqchat.storage.pool import DatabaseService, make_pool, parse_database_url

    config = parse_database_url(url)
    pool = make_pool(config, reactor)
    service = DatabaseService(config, pool, reactor, wait=10, log_order="lock")
    service.startService()
    await service.ready
    engine = create_engine(config.dialect, pool.dbapi)
    store = LogStore(pool, engine)

    def seed(t: Any) -> None:
        t.executemany(engine.sql("INSERT INTO users (name, pw_hash, created_at, name_key)"
                                 " VALUES (?, 'x', 0, ?)"),
                      [(f"u{i}", f"u{i}") for i in range(1, 2 * pairs + 1)])

    await pool.runInteraction(seed)
    return Site(pool, engine, store, service)


VARIANTS = ("write_batch", "parts", "multirow", "commit_only", "empty")


async def measure(reactor: Any, urls: list[str], batches: int, pairs: int, low: int,
                  high: int, server_pid: int | None) -> dict[str, Any]:
    """Every variant, each on its own database (``urls``, one per variant), over the
    same sequence of batches, interleaved batch by batch; µs per message each."""
    from qqchat.storage.engines.base import LOG_COLUMNS
    from qqchat.storage.engines.sqlite import _MOVE, STAGE_ROWS
    from qqchat.storage.log import KIND_DIRECT, NewMessage

    sites = {v: await open_site(reactor, url, pairs)
             for v, url in zip(VARIANTS, urls, strict=True)}
    # the daemon's own steps, timed where they run inside write_batch's transaction
    daemon = sites["write_batch"]
    for obj, method, name in ((daemon.engine, "reserve_ids", "reserve"),
                              (daemon.store, "_prepare", "prepare"),
                              (daemon.store, "_write_derived", "derived"),
                              (daemon.store, "_write_acks", "acks"),
                              (daemon.engine, "after_log_insert", "stage_check"),
                              (daemon.engine, "unstage", "move"),
                              (daemon.engine, "run_script", "one_trip")):
        daemon.time_method(obj, method, name)

    def parts_txn(t: Any, site: Site, messages: list[Any], acking: list[int],
                  now: int) -> None:
        """write_batch's statements one by one (on MariaDB without the one trip)."""
        engine, timer = site.engine, site.timer
        with timer.part("reserve"):
            head = engine.reserve_ids(t, len(messages))
        ids = range(head - len(messages) + 1, head + 1)
        rows = [(mid, m.kind, m.sender, m.recipient, m.group_id, m.body, now, m.cid)
                for mid, m in zip(ids, messages, strict=True)]
        with timer.part("insert"):
            t.executemany(engine.sql(f"INSERT INTO {engine.log_table} ({LOG_COLUMNS})"
                                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"), rows)
        if engine.stages_log:
            with timer.part("stage_check"):
                t.execute("SELECT MIN(id) FROM messages_recent")
                due = head + 1 - int(t.fetchone()[0]) >= STAGE_ROWS
            if due:
                for k, stmt in enumerate(_MOVE):
                    with timer.part("move_derived" if k < len(_MOVE) - 2 else "move_rows"):
                        t.execute(stmt)
        elif not engine.derives_later:  # else a catch-up writes it, as for the daemon
            with timer.part("derived"):
                site.store._write_derived(t, rows)
        # the acks due, for messages already written (the last id before this batch)
        acked = ids[0] - 1
        with timer.part("acks"):
            if acking:
                site.store._write_acks(t, sorted((acked, uid, acked) for uid in acking))

    def multirow_txn(t: Any, site: Site, messages: list[Any], now: int) -> None:
        """The INSERT as one multi-row statement (a new statement text per size)."""
        engine = site.engine
        head = engine.reserve_ids(t, len(messages))
        first = head - len(messages) + 1
        params: list[Any] = []
        for k, m in enumerate(messages):
            params += (first + k, m.kind, m.sender, m.recipient, m.group_id, m.body, now,
                       m.cid)
        with site.timer.part("insert"):
            t.execute(engine.sql(f"INSERT INTO {engine.log_table} ({LOG_COLUMNS}) VALUES "
                                 + ",".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(messages))),
                      params)
        if engine.stages_log:
            engine.after_log_insert(t, head + 1)

    def touch_txn(t: Any, site: Site) -> None:
        """One row changed: the commit (and its fsync) alone."""
        t.execute(site.engine.sql("UPDATE users SET created_at = created_at + 1"
                                  " WHERE id = 1"))

    def empty_txn(t: Any) -> None:
        """Nothing: the hand-off to the database thread and back."""

    w, p, m, c, e = (sites[v] for v in VARIANTS)
    load = Workload(pairs, low, high, seed=1)
    now = 1_700_000_000_000
    warm = max(2, batches // 10)
    head, acks_due = 0, []
    for i in range(warm + batches):
        if i == warm:  # what was timed so far was the warm-up
            for site in sites.values():
                site.timer.ns.clear()
                site.messages, site.server_cpu = 0, 0.0
        messages, acking = load.batch(KIND_DIRECT, NewMessage)
        n = len(messages)
        calls = [
            # the daemon's call, with the acks due from the batch before (ids known)
            (w, lambda a=[(uid, head) for uid in acks_due], ms=messages, t=now:
             w.store.write_batch(ms, a, t)),
            (p, lambda a=acks_due, ms=messages, t=now: p.pool.runInteraction(
                parts_txn, p, ms, a, t)),
            (m, lambda ms=messages, t=now: m.pool.runInteraction(multirow_txn, m, ms, t)),
            (c, lambda: c.pool.runInteraction(touch_txn, c)),
            (e, lambda: e.pool.runInteraction(empty_txn)),
        ]
        # a different variant first each time: none always follows the same one
        shift = i % len(calls)
        for site, call in calls[shift:] + calls[:shift]:
            result = await site.call(n, server_pid, call)
            if site is w:
                head = result[-1].id
        acks_due = acking
        now += 1
    for site in sites.values():
        site.service.stopService()
    total = daemon.messages
    out: dict[str, Any] = {"db": daemon.engine.name, "batches": batches, "messages": total,
                           "mean_batch": total / batches, "us_per_msg": {}}
    for v, site in sites.items():
        per = {k: ns / 1000 / site.messages for k, ns in site.timer.ns.items()}
        # what no part covers: on write_batch's SQLite path, mostly its INSERT
        per["rest"] = per["on_thread"] - per["commit"] - sum(
            v for k, v in per.items() if k in PARTS and k not in ("move", "commit"))
        if server_pid is not None:
            per["server_cpu"] = site.server_cpu * 1e6 / site.messages
        out["us_per_msg"][v] = per
    return out


def render(result: dict[str, Any]) -> str:
    """A markdown table: one row per variant, µs per message per part."""
    per = result["us_per_msg"]
    cols = ["round_trip", "on_thread", "thread_cpu", *PARTS]
    if "server_cpu" in per["write_batch"]:
        cols.append("server_cpu")
    lines = [f"{result['db']}: {result['messages']} messages in {result['batches']} batches"
             f" (mean {result['mean_batch']:.0f}), µs per message",
             "| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for v, figures in per.items():
        lines.append(f"| {v} | " + " | ".join(
            f"{figures[c]:.2f}" if c in figures else "-" for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dbthread", description=__doc__.split(
        "\n")[0])
    p.add_argument("--db", choices=("sqlite", "mysql"), default="sqlite")
    p.add_argument("--batches", type=int, default=300, help="measured batches (300)")
    p.add_argument("--pairs", type=int, default=50)
    p.add_argument("--min-batch", type=int, default=20)
    p.add_argument("--max-batch", type=int, default=200)
    p.add_argument("--json", action="store_true", help="the figures as JSON")
    opts = p.parse_args(argv)
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import defer

    from bench import daemon as dmod
    from bench.seed import map_qqchat_db

    map_qqchat_db()
    result: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        with dmod.Databases(opts.db, None, None) as dbs, dmod.workdir() as wd, \
                ExitStack() as stack:
            urls = []
            for v in VARIANTS:
                (wd / v).mkdir()
                urls.append(stack.enter_context(dbs.fresh(wd / v)))
            result.update(await measure(reactor, urls, opts.batches, opts.pairs,
                                        opts.min_batch, opts.max_batch, dbs.server_pid))

    from twisted.internet import reactor

    failure: list[Any] = []
    d = defer.Deferred.fromCoroutine(run(reactor))
    d.addErrback(failure.append)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    if failure:
        failure[0].printTraceback(file=sys.stderr)
        return 1
    print(json.dumps(result) if opts.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
