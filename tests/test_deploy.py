"""deploy/: the local-cluster script as an operator runs it, and the nginx config.

``up`` must give a working service at the address it prints, ``status`` must
tell the truth, and ``down`` must leave no process it started behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_processes import LOCAL_CLUSTER, LineClient, free_port, load_local_cluster
from wsclient import UPGRADE, BlockingWS, http_get

UP_TIMEOUT = 240.0  # may install Debian packages first on a bare machine
DOWN_TIMEOUT = 120.0


def run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LOCAL_CLUSTER), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def group_members(pgid: int) -> list[int]:
    """Live processes in a process group (nginx's workers share their master's)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    state = tmp_path / "lc"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("QQCHAT_")}
    # the daemons run from the virtualenv these tests run in
    environ["VIRTUAL_ENV"] = sys.prefix
    environ["QQCHAT_LOCAL_CLUSTER_DIR"] = str(state)
    yield environ
    if state.exists():  # never leave a cluster running, whatever happened
        run(["down"], environ, DOWN_TIMEOUT)


def test_local_cluster_up_chat_status_down(env: dict[str, str]) -> None:
    state = Path(env["QQCHAT_LOCAL_CLUSTER_DIR"])
    port, web_port = free_port(), free_port()
    up = run(["up", "2", "--port", str(port), "--web-port", str(web_port), "--hash-cost", "4"],
             env, UP_TIMEOUT)
    assert up.returncode == 0, up.stdout + up.stderr
    address = re.search(r"^connect to: 127\.0\.0\.1:(\d+)$", up.stdout, re.M)
    assert address and int(address.group(1)) == port, up.stdout
    daemons = re.search(r"^daemons: (.*)$", up.stdout, re.M)
    assert daemons, up.stdout
    daemon_ports = [int(a.rsplit(":", 1)[1]) for a in daemons.group(1).split()]
    assert len(daemon_ports) == 2

    # a user on each daemon behind nginx, chatting both ways
    alice, bob = LineClient(port), LineClient(port)
    for c, name in ((alice, "alice"), (bob, "bob")):
        c.ok("register", name=name, password="password1")
        c.login(name)
    mid = alice.ok("chat", to=bob.user_id, text="hello over the cluster")["id"]
    assert bob.message(text="hello over the cluster")["id"] == mid
    mid = bob.ok("chat", to=alice.user_id, text="and back")["id"]
    assert alice.message(text="and back")["id"] == mid
    assert alice.who() == {alice.user_id, bob.user_id}

    # the web client's URL, through nginx: the app, and a browser's WebSocket chatting
    # with a TCP user
    url = re.search(r"^web client: http://127\.0\.0\.1:(\d+)/$", up.stdout, re.M)
    assert url and int(url.group(1)) == web_port, up.stdout
    status, headers, body = http_get(web_port, "/")
    assert status == 200 and headers["x-content-type-options"] == "nosniff" and body
    carol = BlockingWS(web_port, origin=f"http://127.0.0.1:{web_port}")
    carol.send(type="register", name="carol", password="password1", req=1)
    carol_id = carol.until("register")["id"]
    carol.send(type="login", name="carol", password="password1")
    carol.until("synced")
    mid = alice.ok("chat", to=carol_id, text="to the browser")["id"]
    assert carol.until("message")["id"] == mid
    carol.send(type="chat", to=alice.user_id, text="from the browser", req=2)
    assert alice.message(text="from the browser")["id"] == carol.until("chat")["id"]
    carol.close()
    assert http_get(web_port, "/ws", {**UPGRADE, "Origin": "http://evil.example"})[0] == 403
    for daemon_port in daemon_ports:  # each daemon also answers directly
        direct = LineClient(daemon_port)
        assert direct.ok("ping")["type"] == "pong"
        direct.close()

    status = run(["status"], env, 30)
    assert status.returncode == 0, status.stdout + status.stderr
    for name in ("mariadb", "redis", "daemon 1", "daemon 2", "nginx"):
        assert re.search(rf"^  {name}\s+pid \d+\s+\S+\s+running", status.stdout, re.M), \
            status.stdout
    assert f"connect to: 127.0.0.1:{port}" in status.stdout
    assert f"web client: http://127.0.0.1:{web_port}/" in status.stdout

    again = run(["up", "2"], env, 60)
    assert again.returncode == 0 and "already up" in again.stdout, again.stdout + again.stderr

    started = json.loads((state / "state.json").read_text())["processes"]
    assert sorted(p["name"] for p in started) == ["daemon 1", "daemon 2", "mariadb",
                                                  "nginx", "redis"]
    pids = [int(p["pid"]) for p in started]
    assert not any(gone(pid) for pid in pids)
    alice.close()
    bob.close()

    down = run(["down"], env, DOWN_TIMEOUT)
    assert down.returncode == 0, down.stdout + down.stderr
    assert [pid for pid in pids if not gone(pid)] == []
    assert [pid for pgid in pids for pid in group_members(pgid)] == []
    assert not state.exists()
    after = run(["status"], env, 30)
    assert after.returncode == 3 and "no local cluster" in after.stdout


