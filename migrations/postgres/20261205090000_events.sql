-- Events for callers (DESIGN §6a): one small row per mandate or deduction state change, written
-- in the transaction of the change, streamed by WatchEvents. Not the audit trail: rows older
-- than the retention are deleted.
-- Applied migrations are never edited: change the schema with a new file.

-- `seq` is taken at insert, while the transaction holds the mandate's row lock, so one
-- mandate's rows are numbered in commit order. It becomes visible only at commit, so readers
-- never use it: `pos`, the delivery position, is given after commit by one sequencer at a time
-- (the lock on `event_positions`), to committed rows in `seq` order, and each sequencer's
-- positions commit at once, above every earlier one: a reader of `pos > cursor` can never see
-- a position before a smaller one commits.
CREATE TABLE events (
    seq BIGSERIAL PRIMARY KEY,
    pos BIGINT,
    at_us BIGINT NOT NULL,
    merchant_id TEXT NOT NULL,
    payer_id TEXT NOT NULL,
    mandate_id TEXT NOT NULL,
    deduction_id TEXT,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    mandate_version BIGINT NOT NULL
);
-- By position: the sequencer finds rows without one here (NULLs), the retention sweep the oldest.
CREATE INDEX events_by_pos ON events (pos);
CREATE INDEX events_by_merchant ON events (merchant_id, pos);
CREATE INDEX events_by_payer ON events (payer_id, pos);

-- The last position given, and the last one the retention sweep deleted (a cursor before it
-- has lost events).
CREATE TABLE event_positions (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_pos BIGINT NOT NULL,
    deleted_through BIGINT NOT NULL
);
INSERT INTO event_positions (id, last_pos, deleted_through) VALUES (1, 0, 0);
