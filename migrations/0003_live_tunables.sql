-- The tunables an operator changes on a live job, in typed columns: every batch reads them
-- under its fence, and a value that cannot be used is refused when it is written, not parsed
-- (and perhaps ignored) by each batch. `spec` keeps the same values for the job view; the
-- default is the job format's default batch size.
ALTER TABLE jobs
    ADD COLUMN batch_size      integer NOT NULL DEFAULT 1000 CHECK (batch_size > 0),
    ADD COLUMN rows_per_second integer CHECK (rows_per_second > 0),
    ADD COLUMN pause_us        bigint  CHECK (pause_us >= 0);

-- Jobs submitted before this migration: their tunables as their spec says.
UPDATE jobs
   SET batch_size = coalesce((spec ->> 'batch_size')::integer, 1000),
       rows_per_second = (spec ->> 'rows_per_second')::integer,
       pause_us = (extract(epoch FROM (spec ->> 'pause')::interval) * 1000000)::bigint;
