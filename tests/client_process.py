"""The console client as a child process driven through pipes, for end-to-end tests.

Every wait is bounded: ``expect`` fails with the client's whole output so far
when the expected line does not come.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

CLIENT = Path(sys.executable).parent / "qqchat-client"
TIMEOUT = 20.0
PASSWORD = "secret-pw"
#: where a client keeps saved sessions unless a test gives it a directory: a path that
#: can never be created, so no test reads or writes the real ~/.config
NO_CONFIG = os.path.join(os.devnull, "config")


def client_env(password: str | None = PASSWORD, config: Path | str | None = None,
               **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QQCHAT_")}
    if password is not None:
        env["QQCHAT_PASSWORD"] = password
    env["TZ"] = "UTC"
    env["XDG_CONFIG_HOME"] = str(config) if config is not None else NO_CONFIG
    env.update(extra)
    return env


def run_client(port: int, script: str, *args: str, password: str | None = PASSWORD,
               timeout: float = TIMEOUT, config: Path | str | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the client with ``script`` on stdin until it exits; ``config`` is its
    XDG_CONFIG_HOME (saved sessions), ``env`` more variables."""
    return subprocess.run([str(CLIENT), "--host", "127.0.0.1", "--port", str(port), *args],
                          input=script, capture_output=True, text=True, timeout=timeout,
                          env=client_env(password, config, **(env or {})))


def register(port: int, *names: str, client_args: Sequence[str] = ()) -> dict[str, int]:
    """Register users; their ids by name."""
    done = run_client(port, "".join(f"register {n}\n" for n in names), *client_args)
    assert done.returncode == 0, done.stdout + done.stderr
    ids = {m[1]: int(m[2]) for m in re.finditer(r"Registered (\S+) with id (\d+)", done.stdout)}
    assert set(ids) == set(names), done.stdout
    return ids


class ClientProcess:
    """A client whose stdin stays open, so the test decides when each line is typed."""

    def __init__(self, port: int, *args: str, password: str | None = PASSWORD,
                 config: Path | str | None = None) -> None:
        self.proc = subprocess.Popen(
            [str(CLIENT), "--host", "127.0.0.1", "--port", str(port), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=client_env(password, config))
        self.lines: list[str] = []  # everything read so far
        self._unread: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._eof = False

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._unread.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._unread.put(None)

    @property
    def transcript(self) -> str:
        return "\n".join(self.lines)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def expect(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """Read lines until one matches ``pattern`` (re.search); fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while not self._eof:
            left = deadline - time.monotonic()
            try:
                line = self._unread.get(timeout=max(left, 0))
            except queue.Empty:
                break
            if line is None:
                self._eof = True
                break
            self.lines.append(line)
            found = regex.search(line)
            if found:
                return found
        why = "the client exited" if self._eof else f"nothing for {timeout:.0f} s"
        raise AssertionError(f"no line matching {pattern!r} ({why}); output:\n"
                             + self.transcript)

    def finish(self, timeout: float = TIMEOUT) -> int:
        """Close stdin (the client then quits) and return its exit status."""
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.wait(timeout)

    def wait(self, timeout: float = TIMEOUT) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        while True:
            try:
                line = self._unread.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        self._eof = True
        return code

    def __enter__(self) -> ClientProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
