"""The browser client end to end: Debian's Chromium (Playwright) against a real
``twistd -n qqchat --web-port`` child process. Elements are found by role and
accessible name, the contract the UI promises (SPEC K2).

One Chromium for the module and one daemon shared by the tests that do not restart
it; each test makes its own users, each user in a browser context of their own.
"""

from __future__ import annotations

import http.client
import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import (
    PASSWORD,
    SOCKET_FAILED,
    WAIT_MS,
    BrowserUser,
    WebDaemon,
    contrast_problems,
    launch,
    screenshot,
    watch_console,
)
from cluster_processes import LineClient
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from qqchat import admin

_names = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = launch(pw)
        yield b
        b.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDaemon]:
    d = WebDaemon(tmp_path_factory.mktemp("web"))
    d.start()
    yield d
    print(d.output())  # shown when a test fails
    d.stop()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDaemon]:
    """A daemon of its own for the tests that run into its limits: a user may send one
    message every two seconds, and its login failure counts are untouched by others."""
    d = WebDaemon(tmp_path_factory.mktemp("strict"),
                  args=["--user-rate-limit", "0.5", "--user-rate-burst", "1"])
    d.start()
    yield d
    print(d.output())
    d.stop()


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDaemon]:
    """A daemon where a user may create one group and be in two."""
    d = WebDaemon(tmp_path_factory.mktemp("capped"),
                  args=["--max-groups-created", "1", "--max-groups-joined", "2"])
    d.start()
    yield d
    print(d.output())
    d.stop()


@pytest.fixture
def users(browser: Browser, daemon: WebDaemon) -> Iterator[list[BrowserUser]]:
    """Browser users made during a test, closed after it; no script errors, CSP
    violations or other console errors allowed (but those a test expects)."""
    made: list[BrowserUser] = []
    yield made
    errors = [e for u in made for e in u.problems()]
    for u in made:
        u.close()
    assert not errors, errors


def new_user(users: list[BrowserUser], browser: Browser, daemon: WebDaemon, prefix: str,
             **context: object) -> BrowserUser:
    u = BrowserUser(browser, daemon.url, unique(prefix), **context)
    users.append(u)
    return u


def tcp_user(daemon: WebDaemon, name: str) -> LineClient:
    c = LineClient(daemon.port)
    c.ok("register", name=name, password=PASSWORD)
    c.login(name, PASSWORD)
    return c


def befriend(a: BrowserUser, b: BrowserUser) -> None:
    a.add_friend(b.name)
    b.accept(a.name)
    a.tab("Friends")
    expect(a.conversation(b.name)).to_be_visible()


# -- logging in ------------------------------------------------------------------------------


def test_register_log_in_and_errors_in_words(browser: Browser, daemon: WebDaemon,
                                             users: list[BrowserUser]) -> None:
    alice = new_user(users, browser, daemon, "alice")
    page = alice.page
    expect(page).to_have_title("qqchat")
    alice.register()
    expect(page.get_by_role("tab", name="Chats")).to_have_attribute("aria-selected", "true")
    alice.logout()

    # the same name again
    alice.fill_form()
    page.get_by_role("button", name="Register").click()
    expect(page.get_by_role("alert")).to_have_text("That name is taken.")
    # too short a password
    alice.fill_form(unique("erin"), "12345")
    page.get_by_role("button", name="Register").click()
    expect(page.get_by_role("alert")).to_have_text(re.compile("password is too weak"))
    # a wrong password
    alice.fill_form(alice.name, "not-the-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong name or password.")
    alice.login()

    # the language follows the browser (en here) and switches with one button
    page.get_by_role("button", name="Language: 中文").click()
    expect(page.get_by_role("tab", name="消息")).to_be_visible()
    expect(page.get_by_role("button", name="退出登录")).to_be_visible()
    page.get_by_role("button", name="语言: English").click()
    expect(page.get_by_role("tab", name="Chats")).to_be_visible()


def test_accessible_names_exactly_as_listed(browser: Browser, daemon: WebDaemon,
                                            users: list[BrowserUser]) -> None:
    """K2's accessible names, whole (exact=True), with an en browser language: the
    contract screen readers and automation rely on."""
    alice = new_user(users, browser, daemon, "alice")
    bob = new_user(users, browser, daemon, "bob")
    page = alice.page

    def one(role: str, name: str, where: Page | Locator | None = None) -> Locator:
        found = (where or page).get_by_role(role, name=name, exact=True)  # type: ignore[arg-type]
        expect(found).to_have_count(1)
        expect(found).to_be_visible()
        return found

    one("textbox", "Name")
    one("textbox", "Password")
    one("button", "Log in")
    one("button", "Register")
    alice.register()
    bob.register()
    one("button", "Log out")
    for tab in ("Chats", "Friends", "Groups"):
        one("tab", tab)

    alice.tab("Friends")
    one("textbox", "Search").fill(bob.name)
    one("button", "Add friend")
    alice.add_friend(bob.name)
    bob.tab("Friends")
    one("button", "Accept", bob.page)
    one("button", "Decline", bob.page)
    bob.accept(alice.name)

    alice.tab("Groups")
    one("button", "New group").click()
    group = unique("names")
    one("textbox", "Group name").fill(group)
    one("textbox", "Search")
    one("button", "Create").click()
    one("textbox", "Message")
    one("button", "Send")
    one("log", "Messages")
    one("button", "Leave group")
    bob.tab("Groups")
    one("textbox", "Search", bob.page).fill(group)
    one("button", "Join", bob.page).click()
    expect(bob.page.get_by_role("heading", name=group, exact=True)).to_be_visible()
    bob.send("hi all")
    alice.expect_message("hi all")

    # each conversation in the sidebar: a button whose name starts with the peer's or
    # the group's name, in every tab
    alice.open_friend(bob.name)
    alice.send("hello")
    for who, peer in ((alice, bob.name), (alice, group), (bob, alice.name), (bob, group)):
        for tab in ("Chats", "Friends", "Groups"):
            if (tab == "Friends") == (peer == group):
                continue
            who.tab(tab)
            entry = who.conversation(peer)
            expect(entry).to_have_count(1)
            expect(entry).to_have_accessible_name(re.compile("^" + re.escape(peer)))


