-- Canonical bill keys, the facts of the suspected-refund-recovery rule, merchant policies,
-- replayable wallet credits, and range checks on stored sums.
-- Applied migrations are never edited: change the schema with a new file.

-- The canonical bill key (DESIGN §5 "the same bill") is what the duplicate-bill and clawback
-- rules compare; the reference is kept as the merchant sent it. References are identifiers
-- ([A-Za-z0-9._:-]), so the key is the reference in lower case without its separators
-- (domain::bill::BillKey, which new rows are written with).
ALTER TABLE deductions ADD COLUMN bill_key TEXT NOT NULL DEFAULT '';
UPDATE deductions SET bill_key =
    lower(replace(replace(replace(replace(bill_reference, '-', ''), '_', ''), '.', ''), ':', ''));
DROP INDEX deductions_by_bill;
CREATE INDEX deductions_by_bill_key ON deductions (mandate_id, bill_key);

-- A bill announced by a notice before a refund is not suspected of recovering it.
ALTER TABLE notices ADD COLUMN bill_key TEXT NOT NULL DEFAULT '';
UPDATE notices SET bill_key = lower(replace(replace(replace(replace(
    json_extract(document, '$.bill_reference'), '-', ''), '_', ''), '.', ''), ':', ''));
CREATE INDEX notices_by_bill_key ON notices (mandate_id, bill_key, created_at_us);

-- Refunds by mandate, time and amount: a later debit of a refunded amount under a bill never
-- collected or announced is suspected of recovering the refund. `refunded_total_minor` is the
-- deduction's refunded total after this refund (a refund in parts matches the whole too).
ALTER TABLE refunds ADD COLUMN mandate_id TEXT NOT NULL DEFAULT '';
ALTER TABLE refunds ADD COLUMN amount_minor INTEGER NOT NULL DEFAULT 0;
ALTER TABLE refunds ADD COLUMN refunded_total_minor INTEGER NOT NULL DEFAULT 0;
-- Stored amounts are canonical decimal text with exactly the currency's decimals ("12.30").
UPDATE refunds SET
    mandate_id = (SELECT d.mandate_id FROM deductions d WHERE d.deduction_id = refunds.deduction_id),
    amount_minor = CAST(replace(json_extract(document, '$.amount.amount'), '.', '') AS INTEGER);
UPDATE refunds SET refunded_total_minor = (
    SELECT SUM(r.amount_minor) FROM refunds r
    WHERE r.deduction_id = refunds.deduction_id
      AND (r.created_at_us < refunds.created_at_us
           OR (r.created_at_us = refunds.created_at_us AND r.refund_id <= refunds.refund_id)));
CREATE INDEX refunds_by_mandate ON refunds (mandate_id, created_at_us);

-- When the mandate last refunded: a deduction reads the refunds only within the look-back
-- window after it, so mandates without recent refunds pay nothing for the rule.
ALTER TABLE mandates ADD COLUMN last_refunded_at_us INTEGER;
UPDATE mandates SET last_refunded_at_us =
    (SELECT MAX(r.created_at_us) FROM refunds r WHERE r.mandate_id = mandates.mandate_id);

-- Per-merchant policy, set by operators. `document` is the policy as JSON.
CREATE TABLE merchant_policies (
    merchant_id    TEXT    NOT NULL PRIMARY KEY,
    version        INTEGER NOT NULL,
    updated_at_us  INTEGER NOT NULL,
    document       TEXT    NOT NULL
);

-- A wallet credit's answer (the wallet's balance right after it), replayed to a retry.
ALTER TABLE ledger_movements ADD COLUMN result_minor INTEGER;

-- SQLite turns an integer sum past 64 bits into a float instead of failing: a balance update
-- that would do so is refused, so a balance never silently stops being exact (storage/errors.rs
-- maps this message to a clear refusal). Only updates can overflow (an insert stores one bound
-- 64-bit amount), and mandate usage needs no trigger: a deduction whose lifetime total would
-- not fit is declined before it is written (domain/deduction.rs), and a period's usage is
-- part of the lifetime's. One trigger, because each one runs on every balance update of a
-- deduction, on the single writer.
CREATE TRIGGER ledger_accounts_in_range BEFORE UPDATE OF balance_minor ON ledger_accounts
WHEN typeof(NEW.balance_minor) <> 'integer'
BEGIN
    SELECT RAISE(ABORT, 'out of range: a ledger balance would pass 64 bits');
END;
