"""A Redis master, its replica and three real ``redis-sentinel`` processes on loopback.

What a failover test needs: a master to SIGKILL, a replica for Sentinel to
promote, and a quorum (2 of 3) to agree that the master is down. The timeouts are
short so that a failover fits well inside the tests' deadlines:

- ``down-after-milliseconds 1000``: a master silent for 1 s is down;
- ``failover-timeout 3000``: an election that went nowhere is tried again after
  2 x 3 s rather than the default 6 minutes.

``start`` returns once every Sentinel knows the replica and the two other
Sentinels (before that a failover could not happen), and the replica is in sync.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster_processes import redis_command
from ports import free_port
from redis_server import RedisServer

MASTER = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
QUORUM = 2
START_TIMEOUT = 30.0


def sentinel_binary() -> str:
    """Debian's redis-sentinel (package redis-sentinel; scripts/test installs it)."""
    binary = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"
    if not Path(binary).exists():
        raise RuntimeError("redis-sentinel not found: apt-get install redis-sentinel "
                           "(scripts/test does)")
    return binary


class Sentinel:
    def __init__(self, master_port: int, workdir: Path, index: int) -> None:
        self.port = free_port()
        self.dir = workdir / f"sentinel{index}"
        self.dir.mkdir(parents=True)
        self.conf = self.dir / "sentinel.conf"
        # Sentinel rewrites its file (what it learns: replicas, peers, epochs)
        self.conf.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", "daemonize no", f'dir "{self.dir}"',
            f"sentinel monitor {MASTER} 127.0.0.1 {master_port} {QUORUM}",
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER} 1", ""]))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sentinel:
        log = open(self.dir / "sentinel.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([sentinel_binary(), str(self.conf)], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def command(self, *args: str | int) -> Any:
        return redis_command(self.port, *args, timeout=2)

    def master_state(self) -> dict[str, str]:
        """``SENTINEL MASTER`` as a dict ({} while this Sentinel does not answer)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("redis-sentinel exited:\n" + self.output())
        try:
            flat = self.command("SENTINEL", "MASTER", MASTER)
        except OSError:
            return {}
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def output(self) -> str:
        try:
            return (self.dir / "sentinel.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


class RedisSentinels:
    """Master, replica, three Sentinels. ``url`` is the daemons' ``--redis``; ``port``
    the current master's (what the Sentinels say now), for looking at keys."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="qqchat-sentinel-"))
        self.master = RedisServer()
        self.replica = RedisServer(args=["--replicaof", "127.0.0.1", str(self.master.port)])
        self.sentinels = [Sentinel(self.master.port, self.dir, i) for i in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    @property
    def port(self) -> int:
        return self.master_address()[1]

    def master_address(self) -> tuple[str, int]:
        """Where the first Sentinel that answers says the master is."""
        for s in self.sentinels:
            if s.proc is None:
                continue
            try:
                host, port = s.command("SENTINEL", "get-master-addr-by-name", MASTER)
            except (OSError, TypeError, ValueError):
                continue
            return host, int(port)
        raise RuntimeError("no Sentinel answers")

    def start(self) -> RedisSentinels:
        try:
            self.master.start()
            self.replica.start()
            for s in self.sentinels:
                s.start()
            deadline = time.monotonic() + START_TIMEOUT
            while not self._ready():
                if time.monotonic() > deadline:
                    raise RuntimeError("Sentinels not ready:\n" + self.output())
                time.sleep(0.1)
        except BaseException:
            self.close()  # nothing left running behind a failed start
            raise
        return self

    def _ready(self) -> bool:
        info = redis_command(self.replica.port, "INFO", "replication")
        if "master_link_status:up" not in info:
            return False
        for s in self.sentinels:
            state = s.master_state()
            if (state.get("flags") != "master" or state.get("num-slaves") != "1"
                    or state.get("num-other-sentinels") != str(len(self.sentinels) - 1)):
                return False
        return True

    def failed_over(self) -> bool:
        """Every Sentinel names the replica as the master now."""
        want = ("127.0.0.1", self.replica.port)
        for s in self.sentinels:
            try:
                host, port = s.command("SENTINEL", "get-master-addr-by-name", MASTER)
            except (OSError, TypeError, ValueError):
                return False
            if (host, int(port)) != want:
                return False
        return True

    def output(self) -> str:
        return "\n".join(f"--- sentinel {i} (port {s.port})\n{s.output()}"
                         for i, s in enumerate(self.sentinels))

    def close(self) -> None:
        for s in self.sentinels:
            s.stop()
        self.replica.close()
        self.master.close()
        shutil.rmtree(self.dir, ignore_errors=True)
