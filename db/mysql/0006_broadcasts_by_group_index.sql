-- messages_kind (kind, id) served one read: others' broadcasts after an id, in a
-- login's backlog and in a checked ack. Those reads now name the broadcasts as
-- group_id IS NULL AND kind = 3 (storage/log.py), a range of messages_group_unread
-- (group_id, kind, id, sender), which every message is written into anyway; InnoDB
-- has no partial indexes, so messages_kind took an entry for every message, direct
-- and group ones included, for the sake of the rare broadcast.
DROP INDEX IF EXISTS messages_kind ON messages;
