"""The daemon under test: started as a ``twistd`` subprocess (or attached to by
pid), pinned to its own core, and observed through /proc.

Each run gets a fresh daemon and a fresh database, so runs are independent and
their medians mean something. The daemon's CPU time and memory come from /proc
because the load generator cannot see them and they are what compares across
servers: the wall-clock rate also measures the generator.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


class BenchSetupError(RuntimeError):
    """The daemon or database could not be started; the message says why."""


# -- host and CPU plumbing ------------------------------------------------------


def check_loopback(host: str) -> str:
    """Return ``host`` if it is a loopback address; the generator must never load a
    machine other than this one."""
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise ValueError(f"cannot resolve {host!r}: {e}") from None
    for info in infos:
        if not ipaddress.ip_address(info[4][0]).is_loopback:
            raise ValueError(f"{host!r} is not a loopback address; the benchmark only "
                             "drives a daemon on this machine (127.0.0.1 or ::1)")
    return host


def cpu_plan(pin: bool) -> tuple[int | None, int | None]:
    """(daemon CPU, generator CPU): the first two CPUs we may use, or no pinning
    with fewer than two, where pinning both to one core would measure contention."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def pin_process(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` (threads keep the mask they were created with)."""
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.sched_setaffinity(int(tid), {cpu})


def raise_fd_limit() -> int:
    """Raise our soft RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def process_fd_limit(pid: int) -> int | None:
    """The soft open-files limit of another process, from /proc/PID/limits."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                value = line.split()[3]
                return None if value == "unlimited" else int(value)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _stat_cpu(path: str) -> float:
    raw = Path(path).read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the whole process (all threads), in seconds."""
    return _stat_cpu(f"/proc/{pid}/stat")


def main_thread_cpu_seconds(pid: int) -> float:
    """CPU time of the main (reactor) thread alone: the rest is thread pools
    (database, password hashing), which tells where an optimisation should go."""
    return _stat_cpu(f"/proc/{pid}/task/{pid}/stat")


def rss_kib(pid: int) -> int:
    """Resident set size in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchSetupError(f"no VmRSS for pid {pid}")


def free_port(host: str = "127.0.0.1") -> int:
    """tests/ports.py's: a port bind(0) hands out may be taken by an outgoing
    connection (the generator's, MariaDB's) before the daemon binds it."""
    return int(_load_ports_helper().free_port(host))


def _die_with_parent() -> None:
    """SIGKILL the child if the generator dies without cleaning up."""
    import ctypes

    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


# -- the daemon -----------------------------------------------------------------


