"""The console client and bounded lists (R8) against a real daemon: a group of 25
(the login reply lists 20 of them) shown whole, and the caps on groups in words.

Members are made over raw sockets (``LineClient``): registering two dozen users
through client processes would be slow.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_process import PASSWORD, run_client
from cluster_processes import LineClient
from daemon_process import DaemonProcess


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    # many registrations from one address: not rate limited here
    with DaemonProcess(tmp_path, args=["--register-rate", "0"]) as running:
        yield running


def wire_user(port: int, name: str) -> LineClient:
    c = LineClient(port)
    c.ok("register", name=name, password=PASSWORD)
    c.login(name, PASSWORD)
    return c


def test_a_group_of_25_is_counted_and_listed_whole(daemon: DaemonProcess) -> None:
    owner = wire_user(daemon.port, "owner")
    pal = None
    try:
        gid = owner.ok("group_create", name="crowd")["group"]["id"]
        names = ["owner"]
        for i in range(1, 23):
            member = wire_user(daemon.port, f"member{i}")
            member.ok("group_join", group=gid)
            member.close()
            names.append(f"member{i}")
        alice = wire_user(daemon.port, "alice")
        alice.ok("group_join", group=gid)
        # the 25th member is alice's friend and online
        pal = wire_user(daemon.port, "pal")
        pal.ok("group_join", group=gid)
        pal.ok("friend_add", to=alice.user_id)
        alice.ok("friend_accept", **{"from": pal.user_id})
        alice.close()
        owner.close()
        names += ["alice", "pal"]

        done = run_client(daemon.port, f"login alice\ngroups\ngroup {gid}\n")
        assert done.returncode == 0, done.stdout
        lines = done.stdout.splitlines()
        assert f"Groups: crowd (g{gid}, 25 members)" in lines, done.stdout
        # the groups list has the first 20 members: their online state is all it knows
        assert f"g{gid} crowd: 25 members, 0 of the first 20 online, you are member" in lines
        head = lines.index(f"Group crowd (g{gid}), created by owner (1)")
        assert lines[head + 1] == "  25 members, 2 online:"
        listed = [re.match(r"^  (\S+) \(\d+\) (creator|member), (online|offline)$", line)
                  for line in lines[head + 2: head + 27]]
        assert all(listed), lines[head:]
        assert [m[1] for m in listed if m] == names
        assert listed[-1] and listed[-1][3] == "online"  # pal, beyond the first 20
    finally:
        owner.close()
        if pal is not None:
            pal.close()


def test_group_caps_in_words(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, args=["--max-groups-created", "1",
                                       "--max-groups-joined", "2"]) as daemon:
        other = wire_user(daemon.port, "other")
        try:
            g1 = other.ok("group_create", name="first")["group"]["id"]
            helper = wire_user(daemon.port, "helper")
            g2 = helper.ok("group_create", name="second")["group"]["id"]
            helper.close()
            wire_user(daemon.port, "alice").close()
            done = run_client(daemon.port, "login alice\ncreategroup mine\ncreategroup again\n"
                                           f"joingroup {g1}\njoingroup {g2}\n")
        finally:
            other.close()
    assert done.returncode == 1, done.stdout
    lines = done.stdout.splitlines()
    assert ("creategroup failed: you have created as many groups as the server allows."
            in lines), done.stdout
    assert ("joingroup failed: you are in as many groups as the server allows; leave one "
            "first (leavegroup GID)." in lines), done.stdout
