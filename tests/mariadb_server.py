"""A throwaway MariaDB server for tests.

The chat daemon stores its data in MySQL/MariaDB, and its storage code must be
tested against a real server, not a fake: this module starts a private
``mariadbd`` in a temporary directory on a free loopback port, creates a
password-protected user that connects over TCP like production does, and tears
everything down afterwards.  It needs Debian's ``mariadb-server`` package for
the binaries and ``mysqlclient`` (MySQLdb) for the administrative connection.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ports import free_port

__all__ = ["MariaDB", "MariaDBError"]

_DEBIAN_PACKAGE = "mariadb-server"
_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")


class MariaDBError(RuntimeError):
    """The throwaway server could not be set up, started or stopped."""


def _find_binary(names: tuple[str, ...], fallbacks: tuple[str, ...]) -> str:
    """Locate a MariaDB binary; /usr/sbin is often not on a user's PATH."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    for path in fallbacks:
        if os.access(path, os.X_OK):
            return path
    raise MariaDBError(
        f"{names[0]} not found (looked on PATH and in {', '.join(fallbacks)}); "
        f"install the Debian package {_DEBIAN_PACKAGE!r} "
        f"(apt-get install {_DEBIAN_PACKAGE}) or run scripts/test, which does"
    )


def _tail(path: Path, lines: int = 30) -> str:
    """Last lines of a log file, for error messages that explain themselves."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    """Make the child get SIGKILL if the test process dies without cleanup."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _mysqldb() -> Any:
    """Import MySQLdb lazily so a missing driver gives a helpful message."""
    try:
        import MySQLdb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MariaDBError(
            "MySQLdb is not importable; install the 'mysqlclient' package "
            "(the project's 'mysql' extra)"
        ) from exc
    return MySQLdb


