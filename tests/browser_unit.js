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
  FakeSocket.last.push({ type: "kicked", reason: "x" });
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
  FakeSocket.last.push({ type: "kicked", reason: "account disabled" });
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