class Daemon:
    """A daemon to drive: ours (``proc`` set, stopped by us) or one given by pid."""

    def __init__(self, host: str, port: int, pid: int,
                 proc: subprocess.Popen[bytes] | None = None,
                 log_path: Path | None = None, web_port: int | None = None) -> None:
        self.host = host
        self.port = port
        #: the web edge's port (WebSocket at /ws), when started with one
        self.web_port = web_port
        self.pid = pid
        self.proc = proc
        self.log_path = log_path

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return Path(f"/proc/{self.pid}").exists()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def main_thread_cpu_seconds(self) -> float:
        return main_thread_cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def fd_limit(self) -> int | None:
        return process_fd_limit(self.pid)

    def output_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM (graceful stop), then SIGKILL if it takes too long; only ours."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _daemon_setup(cpu: int | None) -> None:
    """Runs in the child before exec: the fd limit and the CPU the daemon keeps."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    _die_with_parent()


def start_daemon(db_url: str, hash_cost: int, workdir: Path, cpu: int | None,
                 host: str = "127.0.0.1", redis_url: str | None = None,
                 node_id: str | None = None, name: str = "daemon", web: bool = False,
                 extra: Sequence[str] = ()) -> Daemon:
    """Start ``twistd -n qqchat`` on a free loopback port and wait until it listens.
    With ``redis_url`` it is a cluster node named ``node_id``; ``name`` names its log
    in ``workdir`` (two nodes share one workdir); with ``web`` it also serves its web
    edge on another free port; ``extra`` options go last (they win over the ones
    above)."""
    twistd = Path(sys.executable).parent / "twistd"
    if not twistd.exists():
        found = shutil.which("twistd")
        if found is None:
            raise BenchSetupError(f"twistd not found next to {sys.executable} or on PATH; "
                                  "install the project (pip install .) into this Python")
        twistd = Path(found)
    # The installed package, not a source tree on PYTHONPATH; no QQCHAT_* overrides.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("QQCHAT_") and k != "PYTHONPATH"}
    log_path = workdir / f"{name}.log"
    cluster = [] if redis_url is None else ["--redis", redis_url] + (
        ["--node-id", node_id] if node_id else [])
    for _attempt in range(3):
        port = free_port(host)
        web_port = free_port(host) if web else None
        web_args = [] if web_port is None else ["--web-port", str(web_port),
                                                 "--web-interface", host]
        cmd = [str(twistd), "-n", "--pidfile=", "qqchat", "--interface", host,
               "--port", str(port), "--db", db_url, "--hash-cost", str(hash_cost),
               # the generator floods on purpose, from one address: no rate limits or caps
               "--idle-timeout", "3600", "--rate-limit", "0", "--user-rate-limit", "0",
               "--register-rate", "0", "--max-conns-per-address", "0", "--search-rate", "0",
               *cluster, *web_args, *extra]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=lambda: _daemon_setup(cpu))
        daemon = Daemon(host, port, proc.pid, proc, log_path, web_port)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                for listening in (port, web_port):  # the web port listens after the TCP one
                    if listening is not None:
                        with socket.create_connection((host, listening), timeout=1):
                            pass
                return daemon
            except OSError:
                time.sleep(0.05)
        else:
            daemon.stop()
            raise BenchSetupError(f"daemon not listening on {host}:{port} after "
                                  f"{START_TIMEOUT:.0f} s:\n{daemon.output_tail()}")
        if "Address already in use" not in daemon.output_tail():
            break
    raise BenchSetupError(f"daemon exited with status {proc.returncode}:\n"
                          f"{daemon.output_tail()}")


# -- profiling ------------------------------------------------------------------


def start_py_spy(pid: int, path: str) -> subprocess.Popen[bytes]:
    """Sample ``pid`` with py-spy (raw collapsed stacks, per thread) until stopped."""
    exe = Path(sys.executable).parent / "py-spy"
    found = str(exe) if exe.exists() else shutil.which("py-spy")
    if found is None:
        raise BenchSetupError("--py-spy needs py-spy: pip install py-spy")
    proc = subprocess.Popen([found, "record", "-p", str(pid), "--format", "raw", "--threads",
                             "-r", "100", "-o", path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attach before the measured interval starts
    if proc.poll() is not None:
        raise BenchSetupError(f"py-spy could not attach to {pid} (status {proc.returncode}; "
                              "it needs ptrace permission)")
    return proc


def stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT makes py-spy write its output and exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# -- databases --------------------------------------------------------------------


def _load_test_helper(file: str, module_name: str, needed_for: str) -> ModuleType:
    """Load tests/FILE by path (bench is run from the source tree, tests/ is not a
    package); once per process."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = REPO / "tests" / file
    if not path.exists():
        raise BenchSetupError(f"{path} not found: {needed_for} needs the source tree")
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _load_ports_helper() -> ModuleType:
    """tests/ports.py, under the name the other helpers import it by (tests/ is a
    directory of sibling modules, not a package)."""
    return _load_test_helper("ports.py", "ports", "the bench's MariaDB and Redis")


def _load_mariadb_helper() -> ModuleType:
    """tests/mariadb_server.py starts a throwaway MariaDB; reuse it rather than copy it."""
    _load_ports_helper()
    return _load_test_helper("mariadb_server.py", "qqbench_mariadb_server",
                             "--db mysql (or give --db-url mysql://...)")


