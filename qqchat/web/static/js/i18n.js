// UI strings in English and Chinese. The language comes from the browser unless the
// user picked one (kept in localStorage). The English accessible names are a contract
// (screen readers and the browser tests use them): change them only with the tests.

const LANG_KEY = "qqchat.lang";

const en = {
  appName: "qqchat",
  name: "Name",
  password: "Password",
  remember: "Remember me",
  login: "Log in",
  register: "Register",
  logout: "Log out",
  registered: "Registered {name}. Logging in…",
  chats: "Chats",
  friends: "Friends",
  groups: "Groups",
  search: "Search",
  send: "Send",
  message: "Message",
  messages: "Messages",
  addFriend: "Add friend",
  accept: "Accept",
  decline: "Decline",
  newGroup: "New group",
  groupName: "Group name",
  create: "Create",
  join: "Join",
  open: "Open",
  leaveGroup: "Leave group",
  members: "Members",
  back: "Back",
  retry: "Retry",
  pending: "Sending…",
  sent: "Sent",
  failed: "Not sent",
  online: "online",
  offline: "offline",
  you: "you",
  creator: "creator",
  member: "member",
  requests: "Friend requests",
  noChats: "No conversations yet. Open a friend or a group to start one.",
  noFriends: "No friends yet. Search for someone by name.",
  noGroups: "You are in no group yet.",
  noResults: "Nobody found.",
  noGroupResults: "No group found.",
  pickChat: "Pick a conversation on the left.",
  requested: "Friend request sent to {name}.",
  nowFriends: "{name} is now your friend.",
  declinedYou: "{name} declined your friend request.",
  wantsFriend: "{name} wants to be your friend.",
  isFriend: "friend",
  alreadyMember: "member",
  memberCount: "{n} members",
  memberOne: "1 member",
  system: "System messages",
  broadcast: "Broadcast",
  joinedGroup: "{name} joined the group",
  leftGroup: "{name} left the group",
  loadingOlder: "Loading older messages…",
  beginning: "Beginning of the conversation",
  today: "Today",
  yesterday: "Yesterday",
  language: "中文",
  languageLabel: "Language",
  me: "Signed in as {name}",
  status_online: "Connected",
  status_connecting: "Connecting…",
  status_reconnecting: "Connection lost. Reconnecting in {s} s…",
  status_kicked: "You were signed out: your account logged in somewhere else.",
  status_signedout: "Signed out",
  short_online: "Connected",
  short_connecting: "Connecting…",
  short_reconnecting: "Offline",
  short_kicked: "Signed out",
  short_signedout: "Signed out",
  reconnect: "Reconnect",
  passwordButton: "Password",
  changePassword: "Change password",
  currentPassword: "Current password",
  newPassword: "New password",
  cancel: "Cancel",
  passwordChanged: "Password changed. Other sessions must log in again.",
  err_wrong_old: "The current password is wrong.",
  shutdown: "The server is restarting; reconnecting…",
  expired: "Your session has expired. Please log in again.",
  unread: "{n} unread",
  err_name_taken: "That name is taken.",
  err_weak_password: "The password is too weak: use 6 to 256 characters.",
  err_bad_credentials: "Wrong name or password.",
  err_bad_name: "A name is 1-32 letters, digits, '_', '.' or '-', and not only digits.",
  err_rate_limited: "Too many attempts. Try again in {s} s.",
  err_already_online: "This account is signed in elsewhere.",
  err_account_disabled: "This account has been disabled by an operator.",
  err_forbidden: "Only an administrator may do that.",
  failed_rate_limited: "Not sent: too many messages, wait {s} s",
  err_disconnected: "Cannot reach the server. Check the connection and try again.",
  err_empty: "Enter a name and a password.",
  err_generic: "Something went wrong: {message}",
  err_already_friends: "Already friends.",
  err_group_full: "That group is full.",
  err_already_member: "You are already in that group.",
  err_too_long: "That message is too long (4000 characters at most).",
  err_too_many_groups: "You are in as many groups as allowed. Leave one to join or create another.",
  err_too_many_groups_created: "You have created as many groups as allowed.",
  err_too_many_friends: "You or they have as many friends as allowed.",
  loadingMembers: "Loading members…",
};

