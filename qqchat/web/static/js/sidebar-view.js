// The sidebar: tabs Chats, Friends, Groups.

import { h, Keyed, reconcile, setText, show } from "./dom.js";
import { formatShort, memberCount, t } from "./i18n.js";
import { ChatStore, directKey, groupKey, SYSTEM_KEY } from "./store.js";

const SEARCH_DELAY = 250;
const TABS = ["chats", "friends", "groups"];

/** A first letter for the round avatar. */
function initial(name) {
  return (Array.from(String(name).trim())[0] || "?").toUpperCase();
}

function avatar(name, kind) {
  return h("span", { class: `avatar ${kind}`, text: initial(name), attrs: { "aria-hidden": "true" } });
}

/** A debounced search box that runs `run(query)` and hands the result to `show`. */
class SearchBox {
  constructor(id, run, onResult) {
    this.run = run;
    this.onResult = onResult;
    this.timer = null;
    this.seq = 0;
    this.input = h("input", {
      // a plain text box (role textbox, named "Search"); the row around it is the search landmark
      id, type: "text", autocomplete: "off", class: "search",
      attrs: { spellcheck: "false", enterkeyhint: "search" },
      on: {
        input: () => this.schedule(),
        keydown: (ev) => {
          if (ev.key === "Enter") { ev.preventDefault(); this.go(); }
          if (ev.key === "Escape") { this.input.value = ""; this.go(); }
        },
      },
    });
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.go(), SEARCH_DELAY);
  }

  async go() {
    clearTimeout(this.timer);
    const query = this.input.value.trim();
    const seq = ++this.seq;
    if (!query) {
      this.onResult(null);
      return;
    }
    try {
      const result = await this.run(query);
      if (seq === this.seq) this.onResult(result);
    } catch (err) {
      if (seq === this.seq) this.onResult({ error: err });
    }
  }
}

export class SidebarView {
  /**
   * @param {import("./store.js").ChatStore} store
   * @param {import("./session.js").Session} session
   * @param {{open: (key: string) => void, toast: (text: string) => void}} app
   */
  constructor(store, session, app) {
    this.store = store;
    this.session = session;
    this.app = app;
    this.tab = "chats";

    this.tabs = {};
    this.panels = {};
    for (const name of TABS) {
      this.tabs[name] = h("button", {
        id: `tab-${name}`, type: "button", class: "tab",
        attrs: { role: "tab", "aria-controls": `panel-${name}` },
        on: { click: () => this.select(name), keydown: (ev) => this.tabKey(ev, name) },
      });
      this.panels[name] = h("div", {
        id: `panel-${name}`, class: "panel",
        attrs: { role: "tabpanel", "aria-labelledby": `tab-${name}` },
      });
    }
    this.tabBadge = h("span", { class: "badge tab-badge", attrs: { "aria-hidden": "true" } });
    this.tabs.chats.append(h("span", { class: "tab-label" }), this.tabBadge);
    this.tabs.friends.append(h("span", { class: "tab-label" }));
    this.tabs.groups.append(h("span", { class: "tab-label" }));
    this.tablist = h("div", { class: "tabs", attrs: { role: "tablist" } },
      TABS.map((n) => this.tabs[n]));

    // Chats
    this.chatList = h("ul", { class: "list" });
    this.chatEmpty = h("p", { class: "empty" });
    this.panels.chats.append(this.chatList, this.chatEmpty);
    this.chatItems = new Keyed((key) => this.convItem(key));

    // Friends
    this.userSearch = new SearchBox("friend-search",
      (query) => session.request("user_search", { query, limit: 20 }),
      (r) => { this.userResults = r; this.app.changed(); });
    this.userResults = null;
    this.userResultList = h("ul", { class: "list results" });
    this.userResultNote = h("p", { class: "empty" });
    this.requestsHeading = h("h3", { class: "section" });
    this.requestList = h("ul", { class: "list" });
    this.friendList = h("ul", { class: "list" });
    this.friendEmpty = h("p", { class: "empty" });
    this.userSearchLabel = h("label", { htmlFor: "friend-search", class: "visually-hidden" });
    this.panels.friends.append(
      h("div", { class: "search-row", attrs: { role: "search" } }, this.userSearchLabel,
        this.userSearch.input),
      this.userResultList, this.userResultNote, this.requestsHeading, this.requestList,
      this.friendList, this.friendEmpty);
    this.friendItems = new Keyed((key) => this.friendItem(key));
    this.userRows = new Keyed((key, u) => this.resultRow(u.name, "direct"));
    this.requestItems = new Keyed((key) => this.requestItem(key));

    // Groups
    this.groupSearch = new SearchBox("group-search",
      (query) => session.request("group_search", { query }),
      (r) => { this.groupResults = r; this.app.changed(); });
    this.groupResults = null;
    this.newGroupButton = h("button", {
      type: "button", class: "new-group", attrs: { "aria-expanded": "false" },
      on: { click: () => this.toggleNewGroup() },
    });
    this.groupNameLabel = h("label", { htmlFor: "group-name" });
    this.groupName = h("input", { id: "group-name", type: "text", maxLength: 64, autocomplete: "off" });
    this.createButton = h("button", { type: "submit", class: "primary" });
    this.groupError = h("p", { class: "form-error", attrs: { role: "alert" } });
    this.newGroupForm = h("form", {
      class: "new-group-form", hidden: true,
      on: {
        submit: (ev) => { ev.preventDefault(); this.createGroup(); },
        // Escape puts the form away, back to the button that opened it
        keydown: (ev) => {
          if (ev.key !== "Escape") return;
          ev.preventDefault();
          this.toggleNewGroup(false);
          this.newGroupButton.focus();
        },
      },
    }, this.groupNameLabel, h("div", { class: "row" }, this.groupName, this.createButton), this.groupError);
    this.groupSearchLabel = h("label", { htmlFor: "group-search", class: "visually-hidden" });
    this.groupResultList = h("ul", { class: "list results" });
    this.groupResultNote = h("p", { class: "empty" });
    this.groupList = h("ul", { class: "list" });
    this.groupEmpty = h("p", { class: "empty" });
    this.panels.groups.append(
      h("div", { class: "group-tools" }, this.newGroupButton), this.newGroupForm,
      h("div", { class: "search-row", attrs: { role: "search" } }, this.groupSearchLabel,
        this.groupSearch.input),
      this.groupResultList, this.groupResultNote, this.groupList, this.groupEmpty);
    this.groupItems = new Keyed((key) => this.groupItem(key));
    this.groupRows = new Keyed(() => this.resultRow("", "group"));

    this.el = h("nav", { class: "sidebar" }, this.tablist, TABS.map((n) => this.panels[n]));
  }

