"""The directory workload: ``python -m bench directory``.

What a chat app's sidebar and search box cost, on a database the size of a
real service: ``user_search`` and ``group_search`` by 1-3 letter prefixes
(and by id), and the ``conversations`` list, first pages and deep ones (with
``before``), for a user with thousands of conversations and unread messages.
The database is seeded straight with SQL (``bench/seed.py``); SQLite files are
made once and kept in a cache (``--seed-cache``), then copied for each run.

By default one invocation runs two sizes: 1 000 users / 10 000 messages, the
reference, and 1 000 000 users / 10 000 000 messages. The point is that the
second costs about what the first does (``--sizes`` picks others).

Each client logs in as its own heavy user (taking its backlog), walks its whole
conversation list once (not measured: it gives the expected content of every
page), then each kind of request runs in its own measured window, closed loop
(one request in flight per client). Every reply is checked: no error, the
right shape, names that match the query in index order, ``more`` consistent
with the page, and conversation pages equal to the walk's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet import defer

from bench.client import Conn, Frame, RequestError, connect_many, login
from bench.daemon import BenchSetupError
from bench.seed import Manifest, Plan, default_cache
from bench.stats import HEADLINES, latency_summary
from bench.workloads import WORKLOADS, RunContext, SetupError, Window, now, per, rate

#: the request kinds, each measured in its own window
KINDS = ("user_search", "group_search", "conversations", "conversations_deep")
SEARCH_LIMIT = 20  # the daemon's default page
CONVERSATIONS_LIMIT = 20
WALK_LIMIT = 100  # the daemon's largest conversations page
DEFAULT_SIZES = "1000:10000,1000000:10000000"
#: share of the searches that name an id instead of a prefix
EXACT_SHARE = 0.1


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``U:M[,U:M...]`` -> [(users, messages), ...]."""
    out = []
    for part in text.split(","):
        users, _, messages = part.strip().partition(":")
        out.append((int(users), int(messages)))
    return out


def check_sizes(text: str | None) -> str | None:
    """What is wrong with ``--sizes``, if anything."""
    try:
        sizes = parse_sizes(text or DEFAULT_SIZES)
    except ValueError:
        return "--sizes takes USERS:MESSAGES[,USERS:MESSAGES...], e.g. 1000:10000"
    for users, messages in sizes:
        if users < 100 or messages < 100:
            return "--sizes: at least 100 users and 100 messages"
    return None


def plan_for(args: argparse.Namespace, case: dict[str, Any]) -> Plan:
    """Each client logs in as its own heavy user: a second login of one user would
    end the first session."""
    return Plan(users=case["users"], messages=case["messages"], heavy=args.clients)


#: MySQL: database URL and manifest of each plan seeded in this invocation
_SEEDED: dict[str, tuple[str, Manifest]] = {}


