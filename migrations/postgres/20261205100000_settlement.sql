-- Daily settlement and bank reconciliation (DESIGN §6b).
-- Applied migrations are never edited: change the schema with a new file.

-- Each merchant's settlement schedule (its business day's cut-off and time zone), set by
-- operators; a merchant without a row has the default (midnight, Asia/Shanghai).
CREATE TABLE settlement_schedules (
    merchant_id    TEXT    NOT NULL PRIMARY KEY,
    version        BIGINT  NOT NULL,
    updated_at_us  BIGINT  NOT NULL,
    document       TEXT    NOT NULL
);

-- A summary reads deductions and refunds by time, and a statement our card charges by day.
CREATE INDEX deductions_by_created ON deductions (created_at_us, deduction_id);
CREATE INDEX refunds_by_created ON refunds (created_at_us, refund_id);
CREATE INDEX card_charges_by_created ON card_charges (created_at_us);

-- Each bank statement imported, once per content (its SHA-256): importing the same file again
-- answers what the first import found.
CREATE TABLE statement_imports (
    import_id         TEXT    NOT NULL PRIMARY KEY,
    statement_day     TEXT    NOT NULL,
    digest            TEXT    NOT NULL,
    line_count        BIGINT  NOT NULL,
    found_count       BIGINT  NOT NULL,
    new_count         BIGINT  NOT NULL,
    actor_subject     TEXT    NOT NULL,
    created_at_us     BIGINT  NOT NULL,
    CONSTRAINT statement_imports_digest_unique UNIQUE (statement_day, digest)
);

-- One row per charge and kind, whichever statement found it first; never updated. Whether
-- it is resolved is read from its resolutions.
CREATE TABLE discrepancies (
    discrepancy_id     TEXT    NOT NULL PRIMARY KEY,
    kind               TEXT    NOT NULL,
    charge_id          TEXT    NOT NULL,
    statement_day      TEXT    NOT NULL,
    merchant_id        TEXT,
    deduction_id       TEXT,
    import_id          TEXT    NOT NULL REFERENCES statement_imports (import_id),
    created_at_us      BIGINT  NOT NULL,
    document           TEXT    NOT NULL,
    CONSTRAINT discrepancies_charge_kind_unique UNIQUE (charge_id, kind)
);
CREATE INDEX discrepancies_by_day ON discrepancies (statement_day, discrepancy_id);
CREATE INDEX discrepancies_by_merchant ON discrepancies (merchant_id, discrepancy_id);

-- What operators did about a discrepancy, each step its own row, keyed by the operator's
-- request id. At most one row settles it (`settles` = 1).
CREATE TABLE discrepancy_resolutions (
    resolution_id      TEXT    NOT NULL PRIMARY KEY,
    discrepancy_id     TEXT    NOT NULL REFERENCES discrepancies (discrepancy_id),
    request_scope      TEXT    NOT NULL,
    request_id         TEXT    NOT NULL,
    fingerprint        TEXT    NOT NULL,
    action             TEXT    NOT NULL,
    settles            BIGINT  NOT NULL,
    created_at_us      BIGINT  NOT NULL,
    document           TEXT    NOT NULL,
    CONSTRAINT discrepancy_resolutions_request_unique UNIQUE (request_scope, request_id)
);
CREATE UNIQUE INDEX discrepancy_resolutions_one_final
    ON discrepancy_resolutions (discrepancy_id) WHERE settles = 1;
CREATE INDEX discrepancy_resolutions_by_discrepancy
    ON discrepancy_resolutions (discrepancy_id, created_at_us);

-- Like audit events, discrepancies and their resolutions are never changed once written.
CREATE FUNCTION reconciliation_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER discrepancies_no_update_delete BEFORE UPDATE OR DELETE ON discrepancies
    FOR EACH ROW EXECUTE FUNCTION reconciliation_append_only();
CREATE TRIGGER discrepancy_resolutions_no_update_delete
    BEFORE UPDATE OR DELETE ON discrepancy_resolutions
    FOR EACH ROW EXECUTE FUNCTION reconciliation_append_only();
