//! The deduction store logic both backends share, expanded per backend like `sql.rs`. The one
//! difference is `$for_update`: PostgreSQL locks the mandate and wallet rows it reads
//! (`FOR UPDATE`); SQLite's single writer already serialises every write transaction.

use jiff::Timestamp;

use super::plan::{Bind, Plan, values};
use super::rows::{encode, micros};
use super::{DeductionWrites, LedgerMove, StoreError};
use crate::domain::deduction::{ChargeStatus, DebitRequest};
use crate::domain::mandate::Mandate;

/// What a deduction asks, as the reads of its facts need it.
pub struct Asked<'a> {
    pub request: &'a DebitRequest,
    pub now: Timestamp,
    /// The start of the suspected-refund-recovery look-back window.
    pub refunds_since: Timestamp,
}

impl Asked<'_> {
    /// Whether the suspected-refund-recovery facts are read: only for a mandate that refunded
    /// within the window (most never did, and pay nothing for the rule), and never for a debit
    /// under a one-off approval (the payer's own consent).
    pub fn reads_recovery(&self, mandate: &Mandate) -> bool {
        self.request.approval_id.is_none()
            && mandate
                .last_refund_at
                .is_some_and(|at| at >= self.refunds_since)
    }
}

/// SQL both backends accept. Statements that lock take the backend's suffix at expansion.
pub mod query {
    pub const EXISTING_DEDUCTION: &str =
        "SELECT document, fingerprint FROM deductions WHERE merchant_id = $1 AND request_id = $2";
    pub const MANDATE_FOR_DEDUCTION: &str = "SELECT document, last_collected_at_us, \
        last_refunded_at_us FROM mandates WHERE mandate_id = $1";
    /// Earlier deductions of the same bill, by its canonical key.
    pub const BILL_STATUSES: &str =
        "SELECT status FROM deductions WHERE mandate_id = $1 AND bill_key = $2";
    /// What the suspected-refund-recovery rule reads: the earliest refund on the mandate since
    /// `$2` of the amount `$3` (or taking its deduction's refunded total to `$3`), when a notice
    /// first announced the bill `$4`, and the merchant's policy.
    pub const RECOVERY_FACTS: &str = "SELECT \
        (SELECT MIN(created_at_us) FROM refunds WHERE mandate_id = $1 AND created_at_us >= $2 \
            AND (amount_minor = $3 OR refunded_total_minor = $3)), \
        (SELECT MIN(created_at_us) FROM notices WHERE mandate_id = $1 AND bill_key = $4), \
        (SELECT document FROM merchant_policies WHERE merchant_id = $5)";
    /// A notice's `used_by` column is authoritative (its document keeps the value at creation).
    pub const NOTICE_ON_MANDATE: &str =
        "SELECT document, used_by FROM notices WHERE notice_id = $1 AND mandate_id = $2";
    pub const APPROVAL_ON_MANDATE: &str =
        "SELECT document FROM approvals WHERE approval_id = $1 AND mandate_id = $2";
    /// The usage rows of a period and of the mandate's lifetime (`total`), in one statement.
    pub const USAGES: &str = "SELECT period_key, amount_minor, debit_count FROM mandate_usage \
        WHERE mandate_id = $1 AND period_key IN ($2, 'total')";
    pub const BALANCE: &str = "SELECT balance_minor FROM ledger_accounts WHERE account_id = $1";
    pub const INSERT_DEDUCTION: &str = "INSERT INTO deductions \
        (deduction_id, merchant_id, request_id, fingerprint, mandate_id, payer_id, status, bill_reference, \
         created_at_us, updated_at_us, document, bill_key) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
    /// Advances usage rows by an amount and one debit; the rows (mandate, period key, amount,
    /// 1) are pushed after it, all in one statement.
    pub const ADVANCE_USAGE: &str =
        "INSERT INTO mandate_usage (mandate_id, period_key, amount_minor, debit_count) ";
    pub const ADVANCE_USAGE_CONFLICT: &str = " ON CONFLICT (mandate_id, period_key) DO UPDATE SET \
        amount_minor = mandate_usage.amount_minor + excluded.amount_minor, \
        debit_count = mandate_usage.debit_count + 1";
    pub const USE_NOTICE: &str =
        "UPDATE notices SET used_by = $1 WHERE notice_id = $2 AND used_by IS NULL";
    pub const RELEASE_NOTICE: &str =
        "UPDATE notices SET used_by = NULL WHERE notice_id = $1 AND used_by = $2";
    pub const RELEASE_USAGE: &str = "UPDATE mandate_usage SET amount_minor = amount_minor - $1, \
        debit_count = debit_count - 1 WHERE mandate_id = $2 AND period_key = $3";
    pub const INSERT_CHARGE: &str = "INSERT INTO card_charges \
        (charge_id, deduction_id, mandate_id, source_index, status, decline_code, checks, next_check_at_us, \
         created_at_us, updated_at_us, document) VALUES ($1, $2, $3, $4, $5, NULL, 0, $6, $7, $7, $8)";
    pub const CHARGE: &str =
        "SELECT document, status, checks FROM card_charges WHERE charge_id = $1";
    pub const UPDATE_CHARGE: &str = "UPDATE card_charges SET status = $1, decline_code = $2, \
        checks = checks + $3, next_check_at_us = $4, updated_at_us = $5 WHERE charge_id = $6";
    pub const CHARGES_DUE: &str = "SELECT document FROM card_charges \
        WHERE next_check_at_us IS NOT NULL AND next_check_at_us <= $1 ORDER BY next_check_at_us LIMIT $2";
    pub const CHARGES_OPEN_SINCE: &str = "SELECT document FROM card_charges \
        WHERE next_check_at_us IS NOT NULL AND created_at_us <= $1 ORDER BY next_check_at_us LIMIT $2";
    pub const NEXT_CHARGE_CHECK: &str =
        "SELECT MIN(next_check_at_us) FROM card_charges WHERE next_check_at_us IS NOT NULL";
    pub const TOTAL_USAGE: &str = "SELECT amount_minor, debit_count FROM mandate_usage WHERE mandate_id = $1 AND period_key = 'total'";
    pub const SET_APPROVAL: &str =
        "UPDATE approvals SET status = $1, document = $2 WHERE approval_id = $3 AND status = $4";
    pub const COLLECTED: &str =
        "UPDATE mandates SET last_collected_at_us = $1, expires_at_us = $2 WHERE mandate_id = $3";
    /// Creates the account with `$4`, or adds `$4` to its balance.
    pub const UPSERT_BALANCE: &str = "INSERT INTO ledger_accounts (account_id, kind, currency, balance_minor) \
        VALUES ($1, $2, $3, $4) ON CONFLICT (account_id) DO UPDATE \
        SET balance_minor = ledger_accounts.balance_minor + excluded.balance_minor";
    pub const MOVE_BALANCE: &str =
        "UPDATE ledger_accounts SET balance_minor = balance_minor + $1 WHERE account_id = $2";
    pub const INSERT_MOVEMENT: &str = "INSERT INTO ledger_movements \
        (movement_id, kind, request_scope, request_id, fingerprint, created_at_us) VALUES ($1, $2, $3, $4, $5, $6)";
    pub const EXISTING_CREDIT: &str = "SELECT fingerprint, result_minor FROM ledger_movements \
        WHERE request_scope = $1 AND request_id = $2";
    pub const SET_CREDIT_RESULT: &str =
        "UPDATE ledger_movements SET result_minor = $1 WHERE movement_id = $2";
    /// A movement's two entries.
    pub const INSERT_ENTRIES: &str = "INSERT INTO ledger_entries (movement_id, account_id, amount_minor, created_at_us) \
        VALUES ($1, $2, $3, $4), ($1, $5, $6, $4)";
    pub const DEDUCTION: &str = "SELECT document FROM deductions WHERE deduction_id = $1";
    pub const UPDATE_DEDUCTION: &str = "UPDATE deductions SET status = $1, updated_at_us = $2, document = $3 WHERE deduction_id = $4";
    pub const EXISTING_REFUND: &str =
        "SELECT document, fingerprint FROM refunds WHERE merchant_id = $1 AND request_id = $2";
    pub const INSERT_REFUND: &str = "INSERT INTO refunds \
        (refund_id, deduction_id, merchant_id, request_id, fingerprint, created_at_us, document, \
         mandate_id, amount_minor, refunded_total_minor) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
    pub const DEDUCTION_MANDATE: &str = "SELECT mandate_id FROM deductions WHERE deduction_id = $1";
    pub const REFUNDED: &str = "UPDATE mandates SET last_refunded_at_us = $1 WHERE mandate_id = $2";
    pub const INSERT_NOTICE: &str = "INSERT INTO notices \
        (notice_id, mandate_id, merchant_id, request_id, fingerprint, used_by, created_at_us, document, \
         bill_key) \
        VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $8) ON CONFLICT (merchant_id, request_id) DO NOTHING";
    pub const EXISTING_NOTICE: &str =
        "SELECT document, fingerprint FROM notices WHERE merchant_id = $1 AND request_id = $2";
    pub const INSERT_APPROVAL: &str = "INSERT INTO approvals \
        (approval_id, mandate_id, merchant_id, payer_id, request_id, fingerprint, status, created_at_us, document) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (merchant_id, request_id) DO NOTHING";
    pub const EXISTING_APPROVAL: &str =
        "SELECT document, fingerprint FROM approvals WHERE merchant_id = $1 AND request_id = $2";
    pub const APPROVAL: &str = "SELECT document FROM approvals WHERE approval_id = $1";
    pub const MERCHANT_POLICY: &str =
        "SELECT document FROM merchant_policies WHERE merchant_id = $1";
    pub const INSERT_POLICY: &str = "INSERT INTO merchant_policies \
        (merchant_id, version, updated_at_us, document) VALUES ($1, $2, $3, $4) \
        ON CONFLICT (merchant_id) DO NOTHING";
    pub const UPDATE_POLICY: &str = "UPDATE merchant_policies \
        SET version = $1, updated_at_us = $2, document = $3 WHERE merchant_id = $4 AND version = $5";
}

