-- A random name for this database's feed in Redis channel names (pipeline/fanout.py). Redis
-- pub/sub channels are shared by every client of a server, whatever database number each
-- uses: without it, two deployments on one Redis (staging beside production, `make test`
-- beside `make run`) would push each other's frames to their WebSocket clients.
CREATE TABLE feed_scope (id text NOT NULL);
INSERT INTO feed_scope VALUES (replace(gen_random_uuid()::text, '-', ''));
