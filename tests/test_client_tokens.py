"""The console client's saved session tokens: where they live, who can read them."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from qqchat_client.tokens import TokenStore, TokenStoreError, default_dir

SERVER = "chat.example:6000"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_default_dir_honours_xdg_config_home() -> None:
    assert default_dir({"XDG_CONFIG_HOME": "/x/conf", "HOME": "/home/a"}) == Path(
        "/x/conf/qqchat")
    assert default_dir({"HOME": "/home/a"}) == Path("/home/a/.config/qqchat")
    # the XDG spec ignores a relative path
    assert default_dir({"XDG_CONFIG_HOME": "conf", "HOME": "/home/a"}) == Path(
        "/home/a/.config/qqchat")


def test_saved_tokens_are_readable_by_the_owner_only(tmp_path: Path) -> None:
    directory = tmp_path / "config" / "qqchat"
    store = TokenStore(directory)
    assert store.find(SERVER, "alice") is None  # no file yet: nothing saved
    old_umask = os.umask(0o022)
    try:
        store.save(SERVER, "Alice", 1, "tok-1")
    finally:
        os.umask(old_umask)
    assert mode(directory) == 0o700
    assert mode(store.path) == 0o600
    assert [p.name for p in directory.iterdir() if p.suffix == ".tmp"] == []


def test_a_directory_already_there_is_made_private(tmp_path: Path) -> None:
    directory = tmp_path / "qqchat"
    directory.mkdir(mode=0o755)
    TokenStore(directory).save(SERVER, "alice", 1, "tok-1")
    assert mode(directory) == 0o700


def test_keyed_by_server_and_user(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    store.save(SERVER, "Alice", 1, "tok-a")
    store.save(SERVER, "bob", 2, "tok-b")
    store.save("other.example:6000", "alice", 5, "tok-other")
    found = store.find(SERVER, "ALICE")
    assert found is not None and (found.name, found.id, found.token) == ("Alice", 1, "tok-a")
    by_id = store.find(SERVER, uid=2)
    assert by_id is not None and by_id.token == "tok-b"
    assert store.find(SERVER, "carol") is None and store.find(SERVER, uid=5) is None
    store.save(SERVER, "alice", 1, "tok-a2")  # a new token replaces the old one
    assert store.find(SERVER, "alice").token == "tok-a2"  # type: ignore[union-attr]
    assert store.forget(SERVER, "alice") is True
    assert store.forget(SERVER, "alice") is False
    assert store.find(SERVER, "alice") is None
    assert store.find(SERVER, "bob") is not None
    assert store.find("other.example:6000", "alice") is not None
    data = json.loads(store.path.read_text())
    assert set(data["servers"][SERVER]) == {"bob"}


def test_forget_by_id(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    store.save(SERVER, "alice", 1, "tok-a")
    assert store.forget(SERVER, uid=1) is True
    assert store.find(SERVER, "alice") is None


def test_a_broken_file_holds_nothing_and_is_replaced(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    store.path.write_text("{not json")
    assert store.find(SERVER, "alice") is None
    store.save(SERVER, "alice", 1, "tok-a")
    assert store.find(SERVER, "alice") is not None


def test_an_unusable_directory_is_an_error_in_words(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = TokenStore(blocker / "qqchat")
    assert store.find(SERVER, "alice") is None  # nothing can be saved there: nothing is
    with pytest.raises(TokenStoreError, match="cannot use"):
        store.save(SERVER, "alice", 1, "tok-a")
