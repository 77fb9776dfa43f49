// The session: logs in (by password or by a remembered token), keeps the connection up
// (reconnect with backoff, resume with the token), feeds pushes to the store, sends
// with client ids, and acknowledges only what the views have rendered.
// No DOM here either: the views listen to "status" and "notice" events.

import { Connection, Disconnected, ServerError, socketUrl } from "./connection.js";
import { SYSTEM_KEY } from "./store.js";

const TOKEN_KEY = "qqchat.token";
/** Reconnect delays in ms: doubling, capped, with jitter so a restarted node is not stampeded. */
const BACKOFF_FIRST = 500;
const BACKOFF_CAP = 8000;
/** A ping keeps the server's idle timer (300 s) from firing and finds dead links. */
const PING_EVERY = 30000;
const PING_TIMEOUT = 10000;
/** Acks wait this long so a burst of messages costs one ack. */
const ACK_DELAY = 200;
const HISTORY_PAGE = 30;
/** Pages of the largest size the server takes: friends 1000, groups 200, members 500. */
export const FRIENDS_PAGE = 1000;
export const GROUPS_PAGE = 200;
export const MEMBERS_PAGE = 500;
/** At most this many pages of one list per login: a server that always says "more" is not followed forever. */
export const MAX_PAGES = 20;

/**
 * Where tokens live: localStorage when "remember me" was ticked, else sessionStorage
 * (it survives a reload of this tab, not a closed browser).
 */
export class TokenStore {
  constructor(local = globalThis.localStorage, session = globalThis.sessionStorage) {
    this.local = local;
    this.session = session;
  }

  get() {
    return this.local?.getItem(TOKEN_KEY) || this.session?.getItem(TOKEN_KEY) || null;
  }

  get remembered() {
    return !!this.local?.getItem(TOKEN_KEY);
  }

  set(token, remember) {
    this.forget();
    (remember ? this.local : this.session)?.setItem(TOKEN_KEY, token);
  }

  forget() {
    this.local?.removeItem(TOKEN_KEY);
    this.session?.removeItem(TOKEN_KEY);
  }
}

/** The delay before reconnect attempt `n` (0-based), in ms. */
export function backoff(n, random = Math.random) {
  const base = Math.min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** n);
  return Math.round(base * (0.75 + random() * 0.5));
}

/**
 * status: "signedout" (the form), "connecting" (first login or resume under way),
 * "online" (synced), "reconnecting" (dropped; `retryAt` says when), "kicked".
 */
export class Session extends EventTarget {
  /**
   * @param {import("./store.js").ChatStore} store
   * @param {{url?: string, WebSocketImpl?: typeof WebSocket, tokens?: TokenStore}} [opts]
   */
  constructor(store, opts = {}) {
    super();
    this.store = store;
    this.tokens = opts.tokens ?? new TokenStore();
    this.conn = new Connection(opts.url ?? socketUrl(), opts.WebSocketImpl ?? WebSocket);
    this.conn.addEventListener("push", (ev) => this._push(ev.detail));
    this.conn.addEventListener("close", () => this._dropped());
    // the network is back: no need to wait out the backoff
    globalThis.addEventListener?.("online", () => {
      if (this.status === "reconnecting") this._resume();
    });
    this.status = "signedout";
    this.retryAt = 0;
    this.synced = false;
    this._attempt = 0;
    this._retryTimer = null;
    this._pingTimer = null;
    this._ackTimer = null;
    /** highest message id pushed on this connection, and the highest acknowledged */
    this._received = 0;
    this._rendered = 0;
    this._acked = 0;
    this._remember = false;
    /** logged in on the current connection: a drop now means reconnect */
    this._live = false;
    /** bumped by logout, so a resume still under way gives up */
    this._gen = 0;
    /** bumped by every login: pages asked for under an earlier one are dropped */
    this._logins = 0;
  }

  _setStatus(status) {
    this.status = status;
    this.dispatchEvent(new CustomEvent("status", { detail: status }));
  }

  _notice(kind, detail = {}) {
    this.dispatchEvent(new CustomEvent("notice", { detail: { kind, ...detail } }));
  }

  // -- logging in -------------------------------------------------------------------------

  async _ensureOpen() {
    if (!this.conn.isOpen) await this.conn.open();
  }

