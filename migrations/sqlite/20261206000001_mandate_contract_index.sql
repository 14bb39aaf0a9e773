-- Console and ListMandates search by a merchant's contract id, with or without the merchant
-- (an institution-wide auditor looking a contract up); newest first like every listing.
CREATE INDEX mandates_contract ON mandates (contract_id, mandate_id);
