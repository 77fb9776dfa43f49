"""The ceiling: ``ceiling.c`` beside this file, a minimal C server of the protocol
subset the benchmark speaks (epoll, one thread, no storage). ``--ceiling`` runs it
after every daemon run, with the same sizes on the same core, so each figure can
be given beside what the network and the protocol alone cost in that sitting.

The binary is built with the system's C compiler the first time it is needed, and
again whenever ``ceiling.c`` is newer than it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.daemon import BenchSetupError, Daemon, _daemon_setup

SOURCE = Path(__file__).resolve().with_name("ceiling.c")
#: where the binary goes (ignored by git); the user's cache when that is read-only
BUILD_DIRS = (SOURCE.parent / "build", Path.home() / ".cache" / "qqchat-bench")
CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror")
START_TIMEOUT = 10.0

#: the workloads the ceiling serves (those that need no storage)
SUPPORTED = ("chat", "group", "login", "idle")


def unsupported(args: argparse.Namespace) -> str | None:
    """Why the ceiling cannot run beside this invocation, or None if it can."""
    w = args.workload
    if w not in SUPPORTED:
        why = {"backlog": "it stores nothing, so it has no backlog to send",
               "soak": "the soak uses friends, logins with backlogs and history",
               "directory": "it has no search and no conversation list",
               "loginflood": "it reads no PROXY headers and has no login throttling"}
        return (f"the ceiling does not serve the {w} workload ({why.get(w, 'not in its subset')}"
                f"); it serves {', '.join(SUPPORTED)}")
    if getattr(args, "cross", False):
        return "the ceiling is one server: it has no chat --cross"
    if getattr(args, "ws", False):
        return "the ceiling speaks TCP only: it has no chat --ws"
    return None


def _compiler() -> str:
    cc = os.environ.get("CC") or next(
        (c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cc is None or shutil.which(cc) is None:
        raise BenchSetupError("--ceiling builds bench/ceiling/ceiling.c and needs a C compiler "
                              "(cc, gcc or clang; e.g. apt-get install build-essential), or "
                              "CC naming one")
    return cc


def build() -> Path:
    """The ceiling's binary, compiled first if it is missing or older than its source."""
    last_error: OSError | None = None
    for directory in BUILD_DIRS:
        exe = directory / "ceiling"
        with contextlib.suppress(OSError):
            if exe.stat().st_mtime >= SOURCE.stat().st_mtime and os.access(exe, os.X_OK):
                return exe
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix="ceiling.", dir=directory)
            os.close(fd)
        except OSError as e:
            last_error = e
            continue
        try:
            proc = subprocess.run([_compiler(), *CFLAGS, "-o", tmp, str(SOURCE)],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=120, check=False)
            if proc.returncode != 0:
                raise BenchSetupError(f"building the ceiling failed:\n{proc.stderr[-3000:]}")
            os.replace(tmp, exe)  # whole, even if another run builds it at the same time
            return exe
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    raise BenchSetupError(f"no writable directory to build the ceiling in: {last_error}")


def start(exe: Path, workdir: Path, cpu: int | None, host: str = "127.0.0.1") -> Daemon:
    """Start the ceiling on a free port of ``host``, pinned to ``cpu`` with the
    daemon's file limit; it prints its port once it listens."""
    log_path = workdir / "ceiling.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(exe), host, "0"], cwd=workdir, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=log,
                                preexec_fn=lambda: _daemon_setup(cpu))
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
    first = proc.stdout.readline() if ready else b""
    proc.stdout.close()
    daemon = Daemon(host, 0, proc.pid, proc, log_path)
    try:
        daemon.port = int(first)
    except ValueError:
        daemon.stop()
        raise BenchSetupError(f"the ceiling did not start: {daemon.output_tail()}") from None
    return daemon
