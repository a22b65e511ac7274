-- The definition as its author last gave it (a job file, a submission, a replacement), before
-- any PATCH: a foreground `run` compares its file with it to tell a value the file changed
-- (the file wins) from one an operator changed over the API since (the live value wins).
-- NULL for jobs submitted before this migration: for them the stored definition stands in.
ALTER TABLE jobs ADD COLUMN authored_spec jsonb;
