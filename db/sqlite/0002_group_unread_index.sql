-- A group's unread count (storage/directory.py: kind = 2 AND group_id = ? AND id > ?
-- AND sender <> ?) read a table row per unread message to test its sender. With
-- sender and kind in the index it reads the index alone (EXPLAIN QUERY PLAN: USING
-- COVERING INDEX), as do the group parts of the login backlog and of cluster ack
-- checks. Still partial, so only group messages are written into it; kind is needed
-- in the columns even so, or SQLite does not count the index as covering. It serves
-- every query messages_group_log (group_id, id) served, history included, so it
-- replaces it: one index per group message, as before.
CREATE INDEX IF NOT EXISTS messages_group_unread ON messages (group_id, id, sender, kind)
    WHERE kind = 2;
DROP INDEX IF EXISTS messages_group_log;
