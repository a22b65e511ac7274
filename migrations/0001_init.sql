-- backfilld's own state. Applied with search_path set to the daemon's schema (default
-- `backfilld`), so every name below lands there and never next to the application's tables.
-- IF NOT EXISTS throughout: a database migrated by backfilld's earlier, hand-written runner
-- already has all of this, and there this migration must be a no-op that loses nothing.

-- One row per submitted job definition.
CREATE TABLE IF NOT EXISTS jobs (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    -- The definition as submitted (the job file's fields); PATCH rewrites its tunables.
    spec            jsonb NOT NULL,
    state           text NOT NULL
                    CHECK (state IN ('queued', 'running', 'paused', 'completed', 'failed', 'cancelled')),
    -- Rows in the table when the job was planned: the denominator of progress.
    estimated_rows  bigint NOT NULL DEFAULT 0,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per key range of a job. The cursor moves only in the transaction that updated the
-- rows it covers, and only while the lease token matches (fencing).
CREATE TABLE IF NOT EXISTS progress (
    job_id              bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    partition_index     integer NOT NULL,
    -- Bounds on the first key column, as text: keys in (lower_bound, upper_bound].
    -- NULL means unbounded; the last partition has no upper bound.
    lower_bound         text,
    upper_bound         text,
    -- The last key processed, one text element per key column; NULL before the first batch.
    cursor              text[],
    state               text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done')),
    rows_scanned        bigint NOT NULL DEFAULT 0,
    rows_updated        bigint NOT NULL DEFAULT 0,
    batches             bigint NOT NULL DEFAULT 0,
    -- The lease: who holds the range, the fencing token, and until when. A lease is also dead
    -- as soon as the holder's presence session (pid + backend_start) is gone.
    lease_owner         text,
    lease_token         uuid,
    lease_expires_at    timestamptz,
    lease_backend_pid   integer,
    lease_backend_start timestamptz,
    started_at          timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, partition_index)
);

CREATE INDEX IF NOT EXISTS progress_claimable ON progress (job_id) WHERE state = 'pending';

-- Every submission and state change, with who asked.
CREATE TABLE IF NOT EXISTS events (
    id          bigserial PRIMARY KEY,
    job_id      bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text NOT NULL,
    kind        text NOT NULL,
    from_state  text,
    to_state    text,
    detail      text
);

CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, id);
