"""Console commands: one typed line becomes one protocol request, or a usage error.

Everything here is pure (no I/O, no client state except through the ``resolve``
callback), so the whole command language is unit-testable without a server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qqchat_client.paging import FRIENDS_PAGE, GROUPS_PAGE, MEMBERS_PAGE

#: ids stay exact in every JSON implementation, so the server rejects bigger ones
MAX_ID = 2**53
HISTORY_MAX = 200
CHATS_DEFAULT = 20
CHATS_MAX = 100
SEARCH_LIMIT = 20

#: command -> (usage, one-line description); the order is the order ``help`` lists them
HELP: dict[str, tuple[str, str]] = {
    "help": ("help [COMMAND]", "list the commands, or show how to use one"),
    "register": ("register NAME", "create an account (asks for a password)"),
    "login": ("login [--remember] NAME|ID",
              "log in (asks for a password; with --remember, later logins do not)"),
    "logout": ("logout", "log out and stay connected (forgets a saved session)"),
    "passwd": ("passwd", "change your password (asks for the old one and the new one twice)"),
    "who": ("who", "list the users online now"),
    "search": ("search NAME", "find users whose name starts with NAME: id, friend, online"),
    "chat": ("chat ID|NAME TEXT", "send TEXT to one user"),
    "broadcast": ("broadcast TEXT", "send TEXT to every user"),
    "addfriend": ("addfriend ID|NAME", "ask a user to be your friend"),
    "accept": ("accept ID", "accept the friend request from user ID"),
    "decline": ("decline ID", "decline the friend request from user ID"),
    "unfriend": ("unfriend ID", "remove user ID from your friends"),
    "friends": ("friends", "list your friends and who of them is online"),
    "creategroup": ("creategroup NAME [DESC]", "create a group; you become its creator"),
    "joingroup": ("joingroup GID", "join group GID"),
    "leavegroup": ("leavegroup GID", "leave group GID"),
    "groups": ("groups", "list your groups"),
    "findgroup": ("findgroup NAME|GID", "find groups whose name starts with NAME, or group GID"),
    "group": ("group GID", "show group GID: description, all its members, who is online"),
    "groupchat": ("groupchat GID TEXT", "send TEXT to every member of group GID"),
    "history": ("history ID|gGID [N]",
                f"the last N (default 20, at most {HISTORY_MAX}) messages with user ID, "
                "or in group GID when written gGID (g12)"),
    "chats": ("chats [N]", f"your last N (default {CHATS_DEFAULT}, at most {CHATS_MAX}) "
              "conversations, newest first, with unread counts"),
    "quit": ("quit", "log out and leave (Ctrl-D and Ctrl-C do the same)"),
}

HISTORY_DEFAULT = 20

#: commands that take a password, which the console supplies (prompt, option or env)
NEEDS_PASSWORD = frozenset({"login", "register"})

REMEMBER = "--remember"


class CommandError(Exception):
    """A line that is not a valid command; the text says what to type instead."""


class UnknownUserError(CommandError):
    """A user name the client has not seen: the console may look it up on the server
    (``user_search``) and parse the line again with the answer."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown user {name!r}: use the user's id, or 'search {name}'")
        self.name = name


@dataclass(frozen=True)
class Command:
    """A parsed line: the request to send (None for local commands like help and quit)."""

    name: str
    request: dict[str, Any] | None = None
    #: for ``help COMMAND``
    topic: str | None = None


Resolver = Callable[[str], int | None]


def _no_names(_: str) -> int | None:
    return None


def usage(name: str) -> str:
    return "usage: " + HELP[name][0]


def help_text(topic: str | None = None) -> str:
    """All commands with their one-line description, or one command's entry."""
    if topic is not None:
        key = topic.lower()
        if key not in HELP:
            raise CommandError(f"no command {topic!r}; type 'help' for the list")
        use, desc = HELP[key]
        return f"{use}\n  {desc}"
    width = max(len(use) for use, _ in HELP.values())
    lines = ["Commands:"]
    lines += [f"  {use:<{width}}  {desc}" for use, desc in HELP.values()]
    lines.append("IDs are numbers; for a NAME the client asks the server (as 'search' does) "
                 "unless it has seen the user already. GIDs may be written 12 or g12.")
    return "\n".join(lines)


def _split(rest: str) -> tuple[str, str]:
    """First word and the remainder (spacing inside the remainder kept)."""
    rest = rest.lstrip()
    if not rest:
        return "", ""
    if rest[0] in "\"'":
        end = rest.find(rest[0], 1)
        if end > 0:
            return rest[1:end], rest[end + 1 :].strip()
    parts = rest.split(None, 1)
    return parts[0], (parts[1].strip() if len(parts) > 1 else "")


def _number(word: str, what: str, name: str) -> int:
    if not word.isdecimal() or not word.isascii():
        raise CommandError(f"{what} must be a number, not {word!r}; {usage(name)}")
    value = int(word)
    if not 1 <= value <= MAX_ID:
        raise CommandError(f"{what} {word} is out of range; {usage(name)}")
    return value


def _user(word: str, name: str, resolve: Resolver) -> int:
    if word.isdecimal():
        return _number(word, "a user id", name)
    uid = resolve(word)
    if uid is None:
        raise UnknownUserError(word)
    return uid


