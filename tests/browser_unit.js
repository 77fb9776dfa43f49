// The client's logic on its own, run in a page of the app's origin by test_browser.py
// (no Node.js needed): the store's bookkeeping, and the session against a fake WebSocket.
// Each test returns what it saw; the Python side compares it with what it expects.

const sent = [];
class FakeSocket {
  static last = null;
  constructor(url) { this.url = url; this.readyState = 0; FakeSocket.last = this;
    setTimeout(() => { this.readyState = 1; this.onopen && this.onopen(); }, 0); }
  send(data) { sent.push(JSON.parse(data)); }
  close() { this.readyState = 3; }
  drop() { this.readyState = 3; this.onclose && this.onclose({ code: 1006 }); }
  push(frame) { this.onmessage({ data: JSON.stringify(frame) }); }
  reply(type, fields = {}) {
    const req = [...sent].reverse().find((f) => f.type === type).req;
    this.push({ type, req, ...fields });
  }
}
const memory = () => { const m = new Map(); return {
  getItem: (k) => m.has(k) ? m.get(k) : null, setItem: (k, v) => m.set(k, String(v)),
  removeItem: (k) => m.delete(k) }; };
const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
const until = async (f) => { for (let i = 0; i < 200 && !f(); i++) await tick(10); return f(); };
const bobSays = { type: "message", id: 7, from: 2, name: "bob", text: "a", ts: 1, to: 1 };
const loginReply = { user: { id: 1, name: "me" }, friends: [{ id: 2, name: "bob", online: true }],
  groups: [], requests: [], token: "T".repeat(43) };

/** The store: de-duplication, unread counts, the outbox and history merging. */
export async function testStore(m) {
  const s = new m.ChatStore();
  s.applyLogin({ user: { id: 1, name: "me" },
    friends: [{ id: 2, name: "bob", online: false }],
    groups: [{ id: 5, name: "devs", desc: "", role: "creator",
      members: [{ id: 1, name: "me", role: "creator", online: true }] }], requests: [] });
  const out = {};
  // dedupe by id; keys by conversation
  const msg = { id: 10, from: 2, name: "bob", text: "hi", ts: 1000, to: 1 };
  out.first = s.addMessage(msg);
  out.again = s.addMessage({ ...msg });
  out.count = s.conv("u2").msgs.length;
  out.unread = s.conv("u2").unread;
  out.groupKey = s.keyOf({ id: 11, from: 3, group: 5 });
  out.selfKey = s.keyOf({ id: 12, from: 1, to: 1 });
  out.sentKey = s.keyOf({ id: 13, from: 1, to: 2 });
  out.bcastKey = s.keyOf({ id: 14, from: 3, broadcast: true });
  // conversations reply: the server's count, and pushes above last.id count again
  s.applyConversations([{ kind: "direct", id: 2, name: "bob", unread: 3,
    last: { id: 10, ts: 1000, from: 2, name: "bob", text: "hi" } }]);
  out.afterConvs = s.conv("u2").unread;
  s.addMessage({ id: 20, from: 2, name: "bob", text: "more", ts: 2000, to: 1 });
  out.afterPush = s.conv("u2").unread;
  out.total = s.totalUnread();
  s.setOpen("u2");
  out.opened = s.conv("u2").unread;
  s.addMessage({ id: 21, from: 2, name: "bob", text: "seen", ts: 2100, to: 1 });
  out.whileOpen = s.conv("u2").unread;
  // the outbox: pending, then sent with the server's id; a retry keeps the cid
  const p = s.queueSend("u2", "yo");
  out.pending = p.state;
  out.newest = s.chatList()[0].key;
  s.sendFailed(p.cid, "unavailable");
  out.failed = p.state;
  const again = s.retrying(p.cid);
  out.sameCid = again.cid === p.cid && again.state === "pending";
  s.sendDone(p.cid, { id: 30, ts: 3000 });
  out.sent = s.conv("u2").msgs.at(-1).state + ":" + s.conv("u2").msgs.at(-1).id;
  out.outbox = s.outbox.size;
  // a note to myself: the push may come before the reply; one copy stays
  const n = s.queueSend("u1", "note");
  s.addMessage({ id: 40, from: 1, name: "me", text: "note", ts: 4000, to: 1 });
  s.sendDone(n.cid, { id: 40, ts: 4000 });
  out.selfCopies = s.conv("u1").msgs.filter((x) => x.id === 40).length;
  // history merges in id order, without doubles
  s.applyHistory("u2", [{ id: 5, from: 2, name: "bob", text: "old", ts: 500, to: 1 },
    { id: 10, from: 2, name: "bob", text: "hi", ts: 1000, to: 1 }], false);
  out.order = s.conv("u2").msgs.map((x) => x.id).join(",");
  out.oldest = s.oldestId("u2");
  out.more = s.conv("u2").more;
  // group membership notices
  s.groupMember(5, 2, "bob", true);
  out.members = s.groups.get(5).members.length;
  out.notice = s.conv("g5").msgs.at(-1).event;
  out.preview = m.ChatStore.preview("a\n  b" + "x".repeat(200)).length;
  out.cid = /^[0-9a-z]{1,64}$/.test(m.newCid()) && m.newCid() !== m.newCid();
  return out;
}