def test_chinese_from_the_browser_language(browser: Browser, daemon: WebDaemon,
                                           users: list[BrowserUser]) -> None:
    """A zh-CN browser gets the Chinese UI from the first screen; one button switches to
    English, and the choice is kept across a reload."""
    li = new_user(users, browser, daemon, "li", locale="zh-CN")
    page = li.page
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    page.get_by_role("textbox", name="用户名", exact=True).fill(li.name)
    page.get_by_role("textbox", name="密码", exact=True).fill("123")
    page.get_by_role("button", name="注册", exact=True).click()
    expect(page.get_by_role("alert")).to_have_text(re.compile("^密码太弱"))
    page.get_by_role("textbox", name="密码", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="注册", exact=True).click()
    for tab in ("消息", "好友", "群组"):
        expect(page.get_by_role("tab", name=tab, exact=True)).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_role("status").filter(has_text="已连接")).to_be_visible()
    expect(page.get_by_role("button", name="退出登录", exact=True)).to_be_visible()
    page.get_by_role("button", name="语言: English").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    li.expect_online()
    page.reload()
    li.expect_online()
    page.get_by_role("button", name="Language: 中文").click()
    expect(page.get_by_role("tab", name="消息", exact=True)).to_be_visible()


def test_login_rate_limited_says_how_long_to_wait(browser: Browser, strict: WebDaemon,
                                                  users: list[BrowserUser]) -> None:
    """After 5 failed logins of an account the daemon refuses even the right password
    with rate_limited and retry_after: the form says so, with the wait."""
    name = unique("locked")
    c = LineClient(strict.port)
    try:
        c.ok("register", name=name, password=PASSWORD)
    finally:
        c.close()
    u = BrowserUser(browser, strict.url, name)
    users.append(u)
    login = u.page.get_by_role("button", name="Log in")
    alert = u.page.get_by_role("alert")
    for _ in range(5):
        u.fill_form(password="not-the-password")
        login.click()
        expect(login).to_be_enabled()
        expect(alert).to_have_text("Wrong name or password.")
    u.fill_form()
    login.click()
    expect(alert).to_have_text(re.compile(r"^Too many attempts\. Try again in \d+ s\.$"))
    wait = int(re.findall(r"\d+", alert.text_content() or "")[0])
    assert 1 <= wait <= 60, wait


def test_account_disabled_by_an_operator(browser: Browser, daemon: WebDaemon,
                                         users: list[BrowserUser]) -> None:
    """qqchat-admin disables the account: its live page gets `kicked` ("account
    disabled") and says so in words on the login screen, forgets its token and does not
    reconnect; logging in again gets account_disabled, in words; enabled again, it works."""
    db = ["--db", f"sqlite:///{daemon.workdir / 'chat.db'}"]
    u = new_user(users, browser, daemon, "dis").register(remember=True)
    sockets: list[str] = []
    u.page.on("websocket", lambda ws: sockets.append(ws.url))
    assert admin.main([*db, "disable", u.name]) == 0
    words = "This account has been disabled by an operator."
    # the daemon looks for disabled accounts every 5 s
    expect(u.page.get_by_role("alert")).to_have_text(words, timeout=WAIT_MS)
    expect(u.page.get_by_role("button", name="Log in")).to_be_visible()
    assert u.page.evaluate("localStorage.getItem('qqchat.token')") is None
    time.sleep(1.5)
    assert sockets == [], "it must not reconnect"

    u.fill_form()
    u.page.get_by_role("button", name="Log in").click()
    expect(u.page.get_by_role("button", name="Log in")).to_be_enabled()
    expect(u.page.get_by_role("alert")).to_have_text(words)
    expect(u.page.get_by_role("tab", name="Chats")).to_be_hidden()

    assert admin.main([*db, "enable", u.name]) == 0
    u.login()


def test_failed_send_retries_with_its_cid(browser: Browser, strict: WebDaemon,
                                          users: list[BrowserUser]) -> None:
    """A send the daemon refuses (here: past --user-rate-limit) shows as not sent, with
    the wait and a Retry button; Retry sends it again with the same cid, and it arrives
    once."""
    web = new_user(users, browser, strict, "web")
    frames: list[dict[str, object]] = []
    web.page.on("websocket", lambda ws: ws.on(
        "framesent", lambda payload: frames.append(json.loads(payload))))
    web.register()
    peer = tcp_user(strict, unique("peer"))
    try:
        web_id = peer.ok("user_search", query=web.name)["users"][0]["id"]
        peer.ok("chat", to=web_id, text="say something")
        web.open_chat(peer.name or "")
        web.expect_message("say something")

        web.send("first")
        web.send("second")  # one message every 2 s: refused
        web.expect_sent("first")
        failed = web.log().locator(".msg.mine").filter(has=web.bubble("second", web.page))
        expect(failed).to_have_class(re.compile(r"\bfailed\b"))
        expect(failed).to_contain_text(
            re.compile(r"Not sent: too many messages, wait \d+ s"))
        retry = failed.get_by_role("button", name="Retry")
        expect(retry).to_be_visible()
        assert peer.message(text="first")["text"] == "first"
        for scheme in ("light", "dark"):  # the failed state is readable in both themes
            web.page.emulate_media(color_scheme=scheme)
            assert contrast_problems(web.page) == [], scheme

        time.sleep(2.2)  # the wait the daemon asked for
        retry.click()
        web.expect_sent("second")
        expect(retry).to_be_hidden()
        got = peer.message(text="second")
        chats = [f for f in frames if f.get("type") == "chat" and f.get("text") == "second"]
        assert len(chats) == 2 and chats[0]["cid"] == chats[1]["cid"], chats
        assert got["text"] == "second"
        # once: no second copy reaches the peer, none is shown twice
        with pytest.raises(TimeoutError):
            peer.message(timeout=0.5, text="second")
        web.expect_message("second")
    finally:
        peer.close()


