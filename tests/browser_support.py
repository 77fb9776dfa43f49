"""Helpers for the browser tests: a daemon with its web port, Debian's Chromium under
Playwright, and a browser user driven by role and accessible name (the UI's contract).

Playwright's sync API runs its own event loop, so these tests are plain functions
with the daemon in a child process, never inside the Twisted reactor.
"""

from __future__ import annotations

import os
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
# the browser's own words when a WebSocket cannot connect (the daemon is down): expected
# while a test stops a daemon, an error anywhere else
SOCKET_FAILED = re.compile(r"^WebSocket connection to '[^']*/ws' failed")

# Colour contrast of every visible piece of text against what is behind it (WCAG 2:
# 4.5:1, 3:1 for large text); returns the pieces that fall short. Opacity of the
# element and its ancestors is applied to the text colour.
CONTRAST_JS = """() => {
  const parse = (c) => {
    const m = c.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const p = m[1].split(/[ ,/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const lin = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const lum = (c) => 0.2126 * lin(c.r) + 0.7152 * lin(c.g) + 0.0722 * lin(c.b);
  const over = (top, under) => ({ r: top.r * top.a + under.r * (1 - top.a),
    g: top.g * top.a + under.g * (1 - top.a), b: top.b * top.a + under.b * (1 - top.a), a: 1 });
  const backOf = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) { layers.push(c); if (c.a >= 1) break; }
    }
    let bg = parse(getComputedStyle(document.documentElement).backgroundColor);
    if (!bg || bg.a < 1) bg = matchMedia("(prefers-color-scheme: dark)").matches
      ? { r: 0, g: 0, b: 0, a: 1 } : { r: 255, g: 255, b: 255, a: 1 };
    for (const l of layers.reverse()) bg = over(l, bg);
    return bg;
  };
  const short = [];
  for (const el of document.querySelectorAll("body *")) {
    if (!el.checkVisibility()) continue;
    if (![...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
    const s = getComputedStyle(el);
    const size = parseFloat(s.fontSize);
    if (size === 0) continue;  // words kept for screen readers only
    if (s.clip === "rect(0px, 0px, 0px, 0px)") continue;
    let opacity = 1;
    for (let e = el; e; e = e.parentElement) opacity *= parseFloat(getComputedStyle(e).opacity);
    const bg = backOf(el);
    const fg = parse(s.color);
    const text = over({ ...fg, a: fg.a * opacity }, bg);
    const [hi, lo] = [lum(text), lum(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const large = size >= 24 || (parseInt(s.fontWeight, 10) >= 700 && size >= 18.66);
    if (ratio < (large ? 3 : 4.5)) {
      const what = `${el.tagName.toLowerCase()}.${el.className}`;
      short.push(`${what} "${el.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
    }
  }
  return short;
}"""


def screenshot(page: Page, name: str) -> None:
    """Write docs/screenshots/``name`` when QQCHAT_SCREENSHOTS=1 or it is missing, so an
    ordinary test run leaves the committed pictures (and the git tree) alone."""
    path = SCREENSHOTS / name
    if os.environ.get("QQCHAT_SCREENSHOTS") == "1" or not path.exists():
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.mouse.move(0, 0)  # no hover highlight where the last click was
        page.screenshot(path=str(path), animations="disabled", caret="hide")


def contrast_problems(page: Page) -> list[str]:
    return page.evaluate(CONTRAST_JS)


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


def watch_console(page: Page, errors: list[str]) -> None:
    """Collect uncaught exceptions and console errors (CSP violations are reported there)
    into ``errors``."""
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)


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
        self.allowed: list[re.Pattern[str]] = []
        watch_console(self.page, self.errors)
        self.page.goto(url + "/")

    def allow(self, pattern: re.Pattern[str]) -> None:
        """A console error this test expects (e.g. a refused WebSocket while the daemon
        is down)."""
        self.allowed.append(pattern)

    def problems(self) -> list[str]:
        """Script errors, CSP violations and other console errors, less the expected."""
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]

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
        self.panel().get_by_role("textbox", name="Search").fill(name)
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