/** The session: acks after render, resend by cid after a drop, bad tokens, kicks. */
export async function testSession(m) {
  const out = {};
  const store = new m.ChatStore();
  const tokens = new m.TokenStore(memory(), memory());
  const s = new m.Session(store, { url: "ws://x/ws", WebSocketImpl: FakeSocket, tokens });
  const p = s.login("me", "pw", true);
  await until(() => sent.some((f) => f.type === "login"));
  out.remember = sent.at(-1).remember;
  FakeSocket.last.reply("login", loginReply);
  await p;
  out.token = tokens.get() === "T".repeat(43) && tokens.remembered;
  FakeSocket.last.push(bobSays);
  FakeSocket.last.push({ type: "synced", count: 1 });
  out.convsFirst = sent.at(-1).type;
  await tick(400);
  out.ackBeforeRender = sent.filter((f) => f.type === "ack").length;
  s.rendered();
  await until(() => sent.some((f) => f.type === "ack"));
  out.ack = sent.filter((f) => f.type === "ack").map((f) => f.id).join(",");
  // a send, then the connection drops before the reply
  const msg = s.send("u2", "hello");
  await until(() => sent.some((f) => f.type === "chat"));
  const cid = sent.filter((f) => f.type === "chat")[0].cid;
  FakeSocket.last.drop();
  out.status = s.status;
  out.stillPending = msg.state;
  // it reconnects with the token and resends the same cid
  await until(() => sent.filter((f) => f.type === "login").length === 2);
  out.resume = sent.filter((f) => f.type === "login")[1].token === "T".repeat(43);
  FakeSocket.last.reply("login", loginReply);
  FakeSocket.last.push(bobSays);
  FakeSocket.last.push({ type: "synced", count: 1 });
  await until(() => sent.filter((f) => f.type === "chat").length === 2);
  out.resent = sent.filter((f) => f.type === "chat")[1].cid === cid;
  out.noDouble = store.conv("u2").msgs.filter((x) => x.id === 7).length;
  FakeSocket.last.reply("chat", { id: 8, ts: 2, duplicate: true });
  await until(() => msg.state === "sent");
  out.sent = msg.state + ":" + msg.id;
  // kicked: stays down
  FakeSocket.last.push({ type: "kicked", code: "replaced", reason: "x" });
  out.kicked = s.status;
  const logins = sent.filter((f) => f.type === "login").length;
  await tick(1500);
  out.noRelogin = sent.filter((f) => f.type === "login").length === logins;
  // a token the server refuses is forgotten
  s.reconnectNow();
  await until(() => sent.filter((f) => f.type === "login").length === logins + 1);
  await tick(0);
  FakeSocket.last.push({ type: "error", req: sent.at(-1).req, code: "bad_token" });
  await until(() => s.status === "signedout");
  out.afterBadToken = s.status + ":" + tokens.get();
  out.backoff = [0, 1, 2, 3, 10].map((n) => m.backoff(n, () => 0.5)).join(",");
  out.rateWords = m.loginError({ code: "rate_limited", frame: { retry_after: 2.2 } });
  out.takenWords = m.loginError({ code: "name_taken" });
  return out;
}