def test_notification_when_hidden(browser: Browser, daemon: WebDaemon,
                                  users: list[BrowserUser]) -> None:
    """A message that comes while the tab is hidden raises a desktop notification (the
    browser's Notification is replaced by a recorder; the page is told it is hidden)."""
    gus = new_user(users, browser, daemon, "gus")
    gus.page.add_init_script("""
        window.notes = [];
        window.Notification = class {
          static permission = "granted";
          static requestPermission() { return Promise.resolve("granted"); }
          constructor(title, opts) { window.notes.push([title, opts.body]); }
          close() {}
        };
        Object.defineProperty(document, "hidden", { get: () => !!window.hideMe });
    """)
    gus.page.reload()
    gus.register()
    peer = tcp_user(daemon, unique("pen"))
    try:
        assert peer.user_id is not None
        gus_id = peer.ok("user_search", query=gus.name)["users"][0]["id"]
        peer.ok("chat", to=gus_id, text="seen, no notification")
        gus.open_chat(peer.name or "")
        gus.expect_message("seen, no notification")
        gus.page.evaluate("window.hideMe = true")
        peer.ok("chat", to=gus_id, text="while hidden")
        gus.expect_message("while hidden")
        gus.page.wait_for_function("window.notes.length > 0")
        assert gus.page.evaluate("window.notes") == [[peer.name, "while hidden"]]
    finally:
        peer.close()


FOCUS_RING_JS = """() => {
  const e = document.activeElement;
  const s = getComputedStyle(e);
  const ring = e.matches(':focus-visible') && s.outlineStyle !== 'none'
    && parseFloat(s.outlineWidth) >= 2;
  return ring ? 'ring' : `${e.tagName} ${e.textContent.slice(0, 20)}: ${s.outlineStyle}`;
}"""


def tab_to(page: Page, target: Locator, key: str = "Tab") -> None:
    """Press Tab until ``target`` has focus, checking that every stop on the way shows a
    focus ring."""
    for _ in range(12):
        page.keyboard.press(key)
        assert page.evaluate(FOCUS_RING_JS) == "ring"
        if target.evaluate("el => el === document.activeElement"):
            return
    raise AssertionError(f"never reached {target}")


def test_keyboard_only(browser: Browser, daemon: WebDaemon, users: list[BrowserUser]) -> None:
    """Log in, move between tabs, create a group, open a conversation and send, with no
    mouse: every stop shows a focus ring, Space and Enter press buttons, Escape closes
    what was opened, Enter sends and Shift+Enter is a newline."""
    kim = new_user(users, browser, daemon, "kim")
    friend = new_user(users, browser, daemon, "lee").register()
    page = kim.page
    # the Name box has focus when the page opens
    expect(page.get_by_role("textbox", name="Name")).to_be_focused()
    page.keyboard.type(kim.name)
    tab_to(page, page.get_by_role("textbox", name="Password"))
    page.keyboard.type(PASSWORD)
    tab_to(page, page.get_by_role("button", name="Register"))
    page.keyboard.press("Enter")
    kim.expect_online()
    chats = page.get_by_role("tab", name="Chats")
    expect(chats).to_be_focused()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Friends")).to_be_focused()
    expect(page.get_by_role("tab", name="Friends")).to_have_attribute("aria-selected", "true")
    # find a friend: type in Search, Tab to Add friend, Space presses it
    tab_to(page, page.get_by_role("textbox", name="Search"))
    page.keyboard.type(friend.name)
    add = kim.panel().get_by_role("button", name="Add friend")
    expect(add).to_be_visible()
    tab_to(page, add)
    page.keyboard.press(" ")
    expect(page.get_by_text(f"Friend request sent to {friend.name}.")).to_be_visible()
    friend.accept(kim.name)

    page.get_by_role("tab", name="Friends").focus()
    page.keyboard.press("ArrowRight")
    groups = page.get_by_role("tab", name="Groups")
    expect(groups).to_be_focused()
    # Space opens the New group form, Escape puts it away, back on the button
    new_group = page.get_by_role("button", name="New group")
    tab_to(page, new_group)
    page.keyboard.press(" ")
    expect(page.get_by_role("textbox", name="Group name")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.get_by_role("textbox", name="Group name")).to_be_hidden()
    expect(new_group).to_be_focused()
    # Enter opens it again; a name and Enter create the group and open its conversation
    page.keyboard.press("Enter")
    expect(page.get_by_role("textbox", name="Group name")).to_be_focused()
    group = unique("keys")
    page.keyboard.type(group)
    page.keyboard.press("Enter")
    box = page.get_by_role("textbox", name="Message")
    expect(box).to_be_focused()
    page.keyboard.type("typed, not clicked")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(box).to_have_value("typed, not clicked\nsecond line")
    page.keyboard.press("Enter")
    kim.expect_sent("typed, not clicked\nsecond line")
    expect(box).to_have_value("")

    # from the tabs to the friend's conversation: Tab to it, Enter opens it
    page.get_by_role("tab", name="Groups").focus()
    page.keyboard.press("ArrowLeft")
    entry = kim.conversation(friend.name)
    tab_to(page, entry)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=friend.name, exact=True)).to_be_visible()
    expect(box).to_be_focused()
    page.keyboard.type("hi by keyboard")
    tab_to(page, page.get_by_role("button", name="Send"))
    page.keyboard.press(" ")
    friend.open_chat(kim.name)
    friend.expect_message("hi by keyboard")

    # a dialog: Enter opens it, focus goes in, Escape closes it and focus comes back
    change = page.get_by_role("button", name="Change password")
    tab_to(page, change, "Shift+Tab")
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Change password")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("Current password")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(change).to_be_focused()


# -- friends and chat ---------------------------------------------------------------------------