def _load_redis_helper() -> ModuleType:
    """tests/redis_server.py starts a throwaway redis-server."""
    _load_ports_helper()
    return _load_test_helper("redis_server.py", "qqbench_redis_server", "chat --cross")


class Databases:
    """Hands out one empty database per run: an SQLite file, a database on a
    throwaway MariaDB (started once), or the server of a given URL."""

    def __init__(self, kind: str, url: str | None, cpu: int | None) -> None:
        self.kind = kind
        self.url = url
        self.cpu = cpu
        self._server: Any = None
        self._count = 0

    def __enter__(self) -> Databases:
        if self.kind == "mysql" and self.url is None:
            helper = _load_mariadb_helper()
            self._server = helper.MariaDB()
            try:
                self._server.start()
            except helper.MariaDBError as e:
                raise BenchSetupError(str(e)) from None
            if self.cpu is not None and self._server.pid is not None:
                # beside the generator: the daemon's core stays the daemon's alone
                pin_process(self._server.pid, self.cpu)
        return self

    @property
    def server_pid(self) -> int | None:
        """The pid of the MariaDB we started (None for SQLite or a given server)."""
        return None if self._server is None else self._server.pid

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @contextlib.contextmanager
    def fresh(self, workdir: Path) -> Iterator[str]:
        """A database URL for one run; dropped afterwards when it was ours."""
        self._count += 1
        if self.url is not None:
            yield self.url  # a given server: names in each run are unique instead
            return
        if self.kind == "sqlite":
            yield f"sqlite:///{workdir / 'chat.db'}"
            return
        name = f"qqbench_{os.getpid()}_{self._count}"
        self._server.create_database(name)
        try:
            yield self._server.url(name)
        finally:
            with contextlib.suppress(Exception):
                self._server.drop_database(name)


@contextlib.contextmanager
def redis_server(cpu: int | None) -> Iterator[Any]:
    """A throwaway redis-server on a free loopback port for one run (fresh, so no
    keys of an earlier run's nodes and users remain), pinned to ``cpu``; it has
    ``.url``, ``.port`` and ``.proc``."""
    helper = _load_redis_helper()
    server = helper.RedisServer()
    try:
        try:
            server.start()
        except RuntimeError as e:
            raise BenchSetupError(str(e)) from None
        if cpu is not None and server.proc is not None:
            pin_process(server.proc.pid, cpu)  # beside the generator, like MariaDB
        yield server
    finally:
        server.close()


def redis_command(port: int, *args: str, timeout: float = 5.0) -> bytes:
    """One command to the Redis on 127.0.0.1:``port``; its raw reply line (enough
    for the integer and status replies the benchmark asks for)."""
    payload = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a), a) for a in (x.encode() for x in args))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        reply = b""
        while not reply.endswith(b"\r\n") and len(reply) < 4096:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply


def wait_nodes_ready(daemons: list[Daemon], redis_port: int, nodes: list[str],
                     timeout: float = START_TIMEOUT) -> None:
    """A cluster node listens once its database is up, but serves logins only once
    its Redis connections are: wait until every node has announced itself (the
    ``qq:node:<id>`` key its relay sets when both connections are ready)."""
    deadline = time.monotonic() + timeout
    waiting = list(zip(daemons, nodes, strict=True))
    while waiting:
        for daemon, node in list(waiting):
            if not daemon.alive():
                raise BenchSetupError(f"cluster node {node} exited:\n{daemon.output_tail()}")
            with contextlib.suppress(OSError):
                if redis_command(redis_port, "EXISTS", f"qq:node:{node}") == b":1\r\n":
                    waiting.remove((daemon, node))
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise BenchSetupError(f"cluster nodes {[n for _, n in waiting]} not connected "
                                  f"to Redis after {timeout:.0f} s:\n"
                                  + "\n".join(d.output_tail() for d, _ in waiting))
        time.sleep(0.05)


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    base = tempfile.gettempdir()
    path = Path(tempfile.mkdtemp(prefix="qqbench-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
