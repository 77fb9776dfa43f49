"""A real cluster in child processes: MariaDB, redis-server, twistd daemons, nginx.

The in-process cluster tests share one reactor; these run every piece as the
operator does (``twistd -n qqchat``, nginx with the shipped stream config), so a
daemon can be killed with SIGKILL, stopped with SIGTERM, or lose its database
for real. Clients are blocking sockets: the test thread drives them, and a
reader thread can follow a recipient while the sender streams.

Every wait has a deadline; every child is stopped at teardown and dies with the
test process if that dies first.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from mariadb_server import MariaDB, MariaDBError, _die_with_parent, _find_binary, _tail
from ports import free_port
from processes import terminate
from redis_server import RedisServer

REPO = Path(__file__).resolve().parent.parent
LOCAL_CLUSTER = REPO / "deploy" / "local-cluster"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
WAIT = 10.0

Frame = dict[str, Any]


class DisconnectedError(ConnectionError):
    """The server closed the connection (or it broke)."""


class ReplyError(Exception):
    """A request got an error reply."""

    def __init__(self, frame: Frame) -> None:
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.frame = frame
        self.code = frame.get("code")


def wait_until(check: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something true; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def load_local_cluster() -> ModuleType:
    """deploy/local-cluster as a module: the tests render the shipped nginx template
    with the script's own code, so what is tested is what operators run."""
    loader = importlib.machinery.SourceFileLoader("local_cluster", str(LOCAL_CLUSTER))
    spec = importlib.util.spec_from_loader("local_cluster", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


# -- a blocking client ------------------------------------------------------------------


class LineClient:
    """One connection speaking the wire protocol: requests matched to replies by
    ``req``; everything else (pushes, errors without ``req``) lands in ``pushes``."""

    def __init__(self, port: int, timeout: float = WAIT) -> None:
        self.port = port
        self.timeout = timeout
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""
        self.pushes: list[Frame] = []
        self.reqs = itertools.count(1)
        self.user_id: int | None = None
        self.name: str | None = None
        self.closed = False

    def send(self, frame: Frame) -> None:
        try:
            self.sock.sendall(json.dumps(frame).encode() + b"\n")
        except OSError as e:
            self.closed = True
            raise DisconnectedError(str(e)) from None

    def read_frame(self, timeout: float | None = None) -> Frame | None:
        """The next line, or None if none came within ``timeout``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self.buf:
            if self.closed:
                raise DisconnectedError("connection closed")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as e:
                self.closed = True
                raise DisconnectedError(str(e)) from None
            if not chunk:
                self.closed = True
                raise DisconnectedError("connection closed by the server")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, type: str, timeout: float | None = None, **fields: Any) -> Frame:
        """Send a request; return its reply (errors included), keeping pushes."""
        req = next(self.reqs)
        self.send({"type": type, "req": req, **fields})
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            frame = self.read_frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                raise TimeoutError(f"no reply to {type} (req {req}) on port {self.port}")
            if frame.get("req") == req:
                return frame
            self.pushes.append(frame)

    def ok(self, type: str, **fields: Any) -> Frame:
        frame = self.call(type, **fields)
        if frame["type"] == "error":
            raise ReplyError(frame)
        return frame

    def login(self, name: str, password: str = "password1") -> tuple[Frame, list[Frame]]:
        """Log in; returns the reply and the backlog (the messages before ``synced``)."""
        reply = self.ok("login", name=name, password=password)
        self.user_id = reply["user"]["id"]
        self.name = name
        backlog = []
        while True:
            frame = self.read_frame()
            if frame is None:
                raise TimeoutError(f"no 'synced' after login of {name}")
            if frame["type"] == "synced":
                assert frame["count"] == len(backlog), (frame, len(backlog))
                return reply, backlog
            if frame["type"] == "error":  # the backlog could not be read; closing
                raise ReplyError(frame)
            if frame["type"] != "message":
                raise AssertionError(f"unexpected frame in the backlog of {name}: {frame}")
            backlog.append(frame)

    def push(self, match: Callable[[Frame], bool], timeout: float = WAIT) -> Frame:
        """Take the first push that matches, waiting for it if needed."""
        for i, frame in enumerate(self.pushes):
            if match(frame):
                return self.pushes.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            frame = self.read_frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                raise TimeoutError(f"no matching push on port {self.port} in {timeout} s; "
                                   f"had {self.pushes}")
            if match(frame):
                return frame
            self.pushes.append(frame)

    def message(self, timeout: float = WAIT, **want: Any) -> Frame:
        """The next ``message`` push whose fields include ``want``."""
        return self.push(lambda f: f.get("type") == "message"
                         and all(f.get(k) == v for k, v in want.items()), timeout)

    def who(self) -> set[int]:
        return {u["id"] for u in self.ok("who", limit=500)["users"]}

    def who_or_none(self) -> set[int]:
        """``who``, or nobody while this client's node is reconnecting to Redis."""
        try:
            return self.who()
        except ReplyError as e:
            if e.code != "unavailable":
                raise
            return set()

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()


# -- raw Redis, for looking at presence from outside -------------------------------------


def redis_command(port: int, *args: str | int, timeout: float = 5.0) -> Any:
    """One command over RESP; enough of the protocol for strings, ints and arrays."""
    payload = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a), a) for a in (str(x).encode() for x in args))
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        reader = sock.makefile("rb")

        def parse() -> Any:
            line = reader.readline()
            if not line:
                raise ConnectionError("Redis closed the connection")
            kind, rest = line[:1], line[1:-2]
            if kind == b"+":
                return rest.decode()
            if kind == b"-":
                raise RuntimeError(rest.decode())
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                if n < 0:
                    return None
                data = reader.read(n + 2)[:-2]
                return data.decode()
            if kind == b"*":
                n = int(rest)
                return None if n < 0 else [parse() for _ in range(n)]
            raise RuntimeError(f"unexpected Redis reply {line!r}")

        return parse()


