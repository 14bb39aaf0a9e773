-- Compliance queries (AuditService): a mandate's and a deduction's events, and every refused or
-- flagged attempt. Applied migrations are never edited: change the schema with a new file.

CREATE INDEX audit_events_by_mandate ON audit_events (mandate_id, seq);
CREATE INDEX audit_events_by_deduction ON audit_events (deduction_id, seq)
    WHERE deduction_id IS NOT NULL;
-- Few rows (refusals and flags), so this costs a deduction that is approved nothing.
CREATE INDEX audit_events_blocked ON audit_events (seq) WHERE outcome IN ('DENIED', 'FLAGGED');