def _seed(plan: Plan, *where: str) -> dict[str, Any]:
    """Run bench/seed.py as the daemon's Python runs qqchat: the installed package (no
    PYTHONPATH, not from the source tree), so the schema is the daemon's. Its
    progress goes to our stderr; returns its JSON."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("QQCHAT_") and k != "PYTHONPATH"}
    cmd = [sys.executable, str(Path(__file__).with_name("seed.py")), "--users", str(plan.users),
           "--messages", str(plan.messages), "--heavy", str(plan.heavy), *where]
    proc = subprocess.run(cmd, cwd=tempfile.gettempdir(), env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise BenchSetupError(f"seeding failed (status {proc.returncode}): {' '.join(cmd)}")
    return dict(json.loads(proc.stdout.splitlines()[-1]))


def prepare(args: argparse.Namespace, case: dict[str, Any], url: str) -> tuple[str, Manifest]:
    """The database the run's daemon gets, and its manifest. SQLite: a copy of the
    cached seeded file (seeded the first time) at the run's fresh path. MySQL: a
    database seeded once per size in this invocation, beside the fresh one, and
    used by every run of that size (the workload only reads). Blocking, before the
    daemon starts."""
    plan = plan_for(args, case)
    if url.startswith("sqlite:///"):
        cache = Path(args.seed_cache) if args.seed_cache else default_cache()
        out = _seed(plan, "--cache", str(cache))
        shutil.copyfile(out["path"], url[len("sqlite:///"):])
        return url, Manifest(**out["manifest"])
    key = plan.key()
    if key not in _SEEDED:
        base, _, _ = url.rpartition("/")
        name = f"qqbench_directory_{os.getpid()}_{len(_SEEDED)}"
        _create_database(url, name)
        seeded = f"{base}/{name}"
        out = _seed(plan, "--db", "mysql", "--db-url", seeded)
        _SEEDED[key] = (seeded, Manifest(**out))
    return _SEEDED[key]


def _create_database(url: str, name: str) -> None:
    """A database beside ``url``'s on its server (the throwaway MariaDB's user may)."""
    import MySQLdb

    parts = urlsplit(url)
    conn = MySQLdb.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                           user=unquote(parts.username or ""),
                           passwd=unquote(parts.password or ""), charset="utf8mb4")
    try:
        conn.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()


def _fold() -> Callable[[str], str]:
    from qqchat.names import fold

    return fold


class Checker:
    """Checks replies; what is wrong goes to the run's errors by kind."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.fold = _fold()
        self.searched = 0
        self.found = 0  # search replies with at least one entry, all as expected

    def bad(self, kind: str, detail: Any) -> None:
        self.ctx.errors.add(f"bad_{kind}_reply", str(detail)[:300])

    def _page(self, kind: str, reply: Frame, key: str, limit: int) -> list[Frame] | None:
        items, more = reply.get(key), reply.get("more")
        if reply.get("type") != kind or not isinstance(items, list) \
                or not isinstance(more, bool) or not all(isinstance(i, dict) for i in items):
            self.bad(kind, reply)
            return None
        if len(items) > limit or (more and len(items) != limit):
            self.bad(kind, f"{len(items)} entries with more={more}: {reply}")
            return None
        return items

    def search(self, kind: str, query: str, exact: int | None, reply: Frame) -> None:
        key = "users" if kind == "user_search" else "groups"
        self.searched += 1
        items = self._page(kind, reply, key, SEARCH_LIMIT)
        if items is None:
            return
        if exact is not None:
            # names start with letters: an id query finds that one row only
            if len(items) != 1 or items[0].get("id") != exact or reply["more"]:
                self.bad(kind, f"{query!r}: {reply}")
            else:
                self.found += 1
            return
        want = self.fold(query.strip())  # as the daemon does
        order = []
        for item in items:
            name, rid = item.get("name"), item.get("id")
            if not isinstance(name, str) or not isinstance(rid, int) \
                    or not self.fold(name).startswith(want):
                self.bad(kind, f"{query!r}: {item}")
                return
            if kind == "user_search" and not isinstance(item.get("friend"), bool):
                self.bad(kind, item)
                return
            if kind == "group_search" and not (isinstance(item.get("members"), int)
                                               and isinstance(item.get("member"), bool)):
                self.bad(kind, item)
                return
            order.append((self.fold(name), rid))
        if order != sorted(order):
            self.bad(kind, f"{query!r}: not in (name, id) order: {order}")
        elif not items:
            self.bad(kind, f"{query!r} (a prefix of a seeded name) found nothing")
        else:
            self.found += 1

    def conversations(self, reply: Frame, expected: list[int], more: bool) -> None:
        """``expected``: the last ids the page must have, from the walk."""
        items = self._page("conversations", reply, "conversations", CONVERSATIONS_LIMIT)
        if items is None:
            return
        ids = []
        for item in items:
            last = item.get("last")
            unread = item.get("unread")
            if item.get("kind") not in ("direct", "group") or not isinstance(item.get("id"), int) \
                    or not isinstance(item.get("name"), str) or not isinstance(last, dict) \
                    or not isinstance(unread, int) or not 0 <= unread <= 1000 \
                    or not isinstance(last.get("text"), str) or len(last["text"]) > 100:
                self.bad("conversations", item)
                return
            ids.append(last.get("id"))
        if ids != expected or reply["more"] != more:
            self.bad("conversations", f"ids {ids[:3]}... more={reply['more']}, expected "
                                      f"{expected[:3]}... more={more}")


