-- --log-order positions runs on MariaDB only (SQLite has one writer, so its batches
-- always commit in id order): here the migration only keeps the two dialects'
-- numbers in step, with the table the MariaDB one adds (unused on SQLite).
CREATE TABLE IF NOT EXISTS log_writers (
    node TEXT NOT NULL,
    slot INTEGER NOT NULL,
    position INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (node, slot)
);
