-- Finishing an expand–contract: a job with `where` sweeps its key range again after the
-- backfill (pass 2, 3, …) until a pass updates nothing; the counters at the start of the current
-- pass give that pass's own progress and updates. `pending_rows` is what the last pass or
-- `verify` found still matching `where`; `sync_installed_at` when the job's sync trigger was
-- first installed.
ALTER TABLE jobs
    ADD COLUMN pass                integer NOT NULL DEFAULT 1 CHECK (pass >= 1),
    ADD COLUMN scanned_before_pass bigint  NOT NULL DEFAULT 0,
    ADD COLUMN updated_before_pass bigint  NOT NULL DEFAULT 0,
    ADD COLUMN pending_rows        bigint,
    ADD COLUMN verified_at         timestamptz,
    ADD COLUMN sync_installed_at   timestamptz;