/** An operator disabled the account: the kick and the login error both sign out for good. */
export async function testDisabled(m) {
  const out = {};
  const store = new m.ChatStore();
  const tokens = new m.TokenStore(memory(), memory());
  const s = new m.Session(store, { url: "ws://x/ws", WebSocketImpl: FakeSocket, tokens });
  const notices = [];
  s.addEventListener("notice", (ev) => notices.push(ev.detail.kind));
  const logins = () => sent.filter((f) => f.type === "login").length;
  const before = logins();
  const p = s.login("me", "pw", true);
  await until(() => logins() === before + 1);
  FakeSocket.last.reply("login", loginReply);
  await p;
  FakeSocket.last.push({ type: "synced", count: 0 });
  // the live session is ended by the operator
  FakeSocket.last.push({ type: "kicked", code: "account_disabled", reason: "x" });
  FakeSocket.last.drop();
  out.kicked = `${s.status}:${tokens.get()}:${notices.join(",")}`;
  await tick(1500);
  out.noReconnect = logins() === before + 1;
  // a page loaded later with a stored token: the resume is refused, in words, once
  tokens.set("T".repeat(43), true);
  notices.length = 0;
  s.start();
  await until(() => logins() === before + 2);
  await tick(0);
  FakeSocket.last.push({ type: "error", req: sent.at(-1).req, code: "account_disabled" });
  await until(() => s.status === "signedout");
  out.resume = `${s.status}:${tokens.get()}:${notices.join(",")}`;
  await tick(1500);
  out.noRetry = logins() === before + 2;
  out.words = m.loginError({ code: "account_disabled" });
  out.forbidden = m.loginError({ code: "forbidden" });
  return out;
}

const withoutReq = ({ req, ...fields }) => fields;
const member = (id, role = "member") => ({ id, name: `u${id}`, role, online: false });
const members = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => member(from + i));

/** Bounded lists: the login reply's first pages, the pages after them, member pages. */
export async function testPagingStore(m) {
  const out = {};
  const s = new m.ChatStore();
  // a group of 25 of which the login reply lists 20; more friends and groups to come
  s.applyLogin({ user: { id: 1, name: "me" },
    friends: [{ id: 2, name: "bob", online: false }, { id: 3, name: "cat", online: true }],
    friends_more: true,
    groups: [{ id: 5, name: "big", desc: "", role: "creator",
      members: [member(1, "creator"), ...members(2, 20)], member_count: 25, more_members: true }],
    groups_more: true, requests: [] });
  out.login = [s.friendsMore, s.friendsAfter, s.groupsMore, s.groupsAfter].join(",");
  const g = s.groups.get(5);
  out.preview = `${g.members.length}/${g.memberCount}:${g.moreMembers}`;
  // presence of a member not listed (a friend beyond the preview): ignored in the group
  s.addFriendsPage([{ id: 30, name: "u30", online: false }], false);
  s.presence(30, "u30", true);
  out.notListed = g.members.some((x) => x.id === 30);
  out.friendOnline = s.friends.get(30).online;
  out.friends = `${s.friends.size}:${s.friendsMore}:${s.friendsAfter}`;
  // a join while the list is partial counts, but is not placed (it belongs at the end)
  s.groupMember(5, 40, "u40", true);
  out.joinedPartial = `${g.members.length}/${g.memberCount}`;
  // the whole list by offset: the first page starts again, the next one adds
  out.next = s.groupMembersPage(5, { id: 5, name: "big", desc: "d",
    members: [member(1, "creator"), ...members(2, 20)], member_count: 26, more_members: true }, 0);
  out.last = s.groupMembersPage(5, { id: 5, name: "big", desc: "d",
    members: [member(20), ...members(21, 25), member(40)], member_count: 26, more_members: false },
  20);
  out.whole = `${g.members.length}/${g.memberCount}:${g.moreMembers}:${g.membersLoaded}`;
  out.noDoubles = new Set(g.members.map((x) => x.id)).size === g.members.length;
  // now presence reaches every listed member, and joins and leaves keep the list right
  s.friendsAfter = 30;
  s.addFriendsPage([{ id: 25, name: "u25", online: false }], false);
  s.presence(25, "u25", true);
  out.memberOnline = g.members.find((x) => x.id === 25).online;
  s.groupMember(5, 41, "u41", true);
  s.groupMember(5, 21, "u21", false);
  s.groupMember(5, 99, "u99", false); // never a member: the whole list says so
  out.afterPushes = `${g.members.length}/${g.memberCount}`;
  // a leave from a partial list: counted down
  s.groupsAfter = 5;
  s.addGroupsPage([{ id: 8, name: "other", desc: "", role: "member",
    members: members(50, 69), member_count: 30, more_members: true }], true);
  s.groupMember(8, 77, "u77", false);
  out.leftPartial = s.groups.get(8).memberCount;
  out.groups = `${s.groups.size}:${s.groupsMore}:${s.groupsAfter}`;
  // an empty page ends the paging even if it says "more"
  s.addGroupsPage([], true);
  out.emptyPage = `${s.groupsMore}:${s.groupsAfter}`;
  // a group joined by me: the count from member_count, my role from `creator`
  s.groupAdded({ id: 9, name: "joined", desc: "", creator: 7, members: members(2, 101),
    member_count: 300, more_members: true });
  out.added = `${s.groups.get(9).memberCount}:${s.groups.get(9).role}:${s.canLoadMembers(9)}`;
  return out;
}