def test_search_befriend_and_chat_both_ways(browser: Browser, daemon: WebDaemon,
                                            users: list[BrowserUser]) -> None:
    alice = new_user(users, browser, daemon, "alice").register()
    bob = new_user(users, browser, daemon, "bob").register()

    # bob finds alice by a prefix of her name, in any case
    bob.tab("Friends")
    bob.panel().get_by_role("textbox", name="Search").fill(alice.name[:4].upper())
    expect(bob.panel().get_by_role("listitem").filter(has_text=alice.name)).to_be_visible()
    bob.add_friend(alice.name)
    alice.tab("Friends")
    expect(alice.panel().get_by_role("listitem").filter(has_text=bob.name)
           .get_by_role("button", name="Decline")).to_be_visible()
    alice.accept(bob.name)
    bob.tab("Friends")
    # online, with a presence dot; the entry opens the conversation
    expect(bob.conversation(alice.name)).to_contain_text("online")

    alice.open_friend(bob.name)
    alice.send("hi bob!\nsecond line")
    alice.expect_sent("hi bob!\nsecond line")
    # bob: unread in the Chats tab and in the page title, then read
    bob.tab("Chats")
    expect(bob.conversation(alice.name)).to_contain_text("1")
    expect(bob.page).to_have_title("(1) qqchat")
    bob.open_chat(alice.name)
    bob.expect_message("hi bob!\nsecond line")
    expect(bob.page).to_have_title("qqchat")
    bob.send("hey alice")
    alice.expect_message("hey alice")
    # mine on the right, theirs on the left
    expect(alice.log().locator(".msg.theirs").filter(
        has=alice.bubble("hey alice", alice.page))).to_have_count(1)

    # Shift+Enter is a newline, not a send
    box = alice.page.get_by_role("textbox", name="Message")
    box.fill("line one")
    box.press("Shift+Enter")
    box.type("line two")
    expect(box).to_have_value("line one\nline two")
    box.press("Enter")
    bob.expect_message("line one\nline two")


def test_html_is_shown_as_text(browser: Browser, daemon: WebDaemon,
                               users: list[BrowserUser]) -> None:
    alice = new_user(users, browser, daemon, "alice").register()
    bob = new_user(users, browser, daemon, "bob").register()
    befriend(alice, bob)
    evil = '<img src=x onerror="window.pwned=1"><b>bold</b><script>window.pwned=2</script>'
    alice.open_friend(bob.name)
    alice.send(evil)
    bob.open_chat(alice.name)
    bob.expect_message(evil)
    for who in (alice, bob):
        expect(who.log().locator("img, b, script")).to_have_count(0)
        assert who.page.evaluate("window.pwned") is None


def test_offline_delivery_and_token_resume(browser: Browser, daemon: WebDaemon,
                                           users: list[BrowserUser]) -> None:
    carol = new_user(users, browser, daemon, "carol").register()
    dave = new_user(users, browser, daemon, "dave").register()
    befriend(carol, dave)
    dave.logout()
    carol.tab("Friends")
    expect(carol.conversation(dave.name)).to_contain_text("offline")
    carol.open_friend(dave.name)
    carol.send("while you were out")
    carol.expect_sent("while you were out")

    dave.login(remember=True)
    dave.tab("Chats")
    expect(dave.conversation(carol.name)).to_contain_text("while you were out")
    expect(dave.conversation(carol.name)).to_contain_text("1")
    dave.open_chat(carol.name)
    dave.expect_message("while you were out")
    token = dave.page.evaluate("localStorage.getItem('qqchat.token')")
    assert token and len(token) >= 22

    # a reload resumes with the token: no form, the same conversation, nothing doubled
    dave.page.reload()
    dave.expect_online()
    expect(dave.page.get_by_role("button", name="Log in")).to_have_count(0)
    dave.open_chat(carol.name)
    dave.expect_message("while you were out")

    # a token the server no longer knows: forgotten, and the form comes back
    dave.page.evaluate("localStorage.setItem('qqchat.token', 'x' + localStorage.getItem("
                       "'qqchat.token').slice(1))")
    dave.page.reload()
    expect(dave.page.get_by_role("button", name="Log in")).to_be_visible(timeout=WAIT_MS)
    assert dave.page.evaluate("localStorage.getItem('qqchat.token')") is None

    # logging out revokes the token: a copy of it no longer works
    dave.login(remember=True)
    token = dave.page.evaluate("localStorage.getItem('qqchat.token')")
    dave.logout()
    probe = LineClient(daemon.port)
    try:
        assert probe.call("login", token=token)["code"] == "bad_token"
    finally:
        probe.close()


def test_change_password(browser: Browser, daemon: WebDaemon,
                         users: list[BrowserUser]) -> None:
    """The new password works, the old one and the old token do not; this page stays
    logged in and resumes with the token it was handed."""
    fay = new_user(users, browser, daemon, "fay").register(remember=True)
    page = fay.page
    old_token = page.evaluate("localStorage.getItem('qqchat.token')")
    page.get_by_role("button", name="Change password").click()
    dialog = page.get_by_role("dialog", name="Change password")
    dialog.get_by_label("Current password").fill("wrong-one")
    dialog.get_by_label("New password").fill("brand-new-pw")
    dialog.get_by_role("button", name="Change password").click()
    expect(dialog.get_by_role("alert")).to_have_text("The current password is wrong.")
    dialog.get_by_label("Current password").fill(PASSWORD)
    dialog.get_by_role("button", name="Change password").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_text("Password changed.")).to_be_visible()
    new_token = page.evaluate("localStorage.getItem('qqchat.token')")
    assert new_token and new_token != old_token
    probe = LineClient(daemon.port)
    try:
        assert probe.call("login", token=old_token)["code"] == "bad_token"
        assert probe.call("login", name=fay.name, password=PASSWORD)["code"] == \
            "bad_credentials"
    finally:
        probe.close()
    page.reload()
    fay.expect_online()
    fay.logout()
    fay.fill_form(password="brand-new-pw")
    page.get_by_role("button", name="Log in").click()
    fay.expect_online()


def test_tcp_client_and_browser_user_chat(browser: Browser, daemon: WebDaemon,
                                          users: list[BrowserUser]) -> None:
    web = new_user(users, browser, daemon, "web").register()
    term = tcp_user(daemon, unique("term"))
    try:
        web.add_friend(term.name or "")
        req = term.push(lambda f: f["type"] == "friend_request")
        term.ok("friend_accept", **{"from": req["from"]})
        web.open_friend(term.name or "")
        web.send("hello terminal")
        got = term.message(text="hello terminal")
        term.ok("ack", id=got["id"])
        term.ok("chat", to=got["from"], text="hello browser", cid="t1")
        web.expect_message("hello browser")
        # a broadcast is a system message, not a conversation with its sender
        term.ok("broadcast", text="maintenance at 22:00")
        web.open_chat("System messages")
        web.expect_message(f"Broadcast · {term.name}: maintenance at 22:00")
        expect(web.page.get_by_role("textbox", name="Message")).to_be_hidden()
        # someone who is not a friend writes: their name heads the conversation
        stranger = tcp_user(daemon, unique("stranger"))
        stranger.ok("chat", to=got["from"], text="hi, we have not met")
        web.open_chat(stranger.name or "")
        web.expect_message("hi, we have not met")
        stranger.close()
        # the terminal user's presence reaches the browser
        term.close()
        web.tab("Friends")
        expect(web.conversation(term.name or "")).to_contain_text("offline")
    finally:
        term.close()


