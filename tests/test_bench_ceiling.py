"""The benchmark's ceiling (bench/ceiling/): it builds, the bench's own verified
workloads pass against it, bad input gets errors without harming it, and
``--ceiling`` reports each figure beside the ceiling's with the ratio.

These check behaviour, not speed; each takes a few seconds.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_bench import REPO, bench_env, only_run, run_bench

SOURCE = REPO / "bench" / "ceiling" / "ceiling.c"


def build(build_dir: Path | None = None) -> Path:
    """Build through the bench's own code (bench/ is not installed: a subprocess
    from the source tree), optionally into ``build_dir``."""
    code = "import sys\nfrom pathlib import Path\nimport bench.ceiling as c\n"
    if build_dir is not None:
        code += f"c.BUILD_DIRS = (Path({str(build_dir)!r}),)\n"
    code += "print(c.build())\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=bench_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip())


class Ceiling:
    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


@pytest.fixture
def ceiling() -> Iterator[Ceiling]:
    exe = build()
    proc = subprocess.Popen([str(exe), "127.0.0.1", "0"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "the ceiling printed no port"
        yield Ceiling(proc, int(proc.stdout.readline()))
        assert proc.poll() is None, "the ceiling exited"
    finally:
        proc.terminate()
        proc.wait(10)


class Lines:
    """A blocking line reader over a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.pos = 0

    def send(self, *frames: dict[str, Any] | bytes) -> None:
        self.sock.sendall(b"".join(f if isinstance(f, bytes) else json.dumps(f).encode() + b"\n"
                                   for f in frames))

    def line(self) -> dict[str, Any]:
        while (end := self.buf.find(b"\n", self.pos)) < 0:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError(self.buf[self.pos:self.pos + 200])
            self.buf = self.buf[self.pos:] + chunk
            self.pos = 0
        raw, self.pos = self.buf[self.pos:end], end + 1
        out = json.loads(raw)
        assert isinstance(out, dict)
        return out

    def call(self, frame: dict[str, Any]) -> dict[str, Any]:
        self.send(frame)
        return self.line()


def logged_in(ceiling: Ceiling, name: str) -> tuple[Lines, int]:
    conn = Lines(ceiling.connect())
    reg = conn.call({"type": "register", "req": 1, "name": name, "password": "secret1"})
    assert reg["type"] == "register" and reg["name"] == name, reg
    reply = conn.call({"type": "login", "req": 2, "name": name, "password": "secret1"})
    assert reply["user"] == {"id": reg["id"], "name": name}, reply
    assert conn.line() == {"type": "synced", "count": 0}
    return conn, reg["id"]


def test_builds_into_an_empty_directory_and_reuses_it(tmp_path: Path) -> None:
    exe = build(tmp_path)
    assert exe == tmp_path / "ceiling" and os.access(exe, os.X_OK)
    built = exe.stat().st_mtime_ns
    assert exe.stat().st_mtime >= SOURCE.stat().st_mtime
    assert build(tmp_path) == exe and exe.stat().st_mtime_ns == built  # not built again
    assert [p.name for p in tmp_path.iterdir()] == ["ceiling"]  # no temporary left


def test_chat_workload_passes_the_bench_verification(ceiling: Ceiling) -> None:
    """The chat workload, with every check the bench makes, against the ceiling
    given as a running server."""
    run = only_run(run_bench("chat", "--connect", f"127.0.0.1:{ceiling.port}", "--pid",
                             str(ceiling.proc.pid), "--pairs", "3", "--messages", "30",
                             "--warmup", "2", "--ack-every", "4"))
    assert run["delivered"] == run["expected"] == 90
    assert run["acks"] >= 3 * 30 // 4
    assert 0 < run["p50_ms"] <= run["p99_ms"]


def test_group_workload_passes_the_bench_verification(ceiling: Ceiling) -> None:
    run = only_run(run_bench("group", "--connect", f"127.0.0.1:{ceiling.port}", "--pid",
                             str(ceiling.proc.pid), "--members", "6", "--messages", "10"))
    assert run["deliveries"] == run["expected"] == 50 and run["sent"] == 10


