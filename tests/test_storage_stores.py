"""The domain stores on both engines: SQLite and a real MariaDB, the same tests.

Each engine answers differently where the databases differ (placeholders,
locking reads, id reservation, multi-statements, SQLite's staging table), so
what the stores promise is checked on each: the statements are written once."""

from __future__ import annotations

import pytest
import pytest_twisted

from qqchat.storage.log import (
    KIND_BROADCAST,
    KIND_DIRECT,
    KIND_GROUP,
    LogStore,
    NewMessage,
    Stored,
)
from qqchat.storage.stores import Stores


async def users(stores: Stores, *names: str) -> list[int]:
    ids = []
    for name in names:
        uid = await stores.accounts.create_user(name, "h", 1)
        assert uid is not None
        ids.append(uid)
    return ids


async def send(stores: Stores, messages: list[NewMessage],
               acks: list[tuple[int, int]] | None = None, now: int = 1000) -> list[Stored]:
    return await stores.message_log.write_batch(messages, acks or [], now)


async def acked(stores: Stores, uid: int) -> int:
    row = await stores.message_log._one("SELECT acked FROM users WHERE id = ?", uid)
    assert row is not None
    return int(row[0])


@pytest_twisted.ensureDeferred
async def test_accounts_are_found_by_name_folded_name_and_id(stores: Stores) -> None:
    (alice,) = await users(stores, "Alice")
    assert await stores.accounts.create_user("Alice", "h", 2) is None  # taken
    assert await stores.accounts.create_user("ALICE", "h", 2) is None  # folds to it
    by_name = await stores.accounts.user_by_name("alice")
    assert by_name is not None and by_name.id == alice and by_name.name == "Alice"
    by_id = await stores.accounts.user_by_id(alice)
    assert by_id == by_name
    assert await stores.accounts.user_names([alice, alice + 100]) == {alice: "Alice"}
    assert await stores.accounts.disabled_since(0) == []


@pytest_twisted.ensureDeferred
async def test_a_batch_is_stored_in_id_order_and_every_read_sees_it(stores: Stores) -> None:
    """Without groups or client ids a MariaDB batch is one multi-statement; with them it
    is statement by statement; on SQLite rows are staged. Every read sees them all."""
    a, b = await users(stores, "a", "b")
    plain = await send(stores, [NewMessage(KIND_DIRECT, a, t, recipient=b) for t in "xyz"])
    ids = [s.id for s in plain]
    assert ids == list(range(ids[0], ids[0] + 3)) and not any(s.duplicate for s in plain)
    (cid,) = await send(stores, [NewMessage(KIND_DIRECT, b, "w", recipient=a, cid="c1")])
    assert cid.id == ids[-1] + 1
    backlog = await stores.message_log.undelivered(b, 0, 10)
    assert [r[6] for r in backlog] == ["x", "y", "z"]
    history = await stores.message_log.history_direct(a, b, 2**62, 10)
    assert [r[6] for r in history] == ["w", "z", "y", "x"]
    assert await stores.message_log.message(ids[0]) == backlog[0]
    page = await stores.directory.conversations(a, 0, 2**62, 10)
    assert [(c.id, c.last_id, c.unread) for c in page] == [(b, cid.id, 1)]


@pytest_twisted.ensureDeferred
async def test_a_retried_client_id_is_stored_once(stores: Stores) -> None:
    a, b = await users(stores, "a", "b")
    first, again = await send(stores, [NewMessage(KIND_DIRECT, a, "hi", recipient=b, cid="k")
                                       for _ in range(2)])
    assert not first.duplicate and again.duplicate and again.id == first.id
    await stores.message_log.undelivered(b, 0, 10)  # SQLite: the staged row moves
    (third,) = await send(stores, [NewMessage(KIND_DIRECT, a, "hi", recipient=b, cid="k")])
    assert third.duplicate and third.id == first.id


@pytest_twisted.ensureDeferred
async def test_groups_caps_members_and_messages(stores: Stores) -> None:
    a, b, c = await users(stores, "a", "b", "c")
    gid = await stores.groups.create_group("g", "d", a, 5, max_created=1)
    assert isinstance(gid, int)
    assert await stores.groups.create_group("h", "d", a, 5, max_created=1) == "too_many_created"
    assert await stores.groups.join_group(gid, b, 6, max_members=2) == "joined"
    assert await stores.groups.join_group(gid, b, 6, max_members=3) == "already"
    assert await stores.groups.join_group(gid, c, 6, max_members=2) == "full"
    assert await stores.groups.member_role(gid, a) == "creator"
    total, members = await stores.groups.group_members(gid)
    assert total == 2 and [m[0] for m in members] == [a, b]
    (page,) = await stores.groups.groups_of(b, 0, 10, 1)
    assert page["member_count"] == 2 and page["more_members"]

    stored, refused = await send(stores, [NewMessage(KIND_GROUP, a, "to g", group_id=gid),
                                          NewMessage(KIND_GROUP, c, "not in", group_id=gid)])
    assert sorted(stored.members or []) == [a, b] and not stored.not_member
    assert refused.not_member
    rows = await stores.message_log.history_group(gid, 2**62, 10)
    assert [r[6] for r in rows] == ["to g"]
    assert await stores.groups.leave_group(gid, b)
    assert await stores.groups.group_member_ids(gid) == [a]