/// Plans the writes of a decision whose outcome is known in advance: the deduction, usage, the
/// ledger movement, card charge records and the collection time.
pub fn plan_writes(
    plan: &mut Plan,
    writes: &DeductionWrites,
    fingerprint: Option<&str>,
) -> Result<(), StoreError> {
    let d = &writes.deduction;
    let document = encode(d)?;
    let mandate_id = d.mandate_id.as_str();
    let amount = d.request.amount.minor();
    match fingerprint {
        Some(fingerprint) => plan.push(
            query::INSERT_DEDUCTION,
            vec![
                d.id.clone().into(),
                d.merchant_id.as_str().into(),
                d.request_id.clone().into(),
                fingerprint.into(),
                mandate_id.into(),
                d.payer_id.as_str().into(),
                d.status.as_str().into(),
                d.request.bill_reference.as_str().into(),
                micros(d.created_at).into(),
                micros(d.updated_at).into(),
                document.into(),
                d.request.bill_reference.key().as_str().into(),
            ],
            1,
        ),
        None => plan.push(
            query::UPDATE_DEDUCTION,
            vec![
                d.status.as_str().into(),
                micros(d.updated_at).into(),
                document.into(),
                d.id.clone().into(),
            ],
            1,
        ),
    }
    if !writes.usage_keys.is_empty() {
        let mut binds: Vec<Bind> = Vec::with_capacity(writes.usage_keys.len() * 4);
        for key in &writes.usage_keys {
            binds.extend([
                mandate_id.into(),
                key.clone().into(),
                amount.into(),
                Bind::Int(1),
            ]);
        }
        let rows = writes.usage_keys.len();
        plan.push(
            format!(
                "{}{}{}",
                query::ADVANCE_USAGE,
                values(4, rows),
                query::ADVANCE_USAGE_CONFLICT
            ),
            binds,
            u64::try_from(rows).unwrap_or(u64::MAX),
        );
    }
    for key in &writes.release_usage {
        plan.push(
            query::RELEASE_USAGE,
            vec![amount.into(), mandate_id.into(), key.clone().into()],
            1,
        );
    }
    if let Some(movement) = &writes.ledger {
        plan_move(plan, movement, None, d.updated_at);
    }
    if let Some(charge) = &writes.new_charge {
        plan.push(
            query::INSERT_CHARGE,
            vec![
                charge.id.clone().into(),
                charge.deduction_id.clone().into(),
                charge.mandate_id.as_str().into(),
                i64::try_from(charge.source_index)
                    .unwrap_or(i64::MAX)
                    .into(),
                ChargeStatus::InFlight.as_str().into(),
                writes.new_charge_check_at.map(micros).into(),
                micros(charge.created_at).into(),
                encode(charge)?.into(),
            ],
            1,
        );
    }
    if let Some(update) = &writes.charge_update {
        plan.push(
            query::UPDATE_CHARGE,
            vec![
                update.status.as_str().into(),
                update.decline_code.clone().into(),
                i64::from(update.checked).into(),
                update.next_check_at.map(micros).into(),
                micros(d.updated_at).into(),
                update.charge_id.clone().into(),
            ],
            1,
        );
    }
    if let Some((at, expires_at)) = writes.collected {
        plan.push(
            query::COLLECTED,
            vec![
                micros(at).into(),
                expires_at.map(micros).into(),
                mandate_id.into(),
            ],
            1,
        );
    }
    Ok(())
}

