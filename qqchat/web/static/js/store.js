// The client's model of one logged-in user: contacts, groups, conversations and their
// messages, unread counts and the outbox of sends. No DOM and no network here: the
// session feeds it protocol frames, the views read it, and it tells both what changed
// through a "change" event.

/** Key of a one-to-one conversation (the peer's user id) or of a group. */
export const directKey = (userId) => `u${userId}`;
export const groupKey = (groupId) => `g${groupId}`;
/** Broadcasts are not a conversation; they gather under this pseudo-key as system notices. */
export const SYSTEM_KEY = "system";

/** How many characters of a message the sidebar preview keeps (the server cuts at 100). */
const PREVIEW_CHARS = 100;

/**
 * A group as the store keeps it, from any of the server's shapes (the login reply and
 * `groups`, or group info). `members` may be only the first of them: `memberCount` is
 * how many there are, `moreMembers` whether the list stops short of them, `membersLoaded`
 * whether the whole list came from `group_info` since this login.
 * @typedef {{id: number, name: string, desc: string, role: string,
 *   members: {id: number, name: string, role: string, online: boolean}[],
 *   memberCount: number, moreMembers: boolean, membersLoaded: boolean,
 *   membersLoading: boolean}} Group
 */
function groupRecord(g, role) {
  const members = structuredClone(g.members ?? []);
  return {
    id: g.id, name: g.name, desc: g.desc ?? "", role,
    members,
    memberCount: g.member_count ?? members.length,
    moreMembers: !!g.more_members,
    membersLoaded: false,
    membersLoading: false,
  };
}

/** The id to page on from: the last entry of a page, or the cursor as it was. */
const lastId = (list, cursor) => (list.length ? list.at(-1).id : cursor);

/**
 * A fresh client id for a send: random, so a retry after a reload can never collide.
 * crypto.getRandomValues works on plain http pages too (randomUUID needs a secure context).
 * @returns {string}
 */
export function newCid() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return "w" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * @typedef {{id?: number, cid?: string, from: number, name: string, text: string, ts: number,
 *   to?: number, group?: number, broadcast?: boolean,
 *   state?: "pending"|"sent"|"failed", error?: string, retryAfter?: number,
 *   system?: boolean, seq?: number}} Msg
 * @typedef {{key: string, kind: "direct"|"group"|"system", id: number, name: string,
 *   msgs: Msg[], ids: Set<number>, last: Msg|null, unread: number, seenId: number,
 *   more: boolean|null, loading: boolean, loaded: boolean}} Conv
 */

export class ChatStore extends EventTarget {
  constructor() {
    super();
    this.reset();
  }

  /** Forget everything (log out, or a different user logs in). */
  reset() {
    /** @type {{id: number, name: string}|null} */
    this.me = null;
    /** @type {Map<number, {id: number, name: string, online: boolean}>} */
    this.friends = new Map();
    /** @type {Map<number, {from: number, name: string, ts: number}>} */
    this.requests = new Map();
    /** @type {Map<number, Group>} */
    this.groups = new Map();
    /** more friends and groups than the login reply listed: page on `after` these ids */
    this.friendsMore = false;
    this.friendsAfter = 0;
    this.groupsMore = false;
    this.groupsAfter = 0;
    /** @type {Map<string, Conv>} */
    this.convs = new Map();
    /** @type {Map<string, Msg>} the outbox, by cid */
    this.outbox = new Map();
    /** @type {string|null} the conversation on screen */
    this.open = null;
    this._seq = 0;
    this._emit("reset");
  }

  _emit(what, key = null) {
    this.dispatchEvent(new CustomEvent("change", { detail: { what, key } }));
  }

  // -- login and contacts ---------------------------------------------------------------

  /**
   * Apply a `login` reply. The same user resuming keeps the conversations and messages
   * already held (the backlog is de-duplicated by id); another user starts clean.
   */
  applyLogin(reply) {
    if (this.me && this.me.id !== reply.user.id) this.reset();
    this.me = { id: reply.user.id, name: reply.user.name };
    this.friends = new Map();
    this.groups = new Map();
    this.requests = new Map(reply.requests.map((r) => [r.from, { ...r }]));
    this.friendsAfter = this.groupsAfter = 0;
    this._addFriends(reply.friends, !!reply.friends_more);
    this._addGroups(reply.groups, !!reply.groups_more);
    this._emit("login");
  }

  /** A `friends` reply: the next page, merged (friends added meanwhile stay). */
  addFriendsPage(friends, more) {
    this._addFriends(friends, !!more);
    this._emit("friends");
  }