def test_group_create_join_chat_and_leave(browser: Browser, daemon: WebDaemon,
                                          users: list[BrowserUser]) -> None:
    alice = new_user(users, browser, daemon, "alice").register()
    bob = new_user(users, browser, daemon, "bob").register()
    group = unique("hikers")

    alice.tab("Groups")
    alice.page.get_by_role("button", name="New group").click()
    alice.page.get_by_role("textbox", name="Group name").fill(group)
    alice.page.get_by_role("button", name="Create").click()
    expect(alice.page.get_by_role("heading", name=group, exact=True)).to_be_visible()

    bob.tab("Groups")
    bob.panel().get_by_role("textbox", name="Search").fill(group[:5])
    row = bob.panel().get_by_role("listitem").filter(has_text=group)
    expect(row).to_contain_text("1 member")
    # and by its id
    info = row.text_content() or ""
    gid = re.search(r"g(\d+) ·", info)
    assert gid, info
    bob.panel().get_by_role("textbox", name="Search").fill(f"g{gid.group(1)}")
    row = bob.panel().get_by_role("listitem").filter(has_text=f"g{gid.group(1)} ·")
    expect(row).to_contain_text(group)
    row.get_by_role("button", name="Join").click()
    expect(bob.page.get_by_role("heading", name=group, exact=True)).to_be_visible()
    alice.expect_message(f"{bob.name} joined the group")

    # the group pane: members, roles, online
    pane = alice.page.get_by_role("complementary", name="Members")
    expect(pane.get_by_role("listitem").filter(has_text=alice.name)).to_contain_text("creator")
    expect(pane.get_by_role("listitem").filter(has_text=bob.name)).to_contain_text("member")
    expect(pane.get_by_role("listitem").filter(has_text=bob.name)).to_contain_text("online")

    bob.send("who is in on Saturday?")
    alice.expect_message("who is in on Saturday?")
    # the sender's name is shown in groups
    expect(alice.log().locator(".msg").filter(
        has=alice.bubble("who is in on Saturday?", alice.page)).locator(".sender")
    ).to_have_text(bob.name)
    alice.send("me!")
    bob.expect_message("me!")

    bob.page.get_by_role("button", name="Leave group").click()
    bob.tab("Groups")
    expect(bob.conversation(group)).to_have_count(0)
    alice.expect_message(f"{bob.name} left the group")


def test_group_of_25_lists_every_member(browser: Browser, daemon: WebDaemon,
                                       users: list[BrowserUser]) -> None:
    """The login reply lists a group's first 20 members: the count comes from
    ``member_count`` and opening the group fetches all of them (``group_info``). A member
    beyond the first 20 who is a friend shows their presence; joins and leaves count."""
    group = unique("crowd")
    owner = tcp_user(daemon, unique("owner"))
    web_name = unique("web")
    friend = None
    try:
        gid = owner.ok("group_create", name=group)["group"]["id"]
        names = [owner.name]
        for _ in range(22):
            member = tcp_user(daemon, unique("member"))
            member.ok("group_join", group=gid)
            names.append(member.name)
            member.close()
        # the browser user joins 24th, and the 25th is their friend, online
        me = tcp_user(daemon, web_name)
        me.ok("group_join", group=gid)
        friend = tcp_user(daemon, unique("pal"))
        friend.ok("group_join", group=gid)
        friend.ok("friend_add", to=me.user_id)
        me.ok("friend_accept", **{"from": friend.user_id})
        me.close()
        names += [web_name, friend.name]
        assert len(names) == 25

        web = BrowserUser(browser, daemon.url, web_name)
        users.append(web)
        web.login()
        web.tab("Groups")
        expect(web.conversation(group)).to_contain_text("25 members")
        web.conversation(group).click()
        expect(web.page.get_by_role("heading", name=group, exact=True)).to_be_visible()
        expect(web.page.locator(".chat-sub")).to_contain_text("25 members")
        pane = web.page.get_by_role("complementary", name="Members")
        expect(pane.get_by_text("25 members", exact=True)).to_be_visible()
        rows = pane.get_by_role("listitem")
        expect(rows).to_have_count(25, timeout=WAIT_MS)
        expect(rows.filter(has_text=owner.name or "")).to_contain_text("creator")
        expect(rows.filter(has_text=f"{web_name} (you)")).to_have_count(1)
        listed = {t.strip() for t in rows.locator(".member-name").all_inner_texts()}
        assert listed == {n for n in names if n != web_name} | {f"{web_name} (you)"}
        # the friend (25th, not in the login reply's 20) goes offline: shown in the pane
        expect(rows.filter(has_text=friend.name or "")).to_contain_text("online")
        friend.close()
        expect(rows.filter(has_text=friend.name or "")).to_contain_text("offline",
                                                                        timeout=WAIT_MS)
        # someone joins and leaves: the count follows, the list too
        late = tcp_user(daemon, unique("late"))
        late.ok("group_join", group=gid)
        expect(pane.get_by_text("26 members", exact=True)).to_be_visible(timeout=WAIT_MS)
        expect(rows).to_have_count(26)
        late.ok("group_leave", group=gid)
        late.close()
        expect(pane.get_by_text("25 members", exact=True)).to_be_visible(timeout=WAIT_MS)
        expect(rows.filter(has_text=late.name or "")).to_have_count(0)
        web.tab("Groups")
        expect(web.conversation(group)).to_contain_text("25 members")
    finally:
        owner.close()
        if friend is not None:
            friend.close()