/** The session fetches the rest of friends and groups after a login, and whole member lists. */
export async function testPagingSession(m) {
  const out = {};
  const store = new m.ChatStore();
  const tokens = new m.TokenStore(memory(), memory());
  const s = new m.Session(store, { url: "ws://x/ws", WebSocketImpl: FakeSocket, tokens });
  const p = s.login("me", "pw", false);
  await until(() => sent.some((f) => f.type === "login"));
  FakeSocket.last.reply("login", { ...loginReply, friends_more: true,
    groups: [{ id: 5, name: "big", desc: "", role: "member", members: members(2, 21),
      member_count: 700, more_members: true }], groups_more: true });
  await p;
  FakeSocket.last.push({ type: "synced", count: 0 });
  const asked = (type) => sent.filter((f) => f.type === type);
  await until(() => asked("friends").length === 1);
  out.friends1 = withoutReq(asked("friends")[0]);
  FakeSocket.last.reply("friends", { friends: [{ id: 9, name: "zed", online: true }], more: true });
  await until(() => asked("friends").length === 2);
  out.friends2 = asked("friends")[1].after;
  FakeSocket.last.reply("friends", { friends: [{ id: 12, name: "amy", online: false }],
    more: false });
  await until(() => asked("groups").length === 1);
  out.groups1 = withoutReq(asked("groups")[0]);
  FakeSocket.last.reply("groups", { groups: [{ id: 6, name: "more", desc: "", role: "member",
    members: [member(3)], member_count: 1, more_members: false }], more: false });
  await until(() => store.groups.size === 2);
  await tick(50);
  out.friendCount = store.friends.size;
  out.stopped = asked("friends").length + asked("groups").length;
  // opening the group: members in pages of 500 by offset, until the server says no more
  const loading = s.loadMembers(5);
  await until(() => asked("group_info").length === 1);
  out.info1 = withoutReq(asked("group_info")[0]);
  out.loadingNow = store.groups.get(5).membersLoading;
  out.again = (await s.loadMembers(5), asked("group_info").length); // one fetch at a time
  FakeSocket.last.reply("group_info", { group: { id: 5, name: "big", desc: "", creator: 2,
    members: members(2, 501), member_count: 700, more_members: true } });
  await until(() => asked("group_info").length === 2);
  out.info2 = asked("group_info")[1].offset;
  FakeSocket.last.reply("group_info", { group: { id: 5, name: "big", desc: "", creator: 2,
    members: members(502, 701), member_count: 700, more_members: false } });
  await loading;
  const g = store.groups.get(5);
  out.members = `${g.members.length}/${g.memberCount}:${g.membersLoaded}:${g.membersLoading}`;
  out.pages = asked("group_info").length;
  out.limits = [m.FRIENDS_PAGE, m.GROUPS_PAGE, m.MEMBERS_PAGE].join(",");
  return out;
}