  /** A `groups` reply: the next page of my groups, each with its first members. */
  addGroupsPage(groups, more) {
    this._addGroups(groups, !!more);
    this._emit("groups");
  }

  _addFriends(friends, more) {
    for (const f of friends) {
      this.friends.set(f.id, { id: f.id, name: f.name, online: !!f.online });
      const conv = this.convs.get(directKey(f.id));
      if (conv) conv.name = f.name;
    }
    this.friendsAfter = lastId(friends, this.friendsAfter);
    // a page that brought nothing cannot move the cursor: stop rather than ask again
    this.friendsMore = more && friends.length > 0;
  }

  _addGroups(groups, more) {
    for (const g of groups) {
      this.groups.set(g.id, groupRecord(g, g.role ?? "member"));
      const conv = this.convs.get(groupKey(g.id));
      if (conv) conv.name = g.name;
    }
    this.groupsAfter = lastId(groups, this.groupsAfter);
    this.groupsMore = more && groups.length > 0;
  }

  /** Friends sorted for the Friends tab: online first, then by name. */
  friendList() {
    return [...this.friends.values()].sort(
      (a, b) => Number(b.online) - Number(a.online) || a.name.localeCompare(b.name) || a.id - b.id,
    );
  }

  /**
   * A friend came online or went offline. Members of my groups are updated where the
   * store lists them; one it does not list (beyond a group's first members, not loaded
   * yet) is left out: `group_info` brings them with their state when the group is opened.
   */
  presence(userId, name, online) {
    const f = this.friends.get(userId);
    if (f) f.online = online;
    for (const g of this.groups.values()) {
      for (const m of g.members) if (m.id === userId) m.online = online;
    }
    this._emit("presence");
  }

  friendRequest(from, name, ts) {
    this.requests.set(from, { from, name, ts });
    this._emit("requests");
  }

  friendAdded(friend) {
    this.friends.set(friend.id, { id: friend.id, name: friend.name, online: !!friend.online });
    this.requests.delete(friend.id);
    this._emit("friends");
  }

  requestAnswered(from) {
    this.requests.delete(from);
    this._emit("requests");
  }

  friendRemoved(userId) {
    this.friends.delete(userId);
    this._emit("friends");
  }

  // -- groups ---------------------------------------------------------------------------

  /** A group I joined or created (`group_create`/`group_join` reply: group info shape). */
  groupAdded(info) {
    const role = this.me && info.creator === this.me.id ? "creator" : "member";
    this.groups.set(info.id, groupRecord(info, role));
    const conv = this.conv(groupKey(info.id));
    conv.name = info.name;
    this._emit("groups", conv.key);
  }

  /**
   * Whether to fetch the group's member list now (`group_info`): it is one of mine and
   * no fetch is under way. Opening a group fetches it every time, which also brings the
   * online state of members who are not friends (the server pushes presence to friends only).
   */
  canLoadMembers(groupId) {
    const g = this.groups.get(groupId);
    return !!g && !g.membersLoading;
  }

  /** A `group_info` page is being fetched for this group (or no longer, `false`). */
  membersLoading(groupId, loading) {
    const g = this.groups.get(groupId);
    if (!g || g.membersLoading === loading) return;
    g.membersLoading = loading;
    this._emit("members", groupKey(groupId));
  }

  /**
   * A page of members from `group_info` at `offset`: the first page starts the list
   * again, later ones add to it (by id, so a member seen twice is listed once). The
   * count and the group's name and description come with every page.
   * @returns {number|null} the offset of the next page, or null when the list is whole
   */
  groupMembersPage(groupId, info, offset) {
    const g = this.groups.get(groupId);
    if (!g) return null;
    g.name = info.name ?? g.name;
    g.desc = info.desc ?? g.desc;
    const page = info.members ?? [];
    const members = offset === 0 ? [] : g.members;
    const have = new Set(members.map((m) => m.id));
    for (const m of page) {
      if (!have.has(m.id)) members.push({ ...m, online: !!m.online });
      have.add(m.id);
    }
    g.members = members;
    g.memberCount = info.member_count ?? members.length;
    const more = !!info.more_members && page.length > 0;
    g.moreMembers = more;
    if (!more) {
      g.membersLoaded = true;
      g.membersLoading = false;
    }
    this._emit("members", groupKey(groupId));
    return more ? offset + page.length : null;
  }

