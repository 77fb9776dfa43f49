-- qqchat schema for MySQL / MariaDB (InnoDB, utf8mb4): the baseline, migration 1.
-- Later changes are the numbered files in db/mysql/; every statement is idempotent.

CREATE TABLE IF NOT EXISTS users (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name        VARCHAR(64)  NOT NULL,
    pw_hash     VARCHAR(255) NOT NULL,
    created_at  BIGINT       NOT NULL,
    -- highest message id the user has acknowledged (F7); everything above it is resent at login
    acked       BIGINT       NOT NULL DEFAULT 0,
    -- the name folded (NFKC, case fold) for search; binary, so a prefix range is exact
    name_key    VARBINARY(512) NOT NULL DEFAULT '',
    -- 1: may broadcast (with --broadcast admins); set with qqchat-admin
    is_admin    TINYINT NOT NULL DEFAULT 0,
    -- 1: cannot log in; disabled_at (ms) lets every daemon find and end its session
    disabled    TINYINT NOT NULL DEFAULT 0,
    disabled_at BIGINT  NOT NULL DEFAULT 0,
    last_login  BIGINT  NOT NULL DEFAULT 0,
    UNIQUE KEY users_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- one account per folded name (R7); also what user_search reads, in (name_key, id) order
CREATE UNIQUE INDEX IF NOT EXISTS users_name_key ON users (name_key);
CREATE INDEX IF NOT EXISTS users_disabled_at ON users (disabled_at);

-- Session tokens (login with remember): only a hash of the token is kept.
CREATE TABLE IF NOT EXISTS session_tokens (
    hash        CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    user_id     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    last_used   BIGINT NOT NULL,
    -- last_used + --token-ttl: a token lapses after that long unused
    expires_at  BIGINT NOT NULL,
    KEY session_tokens_user (user_id)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS friends (
    user_id     BIGINT NOT NULL,
    friend_id   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, friend_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS friend_requests (
    from_id     BIGINT NOT NULL,
    to_id       BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (from_id, to_id),
    KEY friend_requests_to (to_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS chat_groups (
    id          BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name        VARCHAR(64)   NOT NULL,
    descr       VARCHAR(1024) NOT NULL DEFAULT '',
    creator     BIGINT        NOT NULL,
    created_at  BIGINT        NOT NULL,
    name_key    VARBINARY(1024) NOT NULL DEFAULT '',
    -- id of the group's newest message (0: none yet), for the conversation list
    last_id     BIGINT        NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX IF NOT EXISTS chat_groups_by_key ON chat_groups (name_key, id);
-- groups a user created, counted against --max-groups-created
CREATE INDEX IF NOT EXISTS chat_groups_creator ON chat_groups (creator);

CREATE TABLE IF NOT EXISTS group_members (
    group_id    BIGINT      NOT NULL,
    user_id     BIGINT      NOT NULL,
    role        VARCHAR(16) NOT NULL,
    -- log position at join: a member receives the group's messages after it only
    since_id    BIGINT      NOT NULL,
    joined_at   BIGINT      NOT NULL,
    PRIMARY KEY (group_id, user_id),
    KEY group_members_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The durable message log (F7). kind: 1 one-to-one, 2 group, 3 broadcast.
-- Ids come from log_seq inside the writing transaction, whose row lock makes
-- ids commit in id order even when several daemons write at once.
CREATE TABLE IF NOT EXISTS messages (
    id          BIGINT      NOT NULL PRIMARY KEY,
    kind        TINYINT     NOT NULL,
    sender      BIGINT      NOT NULL,
    recipient   BIGINT      NULL,
    group_id    BIGINT      NULL,
    body        TEXT        NOT NULL,
    ts          BIGINT      NOT NULL,
    -- binary: client ids compare byte for byte (a PAD SPACE collation would make 'x' = 'x ')
    cid         VARBINARY(256) NULL,
    UNIQUE KEY messages_cid (sender, cid),
    KEY messages_recipient (recipient, id),
    KEY messages_conv (sender, recipient, id),
    KEY messages_group (group_id, id),
    KEY messages_kind (kind, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per one-to-one conversation and side: the conversation list (K3) reads
-- a user's newest conversations from here instead of scanning the log. Written
-- in the same transaction as the messages.
CREATE TABLE IF NOT EXISTS conversations (
    user_id     BIGINT NOT NULL,
    peer_id     BIGINT NOT NULL,
    last_id     BIGINT NOT NULL,
    PRIMARY KEY (user_id, peer_id),
    KEY conversations_recent (user_id, last_id)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS log_seq (
    id          INT    NOT NULL PRIMARY KEY,
    last_id     BIGINT NOT NULL
) ENGINE=InnoDB;
INSERT IGNORE INTO log_seq (id, last_id) VALUES (1, 0);
