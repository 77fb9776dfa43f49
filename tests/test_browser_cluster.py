"""The browser client through nginx in front of two daemons (MariaDB, Redis): the page
and its WebSocket come through nginx's HTTP proxy, the two users are on different
nodes, and when one node dies its user's page reconnects through nginx to the other
with its token, missing nothing and doubling nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import SOCKET_FAILED, BrowserUser, launch
from cluster_processes import ProcessCluster, RestartableMariaDB, wait_until
from playwright.sync_api import Browser, sync_playwright
from redis_server import RedisServer

NODES = 2


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    db = RestartableMariaDB()
    db.start()
    redis = RedisServer().start()
    db.create_database("qq_browser")
    c = ProcessCluster(tmp_path, db, "qq_browser", redis, nodes=NODES)
    try:
        c.start()
        yield c
    finally:
        print(c.logs())  # shown when the test fails
        c.stop()
        redis.close()
        db.stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = launch(pw)
        yield b
        b.close()


def test_browsers_on_two_nodes_through_nginx(cluster: ProcessCluster,
                                             browser: Browser) -> None:
    assert cluster.nginx is not None
    url = f"http://127.0.0.1:{cluster.nginx.web_port}"
    users: list[BrowserUser] = []
    try:
        alice = BrowserUser(browser, url, "alice")
        users.append(alice)
        alice.register()
        bob = BrowserUser(browser, url, "bob")
        users.append(bob)
        bob.register()
        # while nginx has no live node for it, bob's page may see a refused WebSocket
        bob.allow(SOCKET_FAILED)

        alice.add_friend("bob")
        bob.accept("alice")
        alice.open_friend("bob")
        alice.send("across the cluster")
        bob.open_chat("alice")
        bob.expect_message("across the cluster")
        bob.send("received on the other node")
        alice.expect_message("received on the other node")

        # least_conn put the two WebSockets on different daemons (a fresh database:
        # alice is user 1, bob user 2)
        nodes = {cluster.node_of(i) for i in (1, 2)}
        assert nodes == {0, 1}, nodes

        # bob's node dies: his page comes back through nginx on alice's node
        bob_node = cluster.node_of(2)
        assert bob_node is not None
        cluster.daemons[bob_node].kill()
        alice.send("while your node was down")
        alice.expect_sent("while your node was down")
        bob.expect_online()
        wait_until(lambda: cluster.node_of(2) == 1 - bob_node, 30, "bob on the other node")
        bob.expect_message("while your node was down")
        bob.expect_message("across the cluster")
        bob.send("back again")
        alice.expect_message("back again")
    finally:
        errors = [e for u in users for e in u.problems()]
        for u in users:
            u.close()
    assert not errors, errors
