"""A real qqchat daemon in a child process, for tests that run clients as processes.

In-process daemons (conftest) share the test's reactor; a console client run as
a subprocess needs a daemon that keeps serving while the test blocks on pipes,
so this one is started with ``twistd`` exactly as a user would, on loopback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ports import free_port
from processes import terminate

BIN = Path(sys.executable).parent
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class DaemonError(RuntimeError):
    """The daemon did not start or stop; the message includes its output."""


class DaemonProcess:
    """``with DaemonProcess(tmp_path) as d:`` serves on ``127.0.0.1:d.port`` from an
    SQLite file in ``tmp_path``, with a cheap password hash so tests stay fast."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, port: int | None = None, args: Sequence[str] = ()
                 ) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.args = list(args)  # more daemon options, e.g. --tls-cert/--tls-key
        self.log_path = self.workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> DaemonProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [str(BIN / "twistd"), "-n", "--pidfile=", "qqchat",
               "--interface", self.host, "--port", str(self.port),
               "--db", f"sqlite:///{self.workdir / 'chat.db'}", "--hash-cost", "4",
               *self.args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("QQCHAT_")}
        with open(self.log_path, "wb") as log:
            # output to a file, not a pipe nobody reads, so the daemon can never block on it
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonError(f"daemon exited with status {self.proc.returncode}:\n"
                                  + self.output())
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise DaemonError(f"daemon not listening on port {self.port} after "
                          f"{START_TIMEOUT:.0f} s:\n" + self.output())

    def kill(self) -> None:
        """SIGKILL: the daemon dies the way a crash or a pulled cable looks to clients."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM (graceful stop), then SIGKILL if it takes too long."""
        proc, self.proc = self.proc, None
        terminate(proc, STOP_TIMEOUT)

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
