"""The installed package: the twistd plugin is found, and the wheel cannot break Twisted."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import files
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

import qqchat
import twisted.plugins

BIN = Path(sys.executable).parent


def test_tests_run_against_the_installed_package_not_the_checkout() -> None:
    assert "site-packages" in Path(qqchat.__file__).parts


def test_plugin_is_discoverable() -> None:
    assert "qqchat" in {p.tapname for p in getPlugins(IServiceMaker)}
    # Twisted's own twisted/plugins/__init__.py was not replaced by ours
    assert "pluginPackagePaths" in Path(twisted.plugins.__file__).read_text()


def test_wheel_ships_the_dropin_and_schema_but_no_plugin_init_or_cache() -> None:
    shipped = {str(p) for p in files("qqchat") or []}
    assert "twisted/plugins/qqchat_plugin.py" in shipped
    assert "twisted/plugins/__init__.py" not in shipped
    assert not any(p.endswith("dropin.cache") for p in shipped)
    assert {"qqchat/db/sqlite.sql", "qqchat/db/mysql.sql"} <= shipped


def test_twistd_help_lists_qqchat_and_its_options() -> None:
    out = subprocess.run([str(BIN / "twistd"), "--help"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "qqchat" in out
    opts = subprocess.run([str(BIN / "twistd"), "qqchat", "--help"], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    for option in ["--port", "--interface", "--db", "--hash-cost", "--idle-timeout",
                   "--duplicate-login", "--db-pool-min", "--db-pool-max", "QQCHAT_DB"]:
        assert option in opts


def test_bad_options_exit_non_zero_with_a_reason(tmp_path: Path) -> None:
    for args, reason in [
        (["--db", "postgres://x/y"], "unknown database scheme"),
        (["--hash-cost", "2"], "--hash-cost"),
        (["--duplicate-login", "maybe"], "--duplicate-login"),
        (["--port", "http"], "--port"),
    ]:
        run = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "qqchat", *args],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert run.returncode != 0, args
        assert reason in run.stdout + run.stderr, args


def test_redis_replies_are_parsed_by_hiredis() -> None:
    """Without hiredis, txredisapi's parser pauses the socket and waits a reactor turn
    after every bulk string: a cross-node message would cost three of each."""
    import txredisapi

    from qqchat.relay.redis import _Subscriber

    assert issubclass(_Subscriber, txredisapi.HiredisProtocol)