  /** Create an account (the form's Register): does not log in by itself. */
  async register(name, password) {
    await this._ensureOpen();
    return this.conn.request("register", { name, password });
  }

  /** Log in with a password; the token it returns is kept for reconnects and reloads. */
  async login(name, password, remember) {
    this._remember = remember;
    this._setStatus("connecting");
    try {
      await this._ensureOpen();
      await this._loggedIn(await this.conn.request("login", { name, password, remember: true }));
    } catch (err) {
      this.conn.close();
      this._setStatus("signedout");
      throw err;
    }
  }

  /** At page load: resume with a stored token, if there is one. Returns whether it tried. */
  start() {
    const token = this.tokens.get();
    if (!token) return false;
    this._remember = this.tokens.remembered;
    this._setStatus("connecting");
    this._resume();
    return true;
  }

  async _resume() {
    clearTimeout(this._retryTimer);
    const token = this.tokens.get();
    if (!token) {
      this._signedOut();
      return;
    }
    const gen = this._gen;
    try {
      await this.conn.open();
      const reply = await this.conn.request("login", { token });
      if (gen !== this._gen) {
        // logged out meanwhile: do not come back to life
        this.conn.close();
        return;
      }
      await this._loggedIn(reply);
    } catch (err) {
      if (gen !== this._gen) return;
      if (err instanceof ServerError && err.code === "bad_token") {
        this.tokens.forget();
        this._signedOut();
        this._notice("expired");
      } else if (err instanceof ServerError && err.code === "account_disabled") {
        this._accountDisabled();
      } else if (err instanceof ServerError && err.code !== "rate_limited") {
        // e.g. already_online with --duplicate-login reject: do not hammer the server
        this.conn.close();
        this._signedOut();
        this._notice("error", { code: err.code, message: err.message });
      } else if (this.status !== "kicked" && this.status !== "signedout") {
        this.conn.close();
        this._scheduleReconnect();
      }
    }
  }

  async _loggedIn(reply) {
    if (reply.token) this.tokens.set(reply.token, this._remember);
    this.synced = false;
    this._live = true;
    this._received = 0;
    this._rendered = 0;
    this._acked = 0;
    this._logins++;
    this.store.applyLogin(reply);
    // the backlog follows, then `synced` (handled in _push)
  }

  /** Log out: the server revokes the token; forget everything here. */
  async logout() {
    this._gen++;
    clearTimeout(this._retryTimer);
    if (this.conn.isOpen && this.synced) {
      try {
        await this.conn.request("logout");
      } catch {
        // gone already: the token still expires on its own
      }
    }
    this.tokens.forget();
    this.conn.close();
    this._signedOut();
  }

  _signedOut() {
    this._live = false;
    this._stopTimers();
    this.synced = false;
    this.store.reset();
    this._setStatus("signedout");
  }

  /**
   * An operator disabled the account (the `kicked` push, or `account_disabled` at a
   * resume): back to the form, with the token forgotten and no reconnect.
   */
  _accountDisabled() {
    this._gen++;
    clearTimeout(this._retryTimer);
    this.tokens.forget();
    this.conn.close();
    this._signedOut();
    this._notice("disabled");
  }

  /** After a kick, the user asks to come back: resume with the token again. */
  reconnectNow() {
    this._attempt = 0;
    this._setStatus("connecting");
    this._resume();
  }

  /** Change the password; the server revokes every old token and hands this session a new one. */
  async changePassword(old, password) {
    const reply = await this.request("password_change", { old, new: password });
    if (reply.token) this.tokens.set(reply.token, this._remember);
    return reply;
  }

  // -- the connection's life ------------------------------------------------------------

  _dropped() {
    this._stopTimers();
    this.synced = false;
    const live = this._live;
    this._live = false;
    // before a login succeeded, the login or resume that is waiting handles it
    if (!live || this.status === "kicked" || this.status === "signedout") return;
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    clearTimeout(this._retryTimer);
    const delay = backoff(this._attempt++);
    this.retryAt = Date.now() + delay;
    this._setStatus("reconnecting");
    this._retryTimer = setTimeout(() => this._resume(), delay);
  }