  // -- tabs -------------------------------------------------------------------------------

  select(name, focus = false) {
    this.tab = name;
    this.app.render(); // now, so the panel is there before the next key press
    if (focus) this.tabs[name].focus();
  }

  /** Arrow keys move between tabs (the WAI-ARIA tabs pattern). */
  tabKey(ev, name) {
    const i = TABS.indexOf(name);
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: TABS.length - 1 }[ev.key];
    if (to === undefined) return;
    ev.preventDefault();
    this.select(TABS[(to + TABS.length) % TABS.length], true);
  }

  // -- items ------------------------------------------------------------------------------

  convItem(key) {
    const name = h("span", { class: "conv-name" });
    const time = h("span", { class: "conv-time" });
    const preview = h("span", { class: "conv-preview" });
    const badge = h("span", { class: "badge" });
    const av = h("span", { class: "avatar", attrs: { "aria-hidden": "true" } });
    const button = h("button", {
      type: "button", class: "conv",
      on: { click: () => this.app.open(key) },
    }, av, h("span", { class: "conv-main" },
      h("span", { class: "conv-top" }, name, time), preview), badge);
    return { li: h("li", {}, button), button, name, time, preview, badge, av };
  }

  friendItem(key) {
    const name = h("span", { class: "conv-name" });
    const dot = h("span", { class: "dot", attrs: { "aria-hidden": "true" } });
    const state = h("span", { class: "conv-preview" });
    const av = h("span", { class: "avatar", attrs: { "aria-hidden": "true" } });
    const button = h("button", {
      type: "button", class: "conv",
      on: { click: () => this.app.open(key) },
    }, h("span", { class: "avatar-wrap" }, av, dot), h("span", { class: "conv-main" }, name, state));
    return { li: h("li", {}, button), button, name, dot, state, av };
  }

  requestItem(key) {
    const from = Number(key);
    const name = h("span", { class: "conv-name" });
    const accept = h("button", {
      type: "button", class: "primary small",
      on: { click: () => this.answer("friend_accept", from) },
    });
    const decline = h("button", {
      type: "button", class: "small",
      on: { click: () => this.answer("friend_decline", from) },
    });
    const li = h("li", { class: "request" }, name, h("span", { class: "row" }, accept, decline));
    return { li, name, accept, decline };
  }

  groupItem(key) {
    const name = h("span", { class: "conv-name" });
    const count = h("span", { class: "conv-preview" });
    const av = h("span", { class: "avatar group", attrs: { "aria-hidden": "true" } });
    const button = h("button", {
      type: "button", class: "conv",
      on: { click: () => this.app.open(key) },
    }, av, h("span", { class: "conv-main" }, name, count));
    return { li: h("li", {}, button), button, name, count, av };
  }

  /** A search result: name, a line of detail, one action button (kept across renders). */
  resultRow(name, kind) {
    const it = {
      name: h("span", { class: "conv-name" }),
      info: h("span", { class: "conv-preview" }),
      action: () => {},
    };
    it.button = h("button", { type: "button", on: { click: () => it.action() } });
    it.av = avatar(name, kind);
    it.li = h("li", { class: "result" }, it.av,
      h("span", { class: "conv-main" }, it.name, it.info), it.button);
    return it;
  }

  // -- actions ----------------------------------------------------------------------------

  async answer(type, from) {
    try {
      const reply = await this.session.request(type, { from });
      if (type === "friend_accept") {
        this.store.friendAdded(reply.friend);
        this.app.toast(t("nowFriends", { name: reply.friend.name }));
      } else {
        this.store.requestAnswered(from);
      }
    } catch (err) {
      if (err.code === "no_request") this.store.requestAnswered(from);
      this.app.toast(this.app.errorText(err));
    }
  }

  async addFriend(user) {
    try {
      const reply = await this.session.request("friend_add", { to: user.id });
      if (reply.status === "accepted") {
        this.store.friendAdded(reply.friend);
        this.app.toast(t("nowFriends", { name: reply.name }));
      } else {
        this.app.toast(t("requested", { name: reply.name }));
      }
    } catch (err) {
      this.app.toast(this.app.errorText(err));
    }
  }

  toggleNewGroup(open = this.newGroupForm.hidden) {
    this.newGroupForm.hidden = !open;
    this.newGroupButton.setAttribute("aria-expanded", String(open));
    if (open) this.groupName.focus();
  }

  async createGroup() {
    const name = this.groupName.value.trim();
    setText(this.groupError, "");
    if (!name) {
      this.groupName.focus();
      return;
    }
    try {
      const reply = await this.session.request("group_create", { name });
      this.store.groupAdded(reply.group);
      this.groupName.value = "";
      this.toggleNewGroup(false);
      this.app.open(groupKey(reply.group.id));
    } catch (err) {
      setText(this.groupError, this.app.errorText(err));
    }
  }

  async joinGroup(group) {
    try {
      const reply = await this.session.request("group_join", { group: group.id });
      this.store.groupAdded(reply.group);
      this.groupSearch.go();
      this.app.open(groupKey(group.id));
    } catch (err) {
      this.app.toast(this.app.errorText(err));
    }
  }

  // -- render -----------------------------------------------------------------------------

  render() {
    const store = this.store;
    for (const name of TABS) {
      const on = this.tab === name;
      const tab = this.tabs[name];
      tab.setAttribute("aria-selected", String(on));
      tab.tabIndex = on ? 0 : -1;
      setText(tab.querySelector(".tab-label"), t(name));
      show(this.panels[name], on);
    }
    const unread = store.totalUnread();
    setText(this.tabBadge, unread ? (unread > 999 ? "999+" : String(unread)) : "");
    show(this.tabBadge, unread > 0);

    if (this.tab === "chats") this.renderChats();
    if (this.tab === "friends") this.renderFriends();
    if (this.tab === "groups") this.renderGroups();
  }

  renderChats() {
    const store = this.store;
    const items = store.chatList().map((conv) => {
      const it = this.chatItems.get(conv.key);
      const name = conv.kind === "system" ? t("system") : conv.name;
      setText(it.name, name);
      setText(it.av, initial(name));
      it.av.className = `avatar ${conv.kind}`;
      const last = conv.last;
      let preview = last ? ChatStore.preview(last.text) : "";
      if (last && conv.kind === "group" && last.name) {
        preview = `${last.from === store.me?.id ? t("you") : last.name}: ${preview}`;
      }
      setText(it.preview, preview);
      setText(it.time, last?.ts ? formatShort(last.ts) : "");
      const n = conv.unread;
      setText(it.badge, n ? (n > 999 ? "999+" : String(n)) : "");
      it.badge.setAttribute("aria-label", n ? t("unread", { n }) : "");
      show(it.badge, n > 0);
      it.button.classList.toggle("active", store.open === conv.key);
      it.button.setAttribute("aria-current", store.open === conv.key ? "true" : "false");
      return it.li;
    });
    this.chatItems.sweep();
    reconcile(this.chatList, items);
    setText(this.chatEmpty, t("noChats"));
    show(this.chatEmpty, items.length === 0);
  }

  renderFriends() {
    const store = this.store;
    setText(this.userSearchLabel, t("search"));
    this.userSearch.input.setAttribute("aria-label", t("search"));
    this.userSearch.input.placeholder = t("search");
    this.renderUserResults();

    const reqs = [...store.requests.values()].map((r) => {
      const it = this.requestItems.get(String(r.from));
      setText(it.name, r.name);
      setText(it.accept, t("accept"));
      setText(it.decline, t("decline"));
      it.accept.setAttribute("aria-describedby", "");
      return it.li;
    });
    this.requestItems.sweep();
    reconcile(this.requestList, reqs);
    setText(this.requestsHeading, t("requests"));
    show(this.requestsHeading, reqs.length > 0);

    const friends = store.friendList().map((f) => {
      const it = this.friendItems.get(directKey(f.id));
      setText(it.name, f.name);
      setText(it.av, initial(f.name));
      setText(it.state, f.online ? t("online") : t("offline"));
      it.dot.classList.toggle("online", f.online);
      it.button.classList.toggle("offline", !f.online);
      return it.li;
    });
    this.friendItems.sweep();
    reconcile(this.friendList, friends);
    setText(this.friendEmpty, t("noFriends"));
    show(this.friendEmpty, friends.length === 0 && reqs.length === 0);
  }

  renderUserResults() {
    const r = this.userResults;
    const me = this.store.me?.id;
    if (!r || r.error) {
      reconcile(this.userResultList, []);
      setText(this.userResultNote, r?.error ? this.app.errorText(r.error) : "");
      show(this.userResultNote, !!r?.error);
      return;
    }
    const rows = r.users.filter((u) => u.id !== me).map((u) => {
      const it = this.userRows.get(String(u.id), u);
      const friend = this.store.friends.has(u.id);
      setText(it.name, u.name);
      setText(it.button, friend ? t("open") : t("addFriend"));
      it.button.className = friend ? "small" : "primary small";
      it.action = friend ? () => this.app.open(directKey(u.id)) : () => this.addFriend(u);
      return it.li;
    });
    this.userRows.sweep();
    reconcile(this.userResultList, rows);
    setText(this.userResultNote, t("noResults"));
    show(this.userResultNote, rows.length === 0);
  }

  renderGroups() {
    const store = this.store;
    setText(this.newGroupButton, t("newGroup"));
    setText(this.groupNameLabel, t("groupName"));
    setText(this.createButton, t("create"));
    setText(this.groupSearchLabel, t("search"));
    this.groupSearch.input.setAttribute("aria-label", t("search"));
    this.groupSearch.input.placeholder = t("search");

    const r = this.groupResults;
    if (!r || r.error) {
      reconcile(this.groupResultList, []);
      setText(this.groupResultNote, r?.error ? this.app.errorText(r.error) : "");
      show(this.groupResultNote, !!r?.error);
    } else {
      const rows = r.groups.map((g) => {
        const it = this.groupRows.get(String(g.id));
        const member = store.groups.has(g.id);
        setText(it.name, g.name);
        setText(it.av, initial(g.name));
        setText(it.info, `g${g.id} · ${memberCount(g.members)}`);
        setText(it.button, member ? t("open") : t("join"));
        it.button.className = member ? "small" : "primary small";
        it.action = member ? () => this.app.open(groupKey(g.id)) : () => this.joinGroup(g);
        return it.li;
      });
      this.groupRows.sweep();
      reconcile(this.groupResultList, rows);
      setText(this.groupResultNote, t("noGroupResults"));
      show(this.groupResultNote, rows.length === 0);
    }

    const groups = [...store.groups.values()]
      .sort((a, b) => a.name.localeCompare(b.name) || a.id - b.id)
      .map((g) => {
        const it = this.groupItems.get(groupKey(g.id));
        setText(it.name, g.name);
        setText(it.av, initial(g.name));
        setText(it.count, memberCount(g.memberCount));
        return it.li;
      });
    this.groupItems.sweep();
    reconcile(this.groupList, groups);
    setText(this.groupEmpty, t("noGroups"));
    show(this.groupEmpty, groups.length === 0);
  }
}

export { SYSTEM_KEY };
