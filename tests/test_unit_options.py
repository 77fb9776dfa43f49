"""twistd options: environment variables, validation, and the MySQL driver hint."""

from __future__ import annotations

import sys

import pytest
from twisted.python import usage

from qqchat.tap import Options


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_defaults_serve_loopback_port_6000_on_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["QQCHAT_PORT", "QQCHAT_DB", "QQCHAT_INTERFACE", "QQCHAT_LISTEN"]:
        monkeypatch.delenv(name, raising=False)
    s = parse().settings
    assert s.listen == "tcp:6000:interface=127.0.0.1"
    assert s.db == "sqlite:///qqchat.db"
    assert s.kick_on_duplicate is True


def test_environment_sets_options_and_the_command_line_wins(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QQCHAT_DB", "sqlite:///from-env.db")
    monkeypatch.setenv("QQCHAT_PORT", "7001")
    monkeypatch.setenv("QQCHAT_DUPLICATE_LOGIN", "reject")
    s = parse("--port", "7002").settings
    assert s.db == "sqlite:///from-env.db"
    assert s.listen.startswith("tcp:7002:")
    assert s.kick_on_duplicate is False


@pytest.mark.parametrize("args", [
    ["--port", "70000"], ["--idle-timeout", "0"], ["--max-line", "10"],
    ["--db-pool-min", "5", "--db-pool-max", "2"], ["--db", "mysql://u:p@h"],
])
def test_bad_values_are_usage_errors(args: list[str]) -> None:
    with pytest.raises(usage.UsageError):
        parse(*args)


def test_mysql_url_without_the_driver_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "MySQLdb", None)  # makes the import fail
    with pytest.raises(usage.UsageError) as info:
        parse("--db", "mysql://qq:pw@127.0.0.1:3306/qqchat")
    assert "qqchat[mysql]" in str(info.value)
