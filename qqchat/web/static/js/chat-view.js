// The conversation pane (header, message log, composer) and the group pane.

import { h, Keyed, reconcile, setText, show } from "./dom.js";
import { formatDay, formatTime, memberCount, t } from "./i18n.js";

/** Within this many pixels of the end counts as "at the bottom". */
const BOTTOM_SLACK = 40;
/** Scrolling this close to the top loads older messages. */
const TOP_LOAD = 80;

const dayOf = (ts) => new Date(ts).toDateString();

/** "Not sent", with the wait when the server said the user sends too fast. */
function failedText(m) {
  if (m.error === "rate_limited" && m.retryAfter !== undefined) {
    return t("failed_rate_limited", { s: Math.max(1, Math.ceil(Number(m.retryAfter))) });
  }
  return t("failed");
}

export class ChatView {
  /**
   * @param {import("./store.js").ChatStore} store
   * @param {import("./session.js").Session} session
   * @param {{back: () => void, toast: (s: string) => void, errorText: (e: any) => string,
   *   changed: () => void}} app
   */
  constructor(store, session, app) {
    this.store = store;
    this.session = session;
    this.app = app;
    this.shownKey = null;
    this.stickToBottom = true;
    this.paneOpen = matchMedia("(min-width: 1000px)").matches;

    this.backButton = h("button", { type: "button", class: "back", on: { click: () => app.back() } });
    this.title = h("h2", { class: "chat-title", id: "chat-title" });
    this.subtitle = h("span", { class: "chat-sub" });
    this.membersButton = h("button", {
      type: "button", class: "small members-toggle", attrs: { "aria-controls": "group-pane" },
      on: { click: () => { this.paneOpen = !this.paneOpen; app.changed(); } },
    });
    this.header = h("header", { class: "chat-head" }, this.backButton,
      h("div", { class: "chat-titles" }, this.title, this.subtitle), this.membersButton);

    this.log = h("div", {
      class: "log", tabIndex: 0,
      attrs: { role: "log", "aria-live": "polite" },
      on: { scroll: () => this.onScroll() },
    });
    this.logTop = h("div", { class: "log-top" });
    this.items = new Keyed((key, m) => this.messageItem(m));
    this.days = new Keyed((key, ts) => h("div", { class: "day" }, h("span", { text: formatDay(ts) })));

    this.input = h("textarea", {
      id: "composer", rows: 1, maxLength: 4000,
      on: { keydown: (ev) => this.onKey(ev), input: () => this.grow() },
    });
    this.sendButton = h("button", { type: "submit", class: "primary send" });
    this.composer = h("form", {
      class: "composer", on: { submit: (ev) => { ev.preventDefault(); this.sendNow(); } },
    }, this.input, this.sendButton);

    this.empty = h("p", { class: "pick" });
    this.pane = h("section", { class: "chat", attrs: { "aria-labelledby": "chat-title" } },
      this.header, this.log, this.composer);

    // the group pane
    this.paneTitle = h("h2", { class: "pane-title", id: "group-pane-title" });
    this.paneDesc = h("p", { class: "pane-desc" });
    this.paneCount = h("p", { class: "pane-count" });
    this.memberList = h("ul", { class: "members" });
    this.membersNote = h("p", { class: "pane-note" });
    this.leaveButton = h("button", { type: "button", class: "danger", on: { click: () => this.leave() } });
    this.groupPane = h("aside", {
      id: "group-pane", class: "group-pane", attrs: { "aria-labelledby": "group-pane-title" },
    }, this.paneTitle, this.paneDesc, this.paneCount, this.memberList, this.membersNote,
    this.leaveButton);

    this.el = h("div", { class: "chat-area" }, this.empty, this.pane, this.groupPane);
  }

  // -- input ----------------------------------------------------------------------------

