-- qqchat schema for SQLite. Applied at every start; every statement is idempotent.

CREATE TABLE IF NOT EXISTS users (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    pw_hash     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    -- highest message id the user has acknowledged (F7); everything above it is resent at login
    acked       INTEGER NOT NULL DEFAULT 0
);

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
    created_at  INTEGER NOT NULL
);

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
CREATE UNIQUE INDEX IF NOT EXISTS messages_cid ON messages (sender, cid);
CREATE INDEX IF NOT EXISTS messages_recipient ON messages (recipient, id);
CREATE INDEX IF NOT EXISTS messages_conv ON messages (sender, recipient, id);
CREATE INDEX IF NOT EXISTS messages_group ON messages (group_id, id);
CREATE INDEX IF NOT EXISTS messages_kind ON messages (kind, id);

CREATE TABLE IF NOT EXISTS log_seq (
    id          INTEGER PRIMARY KEY,
    last_id     INTEGER NOT NULL
);
INSERT OR IGNORE INTO log_seq (id, last_id) VALUES (1, 0);
