-- Zero-downtime rebuilds (projections/rebuild.py): one row per projection with the state of
-- its latest rebuild and the shadow build's own checkpoint, moved in the same transaction as
-- the shadow rows, so an interrupted rebuild resumes where it stopped.
CREATE TABLE rebuilds (
    projection   text PRIMARY KEY,
    state        text NOT NULL CHECK (state IN
                     ('requested', 'building', 'built', 'done', 'failed', 'discarded')),
    -- The projection code and table shape the shadow was built with; a resume with other
    -- code starts over rather than mix two versions in one shadow.
    version      text NOT NULL DEFAULT '',
    txid         bigint NOT NULL DEFAULT 0,
    position     bigint NOT NULL DEFAULT 0,
    events_done  bigint NOT NULL DEFAULT 0,
    events_total bigint NOT NULL DEFAULT 0,
    dry_run      boolean NOT NULL DEFAULT false,
    summary      jsonb,
    error        text,
    requested_at timestamptz,
    started_at   timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
