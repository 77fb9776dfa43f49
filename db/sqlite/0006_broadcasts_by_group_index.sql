-- On SQLite the broadcasts have their own partial index (messages_broadcasts, db/sqlite.sql),
-- which the reads keep using, and messages_kind went in migration 1 already: this
-- repeats that drop, and keeps the two dialects' numbers in step with the MariaDB
-- migration, which drops messages_kind there.
DROP INDEX IF EXISTS messages_kind;
