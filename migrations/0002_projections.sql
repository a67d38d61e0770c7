-- The messages projection (messages, chats, media), its change feed, checkpoint and parked events.

-- Where each projection has read up to: the (transaction id, position) of its last event.
CREATE TABLE checkpoints (
    projection text PRIMARY KEY,
    txid       bigint NOT NULL DEFAULT 0,
    position   bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO checkpoints (projection) VALUES ('messages');

-- One row per WhatsApp message that has arrived; `data` is the public message as returned and
-- pushed (contract section 3), `meta` the projection's own merge bookkeeping.
CREATE TABLE messages (
    instance   text NOT NULL,
    key_id     text NOT NULL,
    chat_jid   text,
    sent_at    timestamptz,
    data       jsonb NOT NULL,
    meta       jsonb NOT NULL DEFAULT '{}',
    position   bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, key_id)
);
CREATE INDEX messages_by_chat ON messages (instance, chat_jid, sent_at DESC, key_id DESC);

-- Statuses, edits, deletes and reactions whose message has not arrived yet (invariant 7).
CREATE TABLE message_holds (
    instance text NOT NULL,
    key_id   text NOT NULL,
    meta     jsonb NOT NULL DEFAULT '{}',
    held     jsonb NOT NULL,
    since    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, key_id)
);

CREATE TABLE chats (
    instance        text NOT NULL,
    chat_jid        text NOT NULL,
    last_message_at timestamptz,
    data            jsonb NOT NULL,
    meta            jsonb NOT NULL DEFAULT '{}',
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, chat_jid)
);
CREATE INDEX chats_by_activity ON chats (instance, last_message_at DESC NULLS LAST, chat_jid);

CREATE TABLE media (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance   text NOT NULL,
    key_id     text NOT NULL,
    status     text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'stored', 'failed')),
    mimetype   text,
    size       bigint,
    sha256     text,
    reason     text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (instance, key_id)
);

-- The change feed: every change a projection makes, with a cursor that increases in commit
-- order per instance. Writers take the instance's feed_heads row lock until they commit, so
-- a lower cursor can never become visible after a higher one.
CREATE TABLE feed_heads (
    instance text PRIMARY KEY,
    cursor   bigint NOT NULL
);
CREATE TABLE feed (
    instance   text NOT NULL,
    cursor     bigint NOT NULL,
    kind       text NOT NULL,
    key        text NOT NULL,
    data       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, cursor)
);
CREATE INDEX feed_by_age ON feed (created_at);

-- Events a projection could not apply, with the error; retried by `replay --parked`.
CREATE TABLE parked (
    projection text NOT NULL,
    position   bigint NOT NULL,
    error      text NOT NULL,
    attempts   int NOT NULL DEFAULT 1,
    parked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, position)
);
