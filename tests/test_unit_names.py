"""Look-alike names (R7): one account per folded name, no invisible, bidi-override or
confusably mixed-script names, and the same rules for group names."""

from __future__ import annotations

from typing import Any

import pytest
from unit_support import Client, Services

from qqchat.errors import ChatError
from qqchat.names import check_name, fold


def error(reply: dict[str, Any] | None) -> str:
    assert reply is not None and reply["type"] == "error", reply
    return str(reply["code"])


def register(services: Services, name: str) -> dict[str, Any] | None:
    return Client(services).request({"type": "register", "name": name,
                                     "password": "secret-pw", "req": 1})


@pytest.mark.parametrize("twin", ["Alice", "ALICE", "\uff41\uff4c\uff49\uff43\uff45",
                                  "\uff21lice"])
def test_a_name_that_folds_to_a_taken_one_is_taken(services: Services, twin: str) -> None:
    assert register(services, "alice")["type"] == "register"  # type: ignore[index]
    assert error(register(services, twin)) == "name_taken"


@pytest.mark.parametrize("name", [
    "\u0430lice",        # Cyrillic a, then Latin
    "p\u0430ypal",       # Latin with one Cyrillic a inside
    "\u03bfmega-x",      # Greek omicron with Latin
])
def test_confusable_mixed_scripts_are_refused(services: Services, name: str) -> None:
    assert error(register(services, name)) == "bad_name"


@pytest.mark.parametrize("name", ["\u0430\u043b\u0438\u0441\u0430", "\u03b1\u03b2\u03b3",
                                  "\u5f20\u4f1f", "bob_\u5f20", "\u00e9milie"])
def test_single_script_names_and_cjk_with_latin_are_fine(services: Services,
                                                           name: str) -> None:
    assert register(services, name)["type"] == "register"  # type: ignore[index]


def test_login_by_any_form_of_the_name(services: Services) -> None:
    client = Client(services)
    client.register("Alice")
    got = client.request({"type": "login", "name": "\uff41lice", "password": "secret-pw",
                          "req": 1})
    assert got is None  # the reply was written by the handler
    frames = client.conn.take()
    assert frames[0]["type"] == "login" and frames[0]["user"]["name"] == "Alice"


@pytest.mark.parametrize("name", ["\u200b", "\u200b\u200b\u200b", "a\u202eevil", "tab\tname",
                                  "new\nline", "\u2066isolate", "zero\u200dwidth", "   "])
def test_group_names_refuse_invisible_control_and_bidi(services: Services, name: str) -> None:
    alice = Client(services).signup("alice")
    assert error(alice.request({"type": "group_create", "name": name, "req": 1})) \
        == "bad_name"


def test_group_names_keep_spaces_and_scripts(services: Services) -> None:
    alice = Client(services).signup("alice")
    reply = alice.ok({"type": "group_create", "name": "Rust 中文 club"})
    assert reply["group"]["name"] == "Rust 中文 club"


def test_check_name_folds_before_judging_scripts() -> None:
    check_name("\uff41lice")  # fullwidth Latin is Latin
    with pytest.raises(ChatError):
        check_name("\uff41\u0430")
    assert fold("\uff21LICE") == "alice" == fold("Alice")
