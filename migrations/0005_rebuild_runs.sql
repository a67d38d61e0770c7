-- Where the latest run of a rebuild started, in time and in events, so its rate is its own
-- when it resumed a shadow (after a dry run or an interruption). Old code leaves them unset.
ALTER TABLE rebuilds
    ADD COLUMN run_started_at timestamptz,
    ADD COLUMN run_from       bigint NOT NULL DEFAULT 0;