async def group_members_at_send(stores: Stores, sender: int, gid: int) -> list[int]:
    (stored,) = await send(stores, [NewMessage(KIND_GROUP, sender, "m", group_id=gid)])
    assert not stored.not_member
    return sorted(stored.members or [])


@pytest_twisted.ensureDeferred
async def test_a_group_message_has_the_members_of_its_moment(stores: Stores) -> None:
    """The log keeps a group's members between messages and reads them again when the
    group's members_version says they changed: a join or leave counts for the next
    message at once."""
    a, b, c = await users(stores, "a", "b", "c")
    gid = await stores.groups.create_group("g", "d", a, 5)
    assert isinstance(gid, int)
    assert await group_members_at_send(stores, a, gid) == [a]
    assert await stores.groups.join_group(gid, b, 6, max_members=10) == "joined"
    assert await group_members_at_send(stores, a, gid) == [a, b]
    assert await stores.groups.join_group(gid, c, 6, max_members=10) == "joined"
    assert await stores.groups.leave_group(gid, b)
    assert await group_members_at_send(stores, a, gid) == [a, c]
    (refused,) = await send(stores, [NewMessage(KIND_GROUP, b, "gone", group_id=gid)])
    assert refused.not_member
    assert not await stores.groups.leave_group(gid, b)  # not a member: nothing changes
    assert await group_members_at_send(stores, c, gid) == [a, c]


