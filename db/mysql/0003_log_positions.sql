-- --log-order positions (docs/scaling.md, "Past the log lock"): batches take their
-- ids from this sequence, which holds no lock to commit, instead of the log_seq row.
-- Its start is moved past log_seq.last_id and every stored id by the migration's
-- Python step (storage/schema.py), and again at each start (Engine.sync_log_heads):
-- SETVAL takes a literal only. Values taken and not used are gaps, never reused.
CREATE SEQUENCE IF NOT EXISTS log_ids START WITH 1 INCREMENT BY 1 CACHE 1000 NOCYCLE;
-- Each node's position, written with its batch transactions (at most once a second
-- per row; one row per
-- batch slot, so that a node's overlapping batches never wait for each other's row
-- lock): no id at or below it can still commit from that node. The live positions
-- travel through Redis; these rows say where each node stood, for operators.
CREATE TABLE IF NOT EXISTS log_writers (
    node VARCHAR(64) NOT NULL,
    slot INT NOT NULL,
    position BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (node, slot)
) ENGINE=InnoDB;