/// Plans one double-entry movement: the movement, both balances, and its two entries, which sum
/// to zero. A wallet that would go negative fails the balance `CHECK` and aborts the whole
/// transaction. Rows are taken wallet first, the order a deduction takes them in (it reads the
/// wallet `FOR UPDATE` before deciding), then by account id, so two movements between the same
/// accounts in opposite directions (a card settlement and a card refund) take their row locks
/// in the same order and never deadlock.
/// The mandate's new state and its version row, the update conditional on the version the
/// decision read (`read_version`): each statement changes one row, or the mandate has moved on.
pub fn plan_mandate_change(
    plan: &mut Plan,
    changed: &Mandate,
    read_version: i64,
) -> Result<(), StoreError> {
    let doc = super::rows::encode_mandate(changed)?;
    plan.push(
        super::rows::query::UPDATE_MANDATE,
        vec![
            changed.status.as_str().into(),
            changed.version.into(),
            Bind::OptInt(None),
            micros(changed.updated_at).into(),
            doc.clone().into(),
            changed.id.as_str().into(),
            read_version.into(),
        ],
        1,
    );
    plan.push(
        super::rows::query::INSERT_VERSION,
        vec![
            changed.id.as_str().into(),
            changed.version.into(),
            micros(changed.updated_at).into(),
            doc.into(),
        ],
        1,
    );
    Ok(())
}

pub fn plan_move(
    plan: &mut Plan,
    movement: &LedgerMove,
    request: Option<(&str, &str, &str)>,
    at: Timestamp,
) {
    let at = micros(at);
    let (scope, request_id, fingerprint) = match request {
        Some((s, r, f)) => (Some(s), Some(r), Some(f)),
        None => (None, None, None),
    };
    plan.push(
        query::INSERT_MOVEMENT,
        vec![
            movement.movement_id.clone().into(),
            movement.kind.into(),
            scope.into(),
            request_id.into(),
            fingerprint.into(),
            at.into(),
        ],
        1,
    );
    let mut sides = [
        (&movement.from, -movement.amount_minor),
        (&movement.to, movement.amount_minor),
    ];
    sides.sort_by(|(a, _), (b, _)| {
        (a.kind != "WALLET", a.id.as_str()).cmp(&(b.kind != "WALLET", b.id.as_str()))
    });
    for (account, amount) in sides {
        if amount < 0 && account.kind == "WALLET" {
            // Debiting a wallet: it exists (its balance covered the amount), so exactly one
            // row changes. An upsert would check the CHECK against its negative insert values
            // first.
            plan.push(
                query::MOVE_BALANCE,
                vec![amount.into(), account.id.clone().into()],
                1,
            );
        } else {
            plan.push(
                query::UPSERT_BALANCE,
                vec![
                    account.id.clone().into(),
                    account.kind.into(),
                    account.currency.code().into(),
                    amount.into(),
                ],
                1,
            );
        }
    }
    plan.push(
        query::INSERT_ENTRIES,
        vec![
            movement.movement_id.clone().into(),
            movement.from.id.clone().into(),
            (-movement.amount_minor).into(),
            at.into(),
            movement.to.id.clone().into(),
            movement.amount_minor.into(),
        ],
        2,
    );
}

