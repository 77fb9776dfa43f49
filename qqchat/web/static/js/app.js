// The page: builds the store, the session and the views, and re-renders (batched) on
// every change. After each render it tells the session, which may then acknowledge
// the messages now on screen.

import { ChatView } from "./chat-view.js";
import { h, setText, show } from "./dom.js";
import { lang, setLang, t } from "./i18n.js";
import { loginError, LoginView } from "./login-view.js";
import { PasswordDialog } from "./password-view.js";
import { Session } from "./session.js";
import { SidebarView } from "./sidebar-view.js";
import { ChatStore, SYSTEM_KEY } from "./store.js";

const TOAST_MS = 5000;
const NARROW = matchMedia("(max-width: 700px)");

class App {
  constructor(root) {
    this.store = new ChatStore();
    this.session = new Session(this.store);
    this.root = root;
    this.timer = null;
    this.showChat = false; // on a narrow screen: the conversation instead of the sidebar

    this.login = new LoginView(this.session, () => this.toggleLang());
    this.sidebar = new SidebarView(this.store, this.session, this);
    this.chat = new ChatView(this.store, this.session, this);

    this.brand = h("span", { class: "brand" });
    this.status = h("span", { class: "status", attrs: { role: "status" } });
    this.meName = h("span", { class: "me" });
    this.langButton = h("button", { type: "button", class: "link lang", on: { click: () => this.toggleLang() } });
    this.password = new PasswordDialog(this.session, this);
    this.passwordButton = h("button", {
      type: "button", class: "small", on: { click: () => this.password.open() },
    });
    this.logoutButton = h("button", { type: "button", class: "small", on: { click: () => this.logout() } });
    this.reconnectButton = h("button", {
      type: "button", class: "small primary", hidden: true,
      on: { click: () => this.session.reconnectNow() },
    });
    this.banner = h("div", { class: "banner", hidden: true, attrs: { role: "alert" } }, h("span", { class: "banner-text" }),
      this.reconnectButton);
    this.toasts = h("div", { class: "toasts", attrs: { role: "status", "aria-live": "polite" } });
    this.topbar = h("header", { class: "topbar" }, this.brand, this.status,
      h("span", { class: "spacer" }), this.meName, this.langButton, this.passwordButton,
      this.logoutButton);
    this.main = h("div", { class: "main-screen" }, this.topbar, this.banner,
      h("main", { class: "layout" }, this.sidebar.el, this.chat.el));
    // resuming with a stored token while the server is unreachable: a way out to the form
    this.splashLogout = h("button", { type: "button", class: "small", on: { click: () => this.logout() } });
    this.splash = h("div", { class: "splash" },
      h("div", { class: "splash-box" }, h("p", { class: "splash-text" }), this.splashLogout));
    root.append(this.login.el, this.main, this.splash, this.toasts, this.password.el);

    this.store.addEventListener("change", () => this.changed());
    this.session.addEventListener("status", () => this.changed());
    this.session.addEventListener("notice", (ev) => this.notice(ev.detail));
    NARROW.addEventListener("change", () => this.changed());
    document.addEventListener("keydown", (ev) => {
      // Escape closes the members pane: from inside it, or anywhere when it covers the chat
      const inPane = document.activeElement?.closest(".group-pane");
      const overlay = NARROW.matches && !this.chat.groupPane.hidden;
      if (ev.key === "Escape" && !ev.defaultPrevented && this.chat.paneOpen && (inPane || overlay)) {
        this.chat.paneOpen = false;
        this.changed();
        this.chat.membersButton.focus();
      }
    });
    // tick the "reconnecting in N s" countdown
    setInterval(() => { if (this.session.status === "reconnecting") this.changed(); }, 1000);

    setLang(lang());
    if (!this.session.start()) this.changed();
    this.render();
    if (this.session.status === "signedout") this.login.focus();
  }

