-- On SQLite the conversation list is derived when staged messages move (engines/sqlite.py):
-- the migration only keeps the two dialects' numbers in step, with the table the
-- MariaDB one adds (unused on SQLite).
CREATE TABLE IF NOT EXISTS log_derived (
    id INTEGER NOT NULL PRIMARY KEY,
    conversations INTEGER NOT NULL
);
