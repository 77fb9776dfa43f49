-- qqchat schema for SQLite: the baseline, migration 1. Later changes are the numbered
-- files in db/sqlite/; every statement is idempotent.

CREATE TABLE IF NOT EXISTS users (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    pw_hash     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    -- highest message id the user has acknowledged (F7); everything above it is resent at login
    acked       INTEGER NOT NULL DEFAULT 0,
    -- the name folded (NFKC, case fold) for search; qqchat/names.py says how
    name_key    TEXT    NOT NULL DEFAULT '',
    -- 1: may broadcast (with --broadcast admins); set with qqchat-admin
    is_admin    INTEGER NOT NULL DEFAULT 0,
    -- 1: cannot log in; disabled_at (ms) lets every daemon find and end its session
    disabled    INTEGER NOT NULL DEFAULT 0,
    disabled_at INTEGER NOT NULL DEFAULT 0,
    last_login  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS users_disabled_at ON users (disabled_at);
-- one account per folded name (R7); also what user_search reads, in (name_key, id) order
CREATE UNIQUE INDEX IF NOT EXISTS users_name_key ON users (name_key);

-- Session tokens (login with remember): only a hash of the token is kept.
CREATE TABLE IF NOT EXISTS session_tokens (
    hash        TEXT    PRIMARY KEY,
    user_id     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    last_used   INTEGER NOT NULL,
    -- last_used + --token-ttl: a token lapses after that long unused
    expires_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS session_tokens_user ON session_tokens (user_id);

CREATE TABLE IF NOT EXISTS friends (
    user_id     INTEGER NOT NULL,
    friend_id   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (user_id, friend_id)
);

CREATE TABLE IF NOT EXISTS friend_requests (
    from_id     INTEGER NOT NULL,
    to_id       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (from_id, to_id)
);
CREATE INDEX IF NOT EXISTS friend_requests_to ON friend_requests (to_id);

CREATE TABLE IF NOT EXISTS chat_groups (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    descr       TEXT    NOT NULL DEFAULT '',
    creator     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    name_key    TEXT    NOT NULL DEFAULT '',
    -- id of the group's newest message (0: none yet), for the conversation list
    last_id     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS chat_groups_by_key ON chat_groups (name_key, id);
-- groups a user created, counted against --max-groups-created
CREATE INDEX IF NOT EXISTS chat_groups_creator ON chat_groups (creator);

CREATE TABLE IF NOT EXISTS group_members (
    group_id    INTEGER NOT NULL,
    user_id     INTEGER NOT NULL,
    role        TEXT    NOT NULL,
    -- log position at join: a member receives the group's messages after it only
    since_id    INTEGER NOT NULL,
    joined_at   INTEGER NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX IF NOT EXISTS group_members_user ON group_members (user_id);

-- The durable message log (F7). kind: 1 one-to-one, 2 group, 3 broadcast.
-- Ids come from log_seq inside the writing transaction, so they commit in id order.
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY,
    kind        INTEGER NOT NULL,
    sender      INTEGER NOT NULL,
    recipient   INTEGER,
    group_id    INTEGER,
    body        TEXT    NOT NULL,
    ts          INTEGER NOT NULL,
    cid         TEXT
);
-- Partial indexes: a message is written into only the indexes of its kind, which
-- is most of what a commit costs. (Replaces the full indexes of earlier versions.)
DROP INDEX IF EXISTS messages_cid;
DROP INDEX IF EXISTS messages_recipient;
DROP INDEX IF EXISTS messages_conv;
DROP INDEX IF EXISTS messages_group;
DROP INDEX IF EXISTS messages_kind;
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_cid ON messages (sender, cid)
    WHERE cid IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_direct_to ON messages (recipient, id) WHERE kind = 1;
CREATE INDEX IF NOT EXISTS messages_direct_conv ON messages (sender, recipient, id)
    WHERE kind = 1;
CREATE INDEX IF NOT EXISTS messages_group_log ON messages (group_id, id) WHERE kind = 2;
CREATE INDEX IF NOT EXISTS messages_broadcasts ON messages (id) WHERE kind = 3;

-- New messages are written here first, without the indexes above: a commit of
-- fifty messages to fifty people then writes two or three pages, not one index
-- page per recipient and conversation. The daemon moves them into `messages` in
-- bulk (every thousand rows, and before any read of the log), where each index
-- page takes many rows at once. Same columns, same ids.
CREATE TABLE IF NOT EXISTS messages_recent (
    id          INTEGER PRIMARY KEY,
    kind        INTEGER NOT NULL,
    sender      INTEGER NOT NULL,
    recipient   INTEGER,
    group_id    INTEGER,
    body        TEXT    NOT NULL,
    ts          INTEGER NOT NULL,
    cid         TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_recent_by_cid ON messages_recent (sender, cid)
    WHERE cid IS NOT NULL;
-- (what a stop left there is moved at start, by qqchat/storage/schema.py)
-- the whole log, for reading by hand
CREATE VIEW IF NOT EXISTS message_log AS
    SELECT * FROM messages UNION ALL SELECT * FROM messages_recent;

-- One row per one-to-one conversation and side: the conversation list (K3) reads
-- a user's newest conversations from here instead of scanning the log. Kept up
-- to date as staged messages move into `messages`.
CREATE TABLE IF NOT EXISTS conversations (
    user_id     INTEGER NOT NULL,
    peer_id     INTEGER NOT NULL,
    last_id     INTEGER NOT NULL,
    PRIMARY KEY (user_id, peer_id)
);
CREATE INDEX IF NOT EXISTS conversations_recent ON conversations (user_id, last_id);

CREATE TABLE IF NOT EXISTS log_seq (
    id          INTEGER PRIMARY KEY,
    last_id     INTEGER NOT NULL
);
INSERT OR IGNORE INTO log_seq (id, last_id) VALUES (1, 0);