def test_replies_as_the_protocol_says(ceiling: Ceiling) -> None:
    alice, a = logged_in(ceiling, "alice")
    bob, b = logged_in(ceiling, "bob")
    sent = alice.call({"type": "chat", "req": "x", "to": b, "text": "hi \"there\" 王"})
    assert sent["type"] == "chat" and sent["req"] == "x" and isinstance(sent["ts"], int)
    push = bob.line()
    assert push == {"type": "message", "id": sent["id"], "from": a, "name": "alice",
                    "text": "hi \"there\" 王", "ts": sent["ts"], "to": b}
    assert bob.call({"type": "ack", "req": None, "id": sent["id"]}) == {
        "type": "ack", "req": None, "id": sent["id"]}
    assert bob.call({"type": "ack", "req": 3, "id": sent["id"] + 1})["code"] == "bad_ack"
    group = alice.call({"type": "group_create", "req": 4, "name": "g"})["group"]
    assert group["creator"] == a and group["member_count"] == 1
    joined = bob.call({"type": "group_join", "req": 5, "group": group["id"]})["group"]
    assert [m["id"] for m in joined["members"]] == [a, b]
    assert alice.line() == {"type": "group_joined", "group": group["id"], "user": b,
                            "name": "bob"}
    second = bob.call({"type": "group_chat", "req": 6, "group": group["id"], "text": "yo"})
    assert second["id"] > sent["id"]
    assert alice.line()["group"] == group["id"]
    assert alice.call({"type": "ping", "req": 7}) == {"type": "pong", "req": 7}
    assert alice.call({"type": "who", "req": 8})["code"] == "unknown_type"
    anon = Lines(ceiling.connect())
    assert anon.call({"type": "chat", "req": 9, "to": a, "text": "x"})["code"] == "not_logged_in"
    assert anon.call({"type": "login", "req": 10, "name": "alice",
                      "password": "wrong!"})["code"] == "bad_credentials"


@pytest.mark.parametrize(("line", "code"), [
    (b'{"type":"ping"', "bad_json"),
    (b"\xff\xfe{}", "bad_json"),
    (b"\0", "bad_json"),
    (b" \0 ", "bad_json"),
    (b"[1,2]", "bad_request"),
    (b'{"req":7}', "missing_field"),
    (b'{"type":"ping","req":{"a":1}}', "bad_field"),
    (b'{"type":"login","req":1,"name":"nobody","password":"x"}', "bad_credentials"),
    (b'{"type":"register","req":1,"name":"12345","password":"secret1"}', "bad_name"),
    (b"{" * 5000, "bad_json"),
    (b'{"type":"chat","to":1,"text":"\\x"}', "bad_json"),
])
def test_bad_lines_get_an_error(ceiling: Ceiling, line: bytes, code: str) -> None:
    conn = Lines(ceiling.connect())
    conn.send(line + b"\r\n")
    assert conn.line()["code"] == code
    assert conn.call({"type": "ping", "req": 1}) == {"type": "pong", "req": 1}


def test_garbage_never_harms_it(ceiling: Ceiling) -> None:
    """Random lines, fed in random pieces: one error for each that is not blank, the
    connection still serves, and so does the server."""
    rng = random.Random(19)
    alphabet = bytes(b for b in range(256) if b != 10)
    pieces = [b'{"type"', b'"chat"', b":", b",", b"{", b"}", b"[", b'"', b"\\", b"\\u12",
              b"1e400", b"null", b"\xe7\x8e", b" ", b"\r"]
    lines = []
    for _ in range(300):
        if rng.random() < 0.5:
            lines.append(bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 80))))
        else:
            lines.append(b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 20))))

    def blank(ln: bytes) -> bool:
        ln = ln[:-1] if ln.endswith(b"\r") else ln
        return all(ch in b" \t\r\v\f" for ch in ln)

    stream = b"".join(ln + b"\n" for ln in lines) + b'{"type":"ping","req":"end"}\n'
    conn = Lines(ceiling.connect())
    pos = 0
    while pos < len(stream):
        step = rng.randint(1, 200)
        conn.sock.sendall(stream[pos:pos + step])
        pos += step
    replies = []
    while (reply := conn.line()).get("req") != "end":
        replies.append(reply)
    assert len(replies) == sum(not blank(ln) for ln in lines)
    assert all(r["type"] == "error" for r in replies), replies[:5]
    assert Lines(ceiling.connect()).call({"type": "ping"}) == {"type": "pong"}


