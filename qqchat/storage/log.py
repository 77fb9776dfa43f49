"""The SQL of the message log: one transaction per batch of appends and acks (the
writer, ``writer.LogWriter``, makes the batches), the checked acks of a cluster, a
login's start, and every read of the log.

Ids come from the ``log_seq`` row (``Engine.reserve_ids``), or with ``--log-order
positions`` from a sequence that holds no lock (``Engine.next_ids``; positions.py
says what keeps acks safe then). Where the engine
stages new messages (SQLite), rows are inserted into ``Engine.log_table`` and
every read here first calls ``Engine.before_log_read``: ``reads_log`` makes the
plain ``_all``/``_one`` reads of this store do so, and each ``txn`` that reads
the log calls it itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from qqchat.storage.access import Access
from qqchat.storage.engines import Engine
from qqchat.storage.engines.base import LOG_COLUMNS
from qqchat.storage.positions import InFlight, LeaseExpiredError, LogPositions

KIND_DIRECT = 1
KIND_GROUP = 2
KIND_BROADCAST = 3


def locked_head(engine: Engine, t: Any) -> int:
    """The log head, read so that a message batch in flight is waited for (share
    lock): a new member's ``since_id``, or a new account's start, is then exactly
    the last message not meant for them.

    With ``--log-order positions`` nothing holds ``log_seq`` any more: the head is
    the sequence's (``Engine.sequence_head``), every id taken before this read at
    or below it, every id taken after above it. A message is then meant for the
    new member or account when its id was taken after the join: the same split,
    made by when the id was taken rather than when it committed. (A batch that
    took its ids after the head was read but read the group's members before the
    join committed does not push the message to the new member; the backlog has
    it, and the member's checked acks stop below it until a resync or login sends
    it: late, never lost.)"""
    if engine.log_order == "positions":
        return engine.sequence_head(t)
    t.execute("SELECT last_id FROM log_seq WHERE id = 1" + engine.share_lock)
    return int(t.fetchone()[0])


@dataclass(slots=True)
class NewMessage:
    """A message waiting for the log writer; ``cid`` makes client retries idempotent."""

    kind: int
    sender: int
    body: str
    recipient: int | None = None
    group_id: int | None = None
    cid: str | None = None


@dataclass(slots=True)
class Stored:
    """The outcome of one append. For a new group message, ``members`` is the group's
    membership read inside the writing transaction: exactly who it belongs to."""

    id: int
    ts: int
    duplicate: bool
    #: the sender is not a member of the group: nothing was stored
    not_member: bool = False
    members: Sequence[int] | None = None


@dataclass(slots=True)
class Backlog:
    """Where a login's backlog starts (``LogStore.backlog_start``)."""

    #: the acknowledged position the backlog follows
    acked: int
    #: the stamp naming this login; its checked acks carry it
    login: int
    #: the first page of messages after ``acked``
    rows: list[MessageRow]


#: (user, after, upto, seen, login): an ack ``LogStore.checked_acks`` checks
CheckedAck = tuple[int, int, int, frozenset[int], int | None]


# (id, kind, sender, sender_name, recipient, group_id, body, ts)
MessageRow = tuple[int, int, int, str, int | None, int | None, str, int]

_MESSAGE_COLUMNS = "m.id, m.kind, m.sender, u.name, m.recipient, m.group_id, m.body, m.ts"

def _reach(after: int, upto: int, ids: set[int], seen: frozenset[int]) -> int:
    """How far an ack up to ``upto`` may go: below the first of the user's messages in
    (``after``, ``upto``] (``ids``) that the session has not been sent (``seen``)."""
    for mid in sorted(ids):
        if mid not in seen:
            return max(mid - 1, after)
    return upto


def _by_user(row: tuple[int, int, int]) -> int:
    """The user id of an (acked, user id, acked) row: the order rows are locked in."""
    return row[1]


