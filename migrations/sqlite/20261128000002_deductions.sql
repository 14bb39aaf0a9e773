-- Deductions, their usage counters, notices, refunds, one-off approvals and the wallet ledger.

-- When the mandate last collected: the dormancy period runs from here (kept beside the
-- document so a collection does not make a new mandate version).
ALTER TABLE mandates ADD COLUMN last_collected_at_us INTEGER;

CREATE TABLE deductions (
    deduction_id    TEXT    NOT NULL PRIMARY KEY,
    merchant_id     TEXT    NOT NULL,
    request_id      TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL,
    mandate_id      TEXT    NOT NULL REFERENCES mandates (mandate_id),
    payer_id        TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    bill_reference  TEXT    NOT NULL,
    created_at_us   INTEGER    NOT NULL,
    updated_at_us   INTEGER    NOT NULL,
    document        TEXT    NOT NULL,
    -- A request id names one deduction of its merchant, forever.
    CONSTRAINT deductions_request_unique UNIQUE (merchant_id, request_id)
);
CREATE INDEX deductions_by_bill ON deductions (mandate_id, bill_reference);
CREATE INDEX deductions_by_mandate ON deductions (mandate_id, deduction_id);
CREATE INDEX deductions_by_merchant ON deductions (merchant_id, deduction_id);
CREATE INDEX deductions_by_payer ON deductions (payer_id, deduction_id);

-- What each mandate has collected (or has in flight) per limit period and in its lifetime
-- ('total'): read and advanced in the deduction's transaction, so no decision scans history.
CREATE TABLE mandate_usage (
    mandate_id    TEXT    NOT NULL REFERENCES mandates (mandate_id),
    period_key    TEXT    NOT NULL,
    amount_minor  INTEGER    NOT NULL CHECK (amount_minor >= 0),
    debit_count   INTEGER    NOT NULL CHECK (debit_count >= 0),
    PRIMARY KEY (mandate_id, period_key)
);

CREATE TABLE notices (
    notice_id       TEXT    NOT NULL PRIMARY KEY,
    mandate_id      TEXT    NOT NULL REFERENCES mandates (mandate_id),
    merchant_id     TEXT    NOT NULL,
    request_id      TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL,
    used_by         TEXT,
    created_at_us   INTEGER    NOT NULL,
    document        TEXT    NOT NULL,
    CONSTRAINT notices_request_unique UNIQUE (merchant_id, request_id)
);
CREATE INDEX notices_by_mandate ON notices (mandate_id, notice_id);

CREATE TABLE refunds (
    refund_id       TEXT    NOT NULL PRIMARY KEY,
    deduction_id    TEXT    NOT NULL REFERENCES deductions (deduction_id),
    merchant_id     TEXT    NOT NULL,
    request_id      TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL,
    created_at_us   INTEGER    NOT NULL,
    document        TEXT    NOT NULL,
    CONSTRAINT refunds_request_unique UNIQUE (merchant_id, request_id)
);

CREATE TABLE approvals (
    approval_id     TEXT    NOT NULL PRIMARY KEY,
    mandate_id      TEXT    NOT NULL REFERENCES mandates (mandate_id),
    merchant_id     TEXT    NOT NULL,
    payer_id        TEXT    NOT NULL,
    request_id      TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    created_at_us   INTEGER    NOT NULL,
    document        TEXT    NOT NULL,
    CONSTRAINT approvals_request_unique UNIQUE (merchant_id, request_id)
);

-- Double-entry ledger: every movement's entries sum to zero, so all balances together sum to
-- zero; money enters through the external clearing account. Wallets never go negative.
CREATE TABLE ledger_accounts (
    account_id     TEXT    NOT NULL PRIMARY KEY,
    kind           TEXT    NOT NULL,
    currency       TEXT    NOT NULL,
    balance_minor  INTEGER    NOT NULL,
    CONSTRAINT ledger_wallet_not_negative CHECK (kind <> 'WALLET' OR balance_minor >= 0)
);

CREATE TABLE ledger_movements (
    movement_id    TEXT    NOT NULL PRIMARY KEY,
    kind           TEXT    NOT NULL,
    -- Idempotency for wallet credits: the operator's scope and request id.
    request_scope  TEXT,
    request_id     TEXT,
    fingerprint    TEXT,
    created_at_us  INTEGER    NOT NULL,
    CONSTRAINT ledger_movements_request_unique UNIQUE (request_scope, request_id)
);

CREATE TABLE ledger_entries (
    entry_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    movement_id    TEXT    NOT NULL REFERENCES ledger_movements (movement_id),
    account_id     TEXT    NOT NULL REFERENCES ledger_accounts (account_id),
    amount_minor   INTEGER    NOT NULL,
    created_at_us  INTEGER    NOT NULL
);
CREATE INDEX ledger_entries_by_account ON ledger_entries (account_id, entry_id);