def test_a_line_over_the_cap_closes_the_connection(ceiling: Ceiling) -> None:
    conn = Lines(ceiling.connect())
    conn.sock.sendall(b"x" * 70_000)
    assert conn.line()["code"] == "line_too_long"
    with pytest.raises(EOFError):
        conn.line()


def test_a_slow_reader_gets_everything_late(ceiling: Ceiling) -> None:
    """More than the socket buffers hold waits in the ceiling (partial writes) and
    comes in order once the receiver reads."""
    alice, _ = logged_in(ceiling, "alice")
    bob, b = logged_in(ceiling, "bob")
    text = "x" * 4000
    for i in range(0, 600, 50):
        alice.send(*[{"type": "chat", "req": i + k, "to": b, "text": text} for k in range(50)])
        for _ in range(50):
            assert alice.line()["type"] == "chat"
    ids = [bob.line()["id"] for _ in range(600)]
    assert ids == sorted(ids) and len(set(ids)) == 600


def test_a_reader_that_never_reads_is_dropped(ceiling: Ceiling) -> None:
    """Past 4 MiB waiting, the ceiling drops the connection (as the daemon does)."""
    alice, _ = logged_in(ceiling, "alice")
    bob, b = logged_in(ceiling, "bob")
    text = "y" * 4000
    for i in range(0, 4000, 100):
        alice.send(*[{"type": "chat", "req": i + k, "to": b, "text": text} for k in range(100)])
        for _ in range(100):
            assert alice.line()["type"] == "chat"
    got = 0
    with pytest.raises((EOFError, ConnectionResetError)):
        for _ in range(4000):
            bob.line()
            got += 1
    assert got < 4000
    assert alice.call({"type": "ping", "req": 1}) == {"type": "pong", "req": 1}


def test_ceiling_option_reports_the_ratio() -> None:
    out = run_bench("chat", "--pairs", "2", "--messages", "20", "--warmup", "2", "--ceiling")
    assert out["ceiling"] == {"supported": True}
    case = out["cases"][0]
    daemon, ceil = case["runs"][0], case["ceiling"]["runs"][0]
    assert ceil["delivered"] == ceil["expected"] == 40 and ceil["ok"] is True
    assert case["ceiling"]["label"].startswith("ceiling ")
    ratio = case["vs_ceiling"]["per_run"][0]
    assert ratio["msgs_per_s"] == pytest.approx(daemon["msgs_per_s"] / ceil["msgs_per_s"],
                                                rel=0.01)
    assert ratio["p50_ms"] == pytest.approx(daemon["p50_ms"] / ceil["p50_ms"], rel=0.01)
    assert case["vs_ceiling"]["median"]["msgs_per_s"] == ratio["msgs_per_s"]


def test_ceiling_table_on_the_console() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "group", "--members", "4", "--messages", "5",
         "--ceiling", "--deadline", "120"],
        cwd=REPO, env=bench_env(), capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "group ceiling members=4 msgs=5 run 1/1: deliveries=15 errors=0" in proc.stdout
    assert "daemon/ceiling: rate=" in proc.stdout
    table = proc.stdout.split("beside the ceiling (1 run):\n", 1)[1].splitlines()
    assert table[0].split() == ["figure", "daemon", "ceiling", "daemon/ceiling"]
    assert table[1].split()[:2] == ["rate", "(deliveries/s)"] and table[1].endswith("x")


def test_unsupported_workload_says_so() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "backlog", "--messages", "20", "--senders", "2",
         "--ceiling", "--json", "--deadline", "120"],
        cwd=REPO, env=bench_env(), capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "--ceiling: the ceiling does not serve the backlog workload" in proc.stderr
    out = json.loads(proc.stdout)
    assert out["ceiling"]["supported"] is False and "ceiling" not in out["cases"][0]