# -- MariaDB that can stop and start again -----------------------------------------------


class RestartableMariaDB(MariaDB):
    """The test MariaDB, plus a real stop and start on the same port and datadir
    (the base class's ``stop`` deletes everything)."""

    def halt(self) -> None:
        """Shut the server down cleanly (SIGTERM) and keep its files."""
        proc, self.process = self.process, None
        terminate(proc, self.shutdown_timeout)

    def resume(self) -> None:
        """Start again on the same port, from the same datadir."""
        if self.process is not None:
            raise MariaDBError("server is running")
        mariadbd = _find_binary(("mariadbd", "mysqld"), ("/usr/sbin/mariadbd",))
        for _ in range(20):  # the port can linger for a moment after the old server
            if self._spawn(mariadbd):
                break
            if "Bind on TCP/IP port" not in _tail(self.error_log):
                self._raise_start_failure("exited while restarting")
            time.sleep(0.25)
        else:
            self._raise_start_failure("could not bind its port again")
        self._wait_ready()


# -- processes -------------------------------------------------------------------------


def _child_setup() -> None:
    """Own process group (a stop reaches nginx's workers) and death with the test."""
    os.setsid()
    _die_with_parent()


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM,
                 timeout: float = STOP_TIMEOUT) -> float | None:
    """Signal a child and reap it (SIGKILL to its group past ``timeout``; nginx's
    master stops its workers itself); returns how long it took to exit after the
    signal, None if it had exited already."""
    if proc is None or proc.poll() is not None:
        return None
    started = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        # not reaped yet, so its pid (the group's id) cannot belong to anyone else
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    return time.monotonic() - started


def ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(b'{"type":"ping","req":"up"}\n')
            data = b""
            while b"\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                data += chunk
            return b'"pong"' in data
    except OSError:
        return False


