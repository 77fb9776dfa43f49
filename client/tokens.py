"""Saved session tokens, so ``login NAME`` after ``login --remember NAME`` needs no password.

A token is as good as a password until it expires or is revoked, so the file is
readable by its owner only (0600, in a 0700 directory), written whole through a
temporary file (a crash never leaves half a file), and never printed.

Layout of ``$XDG_CONFIG_HOME/qqchat/tokens.json`` (``~/.config`` by default)::

    {"version": 1, "servers": {"chat.example:6000": {"alice": {"id": 1, "token": "..."}}}}

Servers are keyed by ``host:port`` as given on the command line, users by their
case-folded name (names are unique case-insensitively on the server).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

FILE_NAME = "tokens.json"


def default_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/qqchat`` if set (and absolute, as the XDG spec asks), else
    ``~/.config/qqchat``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME", "")
    if not base or not os.path.isabs(base):
        home = env.get("HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".config")
    return Path(base) / "qqchat"


@dataclass(frozen=True)
class Saved:
    """One remembered session: the user it logs in as, and the token."""

    name: str
    id: int | None
    token: str


class TokenStoreError(Exception):
    """The token file cannot be read or written; the message is meant for the user."""


class TokenStore:
    """The token file of one user account on this machine."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory if directory is not None else default_dir()
        self.path = self.directory / FILE_NAME

    # -- reading --------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        try:
            data = orjson.loads(self.path.read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except OSError as e:
            raise TokenStoreError(f"cannot read {self.path}: {e.strerror}") from None
        except orjson.JSONDecodeError:
            return {}  # a broken file holds nothing usable; the next save replaces it
        servers = data.get("servers") if isinstance(data, dict) else None
        return servers if isinstance(servers, dict) else {}

    def find(self, server: str, name: str | None = None, uid: int | None = None
             ) -> Saved | None:
        """The saved session for a user (by name, case-insensitively, or by id)."""
        users = self._load().get(server)
        if not isinstance(users, dict):
            return None
        for key, entry in users.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
                continue
            entry_id = entry.get("id") if isinstance(entry.get("id"), int) else None
            if (name is not None and key == name.casefold()) or \
                    (name is None and uid is not None and entry_id == uid):
                return Saved(str(entry.get("name") or key), entry_id, entry["token"])
        return None

    # -- writing --------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The servers mapping, to change in place; saved on exit. Two clients saving at
        once take turns, so neither loses the other's token."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)
            lock_fd = os.open(self.directory / (FILE_NAME + ".lock"),
                              os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as e:
            raise TokenStoreError(f"cannot use {self.directory}: {e.strerror}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            servers = self._load()
            yield servers
            self._write(servers)
        finally:
            os.close(lock_fd)

    def _write(self, servers: dict[str, Any]) -> None:
        servers = {k: v for k, v in servers.items() if v}
        data = orjson.dumps({"version": 1, "servers": servers}, option=orjson.OPT_INDENT_2)
        tmp = self.path.with_name(f"{FILE_NAME}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # a leftover temp file may have other bits
                os.write(fd, data + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise TokenStoreError(f"cannot write {self.path}: {e.strerror}") from None

    def save(self, server: str, name: str, uid: int | None, token: str) -> None:
        with self._locked() as servers:
            users = servers.get(server)
            if not isinstance(users, dict):
                users = servers[server] = {}
            users[name.casefold()] = {"name": name, "id": uid, "token": token}

    def forget(self, server: str, name: str | None = None, uid: int | None = None) -> bool:
        """Delete a saved session (by name or id); True if there was one."""
        if self.find(server, name, uid) is None:
            return False
        with self._locked() as servers:
            users = servers.get(server)
            if not isinstance(users, dict):
                return False
            for key, entry in list(users.items()):
                entry_id = entry.get("id") if isinstance(entry, dict) else None
                if (name is not None and key == name.casefold()) or \
                        (name is None and uid is not None and entry_id == uid):
                    del users[key]
        return True