  /** Something changed: render once, soon (many pushes in a row cost one render). */
  changed() {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.render();
    }, 0);
  }

  render() {
    const status = this.session.status;
    const signedIn = !!this.store.me && status !== "signedout";
    const mainWasShown = !this.main.hidden;
    show(this.login.el, status === "signedout");
    show(this.splash, status !== "signedout" && !this.store.me);
    show(this.main, signedIn);
    this.login.render();
    document.title = this.title();
    if (!signedIn) {
      setText(this.splash.querySelector(".splash-text"), this.statusText(status));
      setText(this.splashLogout, t("logout"));
      return;
    }
    // just logged in: keyboard users start at the tabs
    if (!mainWasShown) this.sidebar.tabs[this.sidebar.tab].focus();

    setText(this.brand, t("appName"));
    setText(this.status, t(`short_${status}`));
    this.status.title = t(`short_${status}`); // on a phone only the dot shows: hover or long-press
    this.status.dataset.state = status;
    setText(this.meName, this.store.me.name);
    this.meName.title = t("me", { name: this.store.me.name });
    setText(this.langButton, t("language"));
    this.langButton.lang = lang() === "zh" ? "en" : "zh";
    this.langButton.setAttribute("aria-label", `${t("languageLabel")}: ${t("language")}`);
    setText(this.logoutButton, t("logout"));
    setText(this.passwordButton, t("passwordButton"));
    this.passwordButton.setAttribute("aria-label", t("changePassword"));

    const trouble = status === "kicked" || status === "reconnecting";
    show(this.banner, trouble);
    this.banner.dataset.state = status;
    setText(this.banner.firstChild, trouble ? this.statusText(status) : "");
    show(this.reconnectButton, trouble);
    setText(this.reconnectButton, t("reconnect"));

    const narrow = NARROW.matches;
    this.main.classList.toggle("narrow", narrow);
    this.main.classList.toggle("show-chat", narrow && this.showChat && !!this.store.open);

    this.sidebar.render();
    this.chat.render();
    this.session.rendered();
  }

  statusText(status) {
    if (status === "reconnecting") {
      const s = Math.max(0, Math.ceil((this.session.retryAt - Date.now()) / 1000));
      return t("status_reconnecting", { s });
    }
    return t(`status_${status}`);
  }

  title() {
    const n = this.store.totalUnread();
    return n ? `(${n > 999 ? "999+" : n}) ${t("appName")}` : t("appName");
  }

  toggleLang() {
    setLang(lang() === "zh" ? "en" : "zh");
    this.chat.items.clear(); // day and time labels are language-dependent
    this.chat.days.clear();
    this.chat.shownKey = null;
    this.render();
  }

  // -- navigation -----------------------------------------------------------------------

  /** Open a conversation (from any list). */
  open(key) {
    this.store.setOpen(key);
    this.showChat = true;
    this.session.loadHistory(key);
    const conv = this.store.convs.get(key);
    if (conv?.kind === "group") this.session.loadMembers(conv.id);
    this.render();
    if (key !== SYSTEM_KEY) this.chat.input.focus();
    else this.chat.log.focus();
  }

  /** Back to the sidebar (narrow screens, or after leaving a group). */
  back() {
    this.showChat = false;
    const key = this.store.open;
    if (!this.store.convs.has(key ?? "")) this.store.setOpen(null);
    this.render();
    this.sidebar.tabs[this.sidebar.tab].focus();
  }

  async logout() {
    await this.session.logout();
    this.showChat = false;
    this.render();
    this.login.focus();
  }

  // -- notices --------------------------------------------------------------------------

  errorText(err) {
    const code = err?.code;
    const known = ["already_friends", "group_full", "already_member", "too_long", "forbidden",
      "too_many_groups", "too_many_groups_created", "too_many_friends"];
    if (known.includes(code)) {
      return t(`err_${code}`);
    }
    return loginError(err);
  }

  toast(text) {
    const el = h("div", { class: "toast", text });
    this.toasts.append(el);
    setTimeout(() => el.remove(), TOAST_MS);
  }

  notice(n) {
    switch (n.kind) {
      case "message":
        this.notify(n.message, n.key);
        break;
      case "friend_request":
        this.toast(t("wantsFriend", { name: n.name }));
        break;
      case "friend_added":
        this.toast(t("nowFriends", { name: n.name }));
        break;
      case "friend_declined":
        this.toast(t("declinedYou", { name: n.name }));
        break;
      case "server_shutdown":
        this.toast(t("shutdown"));
        break;
      case "expired":
        this.login.say(t("expired"));
        break;
      case "disabled":
        this.login.fail(t("err_account_disabled"));
        break;
      case "error":
        if (n.code) this.toast(this.errorText(n));
        break;
      default:
        break;
    }
  }

  /** A desktop notification for a message that came while the tab was hidden. */
  notify(msg, key) {
    if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") {
      return;
    }
    const conv = this.store.convs.get(key);
    const title = conv?.kind === "group" ? `${msg.name} · ${conv.name}`
      : msg.broadcast ? `${t("broadcast")} · ${msg.name}` : msg.name;
    try {
      const note = new Notification(title, { body: String(msg.text).slice(0, 200), tag: key });
      note.onclick = () => {
        window.focus();
        if (key !== SYSTEM_KEY || this.store.convs.has(key)) this.open(key);
        note.close();
      };
    } catch {
      // some browsers allow notifications only from a service worker
    }
  }
}

new App(document.getElementById("app"));