class MariaDB:
    """A private MariaDB server in a temporary directory.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.  Tests
    connect over TCP to ``host``:``port`` as ``user``/``password``; the root
    account is only reachable through the server's unix socket.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        user: str = "qqchat",
        password: str | None = None,
        startup_timeout: float = 60.0,
        shutdown_timeout: float = 30.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if not _NAME_RE.match(user):
            raise ValueError(f"bad user name {user!r}")
        self.user = user
        # Hex keeps the password safe to embed in a URL without quoting.
        self.password = password if password is not None else secrets.token_hex(12)
        self.port = 0
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.tmpdir: Path | None = None

    # -- paths ---------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if self.tmpdir is None:
            raise MariaDBError("server not started")
        return self.tmpdir / name

    @property
    def datadir(self) -> Path:
        """Directory holding the server's databases."""
        return self._path("data")

    @property
    def socket_path(self) -> Path:
        """Unix socket used for the root (administrative) connection."""
        return self._path("mysql.sock")

    @property
    def error_log(self) -> Path:
        """The server's error log, quoted when something goes wrong."""
        return self._path("error.log")

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or None."""
        return self.process.pid if self.process is not None else None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> MariaDB:
        """Initialise a fresh datadir, start the server and create the user."""
        if self.process is not None:
            raise MariaDBError("server already started")
        mariadbd = _find_binary(("mariadbd", "mysqld"), ("/usr/sbin/mariadbd",))
        install_db = _find_binary(
            ("mariadb-install-db", "mysql_install_db"),
            ("/usr/bin/mariadb-install-db",),
        )
        _mysqldb()  # fail early, before spending time on the server
        # Unix socket paths are limited to 107 bytes: fall back to /tmp if
        # $TMPDIR is deep.
        base = tempfile.gettempdir()
        if len(base) > 60:
            base = "/tmp"
        self.tmpdir = Path(tempfile.mkdtemp(prefix="qqchat-mariadb-", dir=base))
        atexit.register(self.stop)
        try:
            self._install_db(install_db)
            # The free port may be taken between probing and binding; retry.
            for attempt in range(3):
                self.port = free_port(self.host)
                if self._spawn(mariadbd):
                    break
                if attempt == 2 or "Bind on TCP/IP port" not in _tail(self.error_log):
                    self._raise_start_failure("exited during startup")
            self._wait_ready()
            self._create_user()
        except BaseException:
            self.stop()
            raise
        return self

    def _common_args(self) -> list[str]:
        args = [
            "--no-defaults",  # ignore /etc/mysql: the system server's config
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            # Small and quick to create; durability settings stay default.
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
        ]
        if os.geteuid() == 0:
            # mariadbd refuses to run as root unless told so explicitly.
            args.append("--user=root")
        return args

    def _install_db(self, install_db: str) -> None:
        log = self._path("install.log")
        # --no-defaults must come first; normal root auth (no unix_socket
        # plugin) lets a non-root test user connect as root over the socket.
        cmd = [
            install_db,
            *self._common_args(),
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        with log.open("wb") as out:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=self.startup_timeout,
                check=False,
            )
        if result.returncode != 0:
            raise MariaDBError(
                f"mariadb-install-db failed with status {result.returncode}:\n"
                f"{' '.join(cmd)}\n{_tail(log)}"
            )

    def _spawn(self, mariadbd: str) -> bool:
        """Start mariadbd; False if it exited at once (e.g. port taken)."""
        # --log-error appends; keep only this attempt's messages.
        self.error_log.unlink(missing_ok=True)
        cmd = [
            mariadbd,
            *self._common_args(),
            f"--socket={self.socket_path}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            "--skip-networking=0",
            f"--pid-file={self._path('mariadbd.pid')}",
            f"--log-error={self.error_log}",
            "--skip-log-bin",
            "--max-connections=200",
            *self.extra_args,
        ]
        # Parent-death signals fire when the starting *thread* exits, so only
        # ask for one when started from the main thread.
        in_main = threading.current_thread() is threading.main_thread()
        with self._path("stdout.log").open("ab") as out:
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if in_main else None,
            )
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            if self.socket_path.exists():
                return True
            time.sleep(0.05)
        return True

    def _raise_start_failure(self, what: str) -> None:
        raise MariaDBError(f"mariadbd {what}; tail of {self.error_log}:\n{_tail(self.error_log)}")

    def _root_connect(self, timeout: int = 10) -> Any:
        return _mysqldb().connect(
            unix_socket=str(self.socket_path),
            user="root",
            connect_timeout=timeout,
            charset="utf8mb4",
            autocommit=True,
        )

    def _wait_ready(self) -> None:
        mysqldb = _mysqldb()
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                self._raise_start_failure("exited during startup")
            try:
                self._root_connect(timeout=2).close()
                return
            except mysqldb.Error as exc:
                last_error = exc
            time.sleep(0.05)
        self._raise_start_failure(
            f"did not accept connections within {self.startup_timeout:.0f} s "
            f"(last error: {last_error})"
        )

    def _create_user(self) -> None:
        conn = self._root_connect()
        try:
            cur = conn.cursor()
            # Anonymous accounts would shadow the test user for some hosts.
            cur.execute("SELECT User, Host FROM mysql.user WHERE User = ''")
            for _user, host in cur.fetchall():
                cur.execute("DROP USER ''@%s", (host,))
            for host in ("%", "localhost", "127.0.0.1"):
                cur.execute(
                    f"CREATE USER '{self.user}'@%s IDENTIFIED BY %s",
                    (host, self.password),
                )
                cur.execute(
                    f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@%s WITH GRANT OPTION",
                    (host,),
                )
        finally:
            conn.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and delete its files."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.shutdown_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def __enter__(self) -> MariaDB:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers for tests ---------------------------------------------------

    def url(self, dbname: str) -> str:
        """Connection URL for the test user, as the daemon's config takes it."""
        return f"mysql://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"

    def connect(self, dbname: str | None = None, **kwargs: Any) -> Any:
        """A MySQLdb connection over TCP as the test user."""
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "charset": "utf8mb4",
            "connect_timeout": 10,
        }
        if dbname is not None:
            params["database"] = dbname
        params.update(kwargs)
        return _mysqldb().connect(**params)

    def create_database(self, name: str) -> None:
        """Create an empty utf8mb4 database (dropping any of the same name)."""
        self._check_name(name)
        conn = self._root_connect()
        try:
            cur = conn.cursor()
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
        finally:
            conn.close()

    def drop_database(self, name: str) -> None:
        """Drop a database if it exists."""
        self._check_name(name)
        conn = self._root_connect()
        try:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()

    @staticmethod
    def _check_name(name: str) -> None:
        # Identifiers cannot be bound as parameters, so only allow safe ones.
        if not _NAME_RE.match(name):
            raise ValueError(f"bad database name {name!r}")