@pytest_twisted.ensureDeferred
async def test_a_group_batch_to_kept_members_is_one_trip_where_the_engine_can(
        stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
    """MariaDB: once the log keeps a group's members, a batch with its messages is one
    multi-statement that reads the group's version to check them; if a join moved it
    since, that trip is undone and the batch written statement by statement."""
    a, b, c = await users(stores, "a", "b", "c")
    gid = await stores.groups.create_group("g", "d", a, 5)
    assert isinstance(gid, int)
    assert await stores.groups.join_group(gid, b, 6, max_members=10) == "joined"
    log = stores.message_log
    trips: list[int] = []
    run_script = log.engine.run_script

    def counted(t: object, statements: list[str], params: list[object]) -> object:
        inserts = sum(s.startswith("INSERT INTO messages") for s in statements)
        if inserts:  # a batch's trip (other multi-statements are no concern here)
            trips.append(inserts)
        return run_script(t, statements, params)

    monkeypatch.setattr(log.engine, "run_script", counted)
    assert await group_members_at_send(stores, a, gid) == [a, b]  # members read
    (direct, grouped) = await send(stores, [NewMessage(KIND_DIRECT, a, "to b", recipient=b),
                                            NewMessage(KIND_GROUP, a, "m", group_id=gid)],
                                   acks=[(b, 1)])
    assert grouped.id == direct.id + 1 and sorted(grouped.members or []) == [a, b]
    assert await stores.groups.join_group(gid, c, 6, max_members=10) == "joined"
    assert await group_members_at_send(stores, a, gid) == [a, b, c]
    # what the undone trip inserted is gone: each message is in the log once
    rows = await log.history_group(gid, 2**62, 10)
    assert [r[6] for r in rows] == ["m", "m", "m"]
    head = await log._one("SELECT last_id FROM chat_groups WHERE id = ?", gid)
    assert head is not None and int(head[0]) == rows[0][0]
    assert await acked(stores, b) == 1
    # one trip for the second batch, and one tried for the third
    assert trips == ([1, 1] if log.engine.multi_statements else [])


@pytest_twisted.ensureDeferred
async def test_kept_group_members_are_read_again_after_a_while(stores: Stores) -> None:
    """A member added without the version moving (as a node from before migration 5
    does in a rolling upgrade) is not seen while the members are kept, and is once
    they have been kept for MEMBERS_KEPT_SECONDS."""
    a, b = await users(stores, "a", "b")
    gid = await stores.groups.create_group("g", "d", a, 5)
    assert isinstance(gid, int)
    assert await group_members_at_send(stores, a, gid) == [a]
    q = stores.message_log._q("INSERT INTO group_members (group_id, user_id, role, since_id,"
                              " joined_at) VALUES (?, ?, 'member', 0, 6)")
    await stores.message_log._run(lambda t: t.execute(q, (gid, b)))
    assert await group_members_at_send(stores, a, gid) == [a]
    stores.message_log.MEMBERS_KEPT_SECONDS = 0.0
    assert await group_members_at_send(stores, a, gid) == [a, b]


@pytest_twisted.ensureDeferred
async def test_friend_requests_accepts_and_the_cap(stores: Stores) -> None:
    a, b, c = await users(stores, "a", "b", "c")
    social = stores.social
    assert await social.request_friend(a, b, 1, 1) == "requested"
    assert await social.request_friend(a, b, 1, 1) == "pending"
    assert await social.accept_request(b, a, 2, 1) == "accepted"
    assert await social.request_friend(a, b, 3, 1) == "friends"
    assert await social.request_friend(c, a, 3, 1) == "requested"
    assert await social.accept_request(a, c, 4, 1) == "full"
    assert await social.friends_of(a) == [(b, "b")]
    view = await social.login_view(a, 10, 10, 3)
    assert view.friends == [(b, "b")] and [r[0] for r in view.requests] == [c]
    assert await social.remove_friend(a, b)
    assert await social.friend_ids(a) == []


@pytest_twisted.ensureDeferred
async def test_acks_checked_acks_and_login_stamps(stores: Stores) -> None:
    """A batched ack moves the position; a checked ack stops before a message the
    session was not sent, and acknowledges nothing for a replaced login."""
    a, b = await users(stores, "a", "b")
    ids = [s.id for s in await send(stores, [NewMessage(KIND_DIRECT, a, t, recipient=b)
                                             for t in ("one", "two", "three")])]
    (broadcast,) = await send(stores, [NewMessage(KIND_BROADCAST, a, "all")], [(b, ids[0])])
    assert await acked(stores, b) == ids[0]
    log = stores.message_log
    assert await log.checked_acks([(b, ids[0], broadcast.id,
                                    frozenset({ids[2], broadcast.id}), None)]) == [ids[0]]
    old = await log.backlog_start(b, 100, 5000)
    new = await log.backlog_start(b, 100, 5000)
    assert (old.login, new.login) == (5000, 5001) and old.acked == ids[0]
    assert [r[0] for r in new.rows] == [ids[1], ids[2], broadcast.id]
    seen = frozenset([*ids[1:], broadcast.id])
    assert await log.checked_acks([(b, ids[0], broadcast.id, seen, old.login)]) == [ids[0]]
    assert await log.checked_acks([(b, ids[0], broadcast.id, seen, new.login)]) == [broadcast.id]
    assert await acked(stores, b) == broadcast.id


async def conversation_rows(stores: Stores) -> list[tuple[int, int, int]]:
    """The conversation list as stored (read by a store that moves no staged rows)."""
    rows = await stores.accounts._all(
        "SELECT user_id, peer_id, last_id FROM conversations ORDER BY user_id, peer_id")
    return [(int(u), int(p), int(last)) for u, p, last in rows]


@pytest_twisted.ensureDeferred
async def test_the_conversation_list_is_caught_up_in_bulk_and_before_each_read(
        stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch does not write the conversation list itself (MariaDB derives it later;
    SQLite when staged rows move): a catch-up does, a chunk of messages per
    transaction, and a read of the list waits for one, so it is never stale."""
    monkeypatch.setattr(LogStore, "DERIVE_CHUNK", 2)
    a, b, c = await users(stores, "a", "b", "c")
    first = await send(stores, [NewMessage(KIND_DIRECT, a, "1", recipient=b),
                                NewMessage(KIND_DIRECT, b, "2", recipient=a),
                                NewMessage(KIND_DIRECT, c, "3", recipient=a)])
    (last,) = await send(stores, [NewMessage(KIND_DIRECT, a, "4", recipient=b)])
    assert await conversation_rows(stores) == []
    page = await stores.directory.conversations(a, 0, 2**62, 10)
    assert [(conv.id, conv.last_id) for conv in page] == [(b, last.id), (c, first[2].id)]
    expected = sorted([(a, b, last.id), (b, a, last.id), (a, c, first[2].id),
                       (c, a, first[2].id)])
    assert await conversation_rows(stores) == expected
    # more than a chunk behind: the periodic catch-up takes them in turns, to the end
    more = await send(stores, [NewMessage(KIND_DIRECT, b, t, recipient=c) for t in "xyz"])
    await stores.message_log.derive_conversations()
    assert await conversation_rows(stores) == sorted(
        [*expected, (b, c, more[-1].id), (c, b, more[-1].id)])
    await stores.message_log.derive_conversations()  # nothing left: a no-op
    assert (await stores.directory.conversations(c, 0, 2**62, 10))[0].last_id == more[-1].id