async def _walk(ctx: RunContext, conn: Conn) -> list[int]:
    """The client's whole conversation list, newest first (its last ids), page by
    page; bounded by the list the seed says it has."""
    ids: list[int] = []
    before: int | None = None
    for _ in range(100_000 // WALK_LIMIT):
        frame: Frame = {"type": "conversations", "limit": WALK_LIMIT}
        if before is not None:
            frame["before"] = before
        reply = await conn.request(frame, ctx.reactor, ctx.options.op_timeout)
        page = [c["last"]["id"] for c in reply.get("conversations", [])]
        ids += page
        if not reply.get("more") or not page:
            break
        before = page[-1]
    if ids != sorted(ids, reverse=True) or len(set(ids)) != len(ids):
        raise SetupError("the conversation list is not in strictly decreasing order")
    return ids


def _requests(kind: str, n: int, rng: random.Random, manifest: Manifest,
              walk: list[int]) -> list[tuple[Frame, Any]]:
    """``n`` requests of one kind with what each reply must show."""
    out: list[tuple[Frame, Any]] = []
    users, groups = int(manifest.plan["users"]), int(manifest.counts["groups"])
    for _ in range(n):
        if kind in ("user_search", "group_search"):
            if rng.random() < EXACT_SHARE:
                if kind == "user_search":
                    rid = rng.randrange(1, users + 1)
                    query = str(rid)
                else:
                    rid = rng.randrange(1, groups + 1)
                    query = f"g{rid}"
                out.append(({"type": kind, "query": query}, (query, rid)))
                continue
            names = manifest.sample_names if kind == "user_search" else manifest.sample_groups
            query = rng.choice(names)[:rng.randint(1, 3)]
            query = rng.choice((query, query.lower(), query.upper()))
            out.append(({"type": kind, "query": query}, (query, None)))
        elif kind == "conversations":
            out.append(({"type": kind},
                        (walk[:CONVERSATIONS_LIMIT], len(walk) > CONVERSATIONS_LIMIT)))
        else:
            # deeper pages: anywhere past the first, as a client scrolling down
            pos = rng.randrange(CONVERSATIONS_LIMIT, max(CONVERSATIONS_LIMIT + 1, len(walk) - 1))
            page = walk[pos + 1:pos + 1 + CONVERSATIONS_LIMIT]
            out.append(({"type": "conversations", "before": walk[pos]},
                        (page, len(walk) > pos + 1 + CONVERSATIONS_LIMIT)))
    return out


async def _closed_loop(ctx: RunContext, conns: list[Conn], work: list[list[tuple[Frame, Any]]],
                       check: Callable[[Frame, Frame, Any], None]) -> list[float]:
    """Each client sends its requests one at a time; latencies of those answered."""
    latencies: list[float] = []
    timeout = ctx.options.op_timeout

    async def client(conn: Conn, items: list[tuple[Frame, Any]]) -> None:
        for frame, expect in items:
            t0 = now()
            try:
                reply = await conn.request(dict(frame), ctx.reactor, timeout)
            except RequestError as e:
                ctx.errors.add(e.kind, e.detail)
                if e.kind in ("timeout", "reply_error:connection_lost"):
                    return
                continue
            latencies.append(now() - t0)
            check(frame, reply, expect)

    await defer.DeferredList([defer.Deferred.fromCoroutine(client(c, w))
                              for c, w in zip(conns, work, strict=True)], consumeErrors=True)
    return latencies


async def directory(ctx: RunContext) -> None:
    o = ctx.options
    res = ctx.result
    manifest: Manifest = o.directory_manifest
    heavy = manifest.heavy[:o.clients]
    res.update(users=int(manifest.plan["users"]), messages=manifest.max_id,
               groups=int(manifest.counts["groups"]), clients=len(heavy),
               requests_per_kind=o.requests, conversations_total=heavy[0]["conversations"],
               unread_direct=heavy[0]["unread_direct"])
    conns = await connect_many(ctx.reactor, ctx.daemon.host, ctx.daemon.port, len(heavy),
                               ctx.errors, o.op_timeout)
    ctx.conns.extend(conns)
    if len(conns) < len(heavy):
        raise SetupError("cannot connect")
    backlog = [0] * len(conns)

    def counter(k: int) -> Callable[[Frame], None]:
        def on_backlog(_msg: Frame) -> None:
            backlog[k] += 1
        return on_backlog

    t0 = now()
    for k, (conn, user) in enumerate(zip(conns, heavy, strict=True)):
        _, synced = await login(conn, user["name"], ctx.reactor, o.op_timeout,
                                on_backlog=counter(k))
        if synced.get("count") != backlog[k]:
            ctx.errors.add("bad_synced_count", f"{synced.get('count')} != {backlog[k]}")
        conn.on_message = None
    res.update(login_backlog=backlog[0], login_seconds=round(now() - t0, 3))
    walks = [await _walk(ctx, conn) for conn in conns]
    for walk, user in zip(walks, heavy, strict=True):
        if len(walk) != user["conversations"]:
            raise SetupError(f"{user['name']}: {len(walk)} conversations listed, the seed "
                             f"made {user['conversations']}")
    checker = Checker(ctx)

    entries = [0]  # entries in the replies of the phase running

    def check(frame: Frame, reply: Frame, expect: Any) -> None:
        for key in ("users", "groups", "conversations"):
            if isinstance(reply.get(key), list):
                entries[0] += len(reply[key])
        if frame["type"] == "conversations":
            checker.conversations(reply, *expect)
        else:
            checker.search(frame["type"], *expect, reply)

    rng = random.Random(7)
    base_profile = ctx.profile_path
    for kind in KINDS:
        if o.warmup:
            await _closed_loop(ctx, conns, [_requests(kind, o.warmup, rng, manifest, w)
                                            for w in walks], check)
        work = [_requests(kind, o.requests, rng, manifest, w) for w in walks]
        if base_profile:
            ctx.profile_path = f"{base_profile}.{kind}"
        entries[0] = 0
        window = Window(ctx)
        latencies = await _closed_loop(ctx, conns, work, check)
        window.close()
        n = len(latencies)
        res.update({f"{kind}_requests": n, f"{kind}_seconds": round(window.seconds, 4),
                    f"{kind}_entries": round(entries[0] / n, 2) if n else None,
                    f"{kind}_per_s": rate(n, window.seconds),
                    **latency_summary(latencies, f"{kind}_"),
                    f"{kind}_daemon_cpu_us": per(window.cpu, n),
                    f"{kind}_daemon_main_thread_cpu_us": per(window.main_cpu, n),
                    **{f"{kind}_{k}": v for k, v in window.per_op("request", n).items()}})
    res.update(searches=checker.searched, searches_found=checker.found)
    res["ok"] = all(res[f"{k}_requests"] == o.requests * len(conns) for k in KINDS)


WORKLOADS["directory"] = directory
HEADLINES["directory"] = [("errors", "errors", "")] + [
    (f"{kind}_{field}", f"{short} {label}", unit)
    for kind, short in zip(KINDS, ("user", "group", "conv", "deep"), strict=True)
    for field, label, unit in (("p50_ms", "p50", " ms"), ("p99_ms", "p99", " ms"),
                               ("daemon_cpu_us", "cpu", " us"))]
