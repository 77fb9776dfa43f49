"""The client in a real terminal: a message arriving while a line is half typed.

A line-buffered client would either hide the message until Enter or print it
into the middle of the typed text. Ours prints it above the prompt and redraws
the prompt with the half-typed line. Checked twice: on a pseudo-terminal whose
output goes through a small screen model (always available), and in tmux, a
real terminal emulator, when it is installed.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import shutil
import struct
import subprocess
import tempfile
import termios
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from client_process import CLIENT, PASSWORD, client_env, register, run_client
from daemon_process import DaemonProcess

TIMEOUT = 20.0
COLS, ROWS = 80, 24
HALF = "chat bob half-typed words"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path) as running:
        yield running


class ScreenModel:
    """Just enough of a VT100 to replay what the client writes; unknown escapes fail,
    so the model cannot silently disagree with a real terminal."""

    def __init__(self, cols: int, rows: int) -> None:
        self.cols, self.rows = cols, rows
        self.grid = [[" "] * cols for _ in range(rows)]
        self.row = self.col = 0
        self.wrap_pending = False

    def lines(self) -> list[str]:
        return ["".join(r).rstrip() for r in self.grid]

    def _down(self) -> None:
        if self.row == self.rows - 1:
            self.grid = [*self.grid[1:], [" "] * self.cols]
        else:
            self.row += 1

    def _put(self, ch: str) -> None:
        width = 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
        if self.wrap_pending or self.col + width > self.cols:
            self.col, self.wrap_pending = 0, False
            self._down()
        self.grid[self.row][self.col] = ch
        if width == 2:
            self.grid[self.row][self.col + 1] = ""
        self.col += width
        if self.col >= self.cols:
            self.col, self.wrap_pending = self.cols - 1, True

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":
                m = re.compile(r"\x1b\[(\d*)([A-Za-z])").match(text, i)
                assert m, f"unexpected escape sequence {text[i:i + 8]!r}"
                n = int(m[1] or 0)
                self._csi(n, m[2])
                i = m.end()
                continue
            if ch == "\r":
                self.col, self.wrap_pending = 0, False
            elif ch == "\n":
                self.wrap_pending = False
                self._down()
            elif ch == "\b":
                self.col, self.wrap_pending = max(0, self.col - 1), False
            elif ch >= " ":
                self._put(ch)
            i += 1

    def _csi(self, n: int, final: str) -> None:
        self.wrap_pending = False
        if final == "A":
            self.row = max(0, self.row - max(n, 1))
        elif final == "B":
            self.row = min(self.rows - 1, self.row + max(n, 1))
        elif final == "C":
            self.col = min(self.cols - 1, self.col + max(n, 1))
        elif final == "D":
            self.col = max(0, self.col - max(n, 1))
        elif final == "K":
            self.grid[self.row][self.col:] = [" "] * (self.cols - self.col)
        elif final == "J":
            if n == 2:
                self.grid = [[" "] * self.cols for _ in range(self.rows)]
            else:
                self.grid[self.row][self.col:] = [" "] * (self.cols - self.col)
                for r in range(self.row + 1, self.rows):
                    self.grid[r] = [" "] * self.cols
        elif final == "H":
            self.row = self.col = 0
        else:
            raise AssertionError(f"unexpected escape sequence ESC[{n}{final}")


class PtyClient:
    """The client with a pseudo-terminal as stdin, stdout and stderr."""

    def __init__(self, port: int) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.proc = subprocess.Popen(
            [str(CLIENT), "--host", "127.0.0.1", "--port", str(port)],
            stdin=self.slave, stdout=self.slave, stderr=self.slave,
            env=client_env(password=None), start_new_session=True)
        self.output = ""

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def read_until(self, done: Callable[[str], bool], timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.output):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; terminal output so far:\n{self.output!r}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    data = b""
                if not data:
                    raise AssertionError(f"terminal closed; output:\n{self.output!r}")
                self.output += data.decode("utf-8", "replace")

    def wait_for(self, text: str, after: str | None = None) -> None:
        """Until ``text`` is in the output (after the last ``after``, if given)."""
        def seen(out: str) -> bool:
            start = out.rfind(after) if after else 0
            return start >= 0 and text in out[start:]
        self.read_until(seen)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        for fd in (self.master, self.slave):
            os.close(fd)


def test_incoming_message_keeps_half_typed_line_pty(daemon: DaemonProcess) -> None:
    ids = register(daemon.port, "alice", "bob")
    term = PtyClient(daemon.port)
    try:
        term.wait_for("qq> ")
        term.type("login alice\r")
        term.wait_for("Password for alice: ")
        term.type(PASSWORD + "\r")
        term.wait_for("alice> ", after="Offline messages: 0")
        term.type(HALF)
        term.wait_for(HALF, after="Offline messages: 0")

        sent = run_client(daemon.port, f"login bob\nchat {ids['alice']} hello from bob\n")
        assert sent.returncode == 0, sent.stdout
        term.wait_for("alice> " + HALF, after="hello from bob")

        screen = ScreenModel(COLS, ROWS)
        screen.feed(term.output)
        lines = screen.lines()
        message = [i for i, line in enumerate(lines)
                   if re.fullmatch(rf"\[\d\d:\d\d\] bob \({ids['bob']}\): hello from bob", line)]
        assert len(message) == 1, "\n".join(lines)
        assert lines[screen.row] == "alice> " + HALF, "\n".join(lines)
        assert screen.col == len("alice> " + HALF)
        assert message[0] < screen.row
        assert PASSWORD not in term.output  # typed without echo

        term.type("\r")  # the half-typed line was kept: sending it works
        term.wait_for(f"you -> bob ({ids['bob']}): half-typed words")
        term.type("\x04")  # Ctrl-D on an empty line leaves
        term.wait_for("Logged out.")
        assert term.proc.wait(TIMEOUT) == 0
        mode = termios.tcgetattr(term.slave)
        assert mode[3] & termios.ECHO and mode[3] & termios.ICANON  # terminal given back
    finally:
        term.close()


def _tmux(sock: Path, *args: str) -> str:
    done = subprocess.run(["tmux", "-S", str(sock), *args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=client_env(password=None))
    assert done.returncode == 0, done.stderr
    return done.stdout


def _screen_until(sock: Path, done: Callable[[list[str]], bool]) -> list[str]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        lines = _tmux(sock, "capture-pane", "-p").splitlines()
        if done(lines):
            return lines
        if time.monotonic() > deadline:
            raise AssertionError("timed out; screen:\n" + "\n".join(lines))
        time.sleep(0.1)


def test_incoming_message_keeps_half_typed_line_tmux(daemon: DaemonProcess) -> None:
    ids = register(daemon.port, "alice", "bob")
    # a short path: a unix socket's path must fit in about 100 bytes
    sockdir = Path(tempfile.mkdtemp(prefix="qqtmux"))
    sock = sockdir / "s"
    command = f"{CLIENT} --host 127.0.0.1 --port {daemon.port}; echo exit=$?; sleep 60"
    _tmux(sock, "-f", "/dev/null", "new-session", "-d", "-x", str(COLS), "-y", str(ROWS),
          command)
    try:
        _screen_until(sock, lambda s: any(line.startswith("qq>") for line in s))
        _tmux(sock, "send-keys", "-l", "login alice")
        _tmux(sock, "send-keys", "Enter")
        _screen_until(sock, lambda s: any("Password for alice:" in line for line in s))
        _tmux(sock, "send-keys", "-l", PASSWORD)
        _tmux(sock, "send-keys", "Enter")
        _screen_until(sock, lambda s: "Offline messages: 0" in s)
        _tmux(sock, "send-keys", "-l", HALF)
        _screen_until(sock, lambda s: "alice> " + HALF in s)

        sent = run_client(daemon.port, f"login bob\nchat {ids['alice']} hello from bob\n")
        assert sent.returncode == 0, sent.stdout
        pattern = re.compile(rf"\[\d\d:\d\d\] bob \({ids['bob']}\): hello from bob")
        lines = _screen_until(sock, lambda s: any(pattern.fullmatch(line) for line in s))
        lines = [line for line in lines if line]
        assert pattern.fullmatch(lines[-2]), "\n".join(lines)
        assert lines[-1] == "alice> " + HALF, "\n".join(lines)
        assert PASSWORD not in "\n".join(lines)

        _tmux(sock, "send-keys", "C-u")
        _tmux(sock, "send-keys", "C-d")
        _screen_until(sock, lambda s: "exit=0" in s)
    finally:
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True,
                       timeout=TIMEOUT)
        shutil.rmtree(sockdir, ignore_errors=True)


def test_ambiguous_name_and_passwd_asked_in_the_terminal(daemon: DaemonProcess) -> None:
    ids = register(daemon.port, "alice", "Alan", "bob")
    term = PtyClient(daemon.port)
    try:
        term.wait_for("qq> ")
        term.type("login bob\r")
        term.wait_for("Password for bob: ")
        term.type(PASSWORD + "\r")
        term.wait_for("bob> ", after="Offline messages: 0")
        term.type("chat al which of you\r")
        term.wait_for("Which one for chat? Number or name (Enter cancels): ")
        assert f"1) Alan ({ids['Alan']})" in term.output
        assert f"2) alice ({ids['alice']})" in term.output
        term.type("2\r")
        term.wait_for(f"you -> alice ({ids['alice']}): which of you")

        term.type("passwd\r")
        term.wait_for("Current password: ")
        term.type(PASSWORD + "\r")
        term.wait_for("New password: ")
        term.type("fresh-secret\r")
        term.wait_for("The new password again: ")
        term.type("fresh-secret\r")
        term.wait_for("Password changed")
        term.type("\x04")
        term.wait_for("Logged out.")
        assert term.proc.wait(TIMEOUT) == 0
        assert PASSWORD not in term.output and "fresh-secret" not in term.output
    finally:
        term.close()
    assert run_client(daemon.port, "login bob\n", password="fresh-secret").returncode == 0
    assert run_client(daemon.port, "login bob\n").returncode == 1
