"""A realistic database for the directory workload, written straight with SQL.

``python -m bench.seed --users 1000000 --messages 10000000 --out big.db`` (or
``--db-url mysql://...``) builds what a busy service would have accumulated:
users with syllable-built names (so a 2-3 letter prefix matches a realistic
share of them), friends, groups with members, and a log of one-to-one and group
messages. One or a few "heavy" users have thousands of conversations and unread
messages: they are the users the workload logs in as, since the conversation
list must stay cheap for exactly them.

Registering a million users and sending ten million messages through the daemon
would take hours, so the rows are inserted directly (big transactions, SQLite
unsynchronised while seeding). The schema is the daemon's own
(``apply_schema``), and what the daemon derives from the log (the conversation
table, each group's newest message) is derived by the daemon's own upgrade
step: the seeder drops those before loading and runs ``apply_schema`` again
after, which rebuilds them exactly as an upgraded database would get them.
Everything comes from one random seed, so equal arguments give equal databases.

The workload runs this file as a script (``python bench/seed.py``, which imports
nothing else of bench/) so that it seeds with the qqchat the daemon runs, the
installed one, not the source tree's.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: bumped whenever what the seeder writes changes: cached files are keyed by it
SEED_VERSION = 1
#: the password of every seeded user (one hash, computed once, shared by all)
PASSWORD = "bench-password"
#: created_at of every row, and the first message's ts (milliseconds)
BASE_TS = 1_700_000_000_000
#: rows per executemany (and per transaction on MySQL)
CHUNK = 50_000

_CONSONANTS = "bdfghjklmnprstvz"
_VOWELS = "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS] + [
    "sha", "cho", "tra", "bri", "ste", "qui", "xan", "yo", "el", "an", "or", "is"]
_GROUP_WORDS = ["club", "fans", "team", "friends", "hikers", "readers", "gamers", "crew",
                "chat", "society", "circle", "lab", "band", "class", "family", "league"]
_TEXT_WORDS = [
    "hello", "there", "ok", "see", "you", "tomorrow", "at", "the", "station", "did", "get",
    "my", "last", "message", "lunch", "coffee", "later", "tonight", "weekend", "plans",
    "sounds", "good", "thanks", "a", "lot", "when", "are", "we", "meeting", "I", "will",
    "call", "after", "work", "moved", "to", "three", "pm", "let", "me", "know", "what",
    "think", "你好", "明天见", "好的", "谢谢", "photo", "link", "doc", "new", "version"]


def map_qqchat_db() -> None:
    """Run from the source tree, ``qqchat`` is the tree's, where the schema files sit
    in ``db/`` rather than in ``qqchat/db`` (pyproject maps one to the other when it
    installs): map it here the same way, before anything of ``qqchat.storage``."""
    import qqchat

    try:
        import qqchat.db
    except ModuleNotFoundError:
        init = REPO / "db" / "__init__.py"
        spec = importlib.util.spec_from_file_location(
            "qqchat.db", init, submodule_search_locations=[str(init.parent)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["qqchat.db"] = module
        spec.loader.exec_module(module)
        qqchat.db = module  # type: ignore[attr-defined]


def _import_qqchat() -> tuple[ModuleType, Callable[[str], str], Callable[[str, int], str]]:
    """``qqchat.storage.schema``, ``fold`` and ``hash_password``."""
    map_qqchat_db()
    from qqchat.names import fold
    from qqchat.passwords import hash_password
    from qqchat.storage import schema

    return schema, fold, hash_password


@dataclass
class Plan:
    """What to seed; everything else follows from these and ``seed``."""

    users: int
    messages: int
    heavy: int = 1
    #: peers each heavy user has conversations with (capped by the users there are)
    heavy_peers: int = 5000
    #: messages per heavy user and peer, on average (capped at 30 % of the log)
    per_peer: int = 20
    #: one group per this many users (at least ``min_groups``)
    users_per_group: int = 1000
    min_groups: int = 20
    members: int = 50
    #: groups each heavy user is in
    heavy_groups: int = 20
    group_share: float = 0.10
    #: a heavy user has acknowledged the log up to this fraction: the rest is unread
    heavy_acked: float = 0.90
    #: each other user chats with this many peers
    peers: int = 8
    seed: int = 20240611

    @property
    def groups(self) -> int:
        return max(self.min_groups, self.users // self.users_per_group)

    @property
    def peers_per_heavy(self) -> int:
        return max(1, min(self.heavy_peers, (self.users - self.heavy) // 2))

    @property
    def heavy_messages(self) -> int:
        """Messages per heavy user."""
        cap = int(0.3 * self.messages / self.heavy)
        return min(self.peers_per_heavy * self.per_peer, cap)

    def check(self) -> None:
        if self.users < max(100, 4 * self.heavy) or self.messages < 100:
            raise ValueError("seed at least 100 users (4 per heavy user) and 100 messages")
        if self.heavy < 1:
            raise ValueError("at least one heavy user")

    def key(self) -> str:
        """Names a cached file: the plan, the seeder and the schema it was made with
        (that of the qqchat this process imports)."""
        schema, _, _ = _import_qqchat()
        from qqchat.db import schema_statements

        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        h.update(str(SEED_VERSION).encode())
        h.update(Path(schema.__file__).read_bytes())
        for dialect in ("sqlite", "mysql"):
            h.update("\n".join(schema_statements(dialect)).encode())
        return f"u{self.users}-m{self.messages}-h{self.heavy}-{h.hexdigest()[:12]}"


@dataclass
class Manifest:
    """What the workload needs to know about a seeded database."""

    plan: dict[str, Any]
    max_id: int = 0
    #: heavy users: id, name, conversations (one-to-one + groups with a message), acked
    heavy: list[dict[str, Any]] = field(default_factory=list)
    #: a few names and group names, for queries that must find something
    sample_names: list[str] = field(default_factory=list)
    sample_groups: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> Manifest:
        return cls(**json.loads(path.read_text()))


class _Names:
    """User names, unique once folded (as the daemon requires): 2-4 syllables, some
    capitalised, most with digits."""

    def __init__(self, rng: random.Random, fold: Callable[[str], str]) -> None:
        self.rng = rng
        self.fold = fold
        self.seen: set[str] = set()

    def word(self, lo: int = 2, hi: int = 4) -> str:
        rng = self.rng
        return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(lo, hi)))

    def user(self) -> str:
        rng = self.rng
        while True:
            name = self.word()
            if rng.random() < 0.4:
                name = name.capitalize()
            if rng.random() < 0.7:
                name += str(rng.randrange(10 ** rng.randint(1, 4)))
            key = self.fold(name)
            if key not in self.seen and len(name) <= 32:
                self.seen.add(key)
                return name


def _chunks(rows: Iterator[tuple[Any, ...]], size: int = CHUNK) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class Seeder:
    """Writes a plan's rows through one DB-API connection (sqlite3 or MySQLdb)."""

    def __init__(self, conn: Any, dialect: str, plan: Plan,
                 log: Callable[[str], None] = lambda s: None) -> None:
        plan.check()
        self.conn = conn
        self.dialect = dialect
        self.plan = plan
        self.log = log
        self.rng = random.Random(plan.seed)
        self.schema, self.fold, hash_password = _import_qqchat()
        self.pw_hash = hash_password(PASSWORD, 4)
        self.manifest = Manifest(plan=asdict(plan))

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "mysql" else sql

    def _insert(self, sql: str, rows: Iterator[tuple[Any, ...]]) -> int:
        cur = self.conn.cursor()
        n = 0
        for batch in _chunks(rows):
            cur.executemany(self._q(sql), batch)
            n += len(batch)
            if self.dialect == "mysql":
                self.conn.commit()
        self.conn.commit()
        return n

    def _timed(self, what: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        s = round(time.perf_counter() - t0, 1)
        self.manifest.seconds[what] = s
        self.log(f"seed: {what} {s} s")
        return out

    def run(self) -> Manifest:
        t0 = time.perf_counter()
        self._timed("schema", self._schema)
        self._timed("users", self._users)
        self._timed("friends", self._friends)
        self._timed("groups", self._groups)
        self._timed("messages", self._messages)
        self._timed("derived", self._derive)
        self.manifest.seconds["total"] = round(time.perf_counter() - t0, 1)
        return self.manifest

    # -- the steps ----------------------------------------------------------

    def _schema(self) -> None:
        """The daemon's schema, minus what it derives from the log (rebuilt at the end
        by its own upgrade step)."""
        cur = self.conn.cursor()
        if self.dialect == "sqlite":
            cur.execute("PRAGMA synchronous=OFF")
            cur.execute("PRAGMA journal_mode=OFF")
            cur.execute("PRAGMA cache_size=-1000000")  # 1 GB: index inserts stay in memory
        else:
            cur.execute("SET SESSION unique_checks=0")
        self.schema.apply_schema(cur, self.dialect)
        cur.execute("DROP TABLE conversations")
        cur.execute("ALTER TABLE chat_groups DROP COLUMN last_id")
        # unrecorded, so that ``_derive``'s apply_schema runs the baseline again, which
        # rebuilds them from the loaded log
        cur.execute("DELETE FROM schema_version")
        self.conn.commit()

    def _users(self) -> None:
        p, rng = self.plan, self.rng
        names = _Names(rng, self.fold)
        self.heavy_ids = list(range(1, p.heavy + 1))
        heavy_names = [f"heavy{k + 1}" for k in range(p.heavy)]
        names.seen.update(heavy_names)
        self.user_names: list[str] = []

        def rows() -> Iterator[tuple[Any, ...]]:
            for uid in range(1, p.users + 1):
                name = heavy_names[uid - 1] if uid <= p.heavy else names.user()
                if len(self.user_names) < 2000:
                    self.user_names.append(name)
                yield (uid, name, self.pw_hash, BASE_TS, 0, self.fold(name))

        self._insert("INSERT INTO users (id, name, pw_hash, created_at, acked, name_key)"
                     " VALUES (?, ?, ?, ?, ?, ?)", rows())
        self.manifest.sample_names = self.user_names[p.heavy:p.heavy + 200]
        # each heavy user's peers: a random sample of the others
        self.heavy_peer_ids = {
            h: rng.sample(range(p.heavy + 1, p.users + 1), p.peers_per_heavy)
            for h in self.heavy_ids}
        # everyone else's peers: fixed offsets, the same for all
        self.offsets = [rng.randrange(1, p.users) for _ in range(p.peers)]

    def _friends(self) -> None:
        p, rng = self.plan, self.rng
        ignore = "INSERT IGNORE" if self.dialect == "mysql" else "INSERT OR IGNORE"

        def rows() -> Iterator[tuple[int, int, int]]:
            for h in self.heavy_ids:
                for peer in self.heavy_peer_ids[h][:200]:
                    yield (h, peer, BASE_TS)
                    yield (peer, h, BASE_TS)
            for uid in range(p.heavy + 1, p.users + 1):
                if rng.random() < 0.2:
                    other = (uid - 1 + self.offsets[0]) % p.users + 1
                    if other != uid:
                        yield (uid, other, BASE_TS)
                        yield (other, uid, BASE_TS)

        n = self._insert(f"{ignore} INTO friends (user_id, friend_id, created_at)"
                         " VALUES (?, ?, ?)", rows())
        self.manifest.counts["friend_rows"] = n

    def _groups(self) -> None:
        p, rng = self.plan, self.rng
        names = _Names(rng, self.fold)
        self.group_members: list[list[int]] = []
        group_rows = []
        member_rows = []
        for gid in range(1, p.groups + 1):
            name = f"{names.word(1, 3).capitalize()} {rng.choice(_GROUP_WORDS)}"
            if rng.random() < 0.5:
                name += f" {rng.randrange(100)}"
            members = rng.sample(range(p.heavy + 1, p.users + 1), min(p.members, p.users - p.heavy))
            if gid <= p.heavy_groups:
                members[-p.heavy:] = self.heavy_ids  # every heavy user is in these
            self.group_members.append(members)
            group_rows.append((gid, name, f"the {name.lower()} group", members[0], BASE_TS,
                               self.fold(name)))
            for k, uid in enumerate(members):
                member_rows.append((gid, uid, "creator" if k == 0 else "member", 0, BASE_TS))
        self._insert("INSERT INTO chat_groups (id, name, descr, creator, created_at, name_key)"
                     " VALUES (?, ?, ?, ?, ?, ?)", iter(group_rows))
        self._insert("INSERT INTO group_members (group_id, user_id, role, since_id, joined_at)"
                     " VALUES (?, ?, ?, ?, ?)", iter(member_rows))
        self.manifest.sample_groups = [r[1] for r in group_rows[:200]]
        self.manifest.counts["groups"] = p.groups
        self.manifest.counts["group_members"] = len(member_rows)

    def _texts(self) -> list[str]:
        rng = self.rng
        out = []
        for _ in range(4096):
            words = [rng.choice(_TEXT_WORDS) for _ in range(rng.randint(2, 30))]
            out.append(" ".join(words))
        return out

    def _messages(self) -> None:
        """Ids 1..M in time order: ~10 % group messages, a heavy user's share of
        one-to-one messages with their peers, the rest between users and their
        peers; directions at random."""
        p, rng = self.plan, self.rng
        texts = self._texts()
        n_texts = len(texts)
        p_group = p.group_share
        p_heavy = p_group + p.heavy_messages * p.heavy / p.messages
        heavy_ids, heavy_peers = self.heavy_ids, self.heavy_peer_ids
        n_heavy, n_peers = len(heavy_ids), p.peers_per_heavy
        offsets, n_off, users = self.offsets, len(self.offsets), p.users
        groups, n_groups = self.group_members, len(self.group_members)
        rand, randrange = rng.random, rng.randrange

        def rows() -> Iterator[tuple[Any, ...]]:
            for mid in range(1, p.messages + 1):
                r = rand()
                ts = BASE_TS + mid * 50
                body = texts[randrange(n_texts)]
                if r < p_group:
                    g = randrange(n_groups)
                    members = groups[g]
                    yield (mid, 2, members[randrange(len(members))], None, g + 1, body, ts)
                    continue
                if r < p_heavy:
                    a = heavy_ids[randrange(n_heavy)]
                    b = heavy_peers[a][randrange(n_peers)]
                else:
                    a = randrange(users) + 1
                    b = (a - 1 + offsets[randrange(n_off)]) % users + 1
                if rand() < 0.5:
                    a, b = b, a
                yield (mid, 1, a, b, None, body, ts)

        n = self._insert("INSERT INTO messages (id, kind, sender, recipient, group_id, body, ts)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?)", rows())
        self.manifest.counts["messages"] = n
        self.manifest.max_id = p.messages

    def _derive(self) -> None:
        """The conversation table and each group's last message, by the daemon's own
        upgrade step; then the log head and everyone's acknowledged position."""
        p = self.plan
        cur = self.conn.cursor()
        self.schema.apply_schema(cur, self.dialect)
        self.conn.commit()
        cur.execute(self._q("UPDATE log_seq SET last_id = ? WHERE id = 1"), (p.messages,))
        cur.execute(self._q("UPDATE users SET acked = ?"), (p.messages,))
        acked = int(p.messages * p.heavy_acked)
        cur.execute(self._q("UPDATE users SET acked = ? WHERE id <= ?"), (acked, p.heavy))
        self.conn.commit()
        for h in self.heavy_ids:
            cur.execute(self._q("SELECT COUNT(*) FROM conversations WHERE user_id = ?"), (h,))
            direct = int(cur.fetchone()[0])
            cur.execute(self._q("SELECT COUNT(*) FROM group_members gm JOIN chat_groups g"
                                " ON g.id = gm.group_id WHERE gm.user_id = ? AND g.last_id > 0"),
                        (h,))
            groups = int(cur.fetchone()[0])
            cur.execute(self._q("SELECT COUNT(*) FROM messages WHERE kind = 1 AND recipient = ?"
                                " AND id > ? AND sender <> recipient"), (h, acked))
            unread_direct = int(cur.fetchone()[0])
            self.manifest.heavy.append({"id": h, "name": f"heavy{h}", "acked": acked,
                                        "direct": direct, "groups": groups,
                                        "conversations": direct + groups,
                                        "unread_direct": unread_direct})
        cur.execute("SELECT COUNT(*) FROM conversations")
        self.manifest.counts["conversation_rows"] = int(cur.fetchone()[0])
        self.manifest.counts["users"] = p.users


# -- databases ----------------------------------------------------------------


def seed_sqlite(path: Path, plan: Plan, log: Callable[[str], None] = lambda s: None
                ) -> Manifest:
    """A new SQLite file at ``path`` (replaced if there); the daemon opens it as it
    opens any (WAL, synchronous=FULL): the seeding pragmas are per connection."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level="DEFERRED")
    try:
        manifest = Seeder(conn, "sqlite", plan, log).run()
    finally:
        conn.close()
    manifest.counts["bytes"] = path.stat().st_size
    return manifest


def seed_mysql(url: str, plan: Plan, log: Callable[[str], None] = lambda s: None
               ) -> Manifest:
    """Seed the (empty) MySQL/MariaDB database of ``url``."""
    import MySQLdb
    from MySQLdb.constants import CLIENT

    _import_qqchat()  # before anything of qqchat.storage
    from qqchat.storage.pool import parse_database_url

    c = parse_database_url(url)
    conn = MySQLdb.connect(host=c.host, port=c.port, user=c.user, passwd=c.password,
                           db=c.database, charset="utf8mb4",
                           client_flag=CLIENT.MULTI_STATEMENTS, local_infile=False)
    cur = conn.cursor()
    saved = _loading_settings(cur, log)
    try:
        return Seeder(conn, "mysql", plan, log).run()
    finally:
        for name, value in saved.items():
            cur.execute(f"SET GLOBAL {name} = %s", (value,))
        conn.close()


#: MySQL: server settings while seeding (restored after): commits not flushed
#: each time, and a buffer pool that holds the indexes being filled
_LOADING = {"innodb_flush_log_at_trx_commit": 0, "innodb_buffer_pool_size": 2 << 30}


def _loading_settings(cur: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Apply ``_LOADING`` where the account may; returns the values to restore."""
    import MySQLdb

    saved: dict[str, Any] = {}
    for name, value in _LOADING.items():
        cur.execute(f"SELECT @@GLOBAL.{name}")
        old = cur.fetchone()[0]
        try:
            cur.execute(f"SET GLOBAL {name} = %s", (value,))
        except MySQLdb.OperationalError as e:
            log(f"seed: cannot set {name} while seeding ({e}); it will be slower")
            continue
        saved[name] = old
    return saved


def default_cache() -> Path:
    """Where seeded files are kept between invocations (they take minutes to make)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qqchat-bench"


def cached_sqlite(cache: Path, plan: Plan, log: Callable[[str], None] = lambda s: None
                  ) -> tuple[Path, Manifest]:
    """The seeded file for ``plan`` in ``cache``, made once and reused after: a
    file is only used once its manifest exists (written last)."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"directory-{plan.key()}.db"
    manifest_path = path.with_suffix(".json")
    if path.exists() and manifest_path.exists():
        return path, Manifest.load(manifest_path)
    manifest_path.unlink(missing_ok=True)
    tmp = path.with_suffix(".tmp")
    manifest = seed_sqlite(tmp, plan, log)
    tmp.rename(path)
    manifest.save(manifest_path)
    return path, manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.seed",
        description="Write a realistic qqchat database (users, friends, groups, a message "
                    "log with heavy users) straight with SQL, for the directory workload.")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--heavy", type=int, default=1, help="heavy users (heavy1, heavy2, ...)")
    ap.add_argument("--heavy-peers", type=int, default=5000,
                    help="conversations per heavy user (5000; at most half the users)")
    ap.add_argument("--seed", type=int, default=Plan.seed, help="random seed")
    ap.add_argument("--db", choices=("sqlite", "mysql"), default="sqlite")
    ap.add_argument("--out", type=Path, help="sqlite: the file to write (replaced)")
    ap.add_argument("--cache", type=Path,
                    help="sqlite, instead of --out: keep the file in this directory, made "
                         "only if not there yet; prints its path with the manifest")
    ap.add_argument("--db-url", help="mysql: mysql://USER:PASS@HOST:PORT/DB, an empty database")
    args = ap.parse_args(argv)
    plan = Plan(users=args.users, messages=args.messages, heavy=args.heavy,
                heavy_peers=args.heavy_peers, seed=args.seed)
    try:
        plan.check()
    except ValueError as e:
        ap.error(str(e))
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.db == "sqlite" and args.cache is not None:
        path, manifest = cached_sqlite(args.cache, plan, log)
        print(json.dumps({"path": str(path), "manifest": asdict(manifest)}))
        return 0
    if args.db == "sqlite":
        if args.out is None:
            ap.error("--db sqlite needs --out PATH (or --cache DIR)")
        manifest = seed_sqlite(args.out, plan, log)
        manifest.save(args.out.with_suffix(args.out.suffix + ".json"))
    else:
        if not args.db_url:
            ap.error("--db mysql needs --db-url")
        manifest = seed_mysql(args.db_url, plan, log)
    print(json.dumps(asdict(manifest)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
