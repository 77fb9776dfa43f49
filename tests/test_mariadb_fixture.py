"""The throwaway MariaDB helper really starts, serves TCP clients and stops.

Every storage test relies on this helper, so it gets its own test: if the
server cannot start here, the failure names the cause instead of showing up as
confusing errors elsewhere.
"""

from __future__ import annotations

import os

import mariadb_server as helper
import pytest


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def test_start_connect_select_stop() -> None:
    server = helper.MariaDB()
    server.start()
    try:
        pid = server.pid
        tmpdir = server.tmpdir
        assert pid is not None and _process_exists(pid)
        assert server.host == "127.0.0.1"
        assert server.port > 0

        server.create_database("qqchat_fixture")
        assert server.url("qqchat_fixture") == (
            f"mysql://qqchat:{server.password}@127.0.0.1:{server.port}/qqchat_fixture"
        )

        import MySQLdb

        conn = MySQLdb.connect(
            host=server.host,
            port=server.port,
            user=server.user,
            password=server.password,
            database="qqchat_fixture",
        )
        try:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
            # Really TCP, not a socket fallback, and as the test user.
            cur.execute("SELECT CURRENT_USER(), @@port")
            current_user, port = cur.fetchone()
            assert current_user.startswith("qqchat@")
            assert port == server.port
            cur.execute("SELECT DATABASE()")
            assert cur.fetchone() == ("qqchat_fixture",)
        finally:
            conn.close()

        server.drop_database("qqchat_fixture")
    finally:
        server.stop()

    assert server.process is None
    assert not _process_exists(pid)
    assert tmpdir is not None and not tmpdir.exists()
    server.stop()  # a second stop is harmless


def test_wrong_password_is_refused() -> None:
    import MySQLdb

    with helper.MariaDB() as server:
        with pytest.raises(MySQLdb.OperationalError):
            MySQLdb.connect(
                host=server.host,
                port=server.port,
                user=server.user,
                password=server.password + "x",
            )
        pid = server.pid
    assert pid is not None and not _process_exists(pid)


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(helper.shutil, "which", lambda name: None)
    monkeypatch.setattr(helper.os, "access", lambda path, mode: False)
    with pytest.raises(RuntimeError, match="mariadb-server"):
        helper.MariaDB().start()
