"""The message store on SQLite: its staging table (``SqliteEngine``), and the rerun of a
transaction rolled back for a lock conflict. (tests/test_storage_stores.py runs the
domain stores on both engines.)

New messages land in ``messages_recent`` and move into the indexed ``messages``
table in bulk: whatever the split, every read sees the whole log, retries stay
idempotent, and the staged table stays small. A checked ack (cluster mode)
never passes a message the session was not sent."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from twisted.enterprise import adbapi
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher
from unit_support import InlineReactor, InlineThreadPool, make_stores, result_of

from qqchat.errors import UnavailableError
from qqchat.storage.access import Access
from qqchat.storage.engines import MySQLEngine, SqliteEngine
from qqchat.storage.engines.sqlite import STAGE_ROWS
from qqchat.storage.log import KIND_DIRECT, NewMessage
from qqchat.storage.schema import apply_schema
from qqchat.storage.stores import Stores


def _pool(path: str) -> adbapi.ConnectionPool:
    pool = adbapi.ConnectionPool("sqlite3", path, check_same_thread=False, cp_min=1,
                                 cp_max=1, cp_reactor=InlineReactor(), cp_noisy=False)
    pool.threadpool = InlineThreadPool()
    pool.start()
    result_of(pool.runInteraction(apply_schema, "sqlite"))
    return pool


def count(pool: adbapi.ConnectionPool, table: str) -> int:
    return int(result_of(pool.runQuery(f"SELECT COUNT(*) FROM {table}"))[0][0])


def users(store: Stores) -> tuple[int, int]:
    a = result_of(store.accounts.create_user("alice", "h", 1))
    b = result_of(store.accounts.create_user("bob", "h", 1))
    assert a is not None and b is not None
    return a, b


def send(store: Stores, sender: int, to: int, texts: list[str], cid: str | None = None
         ) -> list[Any]:
    return result_of(store.message_log.write_batch(
        [NewMessage(KIND_DIRECT, sender, t, recipient=to, cid=cid) for t in texts], (), 1000))


def test_new_messages_are_staged_and_every_read_sees_them() -> None:
    pool, store = make_stores()
    a, b = users(store)
    send(store, a, b, ["one", "two"])
    send(store, b, a, ["three"])
    assert count(pool, "messages_recent") == 3  # the commit touched no index of messages
    assert count(pool, "messages") == 0

    backlog = result_of(store.message_log.undelivered(b, 0, 100))
    assert [r[6] for r in backlog] == ["one", "two"]
    history = result_of(store.message_log.history_direct(a, b, 2**62, 10))
    assert [r[6] for r in history] == ["three", "two", "one"]
    assert count(pool, "messages_recent") == 0
    assert count(pool, "messages") == 3

    # what arrives after a read is staged again and read again
    send(store, a, b, ["four"])
    start = result_of(store.message_log.backlog_start(b, 100, 5000))
    assert start.acked == 0 and [r[6] for r in start.rows] == ["one", "two", "four"]
    first = start.rows[0]
    assert result_of(store.message_log.message(first[0])) == first


def test_the_staged_table_is_moved_in_bulk_once_it_is_large() -> None:
    pool, store = make_stores()
    a, b = users(store)
    sent = 0
    while sent < STAGE_ROWS + 50:
        send(store, a, b, [f"m{sent + i}" for i in range(25)])
        sent += 25
    assert count(pool, "messages_recent") < STAGE_ROWS
    assert count(pool, "messages") >= STAGE_ROWS
    assert count(pool, "message_log") == sent
    rows = result_of(store.message_log.undelivered(b, 0, sent + 1))
    assert [r[6] for r in rows] == [f"m{i}" for i in range(sent)]
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)


def test_the_move_counts_from_the_first_row_staged_since_the_last_move() -> None:
    pool, store = make_stores()
    a, b = users(store)
    send(store, a, b, [f"m{i}" for i in range(STAGE_ROWS - 10)])
    result_of(store.message_log.undelivered(b, 0, 1))  # a read moves them
    assert count(pool, "messages_recent") == 0
    send(store, a, b, [f"n{i}" for i in range(STAGE_ROWS - 10)])
    assert count(pool, "messages_recent") == STAGE_ROWS - 10  # not moved early
    send(store, a, b, [f"o{i}" for i in range(20)])
    assert count(pool, "messages_recent") == 0
    assert count(pool, "messages") == 2 * STAGE_ROWS


def test_a_retried_client_id_is_found_staged_or_moved() -> None:
    pool, store = make_stores()
    a, b = users(store)
    (first,) = send(store, a, b, ["hello"], cid="c-1")
    assert not first.duplicate
    (again,) = send(store, a, b, ["hello"], cid="c-1")  # still staged
    assert again.duplicate and again.id == first.id
    result_of(store.message_log.undelivered(b, 0, 10))  # a read moves it
    assert count(pool, "messages_recent") == 0
    (third,) = send(store, a, b, ["hello"], cid="c-1")
    assert third.duplicate and third.id == first.id
    assert count(pool, "message_log") == 1


def test_staged_messages_left_by_a_stop_move_at_the_next_start(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    pool = _pool(path)
    store = Stores.open(pool, SqliteEngine(pool.dbapi))
    a, b = users(store)
    send(store, a, b, ["before the stop"])
    pool.close()
    with closing(sqlite3.connect(path)) as con:
        assert con.execute("SELECT COUNT(*) FROM messages_recent").fetchone()[0] == 1

    pool = _pool(path)  # the daemon applies the schema at every start
    try:
        assert count(pool, "messages_recent") == 0
        rows = result_of(pool.runQuery("SELECT body FROM messages"))
        assert [r[0] for r in rows] == ["before the stop"]
    finally:
        pool.close()


class _Recorded:
    """A cursor that records its statements and its connection's commits."""

    def __init__(self) -> None:
        self.connection = self
        self.done: list[str] = []

    def execute(self, sql: str, *params: Any) -> None:
        self.done.append(sql)

    def commit(self) -> None:
        self.done.append("commit")