  onKey(ev) {
    // Enter sends; Shift+Enter is a newline; Enter that ends an IME composition is not a send
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
      ev.preventDefault();
      this.sendNow();
    }
  }

  grow() {
    this.input.classList.toggle("tall", this.input.value.includes("\n") || this.input.value.length > 60);
  }

  sendNow() {
    const key = this.store.open;
    const text = this.input.value;
    if (!key || !text.trim()) return;
    this.input.value = "";
    this.grow();
    this.stickToBottom = true;
    this.session.send(key, text);
    this.input.focus();
  }

  onScroll() {
    const log = this.log;
    this.stickToBottom = log.scrollHeight - log.scrollTop - log.clientHeight < BOTTOM_SLACK;
    if (log.scrollTop < TOP_LOAD && this.store.open) this.session.loadHistory(this.store.open, true);
  }

  async leave() {
    const conv = this.store.convs.get(this.store.open);
    if (!conv || conv.kind !== "group") return;
    try {
      await this.session.request("group_leave", { group: conv.id });
      this.store.groupRemoved(conv.id);
      this.app.back();
    } catch (err) {
      this.app.toast(this.app.errorText(err));
    }
  }

  // -- messages -------------------------------------------------------------------------

  messageItem(m) {
    const it = {
      text: h("div", { class: "bubble" }),
      sender: h("div", { class: "sender" }),
      time: h("time"),
      state: h("span", { class: "state" }),
      retry: h("button", { type: "button", class: "link retry" }),
    };
    it.retry.addEventListener("click", () => this.session.retry(it.cid));
    it.el = h("div", { class: "msg" }, it.sender, it.text,
      h("div", { class: "meta" }, it.time, it.state, it.retry));
    return it;
  }

  updateItem(it, m, conv) {
    const me = this.store.me;
    if (m.system || m.broadcast) {
      it.el.className = "msg system";
      let text = m.text;
      if (m.event === "joined") text = t("joinedGroup", { name: m.name });
      if (m.event === "left") text = t("leftGroup", { name: m.name });
      if (m.broadcast) text = `${t("broadcast")} · ${m.name}: ${m.text}`;
      setText(it.text, text);
      setText(it.sender, "");
      show(it.sender, false);
      setText(it.time, formatTime(m.ts));
      show(it.state, false);
      show(it.retry, false);
      return;
    }
    const mine = !!me && m.from === me.id && !m.broadcast;
    it.el.className = `msg ${mine ? "mine" : "theirs"} ${m.state ?? ""}`;
    setText(it.text, m.text); // text, never HTML
    const showSender = conv.kind === "group" && !mine;
    setText(it.sender, showSender ? m.name : "");
    show(it.sender, showSender);
    setText(it.time, formatTime(m.ts));
    it.time.dateTime = new Date(m.ts).toISOString();
    it.cid = m.cid;
    const state = mine ? (m.state === "pending" ? t("pending")
      : m.state === "failed" ? failedText(m) : "") : "";
    setText(it.state, state);
    show(it.state, !!state);
    setText(it.retry, t("retry"));
    show(it.retry, mine && m.state === "failed");
  }

  // -- render -----------------------------------------------------------------------------

  render() {
    const store = this.store;
    const key = store.open;
    const conv = key ? store.convs.get(key) : null;
    setText(this.empty, t("pickChat"));
    show(this.empty, !conv);
    show(this.pane, !!conv);
    setText(this.sendButton, t("send"));
    this.input.setAttribute("aria-label", t("message"));
    this.log.setAttribute("aria-label", t("messages"));
    setText(this.backButton, "‹");
    this.backButton.setAttribute("aria-label", t("back"));
    if (!conv) {
      show(this.groupPane, false);
      this.shownKey = null;
      return;
    }
    const isGroup = conv.kind === "group";
    const group = isGroup ? store.groups.get(conv.id) : null;
    const name = conv.kind === "system" ? t("system") : conv.name;
    setText(this.title, name);
    let sub = "";
    if (group) {
      const online = group.members.filter((m) => m.online).length;
      sub = `${memberCount(group.memberCount)} · ${online} ${t("online")}`;
    } else if (conv.kind === "direct") {
      const f = store.friends.get(conv.id);
      sub = f ? (f.online ? t("online") : t("offline")) : "";
    }
    setText(this.subtitle, sub);
    show(this.membersButton, !!group);
    setText(this.membersButton, t("members"));
    this.membersButton.setAttribute("aria-expanded", String(this.paneOpen));
    show(this.composer, conv.kind !== "system");

    this.renderLog(conv);
    this.renderGroupPane(group);
  }

  renderLog(conv) {
    const log = this.log;
    const switched = this.shownKey !== conv.key;
    if (switched) {
      this.items.clear();
      this.days.clear();
      this.stickToBottom = true;
    }
    // keep the first visible message where it is when older ones come in above it
    let anchor = null;
    let anchorTop = 0;
    if (!switched && !this.stickToBottom) {
      for (const child of log.children) {
        if (child.offsetTop + child.offsetHeight > log.scrollTop) {
          anchor = child;
          anchorTop = child.offsetTop - log.scrollTop;
          break;
        }
      }
    }
    const nodes = [this.logTop];
    const more = conv.more !== false && conv.kind !== "system";
    setText(this.logTop, conv.loading ? t("loadingOlder") : more ? "" : t("beginning"));
    let day = null;
    for (const m of conv.msgs) {
      const d = dayOf(m.ts);
      if (d !== day) {
        day = d;
        nodes.push(this.days.get(d, m.ts));
      }
      const k = m.id !== undefined && !m.cid ? `i${m.id}` : m.cid ? `c${m.cid}` : `s${m.seq}`;
      const it = this.items.get(k, m);
      this.updateItem(it, m, conv);
      nodes.push(it.el);
    }
    this.items.sweep();
    this.days.sweep();
    reconcile(log, nodes);
    this.shownKey = conv.key;

    if (this.stickToBottom) {
      log.scrollTop = log.scrollHeight;
    } else if (anchor && anchor.isConnected) {
      log.scrollTop = anchor.offsetTop - anchorTop;
    }
    // not enough to scroll yet: fetch older pages until there is (or there are no more)
    if (!conv.loading && more && conv.loaded && log.scrollHeight <= log.clientHeight + TOP_LOAD) {
      this.session.loadHistory(conv.key, true);
    }
  }

  renderGroupPane(group) {
    show(this.groupPane, !!group && this.paneOpen);
    if (!group) return;
    setText(this.paneTitle, t("members"));
    setText(this.paneDesc, group.desc || "");
    show(this.paneDesc, !!group.desc);
    // the count is the server's: the list may still be only the first members
    setText(this.paneCount, memberCount(group.memberCount));
    const loading = group.moreMembers && group.membersLoading;
    setText(this.membersNote, loading ? t("loadingMembers") : "");
    show(this.membersNote, loading);
    const me = this.store.me?.id;
    const sorted = [...group.members].sort((a, b) =>
      (b.role === "creator") - (a.role === "creator") || Number(b.online) - Number(a.online)
      || a.name.localeCompare(b.name));
    reconcile(this.memberList, sorted.map((m) => h("li", { class: `member ${m.online ? "on" : "off"}` },
      h("span", { class: `dot ${m.online ? "online" : ""}`, attrs: { "aria-hidden": "true" } }),
      h("span", { class: "member-name", text: m.id === me ? `${m.name} (${t("you")})` : m.name }),
      h("span", { class: "role", text: m.role === "creator" ? t("creator") : t("member") }),
      h("span", { class: "visually-hidden", text: m.online ? t("online") : t("offline") }))));
    setText(this.leaveButton, t("leaveGroup"));
  }
}