@dataclass
class Daemon:
    """``twistd -n qqchat`` in cluster mode on its own loopback port."""

    index: int
    workdir: Path
    db: str
    redis: str
    port: int = field(default_factory=free_port)
    web_port: int = field(default_factory=free_port)
    node: str = ""
    proc: subprocess.Popen[bytes] | None = None
    #: more daemon options (e.g. --log-order positions)
    extra: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.node = f"n{self.index}-{secrets.token_hex(3)}"
        self.log = self.workdir / f"daemon{self.index}-{self.node}.log"

    def start(self) -> Daemon:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [str(BIN / "twistd"), "-n", "--pidfile=", "qqchat", "--interface", HOST,
               "--port", str(self.port), "--db", self.db, "--redis", self.redis,
               "--node-id", self.node, "--hash-cost", "4",
               "--web-port", str(self.web_port), "--web-interface", HOST,
               # the tests stream and register as fast as they can, all from 127.0.0.1
               "--rate-limit", "0", "--user-rate-limit", "0", "--register-rate", "0",
               "--max-conns-per-address", "0", "--broadcast", "anyone", *self.extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("QQCHAT_")}
        with self.log.open("ab") as out:
            # a file, not a pipe nobody reads: the daemon can never block on its output
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, preexec_fn=_child_setup)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        def up() -> bool:
            if not self.alive:
                raise AssertionError(f"daemon {self.index} exited:\n{self.output()}")
            return ping(self.port)

        try:
            wait_until(up, timeout, f"daemon {self.index} on port {self.port}")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.output()}") from None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return ""

    def kill(self) -> None:
        stop_process(self.proc, signal.SIGKILL)

    def terminate(self) -> float | None:
        return stop_process(self.proc, signal.SIGTERM)


class Nginx:
    """nginx in the foreground with the shipped template, rendered for ``backends``."""

    def __init__(self, workdir: Path, backends: list[int], web_backends: list[int]) -> None:
        self.prefix = workdir / "nginx"
        self.backends = backends
        self.web_backends = web_backends
        self.port = free_port()
        self.web_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        lc = load_local_cluster()
        nginx = lc.nginx_binary()
        if nginx is None:
            raise RuntimeError("nginx not found: apt-get install nginx libnginx-mod-stream "
                               "(scripts/test does)")
        self.prefix.mkdir(parents=True, exist_ok=True)
        conf = lc.render_nginx_conf(f"{HOST}:{self.port}", self.backends, self.prefix,
                                    lc.nginx_stream_module(nginx), f"{HOST}:{self.web_port}",
                                    self.web_backends)
        (self.prefix / "nginx.conf").write_text(conf)
        cmd = lc.nginx_command(nginx, self.prefix)
        with (self.prefix / "stdout.log").open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, preexec_fn=_child_setup)

        def up() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError("nginx exited:\n" + self.output())
            return ping(self.port)

        wait_until(up, START_TIMEOUT, f"nginx on port {self.port}")
        return self

    def output(self) -> str:
        return _tail(self.prefix / "error.log")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)
        self.proc = None


# -- the cluster -----------------------------------------------------------------------


class RedisLike(Protocol):
    """A ``RedisServer``, or Sentinels with their master (``redis_sentinel``): the
    daemons' ``--redis``, and the port of the server that holds the keys now."""

    @property
    def url(self) -> str: ...

    @property
    def port(self) -> int: ...