def _group(word: str, name: str) -> int:
    digits = word[1:] if word[:1] in ("g", "G") else word
    return _number(digits, "a group id", name)


def _need(word: str, name: str) -> str:
    if not word:
        raise CommandError(usage(name))
    return word


def _nothing_more(extra: str, name: str) -> None:
    if extra:
        raise CommandError(f"too many arguments; {usage(name)}")


def parse(line: str, resolve: Resolver = _no_names) -> Command | None:
    """Turn one typed line into a Command; None for a blank line or a ``#`` comment.

    ``resolve`` maps a user name to an id from what the client knows; a name it
    does not know raises UnknownUserError, which the console answers with a search.
    Raises CommandError with a sentence for the user on anything invalid.
    """
    word, rest = _split(line)
    if not word or line.lstrip().startswith("#"):
        return None
    name = word.lower()
    if name not in HELP:
        raise CommandError(f"unknown command {word!r}; type 'help' for the list")

    if name in ("logout", "who", "friends", "groups", "quit", "passwd"):
        _nothing_more(rest, name)
        if name == "quit":
            return Command(name)
        if name == "passwd":
            return Command(name, {"type": "password_change"})
        # lists come in pages: ask for the largest (the console fetches the rest)
        if name == "friends":
            return Command(name, {"type": name, "limit": FRIENDS_PAGE})
        if name == "groups":
            return Command(name, {"type": name, "limit": GROUPS_PAGE})
        return Command(name, {"type": name})

    if name == "help":
        topic, extra = _split(rest)
        _nothing_more(extra, name)
        if topic:
            help_text(topic)  # validates the topic
        return Command(name, topic=topic or None)

    if name in ("register", "login"):
        words = []
        remember = False
        while rest:
            word, rest = _split(rest)
            if name == "login" and word.lower() == REMEMBER:
                remember = True
            elif word.startswith("--") and len(word) > 2:
                raise CommandError(f"unknown option {word!r}; {usage(name)}")
            else:
                words.append(word)
        if len(words) > 1:
            raise CommandError(f"too many arguments; {usage(name)}")
        who = _need(words[0] if words else "", name)
        request: dict[str, Any] = {"type": name}
        if name == "login" and who.isdecimal():
            request["id"] = _number(who, "a user id", name)
        else:
            request["name"] = who
        if remember:
            request["remember"] = True
        return Command(name, request)

    if name in ("search", "findgroup"):
        query, extra = _split(rest)
        _nothing_more(extra, name)
        query = _need(query.strip(), name)
        if name == "search":
            return Command(name, {"type": "user_search", "query": query,
                                  "limit": SEARCH_LIMIT})
        return Command(name, {"type": "group_search", "query": query, "limit": SEARCH_LIMIT})

    if name == "chats":
        count, extra = _split(rest)
        _nothing_more(extra, name)
        limit = CHATS_DEFAULT
        if count:
            limit = _number(count, "N", name)
            if limit > CHATS_MAX:
                raise CommandError(f"N is at most {CHATS_MAX}; {usage(name)}")
        return Command(name, {"type": "conversations", "limit": limit})

    if name == "chat":
        who, text = _split(rest)
        _need(who, name)
        _need(text, name)
        return Command(name, {"type": "chat", "to": _user(who, name, resolve), "text": text})

    if name == "broadcast":
        text = _need(rest, name)
        return Command(name, {"type": "broadcast", "text": text})

    if name in ("addfriend", "accept", "decline", "unfriend"):
        who, extra = _split(rest)
        _nothing_more(extra, name)
        uid = _user(_need(who, name), name, resolve)
        typ, key = {"addfriend": ("friend_add", "to"), "accept": ("friend_accept", "from"),
                    "decline": ("friend_decline", "from"),
                    "unfriend": ("friend_remove", "id")}[name]
        return Command(name, {"type": typ, key: uid})

    if name == "creategroup":
        group_name, desc = _split(rest)
        request = {"type": "group_create", "name": _need(group_name, name)}
        if desc:
            request["desc"] = desc
        return Command(name, request)

    if name in ("joingroup", "leavegroup", "group"):
        gid, extra = _split(rest)
        _nothing_more(extra, name)
        typ = {"joingroup": "group_join", "leavegroup": "group_leave",
               "group": "group_info"}[name]
        request = {"type": typ, "group": _group(_need(gid, name), name)}
        if name == "group":
            request["limit"] = MEMBERS_PAGE  # every member, a page of 500 at a time
        return Command(name, request)

    if name == "groupchat":
        gid, text = _split(rest)
        group = _group(_need(gid, name), name)
        return Command(name, {"type": "group_chat", "group": group, "text": _need(text, name)})

    assert name == "history"
    target, extra = _split(rest)
    count, extra = _split(extra)
    _nothing_more(extra, name)
    _need(target, name)
    limit = HISTORY_DEFAULT
    if count:
        limit = _number(count, "N", name)
        if limit > HISTORY_MAX:
            raise CommandError(f"N is at most {HISTORY_MAX}; {usage(name)}")
    request = {"type": "history", "limit": limit}
    if target[:1] in ("g", "G") and target[1:].isdecimal():
        request["group"] = _group(target, name)
    else:
        request["with"] = _user(target, name, resolve)
    return Command(name, request)