def test_group_caps_in_words(browser: Browser, capped: WebDaemon,
                             users: list[BrowserUser]) -> None:
    """``too_many_groups_created`` and ``too_many_groups`` are said in words, in English
    and in Chinese."""
    owner = tcp_user(capped, unique("owner"))
    try:
        first = unique("first")
        other = unique("other")
        third = unique("third")
        owner.ok("group_create", name=other)
        helper = tcp_user(capped, unique("helper"))
        helper.ok("group_create", name=third)
        helper.close()
        web = new_user(users, browser, capped, "capper").register()
        page = web.page
        web.tab("Groups")
        page.get_by_role("button", name="New group").click()
        page.get_by_role("textbox", name="Group name").fill(first)
        page.get_by_role("button", name="Create").click()
        expect(page.get_by_role("heading", name=first, exact=True)).to_be_visible()
        web.tab("Groups")
        page.get_by_role("button", name="New group").click()
        page.get_by_role("textbox", name="Group name").fill(unique("second"))
        page.get_by_role("button", name="Create").click()
        alert = web.panel().get_by_role("alert")
        expect(alert).to_have_text("You have created as many groups as allowed.")
        page.get_by_role("button", name="Language: 中文").click()
        page.get_by_role("button", name="创建").click()
        expect(alert).to_have_text("你创建的群组数量已达上限。")
        page.get_by_role("button", name="语言: English").click()
        # in two groups: joining a third is refused in words
        web.panel().get_by_role("textbox", name="Search").fill(other)
        web.panel().get_by_role("listitem").filter(has_text=other).get_by_role(
            "button", name="Join").click()
        expect(page.get_by_role("heading", name=other, exact=True)).to_be_visible()
        web.tab("Groups")
        web.panel().get_by_role("textbox", name="Search").fill(third)
        web.panel().get_by_role("listitem").filter(has_text=third).get_by_role(
            "button", name="Join").click()
        expect(page.get_by_text("You are in as many groups as allowed. Leave one to join "
                                "or create another.")).to_be_visible()
        page.get_by_role("button", name="Language: 中文").click()
        web.panel().get_by_role("listitem").filter(has_text=third).get_by_role(
            "button", name="加入").click()
        expect(page.get_by_text("你加入的群组数量已达上限。")).to_be_visible()
    finally:
        owner.close()


def test_history_pages_in_on_scroll(browser: Browser, daemon: WebDaemon,
                                    users: list[BrowserUser]) -> None:
    """120 messages already acknowledged: the log shows the newest page, and scrolling
    up loads the older ones until the beginning."""
    sender = tcp_user(daemon, unique("talker"))
    name = unique("reader")
    reader = tcp_user(daemon, name)
    try:
        assert reader.user_id is not None
        last = 0
        for i in range(1, 121):
            last = sender.ok("chat", to=reader.user_id, text=f"note {i}", cid=f"n{i}")["id"]
        reader.message(id=last)
        reader.ok("ack", id=last)
        reader.close()

        web = BrowserUser(browser, daemon.url, name)
        users.append(web)
        web.login()
        web.open_chat(sender.name or "")
        web.expect_message("note 120")
        expect(web.bubble("note 1")).to_have_count(0)
        log = web.log()
        top = log.locator(".log-top")
        for _ in range(10):
            if top.text_content() == "Beginning of the conversation":
                break
            expect(top).not_to_have_text(re.compile("Loading"))
            log.evaluate("el => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); }")
        web.expect_message("note 1")
        expect(top).to_have_text("Beginning of the conversation")
        # every message once, in order
        texts = log.locator(".bubble").all_text_contents()
        assert texts == [f"note {i}" for i in range(1, 121)]

        # reading old messages: a new one does not pull the view down
        sender.ok("chat", to=reader.user_id, text="note 121")
        web.expect_message("note 121")
        assert log.evaluate("el => el.scrollTop") < 200
        # at the bottom: it stays there as messages come
        log.evaluate("el => { el.scrollTop = el.scrollHeight; "
                     "el.dispatchEvent(new Event('scroll')); }")
        sender.ok("chat", to=reader.user_id, text="note 122")
        web.expect_message("note 122")
        web.page.wait_for_function(
            "el => el.scrollHeight - el.scrollTop - el.clientHeight < 5", arg=log.element_handle())
    finally:
        sender.close()
        reader.close()


def test_kicked_by_a_second_login(browser: Browser, daemon: WebDaemon,
                                  users: list[BrowserUser]) -> None:
    erin = new_user(users, browser, daemon, "erin").register()
    other = LineClient(daemon.port)
    try:
        other.login(erin.name, PASSWORD)
        banner = erin.page.get_by_role("alert").filter(
            has_text="your account logged in somewhere else")
        expect(banner).to_be_visible(timeout=WAIT_MS)
        # it stays down: the other session is not kicked back
        assert other.read_frame(timeout=2.0) is None
        assert other.ok("ping")["type"] == "pong"
        # until the person asks
        erin.page.get_by_role("button", name="Reconnect").click()
        erin.expect_online()
        kicked = other.push(lambda f: f["type"] == "kicked")
        assert kicked["type"] == "kicked"
    finally:
        other.close()


def test_reconnect_after_daemon_restart(browser: Browser, tmp_path: Path,
                                        users: list[BrowserUser]) -> None:
    """The daemon stops and comes back: the page reconnects by itself with its token;
    what was sent meanwhile, both ways, arrives once."""
    d = WebDaemon(tmp_path)
    d.start()
    try:
        alice = BrowserUser(browser, d.url, unique("alice"))
        users.append(alice)
        alice.register()
        alice.allow(SOCKET_FAILED)  # the browser says so while the daemon is down
        peer_name = unique("peer")
        peer = tcp_user(d, peer_name)
        alice.add_friend(peer.name or "")
        peer.ok("friend_accept", **{"from": peer.push(
            lambda f: f["type"] == "friend_request")["from"]})
        alice.open_friend(peer.name or "")
        alice.send("before")
        first = peer.message(text="before")
        peer.ok("ack", id=first["id"])
        peer.ok("chat", to=first["from"], text="reply before", cid="r0")
        alice.expect_message("reply before")

        d.stop()
        peer.close()
        expect(alice.page.get_by_role("alert").filter(has_text="Reconnecting in")).to_be_visible(
            timeout=WAIT_MS)
        alice.send("typed while down")
        expect(alice.log().locator(".msg.pending")).to_have_count(1)

        d.start()
        alice.expect_online()
        alice.expect_sent("typed while down")
        # what came before the stop is there once (the backlog repeats what was not acked)
        alice.expect_message("reply before")
        alice.expect_message("before")
        peer = LineClient(d.port)
        _, backlog = peer.login(peer_name, PASSWORD)
        assert [m["text"] for m in backlog if m["text"] == "typed while down"] == \
            ["typed while down"]
        peer.ok("ack", id=max(m["id"] for m in backlog))
        peer.ok("chat", to=first["from"], text="after the restart", cid="r1")
        alice.expect_message("after the restart")
        alice.page.reload()
        alice.expect_online()
        alice.open_chat(peer_name)
        for text in ("before", "reply before", "typed while down", "after the restart"):
            alice.expect_message(text)
        peer.close()
    finally:
        d.stop()


