"""The interactive session: typed lines become requests, frames become printed lines.

``ChatConsole`` is the logic (command queue, login summary, acknowledgements,
quitting, exit status). It talks to the network through ``ChatClientProtocol``
and to the person through a screen: ``TerminalScreen`` when stdin and stdout
are a terminal (raw mode, own line editing, so a message arriving while the
user types is printed above the prompt and the half-typed line is redrawn), or
``PlainScreen`` for pipes and scripts. Both are protocols for
``twisted.internet.stdio.StandardIO``; the reactor is the only loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import termios
from collections import deque
from collections.abc import Callable
from datetime import tzinfo
from typing import Any, Protocol

import orjson
from qqchat_client import lineedit
from qqchat_client.commands import (
    NEEDS_PASSWORD,
    SEARCH_LIMIT,
    Command,
    CommandError,
    UnknownUserError,
    help_text,
    parse,
)
from qqchat_client.net import ChatClientProtocol
from qqchat_client.paging import MAX_PAGES, PAGED, login_rest, merge, next_page
from qqchat_client.render import (
    clean,
    render_error,
    render_push,
    render_reply,
    render_summary,
    user_line,
)
from qqchat_client.roster import Roster, match_user
from qqchat_client.tokens import Saved, TokenStore, TokenStoreError
from twisted.internet import defer, error, interfaces, protocol, task
from twisted.internet.interfaces import IReactorTime
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

Frame = dict[str, Any]

#: the daemon closes connections silent for 300 s by default; stay well inside that
KEEPALIVE_IDLE = 60.0
#: how many message ids are remembered to drop duplicate pushes
SEEN_MAX = 10_000
#: how long quitting waits for the logout reply and for the socket to close
QUIT_TIMEOUT = 5.0
#: fields of a sent or received frame that --raw shows as ***
SECRET_FIELDS = ("password", "old", "new", "token")


class Screen(Protocol):
    """What the console needs from whatever shows text and reads lines."""

    def show(self, text: str) -> None: ...

    def set_prompt(self, prompt: str) -> None: ...

    def can_ask_password(self) -> bool:
        """Whether a person can answer questions (passwords, or which user was meant)."""
        ...

    def ask_password(self, prompt: str) -> defer.Deferred[str | None]: ...

    def ask_line(self, prompt: str) -> defer.Deferred[str | None]:
        """A visible answer to a question; None if cancelled."""
        ...

    def close(self) -> defer.Deferred[None]: ...


class ChatConsole:
    """One client session: runs typed commands in order, each after the previous reply.

    Exit status (``done`` fires with it): 1 if the connection was lost; otherwise,
    for scripts, 1 if any command failed; an interactive session that is left
    with quit, Ctrl-D or Ctrl-C exits 0.

    ``tokens`` keeps the sessions of ``login --remember`` (keyed by ``address``);
    ``new_password`` lets a script run ``passwd`` without a terminal.
    """

    def __init__(self, clock: IReactorTime, address: str, *, password: str | None = None,
                 raw: bool = False, interactive: bool = False,
                 tz: tzinfo | None = None, tokens: TokenStore | None = None,
                 new_password: str | None = None) -> None:
        self.clock = clock
        self.address = address
        self.password = password
        self.new_password = new_password
        self.tokens = tokens
        #: this session's token is saved: quitting keeps it (no logout, which revokes it)
        self.session_saved = False
        self.raw = raw
        self.interactive = interactive
        self.tz = tz
        self.roster = Roster()
        self.done: defer.Deferred[int] = defer.Deferred()
        self.failures = 0
        self.proto: ChatClientProtocol | None = None
        self.screen: Screen | None = None
        self._queue: deque[str] = deque()
        self._busy = False
        self._pumping = False
        self._eof = False
        self._closing = False
        self._lost = False
        self._finishing = False
        # login backlog and acknowledgements
        self._syncing = False
        self._synced: defer.Deferred[int] | None = None
        self._max_seen = 0
        self._acked = 0
        self._ack_call: Any = None
        #: recent message ids, so a message pushed twice (a retry) is shown once
        self._seen: set[int] = set()
        self._seen_order: deque[int] = deque()
        self._keepalive: task.LoopingCall | None = None

    # -- wiring ---------------------------------------------------------------

    def protocol(self) -> ChatClientProtocol:
        """The network protocol for this console (connect it, then call ``start``)."""
        self.proto = ChatClientProtocol(self.clock, self.push, self.connection_lost,
                                        self._raw_line if self.raw else None)
        return self.proto

    def start(self, screen: Screen) -> None:
        self.screen = screen
        self._set_prompt()
        keepalive = task.LoopingCall(self._ping)
        keepalive.clock = self.clock
        keepalive.start(KEEPALIVE_IDLE / 2, now=False)
        self._keepalive = keepalive
        if self.proto is not None and not self.proto.is_open:
            self.connection_lost(Failure(error.ConnectionDone()))

    def show(self, text: str) -> None:
        if self.screen is not None:
            self.screen.show(text)

    def _set_prompt(self) -> None:
        if self.screen is not None:
            name = self.roster.my_name
            self.screen.set_prompt(f"{clean(name)}> " if name else "qq> ")

    def _raw_line(self, direction: str, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        if direction == ">":
            self.show("> " + clean(_masked(line, text)))
        else:
            self.show(clean(_masked(line, text)))

    # -- input ------------------------------------------------------------------

    def line(self, text: str) -> None:
        """A line the user typed (or the script contained)."""
        if self._closing:
            return
        self._queue.append(text)
        self._pump()

    def end_of_input(self) -> None:
        """stdin is at its end: finish the queued commands, then quit."""
        self._eof = True
        self._pump()

    def interrupt(self) -> None:
        """Ctrl-C or a signal: leave now (a second one does not wait for the server)."""
        if self._closing:
            self._finish()
            return
        self._queue.clear()
        self.quit()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._busy and not self._closing and self._queue:
                self._busy = True
                d = defer.Deferred.fromCoroutine(self._run(self._queue.popleft()))
                d.addBoth(self._ran)
            if not self._busy and not self._queue and self._eof and not self._closing:
                self.quit()
        finally:
            self._pumping = False

    def _ran(self, result: bool | Failure) -> None:
        if isinstance(result, Failure):
            self.show(f"Internal error: {result.getErrorMessage()}")
            result = False
        if not result:
            self.failures += 1
        self._busy = False
        self._pump()

    # -- commands ---------------------------------------------------------------

    async def _run(self, text: str) -> bool:
        """Run one command line; True if it succeeded."""
        try:
            cmd = await self._parse(text)
        except CommandError as e:
            if str(e):
                self.show(str(e))
            return False
        if cmd is None:
            return True
        if cmd.name == "help":
            self.show(help_text(cmd.topic))
            return True
        if cmd.name == "quit":
            self.quit()
            return True
        assert cmd.request is not None
        request = dict(cmd.request)
        if cmd.name == "login":
            return await self._login_command(request)
        if cmd.name == "passwd":
            return await self._passwd(request)
        if cmd.name in NEEDS_PASSWORD:
            password = await self._password(cmd.name, request.get("name") or request.get("id"))
            if password is None:
                return False
            request["password"] = password
        me = self.roster.my_name
        reply = await (self._send_all(request) if request.get("type") in PAGED
                       else self._send(request))
        if reply is None:
            return False
        if reply.get("type") == "error":
            self._show_error(reply, cmd.name)
            return False
        self.roster.learn_reply(request, reply)
        if not self.raw:
            shown = render_reply(request, reply, self.roster, self.clock.seconds(), self.tz)
            if shown:
                self.show(shown)
        if cmd.name == "logout":
            self._set_prompt()
            self.session_saved = False
            if me is not None:
                self._forget_token(me)  # the server revoked it with the logout
        return True

    def _info(self, text: str) -> None:
        """A sentence about what the client did; --raw shows only the wire."""
        if not self.raw:
            self.show(text)

    # -- names the client has not seen ------------------------------------------

    async def _parse(self, text: str) -> Command | None:
        """``parse``, with a user name the client does not know looked up on the server."""
        chosen: dict[str, int] = {}

        def resolve(name: str) -> int | None:
            return chosen[name] if name in chosen else self.roster.resolve(name)

        while True:
            try:
                return parse(text, resolve)
            except UnknownUserError as e:
                if e.name in chosen:
                    raise
                command = text.split(None, 1)[0].lower()
                chosen[e.name] = await self._find_user(e.name, command)

    async def _find_user(self, name: str, command: str) -> int:
        """The id of the user ``name`` means, from ``user_search``: an exact match, the only
        candidate, or the one the person picks; CommandError with the reason otherwise."""
        request = {"type": "user_search", "query": name, "limit": SEARCH_LIMIT}
        reply = await self._send(request)
        if reply is None:
            raise CommandError("")  # connection_lost says why
        if reply.get("type") == "error":
            raise CommandError(render_error(reply, command))
        self.roster.learn_reply(request, reply)
        uid, candidates = match_user(name, reply.get("users"))
        if uid is not None:
            if (self.roster.names.get(uid) or "").casefold() != name.casefold():
                self._info(f"{name!r} is {clean(self.roster.user_label(uid))}.")
            return uid
        if not candidates:
            raise CommandError(f"{command} failed: no user is called {name!r}, nor has a "
                               "name starting with it.")
        more = " and more" if reply.get("more") else ""
        screen = self.screen
        if screen is None or not screen.can_ask_password():
            labels = ", ".join(clean(self.roster.user_label(u["id"], u["name"]))
                               for u in candidates)
            raise CommandError(f"{command} failed: {name!r} matches several users: "
                               f"{labels}{more}; give the id or the whole name.")
        lines = [f"{name!r} matches several users{more}:"]
        lines += [f"  {i}) {user_line(self.roster, u)}" for i, u in enumerate(candidates, 1)]
        self.show("\n".join(lines))
        answer = await screen.ask_line(f"Which one for {command}? Number or name "
                                       "(Enter cancels): ")
        answer = (answer or "").strip()
        if not answer:
            raise CommandError(f"{command} cancelled.")
        if answer.isdecimal() and 1 <= int(answer) <= len(candidates):
            return int(candidates[int(answer) - 1]["id"])
        for u in candidates:
            if u["name"] == answer or str(u["id"]) == answer:
                return int(u["id"])
        raise CommandError(f"{command} cancelled: {answer!r} is none of those.")

    def _show_error(self, reply: Frame, command: str) -> None:
        if not self.raw:
            self.show(render_error(reply, command))

    async def _password(self, command: str, who: Any) -> str | None:
        if self.password is not None:
            return self.password
        screen = self.screen
        if screen is None or not screen.can_ask_password():
            self.show(f"{command} needs a password: give --password or set QQCHAT_PASSWORD "
                      "(or run the client in a terminal to be asked).")
            return None
        password = await screen.ask_password(f"Password for {clean(str(who))}: ")
        if password is None:
            self.show(f"{command} cancelled.")
            return None
        if command == "register":
            again = await screen.ask_password("The same password again: ")
            if again != password:
                self.show("register failed: the two passwords differ.")
                return None
        return password

    async def _send(self, request: Frame) -> Frame | None:
        """Send a request; its reply, or None if the connection went away first."""
        if self.proto is None:
            return None
        try:
            return await self.proto.request(request)
        except (error.ConnectionLost, error.ConnectionDone, defer.CancelledError):
            return None

    async def _send_all(self, request: Frame) -> Frame | None:
        """A request for a paged list (friends, groups, a group's members): its reply with
        every page after it merged in (at most MAX_PAGES), or the first error, or None if
        the connection went away."""
        reply = await self._send(request)
        asked, page = request, reply
        for _ in range(MAX_PAGES - 1):
            if page is None or page.get("type") == "error":
                return page
            following = next_page(asked, page)
            if following is None:
                break
            asked, page = following, await self._send(following)
            if page is not None and page.get("type") != "error":
                reply = merge(reply, page)
        if page is None or page.get("type") == "error":
            return page
        return reply

    async def _load_rest(self) -> None:
        """After a login: the friends and groups the login reply did not list (it has
        the first 200 and 50), a page at a time, into the roster."""
        for _ in range(2 * MAX_PAGES):
            request = login_rest(self.roster)
            if request is None:
                return
            reply = await self._send(request)
            if reply is None:
                return
            if reply.get("type") == "error":
                self._show_error(reply, "loading your " + request["type"])
                return
            self.roster.learn_reply(request, reply)

    # -- login, saved sessions, password change ---------------------------------

    async def _login_command(self, request: Frame) -> bool:
        """``login [--remember] NAME|ID``: with the saved session if there is one, else (or
        when the server no longer takes it) with the password."""
        who = request.get("name") or request.get("id")
        saved = self._find_token(request.get("name"), request.get("id"))
        if saved is not None:
            reply = await self._login({"type": "login", "token": saved.token})
            if reply is None:
                return False
            if reply.get("type") != "error":
                return True
            if reply.get("code") != "bad_token":
                self._show_error(reply, "login")
                return False
            self._forget_token(saved.name, saved.id)
            self._info(f"The saved session for {clean(saved.name)} has ended (it expired, or "
                       "was ended by a logout or a password change); log in with the "
                       "password.")
        password = await self._password("login", who)
        if password is None:
            return False
        reply = await self._login({**request, "password": password})
        if reply is None:
            return False
        if reply.get("type") == "error":
            self._show_error(reply, "login")
            return False
        return True

    def _find_token(self, name: Any, uid: Any) -> Saved | None:
        if self.tokens is None:
            return None
        try:
            return self.tokens.find(self.address, name if isinstance(name, str) else None,
                                    uid if isinstance(uid, int) else None)
        except TokenStoreError as e:
            self._info(f"No saved session used: {e}.")
            return None

    def _save_token(self, token: str, announce: bool) -> bool:
        name, uid = self.roster.my_name, self.roster.me
        if self.tokens is None or not name:
            return False
        try:
            self.tokens.save(self.address, name, uid, token)
        except TokenStoreError as e:
            self._info(f"The session could not be saved: {e}.")
            return False
        if announce:
            self._info(f"Session saved in {self.tokens.path}: the next 'login {clean(name)}' "
                       "needs no password ('logout' ends it).")
        return True

    def _forget_token(self, name: str, uid: int | None = None) -> None:
        if self.tokens is None:
            return
        try:
            self.tokens.forget(self.address, name, uid)
        except TokenStoreError as e:
            self._info(f"The saved session could not be deleted: {e}.")

    async def _login(self, request: Frame) -> Frame | None:
        """Send a login; on success show it, save its token (if the request used or asked for
        one) and wait for the backlog. The reply, an error frame not shown yet, or None if
        the connection went away."""
        synced: defer.Deferred[int] = defer.Deferred()
        self._synced, self._syncing = synced, True
        reply = await self._send(request)
        if reply is None or reply.get("type") == "error":
            self._synced, self._syncing = None, False
            return reply
        # the backlog follows this reply: a new user means new message ids to ack
        self._max_seen = self._acked = 0
        self._seen.clear()
        self._seen_order.clear()
        self.roster.learn_reply(request, reply)
        self._set_prompt()
        if not self.raw:
            self.show(render_reply(request, reply, self.roster, self.clock.seconds(),
                                   self.tz) or "")
        token = reply.get("token")
        self.session_saved = False
        if isinstance(token, str) and token and ("token" in request or request.get("remember")):
            if token == request.get("token"):
                self.session_saved = True
            else:
                self.session_saved = self._save_token(token, announce="token" not in request)
        try:
            count = await synced
        except (error.ConnectionLost, error.ConnectionDone):
            return None
        await self._load_rest()
        if not self.raw:
            self.show(render_summary(self.roster, count))
        return reply

    async def _passwd(self, request: Frame) -> bool:
        """``passwd``: the current password and the new one (twice) from the person, or from
        --password/QQCHAT_PASSWORD and QQCHAT_NEW_PASSWORD in a script."""
        if self.roster.me is None:
            self.show("passwd failed: log in first.")
            return False
        screen = self.screen
        can_ask = screen is not None and screen.can_ask_password()
        if (self.password is None or self.new_password is None) and not can_ask:
            self.show("passwd needs the passwords: run it in a terminal to be asked, or set "
                      "QQCHAT_PASSWORD (the current one) and QQCHAT_NEW_PASSWORD.")
            return False
        old = self.password
        if old is None:
            assert screen is not None
            old = await screen.ask_password("Current password: ")
        new = self.new_password
        if new is None and old is not None:
            assert screen is not None
            new = await screen.ask_password("New password: ")
            if new is not None:
                again = await screen.ask_password("The new password again: ")
                if again is None:
                    new = None
                elif again != new:
                    self.show("passwd failed: the two new passwords differ.")
                    return False
        if old is None or new is None:
            self.show("passwd cancelled.")
            return False
        request = {**request, "old": old, "new": new}
        reply = await self._send(request)
        if reply is None:
            return False
        if reply.get("type") == "error":
            self._show_error(reply, "passwd")
            return False
        if self.password == old:
            self.password = new  # a later login in the same script needs the new one
        token = reply.get("token")
        name = self.roster.my_name or ""
        if isinstance(token, str) and token and self.session_saved:
            self.session_saved = self._save_token(token, announce=False)
        else:
            self._forget_token(name, self.roster.me)  # every saved token was revoked
        self._info(render_reply(request, reply, self.roster, self.clock.seconds(),
                                self.tz) or "")
        return True

    # -- pushes, acknowledgements -------------------------------------------------

    def push(self, frame: Frame) -> None:
        """A frame from the server that is not a reply."""
        typ = frame.get("type")
        if typ == "message" and self._already_seen(frame.get("id")):
            return
        self.roster.learn_push(frame)
        if typ == "synced":
            synced, self._synced, self._syncing = self._synced, None, False
            self._flush_ack()  # now, before the next command can log out
            if synced is not None:
                count = frame.get("count")
                synced.callback(count if isinstance(count, int) else 0)
            return
        if typ == "message":
            mid = frame.get("id")
            if isinstance(mid, int) and not isinstance(mid, bool) and mid > self._max_seen:
                self._max_seen = mid
                if not self._syncing:
                    self._schedule_ack()
        elif typ == "kicked":
            self.session_saved = False
            self._set_prompt()
        if not self.raw:
            text = render_push(frame, self.roster, self.clock.seconds(), self.tz)
            if text:
                self.show(text)

    def _already_seen(self, mid: Any) -> bool:
        if not isinstance(mid, int) or isinstance(mid, bool):
            return False
        if mid in self._seen:
            return True
        self._seen.add(mid)
        self._seen_order.append(mid)
        if len(self._seen_order) > SEEN_MAX:
            self._seen.discard(self._seen_order.popleft())
        return False

    def _schedule_ack(self) -> None:
        if self._ack_call is None and self._max_seen > self._acked:
            self._ack_call = self.clock.callLater(0, self._flush_ack)

    def _flush_ack(self) -> defer.Deferred[Frame] | None:
        """Acknowledge everything seen so far (acks are cumulative): one ack per burst.
        The ack's reply, or None if nothing was sent."""
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        self._ack_call = None
        if self.roster.me is None or self._max_seen <= self._acked:
            return None
        self._acked = self._max_seen
        return self._background({"type": "ack", "id": self._acked})

    def _ping(self) -> None:
        proto = self.proto
        if proto is not None and proto.is_open and not self._closing \
                and self.clock.seconds() - proto.last_sent >= KEEPALIVE_IDLE:
            self._background({"type": "ping"})

    def _background(self, request: Frame) -> defer.Deferred[Frame] | None:
        """A request the user did not type: its reply (or loss) is not shown."""
        if self.proto is None or not self.proto.is_open:
            return None
        d = self.proto.request(request)
        d.addErrback(lambda _: None)
        return d

    # -- leaving ----------------------------------------------------------------------

    def quit(self) -> None:
        """Log out if logged in, close the connection, restore the terminal, finish."""
        if self._closing:
            return
        self._closing = True
        self._queue.clear()
        d = defer.Deferred.fromCoroutine(self._leave())
        d.addErrback(lambda f: self.show(f"Internal error: {f.getErrorMessage()}"))
        d.addBoth(lambda _: self._finish())

    async def _leave(self) -> None:
        proto = self.proto
        if proto is None or not proto.is_open:
            return
        self._flush_ack()  # sent before the logout, so the server has it when we go
        if self.roster.me is not None and self.session_saved:
            # a logout would revoke the saved token: leave logged in, once the server has
            # answered everything sent (acks included; it answers in order)
            answered = self._background({"type": "ping"})
            if answered is not None:
                answered.addTimeout(QUIT_TIMEOUT, self.clock)
                with contextlib.suppress(defer.TimeoutError, defer.CancelledError):
                    await answered
            self._info(f"Left; the session stays saved for the next 'login "
                       f"{clean(self.roster.my_name or '')}' ('logout' ends it).")
        elif self.roster.me is not None:
            d = proto.request({"type": "logout"})
            d.addTimeout(QUIT_TIMEOUT, self.clock)
            try:
                reply = await d
            except (error.ConnectionLost, error.ConnectionDone, defer.TimeoutError,
                    defer.CancelledError):
                reply = None
            if reply is not None and reply.get("type") == "logout":
                self.roster.reset()
                if not self.raw:
                    self.show("Logged out.")
        if proto.is_open:
            lost = proto.lost
            proto.transport.loseConnection()
            timer = self.clock.callLater(QUIT_TIMEOUT, proto.transport.abortConnection)
            await lost
            if timer.active():
                timer.cancel()

    def connection_lost(self, reason: Failure) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        if self._closing or self.screen is None:
            return  # we closed it, or the console has not started yet (start reports it)
        self._lost = True
        self._closing = True
        if reason.check(error.ConnectionDone):
            why = "the server closed the connection"
        else:
            why = reason.getErrorMessage().rstrip(".")
        self.show(f"Connection to {self.address} lost: {why}.")
        if self._synced is not None:
            synced, self._synced = self._synced, None
            synced.errback(error.ConnectionLost())
        self._finish()

    def exit_status(self) -> int:
        if self._lost:
            return 1
        if self.interactive:
            return 0
        return 1 if self.failures else 0

    def _finish(self) -> None:
        if self._finishing:
            return
        self._finishing = True
        self._closing = True
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        if self.proto is not None and self.proto.is_open:
            self.proto.transport.abortConnection()
        d = self.screen.close() if self.screen is not None else defer.succeed(None)
        d.addErrback(lambda _: None)
        d.addCallback(lambda _: self.done.callback(self.exit_status()))


# -- screens ---------------------------------------------------------------------------


class _Terminal:
    """Saves and restores a terminal's mode and a file descriptor's flags."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved_mode: list[Any] | None = None
        self.saved_flags: dict[int, int] = {}

    def save_flags(self, *fds: int) -> None:
        for fd in fds:
            with contextlib.suppress(OSError):
                self.saved_flags[fd] = fcntl.fcntl(fd, fcntl.F_GETFL)

    def raw(self) -> None:
        """Keys one at a time, no echo, Ctrl-C as a key; output processing kept (\\n)."""
        mode = termios.tcgetattr(self.fd)
        if self.saved_mode is None:
            self.saved_mode = [*mode[:6], list(mode[6])]
        mode[0] &= ~(termios.ICRNL | termios.INLCR | termios.IGNCR | termios.IXON
                     | termios.ISTRIP)
        mode[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
        mode[6] = list(mode[6])
        mode[6][termios.VMIN] = 1
        mode[6][termios.VTIME] = 0
        termios.tcsetattr(self.fd, termios.TCSANOW, mode)

    def echo(self, on: bool) -> None:
        mode = termios.tcgetattr(self.fd)
        if self.saved_mode is None:
            self.saved_mode = [*mode[:6], list(mode[6])]
        mode[3] = mode[3] | termios.ECHO if on else mode[3] & ~termios.ECHO
        termios.tcsetattr(self.fd, termios.TCSANOW, mode)

    def restore_mode(self) -> None:
        if self.saved_mode is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved_mode)

    def restore(self) -> None:
        """Terminal mode and the blocking flags (Twisted leaves stdin non-blocking,
        which a shell reading the same terminal afterwards does not expect)."""
        self.restore_mode()
        for fd, flags in self.saved_flags.items():
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)

    def columns(self) -> int:
        try:
            _, cols, _, _ = struct.unpack("hhhh", fcntl.ioctl(1, termios.TIOCGWINSZ, b"\0" * 8))
        except OSError:
            cols = 0
        return cols if cols > 0 else 80


#: terminals to put back at exit, whatever path the exit takes
_TERMINALS: list[_Terminal] = []


def restore_terminals() -> None:
    for term in _TERMINALS:
        term.restore()


class _StdioEnd:
    """How either screen ends: the terminal is restored, the console told."""

    console: ChatConsole
    term: _Terminal
    _closed: defer.Deferred[None]
    _gone: bool

    def writeConnectionLost(self) -> None:
        self._gone = True
        self.console.interrupt()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._gone = True
        self.term.restore()
        if not self._closed.called:
            self._closed.callback(None)
        if not self.console.done.called:
            self.console.interrupt()


@implementer(interfaces.IHalfCloseableProtocol)
class PlainScreen(_StdioEnd, LineReceiver):
    """Lines in, lines out: for piped stdin/stdout. Prints nothing but output."""

    delimiter = b"\n"
    MAX_LENGTH = 1024 * 1024

    def __init__(self, console: ChatConsole, stdin_is_tty: bool = False) -> None:
        self.console = console
        self.stdin_is_tty = stdin_is_tty
        self.term = _Terminal(0)
        self.term.save_flags(0, 1)
        _TERMINALS.append(self.term)
        #: the next line answers a question (a password when hidden) instead of being a command
        self._secret: defer.Deferred[str | None] | None = None
        self._hidden = False
        self._closed: defer.Deferred[None] = defer.Deferred()
        self._gone = False

    # Screen
    def show(self, text: str) -> None:
        if not self._gone:
            self.transport.write(text.encode("utf-8", "replace") + b"\n")

    def set_prompt(self, prompt: str) -> None:
        pass  # a script has no use for prompts

    def can_ask_password(self) -> bool:
        return self.stdin_is_tty

    def ask_password(self, prompt: str) -> defer.Deferred[str | None]:
        self._tell_terminal(prompt)
        self.term.echo(False)
        self._hidden = True
        self._secret = defer.Deferred()
        return self._secret

    def ask_line(self, prompt: str) -> defer.Deferred[str | None]:
        self._tell_terminal(prompt)
        self._hidden = False
        self._secret = defer.Deferred()
        return self._secret

    def close(self) -> defer.Deferred[None]:
        self.term.restore()
        if not self._gone:
            self.transport.loseConnection()
        return self._closed

    @staticmethod
    def _tell_terminal(text: str) -> None:
        """Password prompts go to stderr: stdout may be a file or a pipe."""
        with contextlib.suppress(OSError):
            os.write(2, text.encode())

    # StandardIO
    def lineReceived(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if self._secret is not None:
            secret, self._secret = self._secret, None
            if self._hidden:
                self.term.echo(True)
                self._tell_terminal("\n")
            secret.callback(text)
            return
        self.console.line(text)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.show(f"A line longer than {self.MAX_LENGTH} bytes was skipped.")
        self.console.failures += 1

    def readConnectionLost(self) -> None:
        if self._secret is not None:
            secret, self._secret = self._secret, None
            if self._hidden:
                self.term.echo(True)
            secret.callback(None)
        self.console.end_of_input()



@implementer(interfaces.IHalfCloseableProtocol)
class TerminalScreen(_StdioEnd, protocol.Protocol):
    """A terminal in raw mode with a prompt that survives incoming messages.

    Output is printed above the prompt: erase the prompt (and the half-typed
    line), print, draw them again with the cursor where it was.
    """

    def __init__(self, console: ChatConsole, fd: int = 0,
                 columns: Callable[[], int] | None = None) -> None:
        self.console = console
        self.term = _Terminal(fd)
        self.term.save_flags(0, 1)
        _TERMINALS.append(self.term)
        self.columns = columns or self.term.columns
        self.keys = lineedit.KeyDecoder()
        self.editor = lineedit.LineEditor()
        self.prompt = "qq> "
        self._row = 0  # the cursor's row within the drawn prompt, for erase
        self._secret: list[str] | None = None
        self._secret_prompt = ""
        self._secret_done: defer.Deferred[str | None] | None = None
        #: a visible question (which user was meant), edited apart from the half-typed line
        self._question: lineedit.LineEditor | None = None
        self._question_prompt = ""
        self._answer: defer.Deferred[str | None] | None = None
        self._closed: defer.Deferred[None] = defer.Deferred()
        self._gone = False

    # drawing
    def _draw(self) -> str:
        if self._secret is not None:
            seq, self._row = lineedit.draw(self._secret_prompt, "", 0, self.columns())
        elif self._question is not None:
            seq, self._row = lineedit.draw(self._question_prompt, self._question.text,
                                           self._question.cursor, self.columns())
        else:
            seq, self._row = lineedit.draw(self.prompt, self.editor.text, self.editor.cursor,
                                           self.columns())
        return seq

    def _write(self, text: str) -> None:
        if not self._gone:
            self.transport.write(text.encode("utf-8", "replace"))

    def show(self, text: str) -> None:
        erase = lineedit.erase(self._row)
        self._write(erase + text.replace("\n", "\r\n") + "\r\n" + self._draw())

    def set_prompt(self, prompt: str) -> None:
        self.prompt = prompt
        if self.transport is not None:
            self._write(lineedit.erase(self._row) + self._draw())

    def can_ask_password(self) -> bool:
        return True

    def ask_password(self, prompt: str) -> defer.Deferred[str | None]:
        self._secret, self._secret_prompt = [], prompt
        self._secret_done = defer.Deferred()
        self._write(lineedit.erase(self._row) + self._draw())
        return self._secret_done

    def ask_line(self, prompt: str) -> defer.Deferred[str | None]:
        self._question, self._question_prompt = lineedit.LineEditor(), prompt
        self._answer = defer.Deferred()
        self._write(lineedit.erase(self._row) + self._draw())
        return self._answer

    def close(self) -> defer.Deferred[None]:
        if not self._gone:
            self._write(lineedit.erase(self._row))
            self._row = 0
            self.transport.loseConnection()
        else:
            self.term.restore()
        return self._closed

    # StandardIO
    def connectionMade(self) -> None:
        self.term.raw()
        self._write(self._draw())

    def dataReceived(self, data: bytes) -> None:
        for key in self.keys.feed(data):
            if self._secret is not None:
                self._secret_key(key)
            elif self._question is not None:
                self._question_key(key)
            else:
                self._key(key)

    def _key(self, key: str) -> None:
        event = self.editor.handle(key)
        if event == "enter":
            line = self.editor.take()
            seq, _ = lineedit.draw(self.prompt, line, len(line), self.columns())
            self._write(lineedit.erase(self._row) + seq + "\r\n")
            self._row = 0
            self._write(self._draw())
            self.console.line(line)
        elif event in ("interrupt", "eof"):
            self.console.interrupt()
        elif event == "suspend":
            self._suspend()
        elif event == "redraw":
            self._write("\x1b[H\x1b[2J" + self._draw())
        else:
            self._write(lineedit.erase(self._row) + self._draw())

    def _secret_key(self, key: str) -> None:
        assert self._secret is not None
        result: str | None = None
        if len(key) == 1:
            self._secret.append(key)
            return
        if key == "<backspace>":
            if self._secret:
                self._secret.pop()
            return
        if key == "<kill-line>":
            self._secret.clear()
            return
        if key == "<enter>":
            result = "".join(self._secret)
        elif key not in ("<ctrl-c>", "<ctrl-d>"):
            return
        done = self._secret_done
        self._secret, self._secret_done = None, None
        self._write(lineedit.erase(self._row) + self._secret_prompt + "\r\n")
        self._row = 0
        self._write(self._draw())
        if done is not None:
            done.callback(result)
        if key == "<ctrl-c>":
            self.console.interrupt()

    def _question_key(self, key: str) -> None:
        assert self._question is not None
        event = self._question.handle(key)
        if event == "suspend":
            self._suspend()
            return
        if event == "redraw":
            self._write("\x1b[H\x1b[2J" + self._draw())
            return
        if event not in ("enter", "interrupt", "eof"):
            self._write(lineedit.erase(self._row) + self._draw())
            return
        text = self._question.text
        seq, _ = lineedit.draw(self._question_prompt, text, len(text), self.columns())
        done = self._answer
        self._question, self._answer = None, None
        self._write(lineedit.erase(self._row) + seq + "\r\n")
        self._row = 0
        self._write(self._draw())
        if done is not None:
            done.callback(text if event == "enter" else None)
        if event == "interrupt":
            self.console.interrupt()

    def _suspend(self) -> None:
        """Ctrl-Z: give the terminal back, stop, and take it again on resume."""
        self._write(lineedit.erase(self._row))
        self.term.restore_mode()
        os.kill(os.getpid(), signal.SIGTSTP)
        self.term.raw()
        self._write(self._draw())

    def readConnectionLost(self) -> None:
        self.console.interrupt()  # the terminal went away



def _masked(line: bytes, text: str) -> str:
    """A frame for --raw with passwords and tokens shown as ***."""
    try:
        frame = orjson.loads(line)
    except orjson.JSONDecodeError:
        return text
    if not isinstance(frame, dict) or not any(k in frame for k in SECRET_FIELDS):
        return text
    return orjson.dumps({k: "***" if k in SECRET_FIELDS else v
                         for k, v in frame.items()}).decode()
