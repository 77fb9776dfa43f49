-- A group's unread count (storage/directory.py: kind = 2 AND group_id = ? AND id > ?
-- AND sender <> ?) read a table row per unread message to test kind and sender
-- (EXPLAIN: Using index condition; Using where). With both in the index it reads the
-- index alone (Using where; Using index), as do the group parts of the login backlog
-- and of cluster ack checks. kind comes second so that a range on id follows two
-- equalities. It serves every query messages_group (group_id, id) served, history
-- included (in id order, no sort), so it replaces it.
CREATE INDEX IF NOT EXISTS messages_group_unread ON messages (group_id, kind, id, sender);
DROP INDEX IF EXISTS messages_group ON messages;