def test_nginx_conf_is_accepted_by_nginx(tmp_path: Path) -> None:
    lc = load_local_cluster()
    nginx = lc.nginx_binary()
    assert nginx, "nginx is needed: apt-get install nginx libnginx-mod-stream"
    out = subprocess.run([str(LOCAL_CLUSTER), "nginx-conf", "--listen", "127.0.0.1:6000",
                          "--prefix", str(tmp_path), "7001", "7002", "7003",
                          "--web-listen", "127.0.0.1:8080", "--web-ports", "8001", "8002",
                          "8003"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert "least_conn;" in out and not re.search(r"@[A-Z_]+@", out)
    servers = re.findall(r"^\s+server 127\.0\.0\.1:(\d+) ", out, re.M)
    assert servers == ["7001", "7002", "7003", "8001", "8002", "8003"]
    # the WebSocket upgrade reaches the daemons, and idle chats outlive nginx's timeouts
    assert "proxy_set_header Upgrade $http_upgrade;" in out
    assert "proxy_set_header Connection $qqchat_connection;" in out
    assert "proxy_read_timeout 10m;" in out and "proxy_http_version 1.1;" in out
    conf = tmp_path / "nginx.conf"
    conf.write_text(out)
    check = subprocess.run([nginx, "-t", "-p", f"{tmp_path}/", "-c", str(conf),
                            "-e", str(tmp_path / "error.log")],
                           capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr


def test_systemd_unit_runs_one_daemon_per_port(tmp_path: Path) -> None:
    unit = (LOCAL_CLUSTER.parent / "qqchat@.service").read_text()
    assert re.search(r"^ExecStart=/\S+/twist qqchat --port %i$", unit, re.M)
    assert "QQCHAT_WEB_PORT" in unit and "QQCHAT_WEB_ORIGIN" in unit  # the web edge, documented
    for line in ("EnvironmentFile=/etc/qqchat/qqchat.env", "Restart=on-failure",
                 "KillSignal=SIGTERM", "User=qqchat", "NoNewPrivileges=yes"):
        assert re.search(rf"^{re.escape(line)}$", unit, re.M), line
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # no systemd tools on this machine: the text checks above stand
        return
    # verify an instance, with ExecStart pointing at this virtualenv's twist
    twist = Path(sys.executable).parent / "twist"
    (tmp_path / "qqchat@.service").write_text(
        re.sub(r"^ExecStart=\S+", f"ExecStart={twist}", unit, flags=re.M))
    check = subprocess.run([analyze, "verify", str(tmp_path / "qqchat@6001.service")],
                           capture_output=True, text=True, timeout=60, check=False)
    complaints = [line for line in check.stderr.splitlines() if "qqchat@" in line]
    assert check.returncode == 0 and complaints == [], check.stderr
