"""Byte-level fuzzing of the framing: what reaches a daemon is bytes, not JSON.

Random bytes, broken and cut-off UTF-8, NUL bytes, numbers no double can hold,
nesting past the decoder's depth limit, lines at and just past the line cap, CR/LF
variants, and well-formed JSON whose fields have the wrong type. Each bad line
must get an error on the same connection (an over-long one ``line_too_long``,
then the close), must leave the stored state exactly as it was, and meanwhile
another logged-in user keeps chatting with bounded latency (the witness).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_twisted
from chatclient import ChatClient, connect
from conftest import start_daemon
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples
from test_e2e_bad_input import PUSH_TYPES, Witness
from twisted.internet import defer

from qqchat.app import ChatDaemon, Settings
from qqchat.services.limits import Limits

#: the documented default of --max-line (protocol.md section 2); the daemon runs with it
MAX_LINE = 65536
#: well above a depth any JSON decoder must accept and below the line cap
TOO_DEEP = 1100
#: nesting that stays valid JSON (the decoder's limit is 1024 levels)
DEEP_OK = 1000
PASSWORD = "password1"
WAIT = 15.0

_NO_REQ = object()


@dataclass(frozen=True)
class Expect:
    """The answer one line must get: an error ``code`` (None: any error, and
    ``bad_json`` if the line is not JSON at all), or a success ``reply`` type."""

    code: str | None = None
    req: Any = _NO_REQ
    field: str | None = None
    reply: str | None = None


@dataclass(frozen=True)
class Bad:
    kind: str
    line: bytes  # without its terminator
    expect: Expect
    end: bytes = b"\n"

    def wire(self) -> bytes:
        return self.line + self.end


# -- the daemon, its users, its stored state ------------------------------------------


@dataclass
class Node:
    daemon: ChatDaemon
    port: int
    db: Path
    witness: Witness
    fuzzer: ChatClient
    ids: dict[str, int]
    group: int
    #: the generated lines, built once: they name this node's users and group
    lines: st.SearchStrategy[list[Bad]] | None = field(default=None, repr=False)

    def stored(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, but the witness's own messages (and ``log_seq``,
        which its sends move): what a bad line must never change."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        with closing(sqlite3.connect(self.db, timeout=WAIT)) as con:
            tables = [r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' AND name != 'log_seq'")]
            for table in tables:
                if table == "messages_recent":
                    continue  # read with ``messages``: rows move from one to the other
                if table == "messages":
                    rows = con.execute("SELECT * FROM message_log WHERE sender != ?",
                                       (self.ids["alice"],)).fetchall()
                else:
                    rows = con.execute(f'SELECT * FROM "{table}"').fetchall()
                out[table] = sorted(rows, key=repr)
        assert "messages" in out and "users" in out, f"unexpected schema: {sorted(out)}"
        return out


async def _user(port: int, name: str) -> ChatClient:
    c = await connect(port)
    await c.ok("register", name=name, password=PASSWORD)
    await c.login(name, PASSWORD)
    return c


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    db = tmp_path_factory.mktemp("fuzz-bytes") / "chat.db"

    async def setup() -> Node:
        daemon, port = await start_daemon(Settings(
            listen="tcp:0:interface=127.0.0.1", db=f"sqlite:///{db}", hash_cost=4,
            rate_limit=0, limits=Limits(send_rate=0, register_rate=0)))
        users = {name: await _user(port, name)
                 for name in ("fuzzer", "alice", "bob", "carol", "cutter")}
        ids = {name: c.user_id for name, c in users.items() if c.user_id is not None}
        created = await users["fuzzer"].ok("group_create", name="fuzzers")
        users["cutter"].close()  # it logs in afresh for each over-long line
        witness = Witness(users["alice"], users["bob"])
        witness.start()
        return Node(daemon, port, db, witness, users["fuzzer"], ids, created["group"]["id"])

    n = pytest_twisted.blockon(defer.ensureDeferred(setup()))
    n.lines = st.lists(bad_lines(n), min_size=1, max_size=4)
    yield n
    n.witness.tear_down(n.fuzzer, n.daemon)


# -- checking one write of bad lines ---------------------------------------------------


def check_answer(bad: Bad, answer: dict[str, Any]) -> None:
    where = f"{bad.kind} line {bad.line[:160]!r}{'...' if len(bad.line) > 160 else ''}" \
            f" got {answer}"
    e = bad.expect
    if e.reply is not None:
        assert answer.get("type") == e.reply, where
    else:
        assert answer.get("type") == "error", where
        assert isinstance(answer.get("message"), str) and answer["message"], where
    req = e.req
    if e.code is None and e.reply is None:  # any error; the decoder decides the rest
        try:
            msg = orjson.loads(bad.line)
        except orjson.JSONDecodeError:
            assert answer["code"] == "bad_json", where
            msg = None
        if isinstance(msg, dict) and not isinstance(msg.get("req", 0), dict | list):
            req = msg.get("req", _NO_REQ)
    elif e.code is not None:
        assert answer.get("code") == e.code, where
    if e.field is not None:
        assert answer.get("field") == e.field, where
    if req is _NO_REQ:
        assert "req" not in answer, where
    else:
        echoed = answer.get("req", _NO_REQ)
        assert type(echoed) is type(req) and echoed == req, where


async def send_bad(n: Node, bads: list[Bad], raw: bytes | None = None) -> None:
    """One write with every line (or ``raw``, whose non-blank lines ``bads`` describe),
    then a ``ping``: each line must have its answer, in order, before the ``pong``;
    nothing stored may change; the witness must be fine."""
    before = n.stored()
    frames = n.fuzzer.frames
    del frames[:]
    n.fuzzer.send_raw(b"".join(b.wire() for b in bads) if raw is None else raw)
    pong = await n.fuzzer.call("ping", req="~sync", wait=WAIT)
    assert pong["type"] == "pong"
    end = next(i for i, f in enumerate(frames) if f is pong)
    answers = [f for f in frames[:end] if f.get("type") not in PUSH_TYPES]
    assert len(answers) == len(bads), \
        f"{len(answers)} answers to {len(bads)} lines {[b.kind for b in bads]}: {answers}"
    for bad, answer in zip(bads, answers, strict=True):
        check_answer(bad, answer)
    n.fuzzer.pushes.clear()
    assert n.stored() == before, f"stored state changed by {[b.kind for b in bads]}"
    n.witness.check()


async def send_over_long(n: Node, payload: bytes) -> None:
    """On a fresh connection: ``line_too_long``, then the server closes, and nothing
    else sent on that connection is read."""
    from twisted.internet import reactor

    c = await connect(n.port)
    await c.login("cutter", PASSWORD)
    before = n.stored()
    del c.frames[:]
    c.send_raw(payload)
    await c.closed.addTimeout(WAIT, reactor)
    answers = [f for f in c.frames if f.get("type") not in PUSH_TYPES]
    assert [(f["type"], f["code"]) for f in answers] == [("error", "line_too_long")], answers
    assert answers[0]["message"] == f"a line is at most {MAX_LINE} bytes; closing"
    # anything the server wrongly went on reading was dispatched before the close; once
    # the log writer is idle and the pool's one thread has run what was queued before a
    # last empty transaction, it would be stored
    await n.fuzzer.call("ping", wait=WAIT)
    await n.daemon.writer.idle()
    await n.daemon.database.pool.runInteraction(lambda t: None)
    assert n.stored() == before, "stored state changed by an over-long line"
    n.witness.check()


# -- generated bad lines ------------------------------------------------------------------
# Each strategy takes the node's ids (valid targets, so a line that slipped through
# would really act) and builds lines whose answer is known by construction.

reqs = st.none() | st.integers(-(2**53), 2**53) | st.text(max_size=12)
ends = st.sampled_from([b"\n", b"\r\n"])


def _frame(typ: str, fields: dict[str, Any], req: Any) -> dict[str, Any]:
    frame = {"type": typ, **fields}
    if req is not None:
        frame["req"] = req
    return frame


def _dump(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, ensure_ascii=False).encode()


def _want(req: Any) -> Any:
    return _NO_REQ if req is None else req


def random_bytes(n: Node) -> st.SearchStrategy[Bad]:
    return st.builds(lambda raw, end: Bad("random bytes", raw, Expect(), end),
                     st.binary(min_size=1, max_size=200).filter(
                         lambda b: b"\n" not in b and b"\r" not in b and bool(b.strip())),
                     ends)


def side_effecting(n: Node) -> st.SearchStrategy[bytes]:
    """Requests that would store something if they got through."""
    text = st.text(min_size=1, max_size=20).filter(str.strip)
    return st.one_of(
        st.builds(lambda t, r: _dump(_frame("chat", {"to": n.ids["bob"], "text": t}, r)),
                  text, reqs),
        st.builds(lambda t, r: _dump(_frame("group_chat", {"group": n.group, "text": t}, r)),
                  text, reqs),
        st.builds(lambda t, r: _dump(_frame("broadcast", {"text": t}, r)), text, reqs),
        st.builds(lambda r: _dump(_frame("friend_add", {"to": n.ids["carol"]}, r)), reqs),
        st.builds(lambda t, r: _dump(_frame("group_create", {"name": t}, r)), text, reqs),
    )


INVALID_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf",
                b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",
                b"\xf8\x88\x80\x80\x80", b"\xe4\xbd", b"\xf0\x9f\x98", b"\xc3"]


def broken_utf8(n: Node) -> st.SearchStrategy[Bad]:
    def build(pre: str, bad: bytes, post: str, req: Any, end: bytes) -> Bad:
        frame = _dump(_frame("chat", {"to": n.ids["bob"], "text": pre + "\x01" + post}, req))
        return Bad("invalid utf-8", frame.replace(b"\x01", bad).replace(b"\\u0001", bad),
                   Expect("bad_json"), end)

    return st.builds(build, st.text(max_size=10), st.sampled_from(INVALID_UTF8),
                     st.text(max_size=10), reqs, ends)


def truncated(n: Node) -> st.SearchStrategy[Bad]:
    """A side-effecting request cut short, often inside a multi-byte character."""
    def cut(line: bytes, where: float, end: bytes) -> Bad:
        return Bad("truncated", line[:max(1, int(len(line) * where))], Expect("bad_json"), end)

    return st.builds(cut, side_effecting(n), st.floats(0, 0.999), ends)


def with_nul(n: Node) -> st.SearchStrategy[Bad]:
    def insert(line: bytes, where: float, end: bytes) -> Bad:
        i = int((len(line) + 1) * where)
        return Bad("nul byte", line[:i] + b"\x00" + line[i:], Expect("bad_json"), end)

    return st.builds(insert, side_effecting(n), st.floats(0, 0.999), ends)


#: literals a JSON number may look like that no double holds, or that JSON forbids
BAD_NUMBERS = [b"1e400", b"-1e400", b"1E309", b"9" * 400, b"-" + b"9" * 400, b"NaN", b"-NaN",
               b"Infinity", b"-Infinity", b"inf", b"+1", b"01", b"1.", b".5", b"0x10", b"1e",
               b"--1", b"1e+", "\uff11".encode()]


def huge_numbers(n: Node) -> st.SearchStrategy[Bad]:
    number = st.one_of(
        st.sampled_from(BAD_NUMBERS),
        st.integers(309, 5000).map(lambda k: b"1" + b"0" * k),
        st.integers(309, 10**9).map(lambda k: b"1e%d" % k),
    )
    slots = [b'{"type":"chat","to":@,"text":"x"}', b'{"type":"ack","id":@}',
             b'{"type":"ping","req":@}', b'{"type":"who","limit":@}',
             b'{"type":"history","with":%d,"before":@}' % n.ids["bob"]]
    return st.builds(lambda slot, num, end: Bad("number", slot.replace(b"@", num),
                                                Expect("bad_json"), end),
                     st.sampled_from(slots), number, ends)


def deep(n: Node) -> st.SearchStrategy[Bad]:
    half = MAX_LINE // 2 - 20
    return st.one_of(
        st.integers(TOO_DEEP, MAX_LINE).map(
            lambda d: Bad("open [", b"[" * d, Expect("bad_json"))),
        st.integers(TOO_DEEP, half).map(
            lambda d: Bad("deep []", b"[" * d + b"]" * d, Expect("bad_json"))),
        st.integers(TOO_DEEP, MAX_LINE // 6).map(
            lambda d: Bad("deep {}", b'{"a":' * d + b"1" + b"}" * d, Expect("bad_json"))),
        st.integers(TOO_DEEP, half).map(lambda d: Bad(
            "deep req", b'{"type":"ping","req":%s}' % (b"[" * d + b"]" * d),
            Expect("bad_json"))),
        st.integers(1, DEEP_OK).map(lambda d: Bad(
            "nested req", b'{"type":"ping","req":%s}' % (b"[" * d + b"]" * d),
            Expect("bad_field", field="req"))),
        st.builds(lambda d, r: Bad(
            "nested id", _dump(_frame("ack", {"id": 0}, r)).replace(
                b'"id": 0', b'"id": ' + b"[" * d + b"]" * d),
            Expect("bad_field", req=_want(r), field="id")),
            st.integers(1, DEEP_OK), reqs),
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=5)
not_int = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.text(max_size=10),
    st.lists(json_values, max_size=2), st.dictionaries(st.text(max_size=5), json_values,
                                                      max_size=2),
    st.sampled_from([1.0, -0.0, 1e300, "1", ""]))
not_id = not_int | st.integers(-(2**63), 0) | st.integers(2**53 + 1, 2**64 - 1)
not_str = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(), st.lists(json_values, max_size=2),
    st.dictionaries(st.text(max_size=5), json_values, max_size=2))
not_cid = not_str.filter(lambda v: isinstance(v, bool) or not isinstance(v, int)) \
    | st.just("") | st.text(min_size=65, max_size=80)
#: kind -> wrong values (None is "absent", which for a required field is missing_field)
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "id": st.none() | not_id,
    "opt_id": not_id,
    "str": st.none() | not_str,
    "opt_str": not_str,
    "cid": not_cid,
    "history_limit": not_int | st.sampled_from([0, 201, -1]),
    "who_limit": not_int | st.sampled_from([0, 501, -1]),
    "offset": not_int | st.integers(-(2**63), -1),
}


def wrong_types(n: Node) -> st.SearchStrategy[Bad]:
    """A request that would act, with one field of a wrong type or range."""
    bob, carol, g = n.ids["bob"], n.ids["carol"], n.group
    bases: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
        ("chat", {"to": bob, "text": "hi", "cid": "c1"},
         [("to", "id"), ("text", "str"), ("cid", "cid")]),
        ("group_chat", {"group": g, "text": "hi"}, [("group", "id"), ("text", "str")]),
        ("broadcast", {"text": "hi all", "cid": 5}, [("text", "str"), ("cid", "cid")]),
        ("ack", {"id": 1}, [("id", "id")]),
        ("friend_add", {"to": carol}, [("to", "id")]),
        ("friend_accept", {"from": carol}, [("from", "id")]),
        ("friend_decline", {"from": carol}, [("from", "id")]),
        ("friend_remove", {"id": carol}, [("id", "id")]),
        ("group_join", {"group": g}, [("group", "id")]),
        ("group_leave", {"group": g}, [("group", "id")]),
        ("group_info", {"group": g}, [("group", "id")]),
        ("history", {"with": bob, "before": 10, "limit": 5},
         [("with", "id"), ("before", "opt_id"), ("limit", "history_limit")]),
        ("register", {"name": "newcomer", "password": PASSWORD},
         [("name", "str"), ("password", "str")]),
        ("login", {"name": "fuzzer", "password": PASSWORD}, [("password", "str")]),
        ("who", {"limit": 10, "offset": 0}, [("limit", "who_limit"), ("offset", "offset")]),
        ("group_create", {"name": "g2", "desc": "d"}, [("name", "str"), ("desc", "opt_str")]),
    ]
    choices = [(typ, fields, field, kind) for typ, fields, breakable in bases
               for field, kind in breakable]

    def build(choice: tuple[str, dict[str, Any], str, str], data: st.DataObject, req: Any,
              end: bytes) -> Bad:
        typ, fields, field, kind = choice
        value = data.draw(WRONG[kind])
        code = "missing_field" if value is None else "bad_field"
        frame = _frame(typ, {**fields, field: value}, req)
        return Bad(f"wrong {typ}.{field}", _dump(frame),
                   Expect(code, req=_want(req), field=field), end)

    return st.builds(build, st.sampled_from(choices), st.data(), reqs, ends)


def not_objects(n: Node) -> st.SearchStrategy[Bad]:
    value = st.one_of(st.lists(json_values, max_size=3), st.booleans(), st.text(max_size=10),
                      st.integers(-(2**63), 2**63 - 1),
                      st.floats(allow_nan=False, allow_infinity=False))
    return st.builds(lambda v, end: Bad("not an object", _dump(v), Expect("bad_request"), end),
                     value, ends)


def bad_lines(n: Node) -> st.SearchStrategy[Bad]:
    return st.one_of(random_bytes(n), broken_utf8(n), truncated(n), with_nul(n),
                     huge_numbers(n), deep(n), wrong_types(n), not_objects(n))


@settings(max_examples=examples(1500))
@given(data=st.data())
def test_generated_bad_lines_get_errors_and_change_nothing(
        node: Node, data: st.DataObject) -> defer.Deferred[None]:
    assert node.lines is not None
    bads = data.draw(node.lines, label="lines")
    return defer.ensureDeferred(send_bad(node, bads))


# -- explicit cases ----------------------------------------------------------------------

Payload = Callable[[Node], bytes]


def _chat(n: Node, text: bytes = b"hello", req: bytes = b"7") -> bytes:
    return b'{"type":"chat","to":%d,"text":"%s","req":%s}' % (n.ids["bob"], text, req)


def _padded_ping(size: int, req: str = "edge") -> bytes:
    """A valid ping of exactly ``size`` bytes."""
    head = b'{"type":"ping","req":"%s","pad":"' % req.encode()
    line = head + b"x" * (size - len(head) - 2) + b'"}'
    assert len(line) == size
    return line


E = Expect
CASES: list[tuple[str, Payload, list[Expect]]] = [
    # framing: CR and LF
    ("crlf bad line", lambda n: b"not json\r\n", [E("bad_json")]),
    ("stray cr inside a line", lambda n: b'{"type":"ping","req":1}\r{"type":"ping"}\n',
     [E("bad_json")]),
    ("raw cr inside a string", lambda n: _chat(n, b"a\rb") + b"\n", [E("bad_json")]),
    ("cr cr lf keeps one cr, which is JSON whitespace",
     lambda n: b'{"type":"ping","req":1}\r\r\n', [E(reply="pong", req=1)]),
    ("lf cr: the cr starts the next line", lambda n: b'garbage\n\r{"type":"ping","req":3}\n',
     [E("bad_json"), E(reply="pong", req=3)]),
    ("blank lines get no answer", lambda n: b"\n\r\n \t\r\n\r\r\n\x00\n",
     [E("bad_json")]),
    # NUL bytes
    ("nul line", lambda n: b"\x00\n", [E("bad_json")]),
    ("nul after a request", lambda n: b'{"type":"ping","req":1}\x00\n', [E("bad_json")]),
    ("raw nul inside a chat text", lambda n: _chat(n, b"hi\x00there") + b"\n",
     [E("bad_json")]),
    ("escaped nul in the type", lambda n: b'{"type":"ping\\u0000","req":5}\n',
     [E("unknown_type", req=5)]),
    # UTF-8: each of these would be a valid chat if the bytes were valid
    ("invalid byte ff in a chat", lambda n: _chat(n, b"hi\xff") + b"\n", [E("bad_json")]),
    ("lone continuation byte", lambda n: _chat(n, b"\x80abc") + b"\n", [E("bad_json")]),
    ("overlong slash", lambda n: _chat(n, b"\xc0\xaf") + b"\n", [E("bad_json")]),
    ("utf-16 surrogate", lambda n: _chat(n, b"\xed\xa0\x80") + b"\n", [E("bad_json")]),
    ("above U+10FFFF", lambda n: _chat(n, b"\xf4\x90\x80\x80") + b"\n", [E("bad_json")]),
    ("truncated inside a character", lambda n: _chat(n, b"\xe4\xbd") + b"\n",
     [E("bad_json")]),
    ("line cut in the middle of a character",
     lambda n: _chat(n, "你好".encode())[:-12] + b"\n", [E("bad_json")]),
    ("byte order mark", lambda n: b'\xef\xbb\xbf{"type":"ping","req":1}\n',
     [E("bad_json")]),
    # numbers
    ("1e400", lambda n: b'{"type":"ping","req":1e400}\n', [E("bad_json")]),
    ("-1e400 as an id", lambda n: b'{"type":"chat","to":-1e400,"text":"x"}\n',
     [E("bad_json")]),
    ("10**400 as an id", lambda n: b'{"type":"ack","id":1%s}\n' % (b"0" * 400),
     [E("bad_json")]),
    ("NaN", lambda n: b'{"type":"ack","id":NaN}\n', [E("bad_json")]),
    ("Infinity", lambda n: b'{"type":"ack","id":Infinity,"req":2}\n', [E("bad_json")]),
    ("-Infinity", lambda n: b'{"type":"who","limit":-Infinity}\n', [E("bad_json")]),
    ("-0 as an id", lambda n: b'{"type":"ack","id":-0,"req":4}\n',
     [E("bad_field", req=4, field="id")]),
    ("-0.0 as an id", lambda n: b'{"type":"ack","id":-0.0,"req":4}\n',
     [E("bad_field", req=4, field="id")]),
    ("1e-400 underflows to 0.0", lambda n: b'{"type":"who","limit":1e-400,"req":4}\n',
     [E("bad_field", req=4, field="limit")]),
    ("2**53+1", lambda n: b'{"type":"ack","id":9007199254740993,"req":4}\n',
     [E("bad_field", req=4, field="id")]),
    ("2**64", lambda n: b'{"type":"ack","id":18446744073709551616,"req":4}\n',
     [E("bad_field", req=4, field="id")]),
    ("an id with a fraction", lambda n: _chat(n).replace(b'"to":', b'"to":0.5,"x":') + b"\n",
     [E("bad_field", req=7, field="to")]),
    # nesting
    ("[ to exactly the line cap", lambda n: b"[" * MAX_LINE + b"\n", [E("bad_json")]),
    ("deep [] past the decoder's limit",
     lambda n: b"[" * 30_000 + b"]" * 30_000 + b"\n", [E("bad_json")]),
    ("deep objects", lambda n: b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"\n",
     [E("bad_json")]),
    ("deep req within the limit",
     lambda n: b'{"type":"ping","req":%s}\n' % (b"[" * DEEP_OK + b"]" * DEEP_OK),
     [E("bad_field", field="req")]),
    ("deep text within the limit",
     lambda n: _chat(n).replace(b'"hello"', b"[" * DEEP_OK + b"]" * DEEP_OK) + b"\n",
     [E("bad_field", req=7, field="text")]),
    # the line cap, which stays open up to and including MAX_LINE bytes
    ("exactly the cap, bad JSON", lambda n: b"x" * MAX_LINE + b"\n", [E("bad_json")]),
    ("exactly the cap, a valid ping", lambda n: _padded_ping(MAX_LINE) + b"\n",
     [E(reply="pong", req="edge")]),
    ("the cap with CRLF: the CR counts", lambda n: _padded_ping(MAX_LINE - 1) + b"\r\n",
     [E(reply="pong", req="edge")]),
    # valid JSON, wrong shapes and types
    ("array", lambda n: b"[1,2]\n", [E("bad_request")]),
    ("string", lambda n: b'"hello"\n', [E("bad_request")]),
    ("number", lambda n: b"5\n", [E("bad_request")]),
    ("true", lambda n: b"true\n", [E("bad_request")]),
    ("empty object", lambda n: b"{}\n", [E("missing_field", field="type")]),
    ("type null", lambda n: b'{"type":null,"req":1}\n',
     [E("missing_field", req=1, field="type")]),
    ("type a number", lambda n: b'{"type":7,"req":1}\n', [E("bad_field", req=1, field="type")]),
    ("type empty", lambda n: b'{"type":"","req":1}\n', [E("unknown_type", req=1)]),
    ("type with a space", lambda n: b'{"type":"ping ","req":1}\n', [E("unknown_type", req=1)]),
    ("type naming a method", lambda n: b'{"type":"__init__","req":1}\n',
     [E("unknown_type", req=1)]),
    ("req an object", lambda n: b'{"type":"ping","req":{"a":1}}\n',
     [E("bad_field", field="req")]),
    ("chat to a string id", lambda n: b'{"type":"chat","to":"%d","text":"x","req":1}\n'
     % n.ids["bob"], [E("bad_field", req=1, field="to")]),
    ("chat text a number", lambda n: _chat(n, req=b'"r"').replace(b'"hello"', b"5") + b"\n",
     [E("bad_field", req="r", field="text")]),
    ("chat cid a list", lambda n: _chat(n).replace(b'"req"', b'"cid":[1],"req"') + b"\n",
     [E("bad_field", req=7, field="cid")]),
    ("chat cid 65 characters",
     lambda n: _chat(n).replace(b'"req"', b'"cid":"%s","req"' % (b"c" * 65)) + b"\n",
     [E("bad_field", req=7, field="cid")]),
    ("group_chat to a boolean group",
     lambda n: b'{"type":"group_chat","group":true,"text":"x","req":1}\n',
     [E("bad_field", req=1, field="group")]),
    ("broadcast text null", lambda n: b'{"type":"broadcast","text":null,"req":1}\n',
     [E("missing_field", req=1, field="text")]),
    ("register name a list",
     lambda n: b'{"type":"register","name":["x"],"password":"password1","req":1}\n',
     [E("bad_field", req=1, field="name")]),
]


@pytest.mark.parametrize("name,payload,expected", [pytest.param(*case, id=case[0])
                                                   for case in CASES])
@pytest_twisted.ensureDeferred
async def test_bad_bytes_get_errors_and_change_nothing(node: Node, name: str, payload: Payload,
                                                       expected: list[Expect]) -> None:
    raw = payload(node)
    lines = [line for line in raw.split(b"\n")[:-1] if line.removesuffix(b"\r").strip()]
    assert len(lines) == len(expected), "a case lists one answer per non-blank line"
    bads = [Bad(name, line, e) for line, e in zip(lines, expected, strict=True)]
    await send_bad(node, bads, raw)


@pytest_twisted.ensureDeferred
async def test_the_line_null_gets_bad_request(node: Node) -> None:
    frames = node.fuzzer.frames
    del frames[:]
    node.fuzzer.send_raw(b"null\n")
    await node.fuzzer.call("ping", wait=WAIT)
    answer = next(f for f in frames if f.get("type") not in PUSH_TYPES)
    assert answer["type"] == "error"
    # valid JSON that is not an object (protocol.md section 2), not a decode failure
    assert answer["code"] == "bad_request", answer


OVER_LONG: list[tuple[str, Payload]] = [
    ("one byte over the cap", lambda n: b"x" * (MAX_LINE + 1) + b"\n"),
    ("the cap plus the CR of CRLF", lambda n: _padded_ping(MAX_LINE) + b"\r\n"),
    ("over the cap with no newline at all", lambda n: b"y" * (MAX_LINE + 1)),
    ("100 000 [", lambda n: b"[" * 100_000 + b"\n"),
    ("a chat too long to be a line", lambda n: _chat(n, b"z" * (MAX_LINE + 10)) + b"\n"),
    ("a chat after an over-long line is discarded",
     lambda n: b"x" * (MAX_LINE + 1) + b"\n" + _chat(n) + b"\n"),
]


@pytest.mark.parametrize("payload", [pytest.param(p, id=name) for name, p in OVER_LONG])
@pytest_twisted.ensureDeferred
async def test_over_long_lines_get_line_too_long_then_close(node: Node,
                                                            payload: Payload) -> None:
    await send_over_long(node, payload(node))
