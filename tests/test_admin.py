"""``qqchat-admin`` as an operator runs it: the installed script, as a child process,
on SQLite and on MariaDB, and what its changes do to a running daemon."""

from __future__ import annotations

import json
import os
import pty
import select
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from chatclient import ChatClient
from conftest import Running
from daemon_process import free_port
from twisted.internet import threads

from qqchat.passwords import DEFAULT_COST, verify_password
from qqchat.storage.pool import parse_database_url

ADMIN = Path(sys.executable).parent / "qqchat-admin"
DATA = Path(__file__).parent / "data"
TIMEOUT = 60.0
PASSWORD = "correct-horse-7"
#: the daemon's sweep of disabled accounts runs every 5 s: a kick is due well within this
KICK_WAIT = 20.0


def admin_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QQCHAT_")}
    env.update(extra)
    return env


def admin(db: str | None, *args: str, stdin: str = "", env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    """Run the installed script; ``stdin`` is a pipe, so a password is read from it."""
    cmd = [str(ADMIN), *(["--db", db] if db is not None else []), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=TIMEOUT,
                          env=env or admin_env())


def ok(db: str, *args: str, stdin: str = "") -> str:
    done = admin(db, *args, stdin=stdin)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert done.stderr == "", done.stderr
    return done.stdout


def refused(db: str | None, code: int, *args: str, stdin: str = "") -> str:
    """Run a command that must fail with ``code``; returns its one-line message."""
    done = admin(db, *args, stdin=stdin)
    assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
    assert done.stdout == "", done.stdout
    lines = done.stderr.strip().splitlines()
    if code != 2:  # argparse prints its usage line first
        assert len(lines) == 1, done.stderr
    assert lines[-1].startswith("qqchat-admin"), done.stderr
    return lines[-1]


def listing(db: str, *args: str) -> dict[str, Any]:
    return json.loads(ok(db, "list", "--json", *args))


def create(db: str, name: str, password: str = PASSWORD, *args: str) -> int:
    out = ok(db, "create", name, "--hash-cost", "4", *args, stdin=password + "\n")
    assert out.startswith(f"Created {name} with id "), out
    return int(out.split(" with id ")[1].split()[0].rstrip("."))


def query(db: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the database behind the command's back (``?`` placeholders)."""
    return execute(db, [(sql, params)])


def execute(db: str, statements: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
    """Run statements in one transaction, behind the command's back; the last one's rows."""
    config = parse_database_url(db)
    if config.dialect == "sqlite":
        conn: Any = sqlite3.connect(config.path)
    else:
        import MySQLdb

        conn = MySQLdb.connect(host=config.host, port=config.port, user=config.user,
                               passwd=config.password, db=config.database)
    try:
        cur = conn.cursor()
        for sql, params in statements:
            cur.execute(sql.replace("?", "%s") if config.dialect == "mysql" else sql, params)
        rows = list(cur.fetchall())
        conn.commit()
        return rows
    finally:
        conn.close()


def account(db: str, name: str) -> dict[str, Any]:
    return next(a for a in listing(db, "--limit", "10000")["accounts"] if a["name"] == name)


# -- the commands on their own ------------------------------------------------

def test_every_command_and_its_exit_status(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        # a mistyped path must not quietly become an empty database
        assert "no database at" in refused(db_url, 3, "list")
    assert "Schema up to date" in ok(db_url, "migrate")
    assert ok(db_url, "migrate")  # again: the schema is idempotent
    assert listing(db_url) == {"accounts": [], "next_after": None}

    alice = create(db_url, "alice")
    bob = create(db_url, "bob", PASSWORD, "--admin")
    # the same name, and a look-alike of it, are taken
    assert "name taken: 'alice'" in refused(db_url, 1, "create", "alice", stdin=PASSWORD + "\n")
    assert "name taken" in refused(db_url, 1, "create", "ALICE", stdin=PASSWORD + "\n")
    fullwidth = "\uff41\uff4c\uff49\uff43\uff45"
    assert "name taken" in refused(db_url, 1, "create", fullwidth, stdin=PASSWORD + "\n")
    # registration's rules: names, look-alike scripts (a Cyrillic a), passwords
    assert "bad name" in refused(db_url, 1, "create", "12345", stdin=PASSWORD + "\n")
    assert "bad name" in refused(db_url, 1, "create", "has space", stdin=PASSWORD + "\n")
    assert "bad name" in refused(db_url, 1, "create", "x" * 33, stdin=PASSWORD + "\n")
    assert "mix" in refused(db_url, 1, "create", "p\u0430ypal", stdin=PASSWORD + "\n")
    assert "6-256 characters" in refused(db_url, 1, "create", "carol", stdin="short\n")
    assert "no password" in refused(db_url, 1, "create", "carol")
    assert [a["name"] for a in listing(db_url)["accounts"]] == ["alice", "bob"]

    got = {a["name"]: a for a in listing(db_url)["accounts"]}
    assert got["alice"]["id"] == alice and got["bob"]["id"] == bob
    assert got["alice"]["admin"] is False and got["bob"]["admin"] is True
    assert got["alice"]["last_login"] is None and got["alice"]["disabled"] is False
    assert abs(got["alice"]["created_at"] - time.time() * 1000) < 600_000

    # by name, by folded name, by id
    assert "Disabled alice" in ok(db_url, "disable", "ALICE")
    assert "already disabled" in ok(db_url, "disable", str(alice))
    a = account(db_url, "alice")
    assert a["disabled"] is True and a["disabled_at"] is not None
    assert query(db_url, "SELECT disabled FROM users WHERE id = ?", alice) == [(1,)]
    assert "Enabled alice" in ok(db_url, "enable", "alice")
    assert "was not disabled" in ok(db_url, "enable", "alice")
    assert account(db_url, "alice")["disabled"] is False
    assert "now an admin" in ok(db_url, "grant-admin", "alice")
    assert "no longer an admin" in ok(db_url, "revoke-admin", str(bob))
    assert (account(db_url, "alice")["admin"], account(db_url, "bob")["admin"]) == (True, False)
    assert "reset" in ok(db_url, "reset-password", "bob", "--hash-cost", "4",
                         stdin="another-pw-8\n")
    (pw_hash,) = query(db_url, "SELECT pw_hash FROM users WHERE id = ?", bob)[0]
    assert verify_password("another-pw-8", pw_hash)

    # no such user: 1, one line, nothing changed
    for command in ("disable", "enable", "grant-admin", "revoke-admin"):
        assert "no such user: 'nobody'" in refused(db_url, 1, command, "nobody")
        assert "no such user: id 999" in refused(db_url, 1, command, "999")
    assert "no such user" in refused(db_url, 1, "reset-password", "nobody",
                                     stdin="another-pw-8\n")

    # usage errors: 2
    refused(db_url, 2)
    refused(db_url, 2, "frobnicate")
    refused(db_url, 2, "disable")
    refused(db_url, 2, "list", "--after", "1", "--offset", "1")
    refused(db_url, 2, "list", "--limit", "0")
    refused(db_url, 2, "create", "carol", "--hash-cost", "99", stdin=PASSWORD + "\n")
    refused("postgres://x/y", 2, "list")
    assert [a["name"] for a in listing(db_url)["accounts"]] == ["alice", "bob"]

    # the human table
    table = ok(db_url, "list").splitlines()
    assert table[0].split() == ["ID", "NAME", "CREATED", "(UTC)", "LAST", "LOGIN", "(UTC)",
                                "ADMIN", "DISABLED"]
    assert table[1].split()[:2] == [str(alice), "alice"] and table[1].split()[-2:] == \
        ["yes", "no"]
    assert len(table) == 3


def test_list_pages_by_id_or_offset(db_url: str) -> None:
    ok(db_url, "migrate")
    names = [f"user{i}" for i in range(7)]
    ids = [create(db_url, n) for n in names]
    first = listing(db_url, "--limit", "3")
    assert [a["id"] for a in first["accounts"]] == ids[:3]
    assert first["next_after"] == ids[2]
    second = listing(db_url, "--limit", "3", "--after", str(first["next_after"]))
    assert [a["id"] for a in second["accounts"]] == ids[3:6]
    third = listing(db_url, "--limit", "3", "--after", str(second["next_after"]))
    assert [a["id"] for a in third["accounts"]] == ids[6:] and third["next_after"] is None
    assert [a["name"] for a in listing(db_url, "--limit", "2", "--offset", "4")["accounts"]] \
        == names[4:6]
    done = admin(db_url, "list", "--limit", "3")
    assert done.returncode == 0 and f"--after {ids[2]}" in done.stderr
    assert len(done.stdout.splitlines()) == 4


def test_the_database_comes_from_qqchat_db_as_for_the_daemon(db_url: str) -> None:
    env = admin_env(QQCHAT_DB=db_url)
    assert admin(None, "migrate", env=env).returncode == 0
    done = admin(None, "create", "dora", "--hash-cost", "4", stdin=PASSWORD + "\n", env=env)
    assert done.returncode == 0, done.stderr
    assert [a["name"] for a in listing(db_url)["accounts"]] == ["dora"]


def test_an_older_database_is_brought_up_to_date(db_url: str) -> None:
    """A database of an earlier version (tests/data; before folded names, roles and
    disabling), with two names that differ only in case, as that version allowed."""
    dialect = parse_database_url(db_url).dialect
    text = (DATA / f"schema_b7580a2_{dialect}.sql").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("--")]
    old = [(s.strip(), ()) for s in "\n".join(lines).split(";") if s.strip()]
    execute(db_url, [*old, ("INSERT INTO users (id, name, pw_hash, created_at, acked) VALUES "
                            "(1, 'Alice', 'x', 1, 0), (2, 'ALICE', 'x', 2, 0)", ())])
    assert [(a["id"], a["name"], a["admin"]) for a in listing(db_url)["accounts"]] == \
        [(1, "Alice", False), (2, "ALICE", False)]
    # the exact name first, as at login: each look-alike stays reachable
    assert "Disabled ALICE (2)" in ok(db_url, "disable", "ALICE")
    assert "Alice (1) is now an admin" in ok(db_url, "grant-admin", "Alice")
    assert [(a["id"], a["admin"], a["disabled"]) for a in listing(db_url)["accounts"]] == \
        [(1, True, False), (2, False, True)]


def test_create_hashes_at_the_daemons_cost(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/chat.db"
    ok(db, "migrate")
    ok(db, "create", "erin", stdin=PASSWORD + "\n")
    done = admin(db, "create", "fred", stdin=PASSWORD + "\n",
                 env=admin_env(QQCHAT_HASH_COST="5"))
    assert done.returncode == 0, done.stderr
    costs = dict(query(db, "SELECT name, pw_hash FROM users"))
    assert costs["erin"].split("$")[1] == str(DEFAULT_COST)
    assert costs["fred"].split("$")[1] == "5"
    assert verify_password(PASSWORD, costs["erin"])


def test_an_unreachable_database_is_status_3(tmp_path: Path) -> None:
    port = free_port()
    message = refused(f"mysql://qq:pw@127.0.0.1:{port}/qqchat", 3, "list")
    assert "unreachable" in message and "pw@" not in message  # never the password
    (tmp_path / "a-directory").mkdir()
    assert "cannot open" in refused(f"sqlite:///{tmp_path}/a-directory", 3, "migrate")


# -- passwords ----------------------------------------------------------------

def test_the_password_is_never_in_argv_or_output(db_url: str) -> None:
    ok(db_url, "migrate")
    # there is no way to give it on the command line
    refused(db_url, 2, "create", "gina", "--password", PASSWORD)
    refused(db_url, 2, "reset-password", "gina", "--password", PASSWORD)
    help_text = admin(db_url, "create", "--help").stdout + admin(db_url, "--help").stdout
    assert "--password" not in help_text
    # from stdin, it is neither echoed nor stored as is
    proc = subprocess.Popen([str(ADMIN), "--db", db_url, "create", "gina", "--hash-cost", "4"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=admin_env())
    try:
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            assert PASSWORD.encode() not in f.read()
        out, err = proc.communicate(PASSWORD + "\n", timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    new_pw = "a-new-secret-9"
    reset = admin(db_url, "reset-password", "gina", "--hash-cost", "4", stdin=new_pw + "\n")
    assert reset.returncode == 0
    weak = admin(db_url, "reset-password", "gina", stdin="tiny\n")
    assert weak.returncode == 1
    everything = out + err + reset.stdout + reset.stderr + weak.stdout + weak.stderr
    for secret in (PASSWORD, new_pw, "tiny"):
        assert secret not in everything
    (pw_hash,) = query(db_url, "SELECT pw_hash FROM users WHERE name = ?", "gina")[0]
    assert new_pw not in pw_hash and verify_password(new_pw, pw_hash)


class Terminal:
    """The command on a pseudo-terminal that is its controlling terminal, as getpass wants."""

    def __init__(self, *args: str) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: nothing but exec
            try:
                os.execve(str(ADMIN), [str(ADMIN), *args], admin_env())
            finally:
                os._exit(127)
        self.pid, self.fd, self.output = pid, fd, ""

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while text not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r}; terminal so far: {self.output!r}"
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:
                    data = b""
                assert data, f"terminal closed; output: {self.output!r}"
                self.output += data.decode("utf-8", "replace")

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def finish(self) -> int:
        """Read to the end; the exit status."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:
                    data = b""
                if not data:
                    break
                self.output += data.decode("utf-8", "replace")
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


def test_on_a_terminal_the_password_is_asked_twice_and_not_echoed(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/chat.db"
    ok(db, "migrate")
    term = Terminal("--db", db, "create", "hana", "--hash-cost", "4")
    term.wait_for("Password for hana: ")
    term.type(PASSWORD + "\n")
    term.wait_for("The same password again: ")
    term.type(PASSWORD + "\n")
    assert term.finish() == 0, term.output
    assert "Created hana with id 1." in term.output and PASSWORD not in term.output

    term = Terminal("--db", db, "reset-password", "hana", "--hash-cost", "4")
    term.wait_for("Password for hana: ")
    term.type("first-try-1\n")
    term.wait_for("The same password again: ")
    term.type("second-try-2\n")
    assert term.finish() == 1
    assert "the two passwords differ" in term.output
    (pw_hash,) = query(db, "SELECT pw_hash FROM users WHERE name = ?", "hana")[0]
    assert verify_password(PASSWORD, pw_hash)  # nothing changed


# -- what a running daemon makes of it -----------------------------------------

def in_thread(db: str, *args: str, stdin: str = "", code: int = 0) -> Any:
    """Run the command off the reactor thread, so the in-process daemon keeps serving."""
    def run() -> str:
        done = admin(db, *args, stdin=stdin)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        return done.stdout

    return threads.deferToThread(run)


async def login_error(c: ChatClient, **fields: Any) -> str:
    reply = await c.call("login", **fields)
    assert reply["type"] == "error", reply
    return str(reply["code"])


@pytest_twisted.ensureDeferred
async def test_disable_ends_the_live_session_and_refuses_logins(server: Running,
                                                                db_url: str) -> None:
    alice = await server.user("alice", "password1")
    bob = await server.user("bob", "password1")
    await in_thread(db_url, "disable", "alice")
    # the daemon's sweep finds it: a bounded wait on the push, not a sleep
    kicked = await alice.push("kicked", wait=KICK_WAIT)
    assert kicked["code"] == "account_disabled" and kicked["reason"] == "account disabled"
    await alice.closed
    again = await server.client()
    assert await login_error(again, name="alice", password="password1") == "account_disabled"
    # a wrong password says no more than for any account
    assert await login_error(again, name="alice", password="wrong-pw") == "bad_credentials"
    assert (await bob.ok("ping"))["type"] == "pong"  # others are untouched
    await in_thread(db_url, "enable", str(alice.user_id))
    await again.login("alice", "password1")
    assert account(db_url, "alice")["last_login"] is not None


@pytest_twisted.ensureDeferred
async def test_reset_password_revokes_session_tokens(server: Running, db_url: str) -> None:
    tokens = []
    for _ in range(2):  # two remembered sessions; closing a connection keeps its token
        c = await server.client()
        if not tokens:
            await c.ok("register", name="alice", password="password1")
        tokens.append((await c.ok("login", name="alice", password="password1",
                                  remember=True))["token"])
        await c.push("synced")
        c.close()
        await c.closed
    assert query(db_url, "SELECT COUNT(*) FROM session_tokens") == [(2,)]
    out = await in_thread(db_url, "reset-password", "alice", "--hash-cost", "4",
                          stdin="password2\n")
    assert "2 session tokens revoked" in out
    assert query(db_url, "SELECT COUNT(*) FROM session_tokens") == [(0,)]
    c = await server.client()
    for token in tokens:
        assert await login_error(c, token=token) == "bad_token"
    assert await login_error(c, name="alice", password="password1") == "bad_credentials"
    await c.login("alice", "password2")


@pytest.mark.settings(broadcast_anyone=False)  # the daemon's default: admins only
@pytest_twisted.ensureDeferred
async def test_grant_admin_lets_a_user_broadcast(server: Running, db_url: str) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    denied = await bob.call("broadcast", text="hello all")
    assert denied["type"] == "error" and denied["code"] == "forbidden"
    await in_thread(db_url, "grant-admin", "bob")
    await bob.ok("logout")  # the role is read at login
    await bob.login("bob", "password1")
    await bob.ok("broadcast", text="maintenance at ten")
    got = await alice.push("message")
    assert (got["text"], got["broadcast"]) == ("maintenance at ten", True)
    await in_thread(db_url, "revoke-admin", "bob")
    await bob.ok("logout")
    await bob.login("bob", "password1")
    assert (await bob.call("broadcast", text="again"))["code"] == "forbidden"


@pytest_twisted.ensureDeferred
async def test_an_account_created_by_the_operator_logs_in(server: Running,
                                                          db_url: str) -> None:
    bob = await server.user("bob")
    sent = await bob.ok("broadcast", text="before ivy existed")  # anyone, in these tests
    assert sent["id"]
    await in_thread(db_url, "create", "ivy", "--hash-cost", "4", stdin=PASSWORD + "\n")
    ivy = await server.client()
    _, backlog = await ivy.login("IVY", PASSWORD)  # found by folded name, as registered
    assert backlog == []  # starts past the log head, as a registered account does
    await in_thread(db_url, "create", "bob", "--hash-cost", "4", stdin=PASSWORD + "\n",
                    code=1)