class ProcessCluster:
    """N daemons sharing one MariaDB database and one Redis, nginx in front."""

    def __init__(self, workdir: Path, mariadb: MariaDB, dbname: str,
                 redis: RedisServer | RedisLike, nodes: int = 3,
                 daemon_args: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.mariadb = mariadb
        self.redis = redis
        self.daemons = [Daemon(i, workdir, mariadb.url(dbname), redis.url,
                               extra=list(daemon_args))
                        for i in range(nodes)]
        self.nginx: Nginx | None = None
        self.clients: list[LineClient] = []
        self._names = itertools.count(1)

    def start(self) -> ProcessCluster:
        for d in self.daemons:
            d.start()
        for d in self.daemons:
            d.wait_ready()
        # ready for clients once each node holds its two Redis connections
        # (commands, and the subscription to broadcasts)
        wait_until(lambda: self._redis_clients() >= len(self.daemons), START_TIMEOUT,
                   "every daemon's Redis subscription")
        self.nginx = Nginx(self.workdir, [d.port for d in self.daemons],
                           [d.web_port for d in self.daemons]).start()
        return self

    def _redis_clients(self) -> int:
        """Daemons with both connections up (the subscriber has its broadcast channel)."""
        lines = [f" {line} " for line in
                 redis_command(self.redis.port, "CLIENT", "LIST").splitlines()
                 # neither a Sentinel's links nor a replica's
                 if " name=sentinel-" not in f" {line} " and " flags=S " not in f" {line} "]
        subscribers = sum(1 for line in lines if " sub=0 " not in line)
        commands = sum(1 for line in lines if " sub=0 " in line and " cmd=client" not in line)
        return min(subscribers, commands)

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        if self.nginx is not None:
            self.nginx.stop()
        for d in self.daemons:
            d.kill()

    def logs(self) -> str:
        """Every daemon's last lines, for assertion messages."""
        parts = [f"--- daemon {d.index} ({d.node}, port {d.port}, "
                 f"{'alive' if d.alive else 'dead'})\n{d.output()}" for d in self.daemons]
        if self.nginx is not None:
            parts.append(f"--- nginx\n{self.nginx.output()}")
        return "\n".join(parts)

    # -- clients --

    @property
    def front(self) -> int:
        assert self.nginx is not None
        return self.nginx.port

    def connect(self, port: int | None = None) -> LineClient:
        """A connection through nginx (default) or straight to a daemon's port. It is
        known to reach a daemon (a ping went through) before it is returned, so
        nginx has counted it for least_conn by then."""
        c = LineClient(self.front if port is None else port)
        self.clients.append(c)
        c.ok("ping")
        return c

    def register(self, name: str | None = None) -> tuple[str, int]:
        """A new account, made on a daemon directly: a short-lived connection through
        nginx could still count for least_conn when the next client arrives."""
        name = name or f"user{next(self._names)}"
        c = self.connect(next(d.port for d in self.daemons if d.alive))
        uid = c.ok("register", name=name, password="password1")["id"]
        c.close()
        return name, uid

    def user(self, name: str | None = None, port: int | None = None) -> LineClient:
        """A registered user, logged in through nginx (or on ``port``)."""
        name, _ = self.register(name)
        c = self.connect(port)
        c.login(name)
        return c

    def node_of(self, uid: int) -> int | None:
        """Index of the daemon holding ``uid``'s session, as Redis records it."""
        sess = redis_command(self.redis.port, "GET", f"qq:sess:{uid}")
        if sess is None:
            return None
        node = sess.split("|", 1)[0]
        for d in self.daemons:
            if d.node == node:
                return d.index
        return None


@contextlib.contextmanager
def reader_thread(client: LineClient, on_frame: Callable[[Frame], None]
                  ) -> Iterator[threading.Event]:
    """Follow ``client`` in a thread until the block ends or the connection drops;
    the event yielded is set once it has dropped."""
    stop = threading.Event()
    dropped = threading.Event()

    def run() -> None:
        try:
            while not stop.is_set():
                frame = client.read_frame(0.2)
                if frame is not None:
                    on_frame(frame)
        except DisconnectedError:
            dropped.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield dropped
    finally:
        stop.set()
        thread.join(5)


# -- MariaDB faults: a crash and a process that stops answering ---------------------------


class FaultyMariaDB(RestartableMariaDB):
    """``RestartableMariaDB`` plus the faults of a real outage: SIGKILL (a crash; ``resume``
    or ``restart`` starts it again from the same datadir, through crash recovery) and
    SIGSTOP/SIGCONT (connections stay open and nothing answers)."""

    def kill(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()  # stops a paused server too
            proc.wait(10)
        # left behind by the crash: _spawn takes the socket's presence as a sign of life
        self.socket_path.unlink(missing_ok=True)

    def restart(self) -> None:
        """Start again after ``kill`` or ``halt``, on the same port and datadir."""
        self.resume()

    def pause(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def unpause(self) -> None:
        """SIGCONT after ``pause`` (harmless if not paused)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
