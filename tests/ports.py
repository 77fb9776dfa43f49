"""Loopback ports for the servers the tests start.

A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, the same range
it draws from for every outgoing connection, so between picking it and the server binding
it a client socket (a test's, or a daemon's to MariaDB or Redis) may take it. Ports here
come from below that range, where the kernel never assigns on its own, and one process
never hands out the same port twice.
"""

from __future__ import annotations

import os
import random
import socket

_LOW, _HIGH = 20000, 32000  # below Linux's default ip_local_port_range (32768-60999)
_given: set[int] = set()
_rng = random.Random(os.getpid())


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now and that no outgoing connection will take."""
    for _ in range(1000):
        port = _rng.randrange(_LOW, _HIGH)
        if port in _given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port in {_LOW}-{_HIGH} on {host}")