  _stopTimers() {
    clearInterval(this._pingTimer);
    clearTimeout(this._ackTimer);
    this._pingTimer = this._ackTimer = null;
  }

  _startPings() {
    clearInterval(this._pingTimer);
    this._pingTimer = setInterval(() => {
      const conn = this.conn;
      const timeout = setTimeout(() => conn.ws && conn.ws.close(), PING_TIMEOUT);
      conn.request("ping").then(() => clearTimeout(timeout), () => clearTimeout(timeout));
    }, PING_EVERY);
  }

  // -- pushes -----------------------------------------------------------------------------

  _push(frame) {
    const store = this.store;
    switch (frame.type) {
      case "message":
        this._received = Math.max(this._received, frame.id);
        if (store.addMessage(frame) && this.synced) {
          this._notice("message", { message: frame, key: store.keyOf(frame) });
        }
        break;
      case "synced":
        this._synced();
        break;
      case "presence":
        store.presence(frame.user, frame.name, frame.online);
        break;
      case "friend_request":
        store.friendRequest(frame.from, frame.name, frame.ts);
        this._notice("friend_request", { name: frame.name });
        break;
      case "friend_added":
        store.friendAdded({ id: frame.user, name: frame.name, online: frame.online });
        this._notice("friend_added", { name: frame.name });
        break;
      case "friend_declined":
        this._notice("friend_declined", { name: frame.name });
        break;
      case "friend_removed":
        store.friendRemoved(frame.user);
        break;
      case "group_joined":
        store.groupMember(frame.group, frame.user, frame.name, true);
        break;
      case "group_left":
        store.groupMember(frame.group, frame.user, frame.name, false);
        break;
      case "kicked":
        if (frame.code === "account_disabled") {
          this._accountDisabled();
          break;
        }
        // another login took over: stay down, or the two would kick each other forever
        this._stopTimers();
        clearTimeout(this._retryTimer);
        this._live = false;
        this._setStatus("kicked");
        this.conn.close();
        break;
      case "server_shutdown":
        this._notice("server_shutdown");
        break; // the close that follows schedules the reconnect
      case "error":
        this._notice("error", { code: frame.code, message: frame.message });
        break;
      default:
        break;
    }
  }

  async _synced() {
    this.synced = true;
    this._attempt = 0;
    this._startPings();
    this._setStatus("online");
    // conversations goes first: the server counts unread from the acknowledged
    // position, so it must be read before the backlog just shown is acknowledged
    const convs = this.conn.request("conversations", { limit: 50 });
    for (const m of this.store.pending()) this._transmit(m);
    this._scheduleAck();
    this._loadRest();
    try {
      this.store.applyConversations((await convs).conversations);
    } catch (err) {
      if (!(err instanceof Disconnected)) this._notice("error", { code: err.code });
    }
    // a conversation on screen before a reconnect may have missed messages
    const open = this.store.open;
    if (open && open !== SYSTEM_KEY) this._refreshOpen(open);
  }

  // -- lists longer than the login reply --------------------------------------------------

  /**
   * The login reply lists the first 200 friends and 50 groups: fetch the rest, in pages
   * of the largest size, while the server says there are more (and at most MAX_PAGES).
   */
  async _loadRest() {
    const store = this.store;
    const login = this._logins;
    try {
      for (let i = 0; store.friendsMore && i < MAX_PAGES; i++) {
        const reply = await this.conn.request("friends",
          { limit: FRIENDS_PAGE, after: store.friendsAfter });
        if (login !== this._logins) return;
        store.addFriendsPage(reply.friends, reply.more);
      }
      for (let i = 0; store.groupsMore && i < MAX_PAGES; i++) {
        const reply = await this.conn.request("groups",
          { limit: GROUPS_PAGE, after: store.groupsAfter });
        if (login !== this._logins) return;
        store.addGroupsPage(reply.groups, reply.more);
      }
    } catch (err) {
      // dropped: the next login starts over; a refusal is said in words
      if (!(err instanceof Disconnected) && login === this._logins) {
        this._notice("error", { code: err.code, message: err.message });
      }
    }
    // a group on screen shows its whole member list
    const open = store.open ? store.convs.get(store.open) : null;
    if (open?.kind === "group" && login === this._logins) this.loadMembers(open.id);
  }