# -- the HTTP edge ------------------------------------------------------------------------------


def test_headers_and_origin_check(daemon: WebDaemon) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.web_port, timeout=10)
    for path in ("/", "/js/app.js", "/style.css", "/no-such-file"):
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        csp = resp.getheader("Content-Security-Policy") or ""
        assert "default-src 'self'" in csp, (path, csp)
        assert "frame-ancestors 'none'" in csp, (path, csp)
        assert resp.getheader("X-Content-Type-Options") == "nosniff"
        assert resp.getheader("Referrer-Policy") == "no-referrer"
    conn.close()

    def upgrade(origin: str) -> int:
        c = http.client.HTTPConnection("127.0.0.1", daemon.web_port, timeout=10)
        c.request("GET", "/ws", headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Origin": origin,
            "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        })
        status = c.getresponse().status
        c.close()
        return status

    assert upgrade("http://evil.example") == 403
    assert upgrade(daemon.url) == 101


# -- the client's logic on its own, in the browser ----------------------------------------------

UNIT_JS = Path(__file__).with_name("browser_unit.js")


def run_unit(page: Page, base: str, test: str) -> object:
    """Run ``test`` of tests/browser_unit.js in a blank page of the app's origin, so
    the app's modules load as the app loads them; no console error allowed."""
    errors: list[str] = []
    watch_console(page, errors)
    page.route(base + "/__unit__/page.html", lambda route: route.fulfill(
        status=200, content_type="text/html", body="<!doctype html><title>unit</title>"))
    page.route(base + "/__unit__/unit.js", lambda route: route.fulfill(
        status=200, content_type="text/javascript", body=UNIT_JS.read_text()))
    page.goto(base + "/__unit__/page.html")
    result = page.evaluate(
        """async (name) => {
             const m = {};
             for (const mod of ['store', 'session', 'connection', 'login-view']) {
               Object.assign(m, await import(`/js/${mod}.js`));
             }
             const unit = await import('/__unit__/unit.js');
             return await unit[name](m);
           }""", test)
    assert not errors, errors
    return result


def test_unit_store(browser: Browser, daemon: WebDaemon) -> None:
    page = browser.new_page()
    try:
        result = run_unit(page, daemon.url, "testStore")
    finally:
        page.close()
    assert result == {
        "first": True, "again": False, "count": 1, "unread": 1,
        "groupKey": "g5", "selfKey": "u1", "sentKey": "u2", "bcastKey": "system",
        "afterConvs": 3, "afterPush": 4, "total": 4, "opened": 0, "whileOpen": 0,
        "pending": "pending", "newest": "u2", "failed": "failed", "sameCid": True,
        "sent": "sent:30", "outbox": 0, "selfCopies": 1, "order": "5,10,20,21,30",
        "oldest": 5, "more": False, "members": 2, "notice": "joined", "preview": 101,
        "cid": True,
    }


def test_unit_session(browser: Browser, daemon: WebDaemon) -> None:
    """The session with a fake WebSocket: acks only after a render, resends with the same
    cid after a drop, forgets a bad token, stays down when kicked."""
    page = browser.new_page()
    try:
        result = run_unit(page, daemon.url, "testSession")
    finally:
        page.close()
    assert result == {
        "remember": True, "token": True, "convsFirst": "conversations", "ackBeforeRender": 0,
        "ack": "7", "status": "reconnecting", "stillPending": "pending", "resume": True,
        "resent": True, "noDouble": 1, "sent": "sent:8", "kicked": "kicked",
        "noRelogin": True, "afterBadToken": "signedout:null",
        "backoff": "500,1000,2000,4000,8000",
        "rateWords": "Too many attempts. Try again in 3 s.",
        "takenWords": "That name is taken.",
    }


def test_unit_account_disabled(browser: Browser, daemon: WebDaemon) -> None:
    """The `kicked` push with "account disabled", and `account_disabled` when resuming:
    signed out with the token forgotten, a notice for the words, and no reconnect."""
    page = browser.new_page()
    try:
        result = run_unit(page, daemon.url, "testDisabled")
    finally:
        page.close()
    assert result == {
        "kicked": "signedout:null:disabled", "noReconnect": True,
        "resume": "signedout:null:disabled", "noRetry": True,
        "words": "This account has been disabled by an operator.",
        "forbidden": "Only an administrator may do that.",
    }


def test_unit_paging_store(browser: Browser, daemon: WebDaemon) -> None:
    """The store's bookkeeping of bounded lists: cursors of the friends and groups pages,
    counts from ``member_count``, member pages merged by offset, presence of a member not
    listed ignored, joins and leaves on a partial list counted but not placed."""
    page = browser.new_page()
    try:
        result = run_unit(page, daemon.url, "testPagingStore")
    finally:
        page.close()
    assert result == {
        "login": "true,3,true,5", "preview": "20/25:true", "notListed": False,
        "friendOnline": True, "friends": "3:false:30", "joinedPartial": "20/26",
        "next": 20, "last": None, "whole": "26/26:false:true", "noDoubles": True,
        "memberOnline": True, "afterPushes": "26/26", "leftPartial": 29,
        "groups": "2:true:8", "emptyPage": "false:8", "added": "300:member:true",
    }


def test_unit_paging_session(browser: Browser, daemon: WebDaemon) -> None:
    """After a login that says there are more, the session pages on with ``after`` at the
    largest page sizes until ``more`` is false; a group's members come by ``offset``."""
    page = browser.new_page()
    try:
        result = run_unit(page, daemon.url, "testPagingSession")
    finally:
        page.close()
    assert result == {
        "friends1": {"type": "friends", "limit": 1000, "after": 2}, "friends2": 9,
        "groups1": {"type": "groups", "limit": 200, "after": 5},
        "friendCount": 3, "stopped": 3,
        "info1": {"type": "group_info", "group": 5, "limit": 500, "offset": 0},
        "loadingNow": True, "again": 1, "info2": 500,
        "members": "700/700:true:false", "pages": 2, "limits": "1000,200,500",
    }


def test_screenshots_themes_and_narrow_layout(browser: Browser, daemon: WebDaemon,
                                              users: list[BrowserUser]) -> None:
    """The main screens, light and dark, English and Chinese, and the 360 px layout: text
    readable against its background in both themes (WCAG AA contrast), both panes
    reachable at 360 px. Pictures go to docs/screenshots/ only when QQCHAT_SCREENSHOTS=1
    or one is missing, so an ordinary run leaves the committed ones alone."""
    # plain names (the other tests number theirs), so the pictures stay alike run to run
    alice = BrowserUser(browser, daemon.url, "alice")
    bob = BrowserUser(browser, daemon.url, "bob")
    users.extend((alice, bob))
    alice.register()
    bob.register()
    befriend(alice, bob)
    group = "周末爬山"
    alice.tab("Groups")
    alice.page.get_by_role("button", name="New group").click()
    alice.page.get_by_role("textbox", name="Group name").fill(group)
    alice.page.get_by_role("button", name="Create").click()
    bob.tab("Groups")
    bob.panel().get_by_role("textbox", name="Search").fill(group)
    bob.panel().get_by_role("button", name="Join").click()
    bob.send("周六谁去? Who is in on Saturday?")
    alice.expect_message("周六谁去? Who is in on Saturday?")
    alice.send("我去! Count me in.")
    bob.expect_message("我去! Count me in.")
    alice.open_friend(bob.name)
    alice.send("Lunch at noon?")
    bob.open_chat(alice.name)
    bob.send("Sure, see you there")
    alice.expect_message("Sure, see you there")
    alice.open_chat(group)
    # someone else writes while alice reads the group: a badge in every picture
    carol = tcp_user(daemon, "carol")
    alice_id = next(u["id"] for u in carol.ok("user_search", query="alice")["users"]
                    if u["name"] == "alice")

    for scheme in ("light", "dark"):
        for locale, lang in (("en-US", "en"), ("zh-CN", "zh")):
            shot = BrowserUser(browser, daemon.url, bob.name, locale=locale,
                               color_scheme=scheme, viewport={"width": 1100, "height": 680})
            users.append(shot)
            login_name = "登录" if lang == "zh" else "Log in"
            expect(shot.page.get_by_role("button", name=login_name)).to_be_visible()
            shot.page.get_by_role("button", name=login_name).click()  # an error in words
            expect(shot.page.get_by_role("alert")).not_to_be_empty()
            assert contrast_problems(shot.page) == [], (scheme, lang)
            shot.page.reload()  # the picture: the form as it opens
            expect(shot.page.get_by_role("button", name=login_name)).to_be_visible()
            screenshot(shot.page, f"login-{scheme}-{lang}.png")
            shot.close()
            users.remove(shot)

    for scheme in ("light", "dark"):
        for lang in ("en", "zh"):
            alice.page.emulate_media(color_scheme=scheme)
            alice.page.evaluate(f"localStorage.setItem('qqchat.lang', '{lang}')")
            alice.page.reload()
            expect(alice.page.get_by_role("status").filter(
                has_text=re.compile("Connected|已连接"))).to_be_visible(timeout=WAIT_MS)
            alice.page.locator(".conv").filter(has_text=group).first.click()
            # the log's name is in the page's language here: find it by role alone
            expect(alice.page.get_by_role("log").locator(".bubble").filter(
                has_text="Count me in")).to_be_visible()
            # one unread message, so a badge is in the picture and in the contrast check
            # (what was on screen before the reload was acknowledged: no badge then)
            carol.ok("chat", to=alice_id, text="Are you coming on Saturday?")
            expect(alice.page.locator(".conv .badge").filter(
                has_text=re.compile(r"^\d+$"))).to_be_visible()
            assert contrast_problems(alice.page) == [], (scheme, lang)
            screenshot(alice.page, f"chat-{scheme}-{lang}.png")
    carol.close()
    alice.page.evaluate("localStorage.setItem('qqchat.lang', 'en')")
    alice.page.emulate_media(color_scheme="light")
    alice.page.reload()
    alice.expect_online()

    # 360 px: one pane at a time, with a way back; nothing wider than the screen
    narrow = BrowserUser(browser, daemon.url, bob.name, viewport={"width": 360, "height": 720})
    users.append(narrow)
    alice.logout()  # bob's other session would be kicked; this one is alice's seat
    narrow.name = alice.name
    narrow.login()
    narrow.tab("Chats")
    screenshot(narrow.page, "mobile-list-light-en.png")
    narrow.open_chat(bob.name)
    expect(narrow.page.get_by_role("tab", name="Chats")).to_be_hidden()
    narrow.send("from a phone")
    narrow.expect_sent("from a phone")
    screenshot(narrow.page, "mobile-chat-light-en.png")
    width = narrow.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 360
    for name in ("Log out", "Send", "Back"):
        box = narrow.page.get_by_role("button", name=name, exact=True).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360, (name, box)
    narrow.page.get_by_role("button", name="Back").click()
    expect(narrow.page.get_by_role("tab", name="Chats")).to_be_visible()
    expect(narrow.page.get_by_role("tab", name="Chats")).to_be_focused()
    # the group pane covers the chat at this width; Escape closes it
    narrow.open_chat(group)
    narrow.page.get_by_role("button", name="Members").click()
    pane = narrow.page.get_by_role("complementary", name="Members")
    expect(pane).to_be_visible()
    expect(pane.get_by_role("button", name="Leave group")).to_be_visible()
    narrow.page.keyboard.press("Escape")
    expect(pane).to_be_hidden()
    expect(narrow.page.get_by_role("button", name="Members")).to_be_focused()
