-- The fourth live tunable: `duty_cycle` in whole hundredths (50 for 0.5), read under every
-- batch's fence like the others. NULL is 1, no rest sized from the batches; no job stored
-- before this migration has one.
ALTER TABLE jobs
    ADD COLUMN duty_cycle_percent smallint CHECK (duty_cycle_percent BETWEEN 1 AND 100);