  groupRemoved(groupId) {
    this.groups.delete(groupId);
    const key = groupKey(groupId);
    this.convs.delete(key);
    if (this.open === key) this.open = null;
    this._emit("groups", key);
  }

  /** Someone joined or left one of my groups: update members, note it in the chat. */
  groupMember(groupId, user, name, joined, ts = Date.now()) {
    const g = this.groups.get(groupId);
    if (!g) return;
    const listed = g.members.some((m) => m.id === user);
    g.members = g.members.filter((m) => m.id !== user);
    if (joined) {
      if (!listed) g.memberCount++;
      // newcomers come last in join order: only a whole list has room for them yet
      if (!g.moreMembers) g.members.push({ id: user, name, role: "member", online: true });
    } else if (listed || g.moreMembers) {
      g.memberCount = Math.max(g.members.length, g.memberCount - 1);
    }
    const conv = this.conv(groupKey(groupId));
    this._append(conv, {
      system: true, from: user, name, ts, seq: ++this._seq,
      text: joined ? "joined" : "left", event: joined ? "joined" : "left",
    });
    this._emit("members", conv.key);
  }

  // -- conversations --------------------------------------------------------------------

  /** The conversation for `key`, created empty when new. */
  conv(key) {
    let conv = this.convs.get(key);
    if (!conv) {
      const kind = key === SYSTEM_KEY ? "system" : key[0] === "g" ? "group" : "direct";
      const id = kind === "system" ? 0 : Number(key.slice(1));
      conv = {
        key, kind, id, name: this._nameFor(kind, id), msgs: [], ids: new Set(), last: null,
        unread: 0, seenId: 0, more: null, loading: false, loaded: false,
      };
      this.convs.set(key, conv);
    }
    return conv;
  }

  _nameFor(kind, id) {
    if (kind === "group") return this.groups.get(id)?.name ?? `g${id}`;
    if (kind === "direct") {
      if (this.me && this.me.id === id) return this.me.name;
      return this.friends.get(id)?.name ?? `#${id}`;
    }
    return "";
  }

  /** The conversation a stored message belongs to, from my point of view. */
  keyOf(msg) {
    if (msg.broadcast) return SYSTEM_KEY;
    if (msg.group !== undefined && msg.group !== null) return groupKey(msg.group);
    const me = this.me ? this.me.id : -1;
    return directKey(msg.from === me ? msg.to : msg.from);
  }

  /** Conversations for the Chats tab, newest first (a pending send counts as newest). */
  chatList() {
    const rank = (c) => (c.last ? (c.last.id ?? Number.MAX_SAFE_INTEGER) : 0);
    return [...this.convs.values()]
      .filter((c) => c.last)
      .sort((a, b) => rank(b) - rank(a) || (b.last.ts ?? 0) - (a.last.ts ?? 0));
  }

  totalUnread() {
    let n = 0;
    for (const c of this.convs.values()) n += c.unread;
    return n;
  }

  /**
   * Apply a `conversations` reply: names, last messages and the server's unread counts.
   * From then on a pushed message counts as unread only if it is newer than the
   * conversation's last message in this reply (older ones are in the server's count).
   */
  applyConversations(list) {
    for (const item of list) {
      const key = item.kind === "group" ? groupKey(item.id) : directKey(item.id);
      const conv = this.conv(key);
      conv.name = item.name;
      conv.seenId = Math.max(conv.seenId, item.last?.id ?? 0);
      if (item.last && (!conv.last || (conv.last.id ?? Infinity) < item.last.id)) {
        conv.last = { ...item.last };
      }
      conv.unread = this.open === key ? 0 : item.unread;
      // messages held locally that the server had not counted yet
      if (this.open !== key) {
        for (const m of conv.msgs) {
          if (m.id > conv.seenId && !this._mine(m) && !m.system) conv.unread++;
        }
      }
    }
    this._emit("conversations");
  }

  _mine(msg) {
    return !!this.me && msg.from === this.me.id && !msg.broadcast;
  }

  /**
   * A `message` push (live or backlog) or a history entry. Returns false for one
   * already held: messages are de-duplicated by id, so a resend after a reconnect
   * never shows twice.
   * @param {Msg} msg
   * @param {{history?: boolean}} [opts]
   */
  addMessage(msg, opts = {}) {
    const conv = this.conv(this.keyOf(msg));
    if (conv.ids.has(msg.id)) return false;
    // someone who is not a friend: the message carries their name
    if (conv.kind === "direct" && this.me && msg.from !== this.me.id) conv.name = msg.name;
    const m = { ...msg };
    delete m.type;
    if (this._mine(m)) {
      // my own message seen again (a note to myself, or history): settle its outbox entry
      if (m.cid && this.outbox.has(m.cid)) return false;
      m.state = "sent";
    }
    this._append(conv, m);
    if (!opts.history && !this._mine(m) && this.open !== conv.key && m.id > conv.seenId) {
      conv.unread++;
    }
    this._emit(opts.history ? "history" : "message", conv.key);
    return true;
  }

