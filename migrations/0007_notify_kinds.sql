-- The kinds of event each notification endpoint asks for, each with where it started. An
-- endpoint is known by a digest of its URL alone, so editing its `events` keeps its undelivered
-- backlog; a kind added later starts from the events after it was added (it does not replay
-- that kind's history), and a kind removed is forgotten (its row and its undelivered deliveries
-- are dropped when a replica registers the new list), so adding it back starts afresh too.
CREATE TABLE notify_kinds (
    endpoint        text NOT NULL REFERENCES notify_endpoints (endpoint) ON DELETE CASCADE,
    kind            text NOT NULL,
    since_event_id  bigint NOT NULL,
    PRIMARY KEY (endpoint, kind)
);
