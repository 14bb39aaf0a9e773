-- Card charges sent (or about to be sent) to the bank, one per try of a card source. A charge
-- id is the bank's idempotency key: a crash or timeout is resolved by querying it, never by
-- charging again under a new id.
CREATE TABLE card_charges (
    charge_id       TEXT    NOT NULL PRIMARY KEY,
    deduction_id    TEXT    NOT NULL REFERENCES deductions (deduction_id),
    mandate_id      TEXT    NOT NULL REFERENCES mandates (mandate_id),
    source_index    INTEGER    NOT NULL,
    -- IN_FLIGHT (recorded, bank not answered yet), SUCCEEDED, DECLINED, UNKNOWN (timed out or
    -- PROCESSING at the bank).
    status          TEXT    NOT NULL,
    decline_code    TEXT,
    -- Resolver bookkeeping: how often the bank was queried, and when to query next (NULL once
    -- definite, or past the horizon: then reconciliation settles it).
    checks          INTEGER    NOT NULL DEFAULT 0,
    next_check_at_us INTEGER,
    created_at_us   INTEGER    NOT NULL,
    updated_at_us   INTEGER    NOT NULL,
    document        TEXT    NOT NULL
);
CREATE INDEX card_charges_to_check ON card_charges (next_check_at_us) WHERE next_check_at_us IS NOT NULL;
CREATE INDEX card_charges_by_deduction ON card_charges (deduction_id);