class LogStore(Access):
    """The message log's SQL; Deferreds fire in the reactor thread."""

    reads_log = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        engine, p = self._engine, self._engine.param
        self._q_insert = self._q(f"INSERT INTO {engine.log_table} ({LOG_COLUMNS}) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        self._q_group_head = self._q(self._group_head("?", "?"))
        self._conversation_upsert = engine.keep_greatest("user_id, peer_id", "last_id",
                                                         "conversations")
        head = engine.reserved_head
        #: ``_write_in_one_trip``: the head, and a message row's text parameter
        self._one_trip_head = head
        self._one_trip_body = p
        self._q_members_version = self._q("SELECT members_version FROM chat_groups WHERE id = ?")
        self._q_members = self._q("SELECT user_id FROM group_members WHERE group_id = ?")
        #: group id -> (its members_version, its members then, when they were read): a
        #: group message's transaction reads the version, not every member row
        #: (``_members_of``)
        self._members: dict[int, tuple[int, tuple[int, ...], float]] = {}

    def write_batch(self, messages: Sequence[NewMessage], acks: Iterable[tuple[int, int]],
                    now: int, flight: InFlight | None = None,
                    positions: LogPositions | None = None) -> defer.Deferred[list[Stored]]:
        """Append ``messages`` and apply ``acks`` (user id, message id) in one transaction.

        Ids come from the log_seq row, whose lock is held to commit: transactions
        that write messages commit one after another in id order, on any number of
        daemons, so a cumulative ack can never pass a message that commits late.
        With ``flight`` (``--log-order positions``) they come from the sequence
        instead, nothing is held, and ``positions`` keeps acks safe (positions.py).
        """
        engine = self._engine
        # users rows in id order, as every transaction that locks several takes them
        ack_rows = [(mid, uid, mid) for uid, mid in sorted(acks)]
        if flight is not None:
            assert positions is not None
            return self._run(self._write_positioned, messages, ack_rows, now, flight,
                             positions)

        def txn(t: Any) -> list[Stored]:
            kept = self._one_trip(messages) if engine.multi_statements and messages else None
            if kept is not None:
                done = self._write_in_one_trip(t, messages, kept, ack_rows, now)
                if done is not None:
                    return done
                # a group's members changed since they were kept: undo, and write the
                # batch statement by statement, reading them
                t.connection.rollback()
            results: list[Stored] = []
            if messages:
                head = engine.reserve_ids(t, len(messages))
                # read under the log_seq lock: a join either committed before (and
                # the joiner gets the message) or gets a since_id past it
                results, rows = self._prepare(
                    t, messages, range(head - len(messages) + 1, head + 1), now)
                if rows:
                    t.executemany(self._q_insert, rows)
                    if not engine.stages_log:  # else derived when the staged rows move
                        self._write_derived(t, rows)
                    engine.after_log_insert(t, rows[-1][0] + 1)
            if ack_rows:
                self._write_acks(t, ack_rows)
            return results

        return self._run(txn)

    def _prepare(self, t: Any, messages: Sequence[NewMessage], ids: Iterable[int], now: int
                 ) -> tuple[list[Stored], list[tuple[Any, ...]]]:
        """Each message's outcome, and the rows to insert, taking ``ids`` in order:
        members checked (and read, for the push) in the transaction, client ids
        already stored answered as duplicates."""
        results: list[Stored] = []
        rows: list[tuple[Any, ...]] = []
        next_ids = iter(ids)
        by_cid = self._stored_cids(t, {(m.sender, m.cid) for m in messages if m.cid is not None})
        members: dict[int, tuple[int, ...]] = {}
        for m in messages:
            if m.group_id is not None and m.group_id not in members:
                members[m.group_id] = self._members_of(t, m.group_id)
            group = members.get(m.group_id) if m.group_id is not None else None
            if group is not None and m.sender not in group:
                results.append(Stored(0, now, False, not_member=True))
                continue
            if m.cid is not None:
                seen = by_cid.get((m.sender, m.cid))
                if seen is not None:
                    results.append(Stored(seen.id, seen.ts, True))
                    continue
            mid = next(next_ids)
            stored = Stored(mid, now, False, members=group)
            if m.cid is not None:
                by_cid[(m.sender, m.cid)] = stored
            rows.append((mid, m.kind, m.sender, m.recipient, m.group_id, m.body, now, m.cid))
            results.append(stored)
        return results, rows

    #: groups whose members ``_members`` keeps at most (then it starts afresh)
    MEMBER_CACHE_GROUPS = 4096
    #: seconds a group's kept members are used for at most, whatever its version says
    MEMBERS_KEPT_SECONDS = 10.0

    def _members_of(self, t: Any, gid: int) -> tuple[int, ...]:
        """The members of group ``gid`` as this transaction sees them (none: no such
        group). Every change of a group's members bumps its ``members_version`` in the
        same transaction (``GroupStore``), so the version read here says whether the
        members kept from an earlier batch are still the ones this transaction would
        read: one row instead of a row per member, for every group message. Kept
        members are read again after ``MEMBERS_KEPT_SECONDS`` all the same: a node of
        the version before migration 5, still running in a rolling upgrade, changes
        members without bumping the version."""
        t.execute(self._q_members_version, (gid,))
        row = t.fetchone()
        if row is None:
            return ()
        version = int(row[0])
        now = time.monotonic()
        kept = self._kept(gid, now)
        if kept is not None and kept[0] == version:
            return kept[1]
        t.execute(self._q_members, (gid,))
        found = tuple(int(r[0]) for r in t.fetchall())
        if len(self._members) >= self.MEMBER_CACHE_GROUPS:
            self._members.clear()
        self._members[gid] = (version, found, now)
        return found

    def _kept(self, gid: int, now: float) -> tuple[int, tuple[int, ...]] | None:
        """The members kept for group ``gid`` and the version they were read at, while
        they may still be used (``MEMBERS_KEPT_SECONDS``)."""
        kept = self._members.get(gid)
        if kept is None or now - kept[2] >= self.MEMBERS_KEPT_SECONDS:
            return None
        return kept[0], kept[1]

    def _write_positioned(self, t: Any, messages: Sequence[NewMessage],
                          ack_rows: list[tuple[int, int, int]], now: int, flight: InFlight,
                          positions: LogPositions) -> list[Stored]:
        """``--log-order positions``: ids from the sequence, taken before the group
        members are read (so a join that committed before they were taken is seen),
        then every write in one multi-statement, this node's ``log_writers`` row
        last (once a second per slot: ``InFlight.record``), and the lease checked as
        the very last thing before the commit."""
        engine = self._engine
        results: list[Stored] = []
        rows: list[tuple[Any, ...]] = []
        if messages:
            results, rows = self._prepare(t, messages, engine.next_ids(t, len(messages)), now)
        parts: list[str] = []
        params: list[Any] = []
        if rows:
            parts.append(self._q(f"INSERT INTO messages ({LOG_COLUMNS}) VALUES "
                                 + ",".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(rows))))
            for row in rows:
                params += row
            self._derived_statements(rows, parts, params)
        for row in sorted(ack_rows, key=_by_user):
            parts.append(self._q(self._ACK))
            params += row
        if flight.record:
            parts.append(self._q("INSERT INTO log_writers (node, slot, position, updated_at)"
                                 " VALUES (?, ?, ?, ?)") + engine.keep_greatest(
                                     "node, slot", "position", "log_writers"))
            params += (positions.node, flight.slot, flight.floor, now)
        if parts:
            engine.run_script(t, parts, params)
        if not positions.may_commit(flight):
            raise LeaseExpiredError()
        flight.committing = True
        return results

    #: the most message text sent as one multi-statement (its packet stays small)
    _ONE_TRIP_BYTES = 256 * 1024

    def _one_trip(self, messages: Sequence[NewMessage]
                  ) -> dict[int, tuple[int, tuple[int, ...]]] | None:
        """For a batch that needs nothing read back before it is written, the members
        (and the version they were read at) of each of its groups, which the trip
        checks against the groups' versions (``_write_in_one_trip``); None for a batch
        with a client id (looked up first), or a group message to a group whose
        members this store does not keep (``_kept``) or does not count the sender
        among."""
        size = 0
        kept: dict[int, tuple[int, tuple[int, ...]]] = {}
        for m in messages:
            if m.cid is not None:
                return None
            gid = m.group_id
            if gid is not None:
                entry = kept.get(gid)
                if entry is None:
                    entry = self._kept(gid, time.monotonic())
                    if entry is None:
                        return None
                    kept[gid] = entry
                if m.sender not in entry[1]:
                    return None
            size += len(m.body)
        return kept if size * 4 <= self._ONE_TRIP_BYTES else None

    def _write_in_one_trip(self, t: Any, messages: Sequence[NewMessage],
                           kept: dict[int, tuple[int, tuple[int, ...]]],
                           ack_rows: list[tuple[int, int, int]], now: int
                           ) -> list[Stored] | None:
        """Where the engine takes multi-statements (MySQL): reserve the ids, insert the
        rows, apply the acks and read the head back in one round trip, then the
        commit: two round trips a batch instead of four or more, each of which holds
        the log_seq lock for every node. The rows take their ids from the engine's
        ``reserved_head`` (LAST_INSERT_ID), which the reservation sets.

        Group messages go to the members ``_one_trip`` found kept (``kept``); the trip
        reads each group's ``members_version`` under the lock, as ``_members_of``
        would, and if one moved since, returns None: the caller rolls the trip back."""
        engine = self._engine
        n = len(messages)
        # integers go into the text as literals (formatted with int(), so nothing
        # else can): the driver then escapes one parameter per message, the body
        head, body = self._one_trip_head, self._one_trip_body
        values = []
        newest_in: dict[int, int] = {}  # group id -> offset of its newest message
        for k, m in enumerate(messages):
            to = "NULL" if m.recipient is None else f"{int(m.recipient):d}"
            gid = "NULL"
            if m.group_id is not None:
                gid = f"{int(m.group_id):d}"
                newest_in[m.group_id] = n - 1 - k
            values.append(f"({head} - {n - 1 - k:d}, {int(m.kind):d}, {int(m.sender):d},"
                          f" {to}, {gid}, {body}, {int(now):d}, NULL)")
        parts = [engine.reserve_sql,
                 f"INSERT INTO messages ({LOG_COLUMNS}) VALUES " + ",".join(values),
                 f"SELECT {engine.reserved_head}"]
        params: list[Any] = [n]
        params += [m.body for m in messages]
        if kept:
            parts.append("SELECT id, members_version FROM chat_groups WHERE id IN ("
                         + ",".join(f"{int(g):d}" for g in sorted(kept)) + ")")
            parts += [self._group_head(f"{head} - {offset:d}", f"{int(g):d}")
                      for g, offset in sorted(newest_in.items())]
        # the conversation list: each pair's newest message, by its offset from the head
        newest: dict[tuple[int, int], int] = {}
        for k, m in enumerate(messages):
            if m.kind == KIND_DIRECT and m.recipient is not None:
                newest[(m.sender, m.recipient)] = newest[(m.recipient, m.sender)] = n - 1 - k
        if newest and not engine.derives_later:
            parts.append("INSERT INTO conversations (user_id, peer_id, last_id) VALUES "
                         + ",".join(f"({int(user):d}, {int(peer):d}, {head} - {offset:d})"
                                    for (user, peer), offset in sorted(newest.items()))
                         + self._conversation_upsert)
        for row in ack_rows:
            parts.append(self._q(self._ACK))
            params += row
        sets = engine.run_script(t, parts, params)
        if not sets or not sets[0]:
            raise RuntimeError("the log head was not returned")
        first = int(sets[0][0][0]) - n + 1
        if not kept:
            return [Stored(first + k, now, False) for k in range(n)]
        versions = {int(gid): int(version) for gid, version in sets[1]}
        if any(versions.get(g) != version for g, (version, _) in kept.items()):
            return None
        return [Stored(first + k, now, False,
                       members=None if m.group_id is None else kept[m.group_id][1])
                for k, m in enumerate(messages)]

    def _group_head(self, last_id: str, gid: str) -> str:
        """The statement that moves group ``gid``'s newest message on to ``last_id``
        (never back): with placeholders, or with literals in a multi-statement."""
        return (f"UPDATE chat_groups SET last_id = {self._engine.greatest}(last_id, {last_id})"
                f" WHERE id = {gid}")

    def _write_derived(self, t: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        """Keep the conversation list (each pair's and each group's newest message) in
        step with the rows just inserted, in the same transaction. (An engine that
        stages rows does this in bulk when they move: ``SqliteEngine.unstage``.)"""
        for sql, params in self._derived(rows):
            t.execute(sql, params)

    def _derived_statements(self, rows: Sequence[tuple[Any, ...]], parts: list[str],
                            params: list[Any]) -> None:
        """``_write_derived`` as statements for one multi-statement."""
        for sql, values in self._derived(rows):
            parts.append(sql)
            params += values

    def _derived(self, rows: Sequence[tuple[Any, ...]]
                 ) -> list[tuple[str, Sequence[Any]]]:
        """The statements of ``_write_derived``: one upsert for every pair's newest
        message, one update per group."""
        p = self._engine.param
        newest: dict[tuple[int, int], int] = {}
        groups: dict[int, int] = {}
        for mid, kind, sender, recipient, gid, *_ in rows:
            if kind == KIND_DIRECT:
                newest[(sender, recipient)] = newest[(recipient, sender)] = mid
            elif kind == KIND_GROUP:
                groups[gid] = mid
        out: list[tuple[str, Sequence[Any]]] = []
        if newest and not self._engine.derives_later:
            out.append(("INSERT INTO conversations (user_id, peer_id, last_id) VALUES "
                        + ",".join([f"({p}, {p}, {p})"] * len(newest))
                        + self._conversation_upsert,
                        [v for (user, peer), mid in sorted(newest.items())
                         for v in (user, peer, mid)]))
        out += [(self._q_group_head, (mid, gid)) for gid, mid in sorted(groups.items())]
        return out

    # -- the conversation list, caught up in bulk ---------------------------

    #: messages one catch-up transaction derives at most
    DERIVE_CHUNK = 20_000
    #: conversation rows one upsert statement writes at most
    _DERIVE_ROWS = 1000

    def derive_conversations(self) -> defer.Deferred[None]:
        """Fires once the conversation list holds every message committed before the
        call. Where the engine derives it later (``Engine.derives_later``) that is a
        catch-up, a transaction per ``DERIVE_CHUNK`` messages; where it stages the log,
        the move of staged rows (which every read of the log makes too); elsewhere the
        batches have written it."""
        engine = self._engine
        if engine.derives_later:
            return defer.Deferred.fromCoroutine(self._derive_all())
        if engine.stages_log:
            return self._run(engine.before_log_read)
        return defer.succeed(None)

    async def _derive_all(self) -> None:
        while await self._run(self._derive_some):
            pass

    def _derive_some(self, t: Any) -> bool:
        """One catch-up: the conversation rows of the committed messages after the
        mark in ``log_derived``, at most ``DERIVE_CHUNK`` of them; whether more are left.

        In lock order a batch holds the ``log_seq`` row from taking its ids to its
        commit, so the committed head, read without a lock, has every id at or below
        it committed: nothing can commit below the mark once it has moved. The first
        read fixes the transaction's snapshot, so the messages read below are exactly
        those up to that head."""
        engine = self._engine
        t.execute("SELECT d.conversations, s.last_id FROM log_derived d"
                  " JOIN log_seq s ON s.id = 1 WHERE d.id = 1")
        row = t.fetchone()
        if row is None or int(row[0]) >= int(row[1]):
            return False
        head = int(row[1])
        # one catch-up at a time, from the mark as it is now (another may have moved it)
        t.execute("SELECT conversations FROM log_derived WHERE id = 1" + engine.for_update)
        mark = int(t.fetchone()[0])
        if mark >= head:
            return False
        top = min(head, mark + self.DERIVE_CHUNK)
        t.execute(self._q("SELECT sender, recipient, MAX(id) FROM messages"
                          " WHERE id > ? AND id <= ? AND kind = 1 GROUP BY sender, recipient"),
                  (mark, top))
        newest: dict[tuple[int, int], int] = {}
        for sender, recipient, last in t.fetchall():
            for key in ((int(sender), int(recipient)), (int(recipient), int(sender))):
                if int(last) > newest.get(key, 0):
                    newest[key] = int(last)
        rows = sorted(newest.items())  # rows locked in key order, as by every upsert
        p = engine.param
        for i in range(0, len(rows), self._DERIVE_ROWS):
            chunk = rows[i : i + self._DERIVE_ROWS]
            t.execute("INSERT INTO conversations (user_id, peer_id, last_id) VALUES "
                      + ",".join([f"({p}, {p}, {p})"] * len(chunk))
                      + self._conversation_upsert,
                      [v for (user, peer), last in chunk for v in (user, peer, last)])
        t.execute(self._q("UPDATE log_derived SET conversations = ? WHERE id = 1"), (top,))
        return top < head

    def sequence_head(self) -> defer.Deferred[int]:
        """``Engine.sequence_head`` in a transaction of its own: an idle node's
        position (positions.py)."""
        engine = self._engine
        return self._run(engine.sequence_head)

    _ACK = "UPDATE users SET acked = ? WHERE id = ? AND acked < ?"

    def _write_acks(self, t: Any, rows: Sequence[tuple[int, int, int]]) -> None:
        """Apply (acked, user id, acked) rows, sorted by user id: each UPDATE locks its
        users row until commit, so two transactions (two nodes' acks) that took the
        same rows in opposite orders would deadlock. ``Engine.execute_each`` sends
        them in as few round trips as it can."""
        self._engine.execute_each(t, self._q(self._ACK), sorted(rows, key=_by_user))

    #: (sender, cid) pairs looked up per statement
    _CID_CHUNK = 100

    def _stored_cids(self, t: Any, keys: set[tuple[int, str]]
                     ) -> dict[tuple[int, str], Stored]:
        """The messages already stored under these (sender, cid) keys, in one statement
        per hundred keys rather than one per message: on MySQL each statement is a
        round trip to the server."""
        found: dict[tuple[int, str], Stored] = {}
        todo = list(keys)
        for i in range(0, len(todo), self._CID_CHUNK):
            chunk = todo[i : i + self._CID_CHUNK]
            where = " OR ".join(["(sender = ? AND cid = ?)"] * len(chunk))
            params = [v for key in chunk for v in key]
            sql = f"SELECT sender, cid, id, ts FROM messages WHERE {where}"
            if self._engine.stages_log:
                sql += f" UNION ALL SELECT sender, cid, id, ts FROM messages_recent WHERE {where}"
                params += params
            t.execute(self._q(sql), params)
            for sender, cid, mid, ts in t.fetchall():
                if isinstance(cid, bytes):
                    cid = cid.decode()
                found[(int(sender), cid)] = Stored(int(mid), int(ts), False)
        return found

    def message(self, message_id: int) -> defer.Deferred[MessageRow | None]:
        d = self._all(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender"
            " WHERE m.id = ?", message_id)
        d.addCallback(lambda rows: rows[0] if rows else None)
        return d

    _UNDELIVERED = (
        f"SELECT {_MESSAGE_COLUMNS} FROM ("
        " SELECT id FROM (SELECT id FROM messages WHERE kind = 1 AND recipient = ? AND id > ?"
        "  ORDER BY id LIMIT ?) d"
        " UNION ALL"
        " SELECT id FROM (SELECT m.id FROM group_members gm JOIN messages m"
        "  ON m.group_id = gm.group_id WHERE m.kind = 2 AND gm.user_id = ?"
        "  AND m.id > gm.since_id"
        "  AND m.id > ? AND m.sender <> ? ORDER BY m.id LIMIT ?) g"
        " UNION ALL"
        " SELECT id FROM (SELECT id FROM messages WHERE group_id IS NULL AND kind = 3"
        "  AND id > ? AND sender <> ? ORDER BY id LIMIT ?) b"
        ") x JOIN messages m ON m.id = x.id JOIN users u ON u.id = m.sender"
        " ORDER BY m.id LIMIT ?")

    @staticmethod
    def _undelivered_params(user_id: int, after: int, limit: int) -> tuple[int, ...]:
        return (user_id, after, limit, user_id, after, user_id, limit, after, user_id, limit,
                limit)

    def undelivered(self, user_id: int, after: int, limit: int
                    ) -> defer.Deferred[list[MessageRow]]:
        """The user's messages after ``after`` in id order: one-to-one to them (notes to
        self included), their groups' since they joined, and others' broadcasts."""
        return self._all(self._UNDELIVERED,
                             *self._undelivered_params(user_id, after, limit))

    _IDS_BETWEEN = (
        "SELECT id FROM messages WHERE kind = 1 AND recipient = ? AND id > ? AND id <= ?"
        " UNION ALL"
        " SELECT m.id FROM group_members gm JOIN messages m ON m.group_id = gm.group_id"
        " WHERE m.kind = 2 AND gm.user_id = ? AND m.id > gm.since_id AND m.id > ?"
        " AND m.id <= ? AND m.sender <> ?"
        " UNION ALL"
        " SELECT id FROM messages WHERE group_id IS NULL AND kind = 3 AND id > ? AND id <= ?"
        " AND sender <> ?")

    def checked_acks(self, acks: Sequence[CheckedAck]) -> defer.Deferred[list[int]]:
        """Several nodes: for each (user, ``after``, ``upto``, ``seen``, ``login``),
        acknowledge up to ``upto``, but never past a message of the user's in
        (``after``, ``upto``] that is not in ``seen`` (it may still be on its way from
        another node), and nothing at all once the user has logged in again since the
        login stamped ``login`` (``backlog_start``; None: not checked). All are read
        and written in one transaction (on MySQL, the reads in one round trip and the
        writes in another); returns each position acknowledged (``after`` when nothing
        could be).

        The users rows are locked first, in id order, before anything is read: a
        login's stamp (``backlog_start``) then either commits before this
        transaction reads it (the ack is refused: that login's backlog, read after
        its stamp, may resend these messages, and the reply must not call them
        acknowledged) or waits until this transaction has committed (the login reads
        the new position)."""
        engine = self._engine
        q_ids = self._q(self._IDS_BETWEEN)
        users = sorted({a[0] for a in acks})
        q_lock = self._q(f"SELECT id, last_login FROM users WHERE id IN "
                         f"({self._placeholders(len(users))}) ORDER BY id" + engine.for_update)

        def ids_params(user_id: int, after: int, upto: int) -> tuple[int, ...]:
            return (user_id, after, upto, user_id, after, upto, user_id, after, upto,
                    user_id)

        def txn(t: Any) -> list[int]:
            engine.before_log_read(t)
            sets = engine.result_sets(
                t, [(q_lock, users)] + [(q_ids, ids_params(user_id, after, upto))
                                        for user_id, after, upto, _, _ in acks])
            stamps = {int(uid): int(stamp) for uid, stamp in sets[0]}
            found = [{int(r[0]) for r in rows} for rows in sets[1:]]
            reached = [
                after if login is not None and stamps.get(user_id) != login
                else _reach(after, upto, ids, seen)
                for (user_id, after, upto, seen, login), ids in zip(acks, found, strict=True)]
            rows = [(r, user_id, r)
                    for (user_id, after, *_), r in zip(acks, reached, strict=True)
                    if r > after]
            if rows:
                self._write_acks(t, rows)
            return reached

        return self._run(txn)

    def backlog_start(self, user_id: int, limit: int, now: int) -> defer.Deferred[Backlog]:
        """A login's start, in one transaction: stamp the users row with a value that
        names this login (``users.last_login``: the time in ms, made strictly
        greater than the previous login's), then read the acknowledged position and
        the first page of what follows it.

        The stamp is an UPDATE, so it waits for any ack transaction holding the row
        (one of another node's, say) and the read after it sees that ack; an ack
        of an older login that comes later finds a newer stamp and is refused
        (``checked_acks``). Either way a message this login's backlog sends was
        never confirmed acknowledged to anyone."""
        bump = self._engine.greatest
        q_stamp = self._q(f"UPDATE users SET last_login = {bump}(?, last_login + 1) "
                          "WHERE id = ?")
        q_acked = self._q("SELECT acked, last_login FROM users WHERE id = ?")
        q_rows = self._q(self._UNDELIVERED)

        def txn(t: Any) -> Backlog:
            with self._engine.unsynced(t):  # the stamp need not outlive the OS
                t.execute(q_stamp, (now, user_id))
                self._engine.before_log_read(t)
                t.execute(q_acked, (user_id,))
                row = t.fetchone()
                acked, login = (int(row[0]), int(row[1])) if row else (0, 0)
                t.execute(q_rows, self._undelivered_params(user_id, acked, limit))
                return Backlog(acked, login, list(t.fetchall()))

        return self._run(txn)

    def history_direct(self, a: int, b: int, before: int, limit: int
                       ) -> defer.Deferred[list[MessageRow]]:
        # one index range per direction, newest first, then the newest of both
        return self._all(
            f"SELECT {_MESSAGE_COLUMNS} FROM ("
            " SELECT id FROM (SELECT id FROM messages WHERE kind = 1 AND sender = ?"
            "  AND recipient = ? AND id < ? ORDER BY id DESC LIMIT ?) ab"
            " UNION ALL"
            " SELECT id FROM (SELECT id FROM messages WHERE kind = 1 AND sender = ?"
            "  AND recipient = ? AND id < ? ORDER BY id DESC LIMIT ?) ba"
            ") x JOIN messages m ON m.id = x.id JOIN users u ON u.id = m.sender"
            " ORDER BY m.id DESC LIMIT ?",
            a, b, before, limit, b, a, before, limit if a != b else 0, limit,
        )

    def history_group(self, gid: int, before: int, limit: int
                      ) -> defer.Deferred[list[MessageRow]]:
        return self._all(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender"
            " WHERE m.kind = 2 AND m.group_id = ? AND m.id < ? ORDER BY m.id DESC LIMIT ?",
            gid, before, limit,
        )
