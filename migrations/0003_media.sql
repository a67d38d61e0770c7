-- Media storage: attempts and the storage key on each media row; large attachments in chunks.

-- attempts counts tries of the media actor (reset by `replay --media failed`); storage_key is
-- the content-addressed key the bytes were stored under (the sha256 of the bytes).
ALTER TABLE media
    ADD COLUMN attempts    int NOT NULL DEFAULT 0,
    ADD COLUMN storage_key text;

-- Which media are waiting or failed, for status, replay and the worker's sweep.
CREATE INDEX media_by_status ON media (status, updated_at) WHERE status <> 'stored';

-- A large attachment is stored as ordered chunks instead of one bytea value: psycopg2 sends
-- a bytea parameter hex-escaped (twice its size) and reads one back whole, so a 50 MB video
-- would need several copies of itself in memory at once. `attachments.data` is NULL then.
ALTER TABLE attachments ALTER COLUMN data DROP NOT NULL;

CREATE TABLE attachment_chunks (
    sha256 text NOT NULL REFERENCES attachments (sha256) ON DELETE CASCADE,
    seq    int NOT NULL,
    data   bytea NOT NULL,
    PRIMARY KEY (sha256, seq)
);