def test_an_unsynced_commit_leaves_the_connection_synced_whatever_the_block_does() -> None:
    engine = SqliteEngine()
    t = _Recorded()
    with engine.unsynced(t):
        t.execute("UPDATE users SET last_login = 1")
    assert t.done == ["PRAGMA synchronous=NORMAL", "UPDATE users SET last_login = 1",
                      "commit", "PRAGMA synchronous=FULL"]
    failed = _Recorded()
    with pytest.raises(LookupError), engine.unsynced(failed):
        failed.execute("UPDATE users SET last_login = 1")
        raise LookupError("the block failed")
    # not committed (adbapi rolls it back), and synced again for the next commit
    assert failed.done == ["PRAGMA synchronous=NORMAL", "UPDATE users SET last_login = 1",
                           "PRAGMA synchronous=FULL"]


def test_a_login_stamp_is_committed_and_the_next_batch_commits_synced(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    pool = _pool(path)
    try:
        store = Stores.open(pool, SqliteEngine(pool.dbapi))
        a, b = users(store)
        send(store, a, b, ["staged"])
        start = result_of(store.message_log.backlog_start(b, 100, 5000))
        assert [r[6] for r in start.rows] == ["staged"] and start.login == 5000
        assert result_of(pool.runQuery("PRAGMA synchronous"))[0][0] == 2  # FULL
        # committed: another connection sees the stamp and the move of staged rows
        with closing(sqlite3.connect(path)) as con:
            assert con.execute("SELECT last_login FROM users WHERE id = ?",
                               (b,)).fetchone()[0] == 5000
            assert con.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
    finally:
        pool.close()


_CRASH_AFTER_UNSYNCED = """
import os, sqlite3, sys
from qqchat.storage.engines.sqlite import SqliteEngine
con = sqlite3.connect(sys.argv[1])
con.execute("PRAGMA journal_mode=WAL")
t = con.cursor()
with SqliteEngine().unsynced(t):
    t.execute("UPDATE users SET last_login = 7000 WHERE id = 1")
os.kill(os.getpid(), 9)
"""


def test_an_unsynced_commit_outlives_a_crash_of_the_daemon(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    pool = _pool(path)
    users(Stores.open(pool, SqliteEngine(pool.dbapi)))
    pool.close()
    proc = subprocess.run([sys.executable, "-c", _CRASH_AFTER_UNSYNCED, path], check=False)
    assert proc.returncode == -signal.SIGKILL  # killed before it could close anything
    with closing(sqlite3.connect(path)) as con:
        assert con.execute("SELECT last_login FROM users WHERE id = 1").fetchone()[0] == 7000


def test_a_checked_ack_stops_before_a_message_not_yet_seen() -> None:
    pool, store = make_stores()
    a, b = users(store)
    ids = [s.id for s in send(store, a, b, ["one", "two", "three"])]
    log = store.message_log
    broadcast = result_of(log.write_batch([NewMessage(3, a, "to all")], (), 1000))[0].id
    own = result_of(log.write_batch([NewMessage(3, b, "mine")], (), 1000))[0].id

    def acked(uid: int) -> int:
        return result_of(pool.runQuery("SELECT acked FROM users WHERE id = ?", (uid,)))[0][0]

    # "two" may still be on its way from another node: b's ack stops below it, while
    # a's ack in the same transaction (of the broadcast a does not receive) goes through
    reached = result_of(log.checked_acks([(b, 0, ids[2], frozenset({ids[0], ids[2]}), None),
                                          (a, 0, own, frozenset({own}), None)]))
    assert reached == [ids[0], own]
    assert (acked(b), acked(a)) == (ids[0], own)
    # nothing new seen at all: the position stays where it was
    assert result_of(log.checked_acks([(b, ids[0], ids[2], frozenset({ids[2]}), None)])
                     ) == [ids[0]]
    # everything seen: the ack goes the whole way; b's own broadcast is not b's to receive
    reached = result_of(log.checked_acks([(b, ids[0], own,
                                           frozenset({ids[1], ids[2], broadcast}), None)]))
    assert reached == [own]
    assert acked(b) == own


class _DBAPI:
    class Error(Exception):
        pass

    class DatabaseError(Error):
        pass

    class OperationalError(DatabaseError):
        pass

    class InterfaceError(Error):
        pass

    class IntegrityError(DatabaseError):
        pass


class _FailingPool:
    """A pool whose transactions fail with the given errors, then succeed."""

    dbapi = _DBAPI

    def __init__(self, errors: list[Exception], clock: task.Clock) -> None:
        self.errors = errors
        self.runs = 0
        self._reactor = clock

    def runInteraction(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        self.runs += 1
        if self.errors:
            return defer.fail(self.errors.pop(0))
        return defer.succeed("done")


def _run_with(errors: list[Exception], warnings: list[dict[str, Any]]
              ) -> tuple[_FailingPool, defer.Deferred[Any], task.Clock]:
    clock = task.Clock()
    pool = _FailingPool(errors, clock)
    store = Access(pool, MySQLEngine(pool.dbapi))  # type: ignore[arg-type]
    globalLogPublisher.addObserver(warnings.append)
    try:
        d = store._run(lambda t: None)
        for _ in range(10):
            clock.advance(1)
    finally:
        globalLogPublisher.removeObserver(warnings.append)
    return pool, d, clock


def test_deadlocks_and_lock_wait_timeouts_are_retried_a_bounded_number_of_times() -> None:
    deadlock = _DBAPI.OperationalError(1213, "Deadlock found when trying to get lock")
    timeout = _DBAPI.OperationalError(1205, "Lock wait timeout exceeded")
    warnings: list[dict[str, Any]] = []
    pool, d, _ = _run_with([deadlock, timeout], warnings)
    assert result_of(d) == "done" and pool.runs == 3
    assert [w["code"] for w in warnings if "code" in w] == [1213, 1205]

    warnings.clear()
    pool, d, _ = _run_with([deadlock] * 10, warnings)
    with pytest.raises(UnavailableError):
        result_of(d)
    assert pool.runs == Access.max_tries
    assert len([w for w in warnings if "code" in w]) == Access.max_tries - 1

    # anything else fails at once, as before
    warnings.clear()
    pool, d, _ = _run_with([_DBAPI.OperationalError(2013, "Lost connection")], warnings)
    with pytest.raises(UnavailableError):
        result_of(d)
    assert pool.runs == 1 and not [w for w in warnings if "code" in w]


def test_each_login_is_stamped_and_acks_of_a_replaced_login_are_refused() -> None:
    """A login names itself in users.last_login (strictly increasing, even within one
    millisecond); a checked ack carrying an older login's stamp acknowledges nothing,
    since the newer login may already have read its backlog (tests/test_storage_mariadb.py
    has the cross-node interleavings)."""
    _, store = make_stores()
    a, b = users(store)
    ids = [s.id for s in send(store, a, b, ["one", "two"])]
    old = result_of(store.message_log.backlog_start(b, 100, 5000))
    new = result_of(store.message_log.backlog_start(b, 100, 5000))
    assert (old.login, new.login) == (5000, 5001)
    assert [r[0] for r in new.rows] == ids
    seen = frozenset(ids)
    log = store.message_log
    assert result_of(log.checked_acks([(b, 0, ids[-1], seen, old.login)])) == [0]
    assert result_of(log.checked_acks([(b, 0, ids[-1], seen, new.login)])) == [ids[-1]]
    assert result_of(store.message_log.backlog_start(b, 100, 4000)).rows == []
