-- Mandates, their versions, idempotency keys and the append-only audit trail.
-- Applied migrations are never edited: change the schema with a new file.

-- The current state of each mandate. `document` is the whole mandate as JSON; the columns
-- beside it are what queries filter and sort on.
CREATE TABLE mandates (
    mandate_id          TEXT    NOT NULL PRIMARY KEY,
    merchant_id         TEXT    NOT NULL,
    contract_id         TEXT    NOT NULL,
    payer_id            TEXT    NOT NULL,
    status              TEXT    NOT NULL,
    version             BIGINT  NOT NULL,
    create_fingerprint  TEXT    NOT NULL,
    expires_at_us       BIGINT,
    created_at_us       BIGINT  NOT NULL,
    updated_at_us       BIGINT  NOT NULL,
    document            TEXT    NOT NULL,
    CONSTRAINT mandates_contract_unique UNIQUE (merchant_id, contract_id)
);
CREATE INDEX mandates_by_merchant ON mandates (merchant_id, mandate_id);
CREATE INDEX mandates_by_payer ON mandates (payer_id, mandate_id);
CREATE INDEX mandates_by_expiry ON mandates (expires_at_us) WHERE expires_at_us IS NOT NULL;

-- Every version a mandate has had, for reading it as it stood at any past time.
CREATE TABLE mandate_versions (
    mandate_id      TEXT    NOT NULL REFERENCES mandates (mandate_id),
    version         BIGINT  NOT NULL,
    recorded_at_us  BIGINT  NOT NULL,
    document        TEXT    NOT NULL,
    PRIMARY KEY (mandate_id, version)
);

-- Request ids of mandate writes and what they produced.
CREATE TABLE idempotency_keys (
    scope            TEXT    NOT NULL,
    request_id       TEXT    NOT NULL,
    fingerprint      TEXT    NOT NULL,
    mandate_id       TEXT    NOT NULL REFERENCES mandates (mandate_id),
    mandate_version  BIGINT  NOT NULL,
    created_at_us    BIGINT  NOT NULL,
    PRIMARY KEY (scope, request_id)
);

-- The last position and hash of each audit chain; its row lock orders appends to the chain.
CREATE TABLE audit_chain_heads (
    chain_id   TEXT    NOT NULL PRIMARY KEY,
    last_seq   BIGINT  NOT NULL,
    last_hash  TEXT    NOT NULL
);

CREATE TABLE audit_events (
    seq            BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain_id       TEXT    NOT NULL,
    chain_seq      BIGINT  NOT NULL,
    at_us          BIGINT  NOT NULL,
    actor_role     TEXT    NOT NULL,
    actor_subject  TEXT    NOT NULL,
    merchant_id    TEXT,
    payer_id       TEXT,
    mandate_id     TEXT,
    deduction_id   TEXT,
    action         TEXT    NOT NULL,
    outcome        TEXT    NOT NULL,
    reason_code    TEXT,
    request_id     TEXT,
    details        TEXT    NOT NULL,
    prev_hash      TEXT    NOT NULL,
    hash           TEXT    NOT NULL,
    CONSTRAINT audit_events_chain_position UNIQUE (chain_id, chain_seq)
);
CREATE INDEX audit_events_by_merchant ON audit_events (merchant_id, seq);
CREATE INDEX audit_events_by_payer ON audit_events (payer_id, seq);
CREATE INDEX audit_events_by_action ON audit_events (action, seq);

-- Append-only, enforced by the database itself (TRUNCATE included).
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_events_no_update_delete BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
