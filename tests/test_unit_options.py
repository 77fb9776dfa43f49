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


def test_redis_url_turns_on_cluster_mode_and_needs_a_shared_database() -> None:
    s = parse("--db", "mysql://qq:pw@127.0.0.1:3306/qqchat", "--redis",
              "redis://127.0.0.1:6380/2", "--node-id", "n1").settings
    assert (s.redis, s.node_id) == ("redis://127.0.0.1:6380/2", "n1")
    with pytest.raises(usage.UsageError, match="shared --db"):
        parse("--redis", "redis://127.0.0.1:6379/0")
    with pytest.raises(usage.UsageError, match="Redis URL"):
        parse("--db", "mysql://qq:pw@127.0.0.1:3306/qqchat", "--redis", "http://x")


def test_parse_redis_url() -> None:
    from qqchat.relay.redis import RedisConfig, parse_redis_url

    assert parse_redis_url("redis://:s3cret@10.0.0.5:7000/3") == RedisConfig(
        "10.0.0.5", 7000, 3, "s3cret")
    assert parse_redis_url("redis://localhost") == RedisConfig("localhost", 6379, 0, None)
    with pytest.raises(ValueError):
        parse_redis_url("redis://h:1/notanumber")


def test_parse_redis_sentinel_url() -> None:
    from qqchat.relay.redis import RedisConfig, parse_redis_url

    config = parse_redis_url("redis+sentinel://:s%40cret@10.0.0.1:26380,[::1]:26381,"
                             "sentinel3/mymaster/2")
    assert config == RedisConfig(db=2, password="s@cret", master="mymaster", sentinels=(
        ("10.0.0.1", 26380), ("::1", 26381), ("sentinel3", 26379)))
    assert config.describe() == ("redis+sentinel://10.0.0.1:26380,[::1]:26381,"
                                 "sentinel3:26379/mymaster/2")
    plain = parse_redis_url("redis+sentinel://h1,h2/m")
    assert (plain.db, plain.password, plain.sentinel_password) == (0, None, None)
    assert parse_redis_url("redis+sentinel://h/m/?sentinel_password=x").sentinel_password \
        == "x"


@pytest.mark.parametrize("url", [
    "redis+sentinel://h1,h2",  # no master name
    "redis+sentinel://h1,h2/",
    "redis+sentinel:///m/0",  # no Sentinel
    "redis+sentinel://h1,,h2/m",
    "redis+sentinel://h1:port/m",
    "redis+sentinel://h1/m/db",
    "redis+sentinel://h1/m/-1",
    "redis+sentinel://h1/m/0/extra",
    "redis+sentinel://h1/m?password=x",  # the data nodes' password goes before the @
    "sentinel://h1/m",
])
def test_bad_sentinel_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(usage.UsageError, match=r"Redis URL|Sentinel address|scheme"):
        parse("--db", "mysql://qq:pw@127.0.0.1:3306/qqchat", "--redis", url)


def test_sentinel_url_is_accepted_as_redis() -> None:
    url = "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/1"
    assert parse("--db", "mysql://qq:pw@127.0.0.1:3306/qqchat", "--redis", url
                 ).settings.redis == url


def test_proxy_protocol_flag_from_the_command_line_or_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QQCHAT_PROXY_PROTOCOL", raising=False)
    assert parse().settings.proxy_protocol is False
    assert parse("--proxy-protocol").settings.proxy_protocol is True
    monkeypatch.setenv("QQCHAT_PROXY_PROTOCOL", "yes")
    assert parse().settings.proxy_protocol is True
    monkeypatch.setenv("QQCHAT_PROXY_PROTOCOL", "0")
    assert parse().settings.proxy_protocol is False


def test_web_edge_options_and_their_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["QQCHAT_WEB_PORT", "QQCHAT_WEB_LISTEN", "QQCHAT_WEB_INTERFACE",
                 "QQCHAT_WEB_ORIGIN"]:
        monkeypatch.delenv(name, raising=False)
    assert parse().settings.web_listen is None  # off unless asked for
    s = parse("--web-port", "8080").settings
    assert (s.web_listen, s.web_origins) == ("tcp:8080:interface=127.0.0.1", ())
    assert parse("--web-listen", "tcp:0:interface=::1").settings.web_listen == \
        "tcp:0:interface=::1"
    monkeypatch.setenv("QQCHAT_WEB_PORT", "8081")
    monkeypatch.setenv("QQCHAT_WEB_ORIGIN", "https://a.example, https://b.example:8443")
    s = parse().settings
    assert s.web_listen == "tcp:8081:interface=127.0.0.1"
    assert s.web_origins == ("https://a.example", "https://b.example:8443")
    s = parse("--web-origin", "https://c.example", "--web-origin", "http://d.example").settings
    assert s.web_origins == ("https://c.example", "http://d.example")  # the command line wins
    for bad in (["--web-port", "70000"], ["--web-origin", "not an origin"],
                ["--web-origin", "https://x.example/path"]):
        with pytest.raises(usage.UsageError):
            parse(*bad)