  /**
   * The whole member list of a group, when it is opened: `group_info` pages of 500 by
   * offset while the server says there are more. Joins and leaves that come as pushes
   * keep it right while it is on screen.
   */
  async loadMembers(groupId) {
    const store = this.store;
    if (!this.synced || !store.canLoadMembers(groupId)) return;
    const login = this._logins;
    store.membersLoading(groupId, true);
    let offset = 0;
    let again = true;
    try {
      for (let i = 0; offset !== null && i < MAX_PAGES; i++) {
        const reply = await this.conn.request("group_info",
          { group: groupId, limit: MEMBERS_PAGE, offset });
        if (login !== this._logins) return;
        offset = store.groupMembersPage(groupId, reply.group, offset);
        const g = store.groups.get(groupId);
        if (offset === null && again && g && g.members.length < g.memberCount) {
          // someone left between two pages and the offsets moved: read it again, once
          again = false;
          offset = 0;
        }
      }
    } catch {
      // not loaded: tried again the next time the group is opened
    } finally {
      if (login === this._logins) store.membersLoading(groupId, false);
    }
  }

  async _refreshOpen(key) {
    const conv = this.store.conv(key);
    try {
      const reply = await this.conn.request("history", { ...this._target(conv), limit: HISTORY_PAGE });
      this.store.applyHistory(key, reply.messages, conv.loaded ? conv.more : reply.more);
    } catch {
      // shown again when the user scrolls or reopens it
    }
  }

  // -- acknowledgements -----------------------------------------------------------------

  /**
   * The views call this after each render pass: every message received so far is on
   * screen (or in the sidebar), so it may be acknowledged.
   */
  rendered() {
    this._rendered = this._received;
    this._scheduleAck();
  }

  _scheduleAck() {
    if (!this.synced || this._ackTimer || this._rendered <= this._acked) return;
    this._ackTimer = setTimeout(() => {
      this._ackTimer = null;
      const id = Math.min(this._rendered, this._received);
      if (!this.synced || id <= this._acked) return;
      this._acked = id;
      this.conn.request("ack", { id }).catch(() => {
        // not stored: the backlog brings it back after a reconnect, and it is deduplicated
      });
    }, ACK_DELAY);
  }

  // -- requests and sends -------------------------------------------------------------

  /** Any request while online; rejects with ServerError or Disconnected. */
  request(type, fields = {}) {
    if (!this.synced) return Promise.reject(new Disconnected());
    return this.conn.request(type, fields);
  }

  _target(conv) {
    return conv.kind === "group" ? { group: conv.id } : { with: conv.id };
  }

  /** Send text to the conversation `key`: shown pending now, sent when online. */
  send(key, text) {
    const m = this.store.queueSend(key, text);
    if (this.synced) this._transmit(m);
    return m;
  }

  /** Retry a failed send with the same cid: a try that did get through is not stored twice. */
  retry(cid) {
    const m = this.store.retrying(cid);
    if (m && this.synced) this._transmit(m);
  }

  async _transmit(m) {
    const [type, fields] = m.group !== undefined
      ? ["group_chat", { group: m.group }]
      : ["chat", { to: m.to }];
    try {
      const reply = await this.conn.request(type, { ...fields, text: m.text, cid: m.cid });
      this.store.sendDone(m.cid, reply);
    } catch (err) {
      // dropped: it stays pending and goes again, same cid, once resumed
      if (!(err instanceof Disconnected)) {
        this.store.sendFailed(m.cid, err.code ?? "error", err.frame?.retry_after);
      }
    }
  }

  /** Load the newest page of a conversation, or the page before what is held. */
  async loadHistory(key, older = false) {
    const conv = this.store.conv(key);
    if (conv.kind === "system" || conv.loading || (older && conv.more === false)) return;
    if (!older && conv.loaded) return;
    if (!this.synced) return;
    conv.loading = true;
    const fields = { ...this._target(conv), limit: HISTORY_PAGE };
    const before = older ? this.store.oldestId(key) : undefined;
    if (before !== undefined) fields.before = before;
    try {
      const reply = await this.conn.request("history", fields);
      this.store.applyHistory(key, reply.messages, reply.more);
    } catch {
      conv.loading = false;
    }
  }
}
