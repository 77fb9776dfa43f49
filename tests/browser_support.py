"""Helpers for the browser tests: a daemon with its web port, Debian's Chromium under
Playwright, and a browser user driven by role and accessible name (the UI's contract).

Playwright's sync API runs its own event loop, so these tests are plain functions
with the daemon in a child process, never inside the Twisted reactor.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from daemon_process import DaemonError, DaemonProcess, free_port
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Playwright, expect

CHROMIUM = "/usr/bin/chromium"
# headless comes from launch(headless=True); these keep Chromium off the network and quiet
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PASSWORD = "secret-pw1"
WAIT_MS = 15_000  # the longest any single UI condition may take (a reconnect included)
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def launch(playwright: Playwright) -> Browser:
    """Debian's Chromium; Playwright never downloads a browser here."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=CHROMIUM_ARGS)


def wait_port(host: str, port: int, timeout: float, proc: DaemonProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc is None or proc.proc.poll() is not None:
            raise DaemonError("daemon exited:\n" + proc.output())
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise DaemonError(f"web port {port} not open after {timeout:.0f} s:\n" + proc.output())


class WebDaemon(DaemonProcess):
    """``twistd -n qqchat`` with ``--web-port`` on loopback, SQLite in ``workdir``; the
    same ports and database again after ``restart``. Registrations are not rate
    limited: the tests make many users from one address."""

    def __init__(self, workdir: Path, args: Sequence[str] = ()) -> None:
        self.web_port = free_port()
        # the tests show broadcasts from ordinary users (by default only admins may)
        super().__init__(workdir, args=["--web-port", str(self.web_port),
                                        "--web-interface", "127.0.0.1",
                                        "--register-rate", "0", "--broadcast", "anyone",
                                        *args])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> WebDaemon:
        super().start()
        wait_port(self.host, self.web_port, 20, self)
        return self

    def restart(self) -> None:
        self.stop()
        self.start()


class BrowserUser:
    """One person in one browser context (own storage, own WebSocket)."""

    def __init__(self, browser: Browser, url: str, name: str, **context: object) -> None:
        self.name = name
        self.url = url
        opts: dict[str, object] = {"locale": "en-US", "viewport": {"width": 1280, "height": 800}}
        opts.update(context)
        self.context: BrowserContext = browser.new_context(**opts)
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url + "/")

    def close(self) -> None:
        self.context.close()

    # -- the login screen -------------------------------------------------------------

    def fill_form(self, name: str | None = None, password: str = PASSWORD) -> None:
        self.page.get_by_role("textbox", name="Name").fill(name or self.name)
        self.page.get_by_role("textbox", name="Password").fill(password)

    def register(self, remember: bool = False) -> BrowserUser:
        """Register (which logs in) and wait for the main screen."""
        self.fill_form()
        if remember:
            self.page.get_by_role("checkbox", name="Remember me").check()
        self.page.get_by_role("button", name="Register").click()
        self.expect_online()
        return self

    def login(self, remember: bool = False) -> BrowserUser:
        self.fill_form()
        if remember:
            self.page.get_by_role("checkbox", name="Remember me").check()
        self.page.get_by_role("button", name="Log in").click()
        self.expect_online()
        return self

    def expect_online(self) -> None:
        expect(self.page.get_by_role("tab", name="Chats")).to_be_visible(timeout=WAIT_MS)
        expect(self.page.get_by_role("status").filter(has_text="Connected")).to_be_visible(
            timeout=WAIT_MS)

    def logout(self) -> None:
        self.page.get_by_role("button", name="Log out").click()
        expect(self.page.get_by_role("button", name="Log in")).to_be_visible()

    # -- the sidebar ------------------------------------------------------------------

    def tab(self, name: str) -> None:
        tab = self.page.get_by_role("tab", name=name)
        tab.click()
        expect(tab).to_have_attribute("aria-selected", "true")

    def panel(self) -> Locator:
        return self.page.get_by_role("tabpanel")

    def conversation(self, peer: str) -> Locator:
        """The sidebar entry of a conversation: a button whose name starts with ``peer``."""
        # not followed by another name character (\b would not work after CJK in JS)
        return self.panel().get_by_role(
            "button", name=re.compile(rf"^{re.escape(peer)}(?![\w.-])"))

    def open_chat(self, peer: str) -> None:
        self.tab("Chats")
        self.conversation(peer).click()
        expect(self.page.get_by_role("heading", name=peer, exact=True)).to_be_visible()

    def open_friend(self, friend: str) -> None:
        self.tab("Friends")
        self.conversation(friend).click()
        expect(self.page.get_by_role("heading", name=friend, exact=True)).to_be_visible()

    def add_friend(self, name: str) -> None:
        self.tab("Friends")
        self.panel().get_by_role("searchbox", name="Search").fill(name)
        row = self.panel().get_by_role("listitem").filter(
            has=self.page.get_by_text(name, exact=True))
        row.get_by_role("button", name="Add friend").click()
        expect(self.page.get_by_text(f"Friend request sent to {name}.")).to_be_visible()

    def accept(self, name: str) -> None:
        self.tab("Friends")
        row = self.panel().get_by_role("listitem").filter(
            has=self.page.get_by_text(name, exact=True))
        row.get_by_role("button", name="Accept").click()
        expect(self.conversation(name)).to_be_visible()

    # -- the conversation ---------------------------------------------------------------

    def log(self) -> Locator:
        return self.page.get_by_role("log", name="Messages")

    def send(self, text: str) -> None:
        box = self.page.get_by_role("textbox", name="Message")
        box.fill(text)
        box.press("Enter")

    def bubble(self, text: str, within: Locator | None = None) -> Locator:
        """Message bubbles whose whole text is ``text`` (whitespace runs match any)."""
        pattern = r"\s+".join(re.escape(part) for part in text.split())
        return (within or self.log()).locator(".bubble").filter(
            has_text=re.compile(rf"^\s*{pattern}\s*$"))

    def expect_message(self, text: str, count: int = 1) -> None:
        expect(self.bubble(text)).to_have_count(count, timeout=WAIT_MS)

    def expect_sent(self, text: str) -> None:
        """Mine, on the right, and no longer pending."""
        msg = self.log().locator(".msg.mine").filter(has=self.bubble(text, self.page))
        expect(msg).to_have_count(1, timeout=WAIT_MS)
        expect(msg).to_have_class(re.compile(r"\bsent\b"), timeout=WAIT_MS)
