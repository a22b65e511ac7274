-- Notifications (`[[notify]]` in the config): each event of a kind an endpoint asked for becomes
-- one delivery row, claimed by one replica at a time (FOR UPDATE SKIP LOCKED and a claim that
-- expires), marked delivered once the endpoint answered 2xx, else retried with backoff. The
-- primary key is what keeps two replicas from queueing the same notification twice.
--
-- An endpoint is known by a digest of its URL: webhook URLs carry secrets, which stay out of
-- the database. `since_event_id` is where an endpoint started: it is told of the events after
-- it was configured, not of the whole history.
CREATE TABLE notify_endpoints (
    endpoint        text PRIMARY KEY,
    since_event_id  bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE deliveries (
    event_id        bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    endpoint        text NOT NULL REFERENCES notify_endpoints (endpoint) ON DELETE CASCADE,
    attempts        integer NOT NULL DEFAULT 0,
    -- Not before then: the backoff after a failed attempt.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- A replica is sending it until then (its claim); a claim that expired is free again.
    claimed_until   timestamptz,
    claim_token     uuid,
    delivered_at    timestamptz,
    last_error      text,
    PRIMARY KEY (event_id, endpoint)
);

CREATE INDEX deliveries_due ON deliveries (endpoint, next_attempt_at) WHERE delivered_at IS NULL;
-- Finding the events an endpoint has not queued yet walks the events of the notified kinds.
CREATE INDEX events_by_kind ON events (kind, id);
