-- The append-only event log, its attachments and the quarantine for bodies we cannot parse.

CREATE TABLE events (
    position    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The writing transaction's id: readers only pass events whose transaction is older
    -- than every transaction still running, so a late commit is never skipped
    -- (design.md invariant 4).
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    instance    text NOT NULL,
    type        text NOT NULL,
    dedupe_key  text NOT NULL UNIQUE,
    payload     jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX events_txid_position ON events (txid, position);
CREATE INDEX events_instance_position ON events (instance, position);

CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- Statement-level, so even an UPDATE or DELETE matching no row is refused.
CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- Inline media split out of payloads, stored once per distinct content.
CREATE TABLE attachments (
    sha256     text PRIMARY KEY,
    size       bigint NOT NULL,
    mimetype   text,
    data       bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Authenticated bodies that are not a JSON object with a string `event`: kept for inspection.
CREATE TABLE quarantine (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    path         text NOT NULL,
    content_type text,
    reason       text NOT NULL,
    body         bytea NOT NULL
);
