-- The conversation list (conversations) is caught up from the log in bulk rather than
-- written by each batch, in --log-order lock: the upsert was the costliest part of a
-- chat batch's transaction (docs/benchmarks.md). The mark is the greatest message id
-- whose conversation rows are written; the messages above it are derived by the next
-- catch-up (storage/log.py, LogStore.derive_conversations), which a reader of the list
-- waits for. Until now every batch wrote its rows: the mark starts at the newest id.
CREATE TABLE IF NOT EXISTS log_derived (
    id INT NOT NULL PRIMARY KEY,
    conversations BIGINT NOT NULL
) ENGINE=InnoDB;
INSERT IGNORE INTO log_derived (id, conversations)
    SELECT 1, GREATEST(COALESCE(MAX(id), 0),
                       COALESCE((SELECT last_id FROM log_seq WHERE id = 1), 0))
    FROM messages;
