-- backfilld's earlier, hand-written runner kept its history in schema_migrations; sqlx's
-- migrator keeps it in _sqlx_migrations, in this schema too, so the old table would only
-- mislead. Unqualified on purpose: applied with search_path set to the daemon's schema alone,
-- this can never reach an application's own schema_migrations in another schema.
DROP TABLE IF EXISTS schema_migrations;
