-- A group's members_version goes up with every change of its members (a join, a
-- leave: storage/groups.py), in the same transaction. A group message's transaction
-- reads it and reuses the members it read for an earlier message of the group when
-- it has not moved, instead of reading a row per member every time
-- (storage/log.py, LogStore._members_of).
ALTER TABLE chat_groups ADD COLUMN IF NOT EXISTS members_version BIGINT NOT NULL DEFAULT 0;