macro_rules! impl_deduction_store {
    ($store:ty, $db:ty, $tx:ty, $for_update:literal) => {
        impl $store {
            /// The mandate, locked for the rest of the transaction (the statement of
            /// `query::MANDATE_FOR_DEDUCTION` with the backend's lock suffix).
            const LOCK_MANDATE: &'static str = concat!(
                "SELECT document, last_collected_at_us, last_refunded_at_us FROM mandates WHERE mandate_id = $1",
                $for_update
            );
            /// A wallet's balance, locked (`query::BALANCE` with the lock suffix).
            const LOCK_BALANCE: &'static str =
                concat!("SELECT balance_minor FROM ledger_accounts WHERE account_id = $1", $for_update);

            /// Reads what a deduction is judged on — bill history, the notice and approval it
            /// names, usage, and (with `wallet`, locked) the payer's wallet balance — as one
            /// batch of reads; with `chain_head`, also the head of the mandate's audit chain.
            async fn gather_facts(
                conn: &mut <$db as sqlx::Database>::Connection,
                mandate: &$crate::domain::mandate::Mandate,
                asked: &$crate::storage::deduction_sql::Asked<'_>,
                wallet: Option<&str>,
                chain_head: bool,
            ) -> Result<
                ($crate::domain::deduction::Facts, i64, Option<$crate::storage::ChainHead>),
                $crate::storage::StoreError,
            > {
                let reads = Self::fact_reads(mandate, asked, wallet, chain_head);
                let mut results = Self::read_batch(conn, reads).await?.into_iter();
                Self::facts_from(&mut results, mandate, asked, wallet.is_some(), chain_head)
            }

            /// The reads of `gather_facts`, in the order `facts_from` takes their results.
            fn fact_reads(
                mandate: &$crate::domain::mandate::Mandate,
                asked: &$crate::storage::deduction_sql::Asked<'_>,
                wallet: Option<&str>,
                chain_head: bool,
            ) -> $crate::storage::plan::Plan {
                use $crate::storage::deduction_sql::query;
                let (request, now) = (asked.request, asked.now);
                let id = mandate.id.as_str();
                let period = $crate::domain::deduction::period_key(mandate, now);
                let mut reads = $crate::storage::plan::Plan::default();
                let bill_key = request.bill_reference.key();
                reads.read(query::BILL_STATUSES, vec![id.into(), bill_key.as_str().into()]);
                if asked.reads_recovery(mandate) {
                    reads.read(
                        query::RECOVERY_FACTS,
                        vec![
                            id.into(),
                            $crate::storage::rows::micros(asked.refunds_since).into(),
                            request.amount.minor().into(),
                            bill_key.as_str().into(),
                            mandate.merchant_id.as_str().into(),
                        ],
                    );
                }
                // Without a limit period only the lifetime row is asked for (twice over).
                reads.read(query::USAGES, vec![id.into(), period.as_deref().unwrap_or("total").into()]);
                if let Some(notice_id) = &request.notice_id {
                    reads.read(query::NOTICE_ON_MANDATE, vec![notice_id.as_str().into(), id.into()]);
                }
                if let Some(approval_id) = &request.approval_id {
                    reads.read(query::APPROVAL_ON_MANDATE, vec![approval_id.as_str().into(), id.into()]);
                }
                if let Some(wallet) = wallet {
                    reads.read(
                        Self::LOCK_BALANCE,
                        vec![wallet.into()],
                    );
                }
                if chain_head {
                    reads.read(
                        $crate::storage::rows::query::CHAIN_HEAD,
                        vec![$crate::domain::audit::mandate_chain_id(id).into()],
                    );
                }
                reads
            }

            /// The facts from the results of `fact_reads` (taken from `results` in order).
            fn facts_from(
                results: &mut impl Iterator<Item = Vec<<$db as sqlx::Database>::Row>>,
                mandate: &$crate::domain::mandate::Mandate,
                asked: &$crate::storage::deduction_sql::Asked<'_>,
                wallet: bool,
                chain_head: bool,
            ) -> Result<
                ($crate::domain::deduction::Facts, i64, Option<$crate::storage::ChainHead>),
                $crate::storage::StoreError,
            > {
                use sqlx::Row as _;
                use $crate::domain::deduction::{BillHistory, DeductionStatus, NoticeFacts, Usage};
                use $crate::storage::rows::decode;
                let (request, now) = (asked.request, asked.now);
                let period = $crate::domain::deduction::period_key(mandate, now);
                let mut next = || results.next().ok_or_else(|| $crate::storage::StoreError::Corrupt("a read batch came back short".into()));
                let mut bill = BillHistory::New;
                for row in next()? {
                    let status: String = row.try_get(0)?;
                    match DeductionStatus::parse(&status) {
                        Some(DeductionStatus::Refunded | DeductionStatus::PartiallyRefunded) => {
                            bill = BillHistory::Refunded;
                        }
                        Some(
                            DeductionStatus::Succeeded | DeductionStatus::Processing | DeductionStatus::PendingConfirmation,
                        ) if bill == BillHistory::New => bill = BillHistory::Collected,
                        Some(_) => {}
                        None => return Err($crate::storage::StoreError::Corrupt(format!("deduction status {status}"))),
                    }
                }
                let mut recovery = None;
                if asked.reads_recovery(mandate) {
                    let rows = next()?;
                    let row = rows.first().ok_or_else(|| {
                        $crate::storage::StoreError::Corrupt("the recovery facts came back empty".into())
                    })?;
                    let refund_at: Option<i64> = row.try_get(0)?;
                    let announced_at: Option<i64> = row.try_get(1)?;
                    let policy: Option<String> = row.try_get(2)?;
                    recovery = Some($crate::domain::deduction::RecoveryFacts {
                        matching_refund_at: refund_at.map($crate::storage::rows::timestamp).transpose()?,
                        bill_announced_at: announced_at.map($crate::storage::rows::timestamp).transpose()?,
                        policy: match policy {
                            Some(doc) => decode::<$crate::domain::policy::MerchantPolicy>(&doc)?.suspected_refund_recovery,
                            None => $crate::domain::policy::RecoveryPolicy::Flag,
                        },
                    });
                }
                let (mut period_usage, mut total_usage) = (Usage::default(), Usage::default());
                for row in next()? {
                    let key: String = row.try_get(0)?;
                    let usage = Usage { amount_minor: row.try_get(1)?, count: row.try_get(2)? };
                    if key == "total" {
                        total_usage = usage;
                    }
                    if Some(&key) == period.as_ref() {
                        period_usage = usage;
                    }
                }
                let mut notice = None;
                if request.notice_id.is_some() {
                    if let Some(row) = next()?.first() {
                        let used_by: Option<String> = row.try_get(1)?;
                        let n: $crate::domain::deduction::Notice = decode(&row.try_get::<String, _>(0)?)?;
                        notice = Some(NoticeFacts { amount: n.amount, created_at: n.created_at, used: used_by.is_some() });
                    }
                }
                let mut approval = None;
                if request.approval_id.is_some() {
                    if let Some(row) = next()?.first() {
                        let a: $crate::domain::deduction::Approval = decode(&row.try_get::<String, _>(0)?)?;
                        approval = Some(a.facts());
                    }
                }
                let mut balance = 0;
                if wallet {
                    if let Some(row) = next()?.first() {
                        balance = row.try_get(0)?;
                    }
                }
                let mut head = None;
                if chain_head {
                    let (last_seq, last_hash) = match next()?.first() {
                        Some(row) => (row.try_get(0)?, row.try_get(1)?),
                        None => (0, $crate::domain::audit::GENESIS_HASH.to_owned()),
                    };
                    let chain_id = $crate::domain::audit::mandate_chain_id(mandate.id.as_str());
                    head = Some($crate::storage::ChainHead { chain_id, last_seq, last_hash });
                }
                let facts = $crate::domain::deduction::Facts {
                    now,
                    bill,
                    notice,
                    period_usage,
                    total_usage,
                    approval,
                    recovery,
                };
                Ok((facts, balance, head))
            }

            async fn load_mandate_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: &$crate::domain::ids::MandateId,
                lock: bool,
            ) -> Result<Option<$crate::domain::mandate::Mandate>, $crate::storage::StoreError> {
                use $crate::storage::deduction_sql::query;
                let sql = if lock { Self::LOCK_MANDATE } else { query::MANDATE_FOR_DEDUCTION };
                let row: Option<(String, Option<i64>, Option<i64>)> =
                    sqlx::query_as(sql).bind(id.as_str()).fetch_optional(&mut *conn).await?;
                row.map(|(doc, collected, refunded)| {
                    $crate::storage::rows::decode_current_mandate(&doc, collected, refunded)
                })
                .transpose()
            }

            /// Writes everything a decision decided. `fingerprint` is set for a new deduction
            /// (inserted) and absent for one that is settled (updated). The writes whose outcome
            /// is known in advance go out as one plan (one trip on SQLite); the few that may
            /// find they lost a race (a notice or approval used, the mandate's version) follow
            /// one by one. Where rows are locked the audit events come last; under a single
            /// writer they go in the plan.
            async fn apply_writes(
                tx: &mut $tx,
                writes: &$crate::storage::DeductionWrites,
                mandate_version: i64,
                fingerprint: Option<&str>,
                mut chain_head: Option<$crate::storage::ChainHead>,
            ) -> Result<(), $crate::storage::StoreError> {
                use $crate::storage::deduction_sql::query;
                use $crate::storage::rows::encode;
                let d = &writes.deduction;
                let mut plan = $crate::storage::plan::Plan::default();
                $crate::storage::deduction_sql::plan_writes(&mut plan, writes, fingerprint)?;
                if Self::SERIAL_WRITER {
                    // No row locks to order: the audit rows ride in the same plan.
                    Self::plan_audits(&mut **tx, &writes.audits, &mut plan, &mut chain_head).await?;
                    if writes.notice_released.is_none() && writes.approval_used.is_none() {
                        // Nothing can come between the facts and these writes under the one
                        // writer, so the writes that could lose a race elsewhere cannot here:
                        // planned too, each to change its one row, and the whole plan is
                        // left to run with the writer's next statement.
                        if let Some(notice_id) = &writes.notice_used {
                            plan.push(query::USE_NOTICE, vec![d.id.clone().into(), notice_id.clone().into()], 1);
                        }
                        if let Some(changed) = &writes.mandate {
                            $crate::storage::deduction_sql::plan_mandate_change(&mut plan, changed, mandate_version)?;
                        }
                        return Self::defer_plan(tx, plan).await;
                    }
                }
                if fingerprint.is_some() {
                    // A new deduction's plan inserts new rows and changes rows this
                    // transaction has locked (the mandate, its usage under the mandate's lock,
                    // the wallet read `FOR UPDATE`), but for one: the merchant's settlement
                    // sub-account. With one lock to take, the order cannot matter: one trip.
                    Self::run_plan_at_once(&mut **tx, plan).await?;
                } else {
                    // A card settlement moves money between two accounts it has not locked
                    // (the card clearing account, the merchant's sub-account): in the plan's
                    // order (wallet first, then by id), statement by statement.
                    Self::run_plan(&mut **tx, plan).await?;
                }
                if let Some(notice_id) = &writes.notice_used {
                    let used = sqlx::query(query::USE_NOTICE).bind(&d.id).bind(notice_id).execute(&mut **tx).await?;
                    if used.rows_affected() != 1 {
                        return Err($crate::storage::StoreError::Conflict);
                    }
                }
                if let Some(notice_id) = &writes.notice_released {
                    sqlx::query(query::RELEASE_NOTICE).bind(notice_id).bind(&d.id).execute(&mut **tx).await?;
                }
                if let Some(approval_id) = &writes.approval_used {
                    let row: Option<(String,)> = sqlx::query_as(query::APPROVAL_ON_MANDATE)
                        .bind(approval_id)
                        .bind(d.mandate_id.as_str())
                        .fetch_optional(&mut **tx)
                        .await?;
                    if let Some((doc,)) = row {
                        let mut approval: $crate::domain::deduction::Approval = $crate::storage::rows::decode(&doc)?;
                        approval.status = $crate::domain::deduction::ApprovalStatus::Used;
                        approval.used_by = Some(d.id.clone());
                        let used = sqlx::query(query::SET_APPROVAL)
                            .bind(approval.status.as_str())
                            .bind(encode(&approval)?)
                            .bind(approval_id)
                            .bind($crate::domain::deduction::ApprovalStatus::Approved.as_str())
                            .execute(&mut **tx)
                            .await?;
                        if used.rows_affected() != 1 {
                            return Err($crate::storage::StoreError::Conflict);
                        }
                    }
                }
                if let Some(changed) = &writes.mandate {
                    // Conditional on the version read: a concurrent change makes it a conflict.
                    let mut change = $crate::storage::plan::Plan::default();
                    $crate::storage::deduction_sql::plan_mandate_change(&mut change, changed, mandate_version)?;
                    for statement in change.statements {
                        let done = $crate::storage::plan::query::<$db>(statement.sql.into_owned(), statement.binds)
                            .execute(&mut **tx)
                            .await?;
                        if done.rows_affected() != statement.rows {
                            return Err($crate::storage::StoreError::Conflict);
                        }
                    }
                }
                if !Self::SERIAL_WRITER {
                    // Audit chain heads are locked last, as by every other write (a refund takes
                    // the ledger rows, then the chain): taken before the ledger rows, a deduction
                    // and a refund on one mandate could each hold what the other waits for.
                    Self::append_audits_in(tx, &writes.audits).await?;
                }
                Ok(())
            }

            async fn apply_move(
                conn: &mut <$db as sqlx::Database>::Connection,
                movement: &$crate::storage::LedgerMove,
                request: Option<(&str, &str, &str)>,
                at: jiff::Timestamp,
            ) -> Result<(), $crate::storage::StoreError> {
                let mut plan = $crate::storage::plan::Plan::default();
                $crate::storage::deduction_sql::plan_move(&mut plan, movement, request, at);
                Self::run_plan(conn, plan).await
            }
        }

        #[async_trait::async_trait]
        impl $crate::storage::DeductionStore for $store {
            async fn execute_deduction(
                &self,
                input: &$crate::storage::DeductionInput,
                decide: $crate::storage::Decide<'_>,
            ) -> Result<$crate::storage::Executed, $crate::storage::StoreError> {
                use $crate::storage::deduction_sql::query;
                use $crate::storage::rows::decode;
                use $crate::storage::Executed;
                use sqlx::Row as _;
                let wallet_of = |mandate: &$crate::domain::mandate::Mandate| {
                    $crate::storage::Account::wallet(&mandate.payer_id, mandate.terms.currency).id
                };
                // Under a single writer nothing can move the chain's head before the writes:
                // read with the facts, it saves the trip that would take it then.
                let asked = $crate::storage::deduction_sql::Asked {
                    request: &input.request,
                    now: input.now,
                    refunds_since: input.refunds_since,
                };
                let fact_reads = |mandate: &$crate::domain::mandate::Mandate, wallet: &str| {
                    Self::fact_reads(mandate, &asked, Some(wallet), Self::SERIAL_WRITER)
                };
                let seen_wallet = wallet_of(&input.seen);
                let sent = fact_reads(&input.seen, &seen_wallet);
                let mut tx = self.begin_deferred().await?;
                // Lock the mandate first: a concurrent request with the same key then either
                // committed before (its deduction is visible to the second read) or waits
                // behind this one. The facts the mandate as the caller saw it calls for are
                // read in the same batch: one trip, unless the mandate has changed since.
                let mut reads = $crate::storage::plan::Plan::default();
                reads.read(
                    Self::LOCK_MANDATE,
                    vec![input.mandate_id.as_str().into()],
                );
                reads.read(query::EXISTING_DEDUCTION, vec![input.merchant_id.as_str().into(), input.request_id.as_str().into()]);
                reads.statements.extend(sent.statements.iter().cloned());
                let mut results = Self::read_batch_first(&mut tx, reads).await?.into_iter();
                let (Some(mandate), Some(existing)) = (results.next(), results.next()) else {
                    return Err($crate::storage::StoreError::Corrupt("a read batch came back short".into()));
                };
                if let Some(row) = existing.first() {
                    let (doc, fingerprint): (String, String) = (row.try_get(0)?, row.try_get(1)?);
                    tx.rollback().await?;
                    return Ok(Executed::Existing { deduction: Box::new(decode(&doc)?), fingerprint });
                }
                let Some(row) = mandate.first() else {
                    tx.rollback().await?;
                    return Ok(Executed::MandateNotFound);
                };
                let mandate = $crate::storage::rows::decode_current_mandate(
                    &row.try_get::<String, _>(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                )?;
                let wallet = wallet_of(&mandate);
                let (facts, balance, head) = if fact_reads(&mandate, &wallet) == sent {
                    Self::facts_from(&mut results, &mandate, &asked, true, Self::SERIAL_WRITER)?
                } else {
                    // The mandate changed since the caller read it, and so did what its facts
                    // are: read them again.
                    Self::gather_facts(&mut tx, &mandate, &asked, Some(&wallet), Self::SERIAL_WRITER)
                        .await?
                };
                let writes = decide(&mandate, &facts, balance);
                Self::apply_writes(&mut tx, &writes, mandate.version, Some(&input.fingerprint), head).await?;
                tx.commit().await?;
                Ok(Executed::New(Box::new(writes.deduction), writes.new_charge))
            }

            async fn settle_charge(
                &self,
                charge_id: &str,
                decide: $crate::storage::Settle<'_>,
            ) -> Result<
                Option<($crate::domain::deduction::Deduction, Option<$crate::domain::deduction::CardCharge>)>,
                $crate::storage::StoreError,
            > {
                use $crate::domain::deduction::{CardCharge, ChargeStatus, Deduction, Usage};
                use $crate::storage::deduction_sql::query;
                use $crate::storage::rows::decode;
                let mut tx = self.begin_write().await?;
                let row: Option<(String, String, i64)> =
                    sqlx::query_as(query::CHARGE).bind(charge_id).fetch_optional(&mut *tx).await?;
                let Some((doc, _, _)) = row else {
                    tx.rollback().await?;
                    return Ok(None);
                };
                let charge: CardCharge = decode(&doc)?;
                // Lock the mandate (usage, consumption) before reading anything else, as a new
                // deduction does; then read the charge's status again under that lock.
                let Some(mandate) = Self::load_mandate_in(&mut tx, &charge.mandate_id, true).await? else {
                    return Err($crate::storage::StoreError::Corrupt(format!("charge {charge_id} names a missing mandate")));
                };
                let (_, status, checks): (String, String, i64) =
                    sqlx::query_as(query::CHARGE).bind(charge_id).fetch_one(&mut *tx).await?;
                let charge_status = ChargeStatus::parse(&status)
                    .ok_or_else(|| $crate::storage::StoreError::Corrupt(format!("charge status {status}")))?;
                let (deduction,): (String,) =
                    sqlx::query_as(query::DEDUCTION).bind(&charge.deduction_id).fetch_one(&mut *tx).await?;
                let deduction: Deduction = decode(&deduction)?;
                let wallet = $crate::storage::Account::wallet(&mandate.payer_id, mandate.terms.currency);
                let balance: Option<(i64,)> = sqlx::query_as(Self::LOCK_BALANCE)
                    .bind(&wallet.id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let total: Option<(i64, i64)> =
                    sqlx::query_as(query::TOTAL_USAGE).bind(mandate.id.as_str()).fetch_optional(&mut *tx).await?;
                let context = $crate::storage::SettleContext {
                    deduction: &deduction,
                    charge: &charge,
                    charge_status,
                    checks,
                    mandate: &mandate,
                    wallet_balance_minor: balance.map_or(0, |(b,)| b),
                    total_usage: total.map_or_else(Usage::default, |(amount_minor, count)| Usage { amount_minor, count }),
                };
                let Some(writes) = decide(&context) else {
                    tx.rollback().await?;
                    return Ok(None);
                };
                Self::apply_writes(&mut tx, &writes, mandate.version, None, None).await?;
                tx.commit().await?;
                Ok(Some((writes.deduction, writes.new_charge)))
            }

            async fn unknown_charges(&self) -> Result<i64, $crate::storage::StoreError> {
                let (count,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM card_charges WHERE status IN ('UNKNOWN', 'IN_FLIGHT')")
                        .fetch_one(self.reader())
                        .await?;
                Ok(count)
            }

            async fn charges_due(
                &self,
                now: jiff::Timestamp,
                limit: u32,
            ) -> Result<Vec<$crate::domain::deduction::CardCharge>, $crate::storage::StoreError> {
                let rows: Vec<(String,)> = sqlx::query_as($crate::storage::deduction_sql::query::CHARGES_DUE)
                    .bind($crate::storage::rows::micros(now))
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(|(doc,)| $crate::storage::rows::decode(doc)).collect()
            }

            async fn charges_open_since(
                &self,
                made_by: jiff::Timestamp,
                limit: u32,
            ) -> Result<Vec<$crate::domain::deduction::CardCharge>, $crate::storage::StoreError> {
                let rows: Vec<(String,)> = sqlx::query_as($crate::storage::deduction_sql::query::CHARGES_OPEN_SINCE)
                    .bind($crate::storage::rows::micros(made_by))
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(|(doc,)| $crate::storage::rows::decode(doc)).collect()
            }

            async fn next_charge_check(&self) -> Result<Option<jiff::Timestamp>, $crate::storage::StoreError> {
                let (next,): (Option<i64>,) = sqlx::query_as($crate::storage::deduction_sql::query::NEXT_CHARGE_CHECK)
                    .fetch_one(self.reader())
                    .await?;
                next.map($crate::storage::rows::timestamp).transpose()
            }

            async fn deduction_facts(
                &self,
                mandate_id: &$crate::domain::ids::MandateId,
                request: &$crate::domain::deduction::DebitRequest,
                now: jiff::Timestamp,
                refunds_since: jiff::Timestamp,
            ) -> Result<Option<($crate::domain::mandate::Mandate, $crate::domain::deduction::Facts)>, $crate::storage::StoreError> {
                let mut conn = self.reader().acquire().await?;
                let Some(mandate) = Self::load_mandate_in(&mut conn, mandate_id, false).await? else {
                    return Ok(None);
                };
                let asked = $crate::storage::deduction_sql::Asked { request, now, refunds_since };
                let (facts, _, _) = Self::gather_facts(&mut conn, &mandate, &asked, None, false).await?;
                Ok(Some((mandate, facts)))
            }

            async fn deduction(&self, id: &str) -> Result<Option<$crate::domain::deduction::Deduction>, $crate::storage::StoreError> {
                let row: Option<(String,)> = sqlx::query_as($crate::storage::deduction_sql::query::DEDUCTION)
                    .bind(id)
                    .fetch_optional(self.reader())
                    .await?;
                row.map(|(doc,)| $crate::storage::rows::decode(&doc)).transpose()
            }

            async fn list_deductions(
                &self,
                q: &$crate::storage::DeductionQuery,
            ) -> Result<Vec<$crate::domain::deduction::Deduction>, $crate::storage::StoreError> {
                use $crate::storage::rows::micros;
                let mut sql = sqlx::QueryBuilder::<$db>::new("SELECT document FROM deductions WHERE 1 = 1");
                if let Some(v) = &q.merchant_id {
                    sql.push(" AND merchant_id = ").push_bind(v.as_str().to_owned());
                }
                if let Some(v) = &q.payer_id {
                    sql.push(" AND payer_id = ").push_bind(v.as_str().to_owned());
                }
                if let Some(v) = &q.mandate_id {
                    sql.push(" AND mandate_id = ").push_bind(v.as_str().to_owned());
                }
                if let Some(v) = q.status {
                    sql.push(" AND status = ").push_bind(v.as_str());
                }
                if let Some(v) = q.created_from {
                    sql.push(" AND created_at_us >= ").push_bind(micros(v));
                }
                if let Some(v) = q.created_until {
                    sql.push(" AND created_at_us < ").push_bind(micros(v));
                }
                if let Some(v) = &q.before {
                    sql.push(" AND deduction_id < ").push_bind(v.clone());
                }
                sql.push(" ORDER BY deduction_id DESC LIMIT ").push_bind(i64::from(q.limit));
                let rows: Vec<(String,)> = sql.build_query_as().fetch_all(self.reader()).await?;
                rows.iter().map(|(doc,)| $crate::storage::rows::decode(doc)).collect()
            }

            async fn insert_notice(
                &self,
                notice: &$crate::domain::deduction::Notice,
                request_id: &str,
                fingerprint: &str,
                audit: &$crate::domain::audit::AuditDraft,
            ) -> Result<$crate::storage::Keyed<$crate::domain::deduction::Notice>, $crate::storage::StoreError> {
                use $crate::storage::deduction_sql::query;
                use $crate::storage::rows::{decode, encode, micros};
                let mut tx = self.begin_write().await?;
                let inserted = sqlx::query(query::INSERT_NOTICE)
                    .bind(&notice.id)
                    .bind(notice.mandate_id.as_str())
                    .bind(notice.merchant_id.as_str())
                    .bind(request_id)
                    .bind(fingerprint)
                    .bind(micros(notice.created_at))
                    .bind(encode(notice)?)
                    .bind(notice.bill_reference.key().as_str())
                    .execute(&mut *tx)
                    .await?;
                if inserted.rows_affected() == 0 {
                    let (doc, fingerprint): (String, String) = sqlx::query_as(query::EXISTING_NOTICE)
                        .bind(notice.merchant_id.as_str())
                        .bind(request_id)
                        .fetch_one(&mut *tx)
                        .await?;
                    tx.rollback().await?;
                    return Ok($crate::storage::Keyed::Existing { value: decode(&doc)?, fingerprint });
                }
                Self::append_audit_in(&mut tx, audit).await?;
                tx.commit().await?;
                Ok($crate::storage::Keyed::New(notice.clone()))
            }

            async fn list_notices(
                &self,
                mandate_id: &$crate::domain::ids::MandateId,
                before: Option<&str>,
                limit: u32,
            ) -> Result<Vec<$crate::domain::deduction::Notice>, $crate::storage::StoreError> {
                let mut sql = sqlx::QueryBuilder::<$db>::new("SELECT document, used_by FROM notices WHERE mandate_id = ");
                sql.push_bind(mandate_id.as_str().to_owned());
                if let Some(before) = before {
                    sql.push(" AND notice_id < ").push_bind(before.to_owned());
                }
                sql.push(" ORDER BY notice_id DESC LIMIT ").push_bind(i64::from(limit));
                let rows: Vec<(String, Option<String>)> = sql.build_query_as().fetch_all(self.reader()).await?;
                rows.iter()
                    .map(|(doc, used_by)| {
                        let mut notice: $crate::domain::deduction::Notice = $crate::storage::rows::decode(doc)?;
                        notice.used_by.clone_from(used_by);
                        Ok(notice)
                    })
                    .collect()
            }

            async fn refund(
                &self,
                deduction_id: &str,
                merchant_id: &$crate::domain::ids::MerchantId,
                request_id: &str,
                fingerprint: &str,
                decide: $crate::storage::DecideRefund<'_>,
            ) -> Result<$crate::storage::Refunded, $crate::storage::StoreError> {
                use $crate::storage::deduction_sql::query;
                use $crate::storage::rows::{decode, encode, micros};
                use $crate::storage::Refunded;
                let mut tx = self.begin_write().await?;
                // The mandate is locked first, as a deduction and a card settlement take it,
                // then the deduction: two refunds of one deduction queue here, so the second
                // sees the first, and a retry of one request finds the refund it recorded.
                let row: Option<(String,)> = sqlx::query_as(query::DEDUCTION_MANDATE)
                    .bind(deduction_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some((mandate_id,)) = row else {
                    tx.rollback().await?;
                    return Ok(Refunded::DeductionNotFound);
                };
                sqlx::query(concat!("SELECT 1 FROM mandates WHERE mandate_id = $1", $for_update))
                    .bind(&mandate_id)
                    .fetch_one(&mut *tx)
                    .await?;
                let (doc,): (String,) = sqlx::query_as(concat!("SELECT document FROM deductions WHERE deduction_id = $1", $for_update))
                    .bind(deduction_id)
                    .fetch_one(&mut *tx)
                    .await?;
                let existing: Option<(String, String)> = sqlx::query_as(query::EXISTING_REFUND)
                    .bind(merchant_id.as_str())
                    .bind(request_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some((refund_doc, fingerprint)) = existing {
                    let refund: $crate::domain::deduction::Refund = decode(&refund_doc)?;
                    let (deduction,): (String,) =
                        sqlx::query_as(query::DEDUCTION).bind(&refund.deduction_id).fetch_one(&mut *tx).await?;
                    tx.rollback().await?;
                    return Ok(Refunded::Existing { refund, deduction: Box::new(decode(&deduction)?), fingerprint });
                }
                let deduction: $crate::domain::deduction::Deduction = decode(&doc)?;
                let writes = match decide(&deduction) {
                    Ok(writes) => writes,
                    Err(reason) => {
                        tx.rollback().await?;
                        return Ok(Refunded::Refused(reason));
                    }
                };
                let d = &writes.deduction;
                let refund = &writes.refund;
                sqlx::query(query::UPDATE_DEDUCTION)
                    .bind(d.status.as_str())
                    .bind(micros(d.updated_at))
                    .bind(encode(d)?)
                    .bind(&d.id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(query::INSERT_REFUND)
                    .bind(&refund.id)
                    .bind(&d.id)
                    .bind(merchant_id.as_str())
                    .bind(request_id)
                    .bind(fingerprint)
                    .bind(micros(refund.created_at))
                    .bind(encode(refund)?)
                    .bind(d.mandate_id.as_str())
                    .bind(refund.amount.minor())
                    .bind(d.refunded_minor)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(query::REFUNDED)
                    .bind(micros(refund.created_at))
                    .bind(d.mandate_id.as_str())
                    .execute(&mut *tx)
                    .await?;
                if let Some(movement) = &writes.ledger {
                    Self::apply_move(&mut tx, movement, None, refund.created_at).await?;
                }
                Self::append_audit_in(&mut tx, &writes.audit).await?;
                tx.commit().await?;
                Ok(Refunded::New { refund: writes.refund, deduction: Box::new(writes.deduction) })
            }

            async fn refund_by_request(
                &self,
                merchant_id: &$crate::domain::ids::MerchantId,
                request_id: &str,
            ) -> Result<
                Option<($crate::domain::deduction::Refund, $crate::domain::deduction::Deduction, String)>,
                $crate::storage::StoreError,
            > {
                use $crate::storage::deduction_sql::query;
                use $crate::storage::rows::decode;
                let row: Option<(String, String)> = sqlx::query_as(query::EXISTING_REFUND)
                    .bind(merchant_id.as_str())
                    .bind(request_id)
                    .fetch_optional(self.reader())
                    .await?;
                let Some((doc, fingerprint)) = row else { return Ok(None) };
                let refund: $crate::domain::deduction::Refund = decode(&doc)?;
                let (deduction,): (String,) =
                    sqlx::query_as(query::DEDUCTION).bind(&refund.deduction_id).fetch_one(self.reader()).await?;
                Ok(Some((refund, decode(&deduction)?, fingerprint)))
            }

            async fn insert_approval(
                &self,
                approval: &$crate::domain::deduction::Approval,
                request_id: &str,
                fingerprint: &str,
                audit: &$crate::domain::audit::AuditDraft,
            ) -> Result<$crate::storage::Keyed<$crate::domain::deduction::Approval>, $crate::storage::StoreError> {
                use $crate::storage::deduction_sql::query;
                use $crate::storage::rows::{decode, encode, micros};
                let mut tx = self.begin_write().await?;
                let inserted = sqlx::query(query::INSERT_APPROVAL)
                    .bind(&approval.id)
                    .bind(approval.mandate_id.as_str())
                    .bind(approval.merchant_id.as_str())
                    .bind(approval.payer_id.as_str())
                    .bind(request_id)
                    .bind(fingerprint)
                    .bind(approval.status.as_str())
                    .bind(micros(approval.requested_at))
                    .bind(encode(approval)?)
                    .execute(&mut *tx)
                    .await?;
                if inserted.rows_affected() == 0 {
                    let (doc, fingerprint): (String, String) = sqlx::query_as(query::EXISTING_APPROVAL)
                        .bind(approval.merchant_id.as_str())
                        .bind(request_id)
                        .fetch_one(&mut *tx)
                        .await?;
                    tx.rollback().await?;
                    return Ok($crate::storage::Keyed::Existing { value: decode(&doc)?, fingerprint });
                }
                Self::append_audit_in(&mut tx, audit).await?;
                tx.commit().await?;
                Ok($crate::storage::Keyed::New(approval.clone()))
            }

            async fn approval(&self, id: &str) -> Result<Option<$crate::domain::deduction::Approval>, $crate::storage::StoreError> {
                let row: Option<(String,)> = sqlx::query_as($crate::storage::deduction_sql::query::APPROVAL)
                    .bind(id)
                    .fetch_optional(self.reader())
                    .await?;
                row.map(|(doc,)| $crate::storage::rows::decode(&doc)).transpose()
            }

            async fn update_approval(
                &self,
                approval: &$crate::domain::deduction::Approval,
                audit: &$crate::domain::audit::AuditDraft,
            ) -> Result<(), $crate::storage::StoreError> {
                let mut tx = self.begin_write().await?;
                let updated = sqlx::query($crate::storage::deduction_sql::query::SET_APPROVAL)
                    .bind(approval.status.as_str())
                    .bind($crate::storage::rows::encode(approval)?)
                    .bind(&approval.id)
                    .bind($crate::domain::deduction::ApprovalStatus::Pending.as_str())
                    .execute(&mut *tx)
                    .await?;
                if updated.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Err($crate::storage::StoreError::Conflict);
                }
                Self::append_audit_in(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn credit_wallet(
                &self,
                credit: &$crate::storage::LedgerMove,
                scope: &str,
                request_id: &str,
                fingerprint: &str,
                audit: &$crate::domain::audit::AuditDraft,
            ) -> Result<$crate::storage::Keyed<i64>, $crate::storage::StoreError> {
                use $crate::storage::deduction_sql::query;
                let mut tx = self.begin_write().await?;
                let existing: Option<(Option<String>, Option<i64>)> = sqlx::query_as(query::EXISTING_CREDIT)
                    .bind(scope)
                    .bind(request_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some((stored, result)) = existing {
                    let value = match result {
                        Some(balance) => balance,
                        // A credit recorded before its answer was kept: the balance now. The
                        // key may belong to a credit of another wallet (a reused key), so this
                        // wallet need not exist yet.
                        None => {
                            let now: Option<(i64,)> =
                                sqlx::query_as(query::BALANCE).bind(&credit.to.id).fetch_optional(&mut *tx).await?;
                            now.map_or(0, |(b,)| b)
                        }
                    };
                    tx.rollback().await?;
                    return Ok($crate::storage::Keyed::Existing { value, fingerprint: stored.unwrap_or_default() });
                }
                Self::apply_move(&mut tx, credit, Some((scope, request_id, fingerprint)), audit.at).await?;
                // The wallet's row is locked by the credit until commit: this is its balance
                // right after it, the answer a retry of the request gets too.
                let (value,): (i64,) = sqlx::query_as(query::BALANCE).bind(&credit.to.id).fetch_one(&mut *tx).await?;
                sqlx::query(query::SET_CREDIT_RESULT)
                    .bind(value)
                    .bind(&credit.movement_id)
                    .execute(&mut *tx)
                    .await?;
                Self::append_audit_in(&mut tx, audit).await?;
                tx.commit().await?;
                Ok($crate::storage::Keyed::New(value))
            }

            async fn balance(&self, account: &$crate::storage::Account) -> Result<i64, $crate::storage::StoreError> {
                let row: Option<(i64,)> = sqlx::query_as($crate::storage::deduction_sql::query::BALANCE)
                    .bind(&account.id)
                    .fetch_optional(self.reader())
                    .await?;
                Ok(row.map_or(0, |(b,)| b))
            }

            async fn ledger_totals(&self) -> Result<$crate::storage::LedgerTotals, $crate::storage::StoreError> {
                // Each sum is taken in two parts (millions and the rest), each of which fits 64
                // bits whatever the balances: SQLite's SUM fails past 64 bits, and PostgreSQL's
                // is NUMERIC (cast back so both backends answer integers).
                let (hi, lo, entries_hi, entries_lo, min_wallet_minor): (i64, i64, i64, i64, i64) = sqlx::query_as(concat!(
                    "SELECT CAST((SELECT COALESCE(SUM(balance_minor / 1000000), 0) FROM ledger_accounts) AS BIGINT), ",
                    "CAST((SELECT COALESCE(SUM(balance_minor % 1000000), 0) FROM ledger_accounts) AS BIGINT), ",
                    "CAST((SELECT COALESCE(SUM(amount_minor / 1000000), 0) FROM ledger_entries) AS BIGINT), ",
                    "CAST((SELECT COALESCE(SUM(amount_minor % 1000000), 0) FROM ledger_entries) AS BIGINT), ",
                    "CAST((SELECT COALESCE(MIN(balance_minor), 0) FROM ledger_accounts WHERE kind = 'WALLET') AS BIGINT)"
                ))
                .fetch_one(self.reader())
                .await?;
                let whole = |hi: i64, lo: i64| i128::from(hi) * 1_000_000 + i128::from(lo);
                Ok($crate::storage::LedgerTotals {
                    sum_minor: whole(hi, lo),
                    entries_sum_minor: whole(entries_hi, entries_lo),
                    min_wallet_minor,
                })
            }

            async fn merchant_policy(
                &self,
                merchant_id: &$crate::domain::ids::MerchantId,
            ) -> Result<Option<$crate::domain::policy::MerchantPolicy>, $crate::storage::StoreError> {
                let row: Option<(String,)> = sqlx::query_as($crate::storage::deduction_sql::query::MERCHANT_POLICY)
                    .bind(merchant_id.as_str())
                    .fetch_optional(self.reader())
                    .await?;
                row.map(|(doc,)| $crate::storage::rows::decode(&doc)).transpose()
            }

            async fn put_merchant_policy(
                &self,
                policy: &$crate::domain::policy::MerchantPolicy,
                audit: &$crate::domain::audit::AuditDraft,
            ) -> Result<(), $crate::storage::StoreError> {
                use $crate::storage::deduction_sql::query;
                use $crate::storage::rows::{encode, micros};
                let document = encode(policy)?;
                let at = policy.updated_at.map_or(0, micros);
                let mut tx = self.begin_write().await?;
                let written = if policy.version == 1 {
                    sqlx::query(query::INSERT_POLICY)
                        .bind(policy.merchant_id.as_str())
                        .bind(policy.version)
                        .bind(at)
                        .bind(&document)
                        .execute(&mut *tx)
                        .await?
                } else {
                    sqlx::query(query::UPDATE_POLICY)
                        .bind(policy.version)
                        .bind(at)
                        .bind(&document)
                        .bind(policy.merchant_id.as_str())
                        .bind(policy.version - 1)
                        .execute(&mut *tx)
                        .await?
                };
                if written.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Err($crate::storage::StoreError::Conflict);
                }
                Self::append_audit_in(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

pub(crate) use impl_deduction_store;