/** @type {typeof en} */
const zh = {
  appName: "qqchat",
  name: "用户名",
  password: "密码",
  remember: "记住我",
  login: "登录",
  register: "注册",
  logout: "退出登录",
  registered: "已注册 {name}，正在登录…",
  chats: "消息",
  friends: "好友",
  groups: "群组",
  search: "搜索",
  send: "发送",
  message: "消息内容",
  messages: "消息记录",
  addFriend: "加为好友",
  accept: "同意",
  decline: "拒绝",
  newGroup: "新建群组",
  groupName: "群名称",
  create: "创建",
  join: "加入",
  open: "打开",
  leaveGroup: "退出群组",
  members: "群成员",
  back: "返回",
  retry: "重试",
  pending: "发送中…",
  sent: "已发送",
  failed: "发送失败",
  online: "在线",
  offline: "离线",
  you: "我",
  creator: "群主",
  member: "成员",
  requests: "好友申请",
  noChats: "还没有会话。打开一位好友或一个群开始聊天。",
  noFriends: "还没有好友。按名字搜索添加。",
  noGroups: "你还没有加入任何群组。",
  noResults: "没有找到用户。",
  noGroupResults: "没有找到群组。",
  pickChat: "在左侧选择一个会话。",
  requested: "已向 {name} 发送好友申请。",
  nowFriends: "{name} 已成为你的好友。",
  declinedYou: "{name} 拒绝了你的好友申请。",
  wantsFriend: "{name} 请求添加你为好友。",
  isFriend: "好友",
  alreadyMember: "已加入",
  memberCount: "{n} 位成员",
  memberOne: "1 位成员",
  system: "系统消息",
  broadcast: "广播",
  joinedGroup: "{name} 加入了群组",
  leftGroup: "{name} 退出了群组",
  loadingOlder: "正在加载更早的消息…",
  beginning: "会话开始",
  today: "今天",
  yesterday: "昨天",
  language: "English",
  languageLabel: "语言",
  me: "当前用户：{name}",
  status_online: "已连接",
  status_connecting: "正在连接…",
  status_reconnecting: "连接已断开，{s} 秒后重连…",
  status_kicked: "你的账号已在别处登录，本页已下线。",
  status_signedout: "未登录",
  short_online: "已连接",
  short_connecting: "正在连接…",
  short_reconnecting: "离线",
  short_kicked: "已下线",
  short_signedout: "未登录",
  reconnect: "重新连接",
  passwordButton: "密码",
  changePassword: "修改密码",
  currentPassword: "当前密码",
  newPassword: "新密码",
  cancel: "取消",
  passwordChanged: "密码已修改，其他设备需重新登录。",
  err_wrong_old: "当前密码不正确。",
  shutdown: "服务器正在重启，正在重连…",
  expired: "登录已过期，请重新登录。",
  unread: "{n} 条未读",
  err_name_taken: "该用户名已被占用。",
  err_weak_password: "密码太弱：请使用 6 到 256 个字符。",
  err_bad_credentials: "用户名或密码错误。",
  err_bad_name: "用户名为 1-32 个字母、数字、'_'、'.' 或 '-'，且不能全是数字。",
  err_rate_limited: "尝试次数过多，请 {s} 秒后再试。",
  err_already_online: "该账号已在别处登录。",
  err_account_disabled: "该账号已被管理员停用。",
  err_forbidden: "只有管理员可以这样做。",
  failed_rate_limited: "发送失败：发送太频繁，请等待 {s} 秒",
  err_disconnected: "无法连接服务器，请检查网络后重试。",
  err_empty: "请输入用户名和密码。",
  err_generic: "出错了：{message}",
  err_already_friends: "你们已经是好友。",
  err_group_full: "该群已满。",
  err_already_member: "你已在该群中。",
  err_too_long: "消息太长（最多 4000 个字符）。",
  err_too_many_groups: "你加入的群组数量已达上限。请先退出一个群组，再加入或创建新的群组。",
  err_too_many_groups_created: "你创建的群组数量已达上限。",
  err_too_many_friends: "你或对方的好友数量已达上限。",
  loadingMembers: "正在加载群成员…",
};

export const LANGS = { en, zh };

/** "zh" for a Chinese browser (any region), else "en"; a saved choice wins. */
export function pickLang(saved = localStorage.getItem(LANG_KEY), languages = navigator.languages) {
  if (saved === "en" || saved === "zh") return saved;
  const first = (languages && languages[0]) || navigator.language || "en";
  return first.toLowerCase().startsWith("zh") ? "zh" : "en";
}

let current = pickLang();

export function lang() {
  return current;
}

export function setLang(code) {
  current = code === "zh" ? "zh" : "en";
  localStorage.setItem(LANG_KEY, current);
  document.documentElement.lang = current === "zh" ? "zh-CN" : "en";
}

/**
 * The string `key` in the current language, with {placeholders} filled in.
 * @param {keyof typeof en} key
 * @param {Record<string, string|number>} [vars]
 */
export function t(key, vars = {}) {
  const s = LANGS[current][key] ?? en[key] ?? key;
  return s.replace(/\{(\w+)\}/g, (_, k) => String(vars[k] ?? ""));
}

/** "3 members", "1 member". */
export function memberCount(n) {
  return n === 1 ? t("memberOne") : t("memberCount", { n });
}

/** Times and days in the UI's language. */
export function formatTime(ts) {
  return new Date(ts).toLocaleTimeString(current === "zh" ? "zh-CN" : "en", {
    hour: "2-digit", minute: "2-digit",
  });
}

export function formatDay(ts, now = Date.now()) {
  const day = new Date(ts).toDateString();
  if (day === new Date(now).toDateString()) return t("today");
  if (day === new Date(now - 86400000).toDateString()) return t("yesterday");
  return new Date(ts).toLocaleDateString(current === "zh" ? "zh-CN" : "en", {
    year: "numeric", month: "short", day: "numeric",
  });
}

/** The sidebar's short time: the time today, else the date. */
export function formatShort(ts, now = Date.now()) {
  if (new Date(ts).toDateString() === new Date(now).toDateString()) return formatTime(ts);
  return new Date(ts).toLocaleDateString(current === "zh" ? "zh-CN" : "en", {
    month: "short", day: "numeric",
  });
}
