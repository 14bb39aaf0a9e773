-- Events for callers (DESIGN §6a): one small row per mandate or deduction state change, written
-- in the transaction of the change, streamed by WatchEvents. Not the audit trail: rows older
-- than the retention are deleted.
-- Applied migrations are never edited: change the schema with a new file.

-- One writer commits every write in turn, so the order of `pos` is the order of commits: a
-- reader of `pos > cursor` sees every smaller position first. AUTOINCREMENT: a position is
-- never given twice, even after the newest rows were deleted.
CREATE TABLE events (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us INTEGER NOT NULL,
    merchant_id TEXT NOT NULL,
    payer_id TEXT NOT NULL,
    mandate_id TEXT NOT NULL,
    deduction_id TEXT,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    mandate_version INTEGER NOT NULL
);
CREATE INDEX events_by_merchant ON events (merchant_id, pos);
CREATE INDEX events_by_payer ON events (payer_id, pos);

-- `last_pos` is unused here (positions are given at insert); `deleted_through` is the last
-- position the retention sweep deleted (a cursor before it has lost events).
CREATE TABLE event_positions (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_pos INTEGER NOT NULL,
    deleted_through INTEGER NOT NULL
);
INSERT INTO event_positions (id, last_pos, deleted_through) VALUES (1, 0, 0);