  /** Insert in id order (pending sends and notices without id stay at the end, in order). */
  _append(conv, m) {
    if (m.id !== undefined) conv.ids.add(m.id);
    const msgs = conv.msgs;
    let i = msgs.length;
    if (m.id !== undefined) {
      while (i > 0 && (msgs[i - 1].id === undefined || msgs[i - 1].id > m.id)) i--;
      // a notice or a pending send that came before this message stays before it
      while (i < msgs.length && msgs[i].id === undefined && (msgs[i].ts ?? 0) <= m.ts) i++;
    }
    msgs.splice(i, 0, m);
    if (!m.system || conv.kind === "system") {
      if (!conv.last || m.id === undefined || (conv.last.id !== undefined && m.id >= conv.last.id)) {
        conv.last = m;
      }
    }
  }

  /** A `history` reply for `key`: older messages, oldest first. */
  applyHistory(key, messages, more) {
    const conv = this.conv(key);
    for (const m of messages) this.addMessage(m, { history: true });
    conv.more = more;
    conv.loaded = true;
    conv.loading = false;
    this._emit("history", key);
  }

  /** The id to page back from: the oldest message held with an id. */
  oldestId(key) {
    const conv = this.convs.get(key);
    return conv?.msgs.find((m) => m.id !== undefined)?.id;
  }

  /** Put a conversation on screen (or none): it is read now. */
  setOpen(key) {
    this.open = key;
    if (key) {
      const conv = this.conv(key);
      conv.unread = 0;
    }
    this._emit("open", key);
  }

  // -- the outbox -----------------------------------------------------------------------

  /**
   * A message I am sending: shown at once as pending. Returns the outbox entry, which
   * keeps its cid for every retry.
   */
  queueSend(key, text) {
    const conv = this.conv(key);
    const m = {
      cid: newCid(), from: this.me.id, name: this.me.name, text, ts: Date.now(),
      state: "pending", seq: ++this._seq,
      ...(conv.kind === "group" ? { group: conv.id } : { to: conv.id }),
    };
    this.outbox.set(m.cid, m);
    this._append(conv, m);
    this._emit("send", key);
    return m;
  }

  /** The server stored it (`id`, `ts`; `duplicate` if an earlier try got through). */
  sendDone(cid, reply) {
    const m = this.outbox.get(cid);
    if (!m) return;
    this.outbox.delete(cid);
    const conv = this.conv(this.keyOf(m));
    const held = conv.msgs.find((x) => x !== m && x.id === reply.id);
    conv.msgs.splice(conv.msgs.indexOf(m), 1);
    if (held) {
      // a note to myself whose push came before the reply: keep one copy
      held.state = "sent";
      held.cid = cid;
    } else {
      m.id = reply.id;
      m.ts = reply.ts;
      m.state = "sent";
      delete m.error;
      this._append(conv, m);
    }
    this._emit("sent", conv.key);
  }

  /** The send failed for good (an error reply): show it with a retry. */
  sendFailed(cid, code, retryAfter) {
    const m = this.outbox.get(cid);
    if (!m) return;
    m.state = "failed";
    m.error = code;
    if (retryAfter !== undefined) m.retryAfter = retryAfter;
    this._emit("failed", this.keyOf(m));
  }

  /** Retrying: the same entry, the same cid, pending again. */
  retrying(cid) {
    const m = this.outbox.get(cid);
    if (!m) return null;
    m.state = "pending";
    delete m.error;
    delete m.retryAfter;
    this._emit("send", this.keyOf(m));
    return m;
  }

  /** Sends still waiting for a reply (resent with their cid after a reconnect). */
  pending() {
    return [...this.outbox.values()].filter((m) => m.state === "pending");
  }

  /** Preview text for the sidebar: one line, cut. */
  static preview(text) {
    const line = String(text).replace(/\s+/g, " ").trim();
    return line.length > PREVIEW_CHARS ? line.slice(0, PREVIEW_CHARS) + "…" : line;
  }
}
