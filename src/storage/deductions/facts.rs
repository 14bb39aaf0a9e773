//! What a deduction is judged on, read in one batch: the bill's history by its canonical key,
//! the suspected-refund-recovery facts, usage, the notice and approval it names, the payer's
//! wallet balance and the head of the mandate's audit chain.

use jiff::Timestamp;

use crate::domain::audit::mandate_chain_id;
use crate::domain::deduction::{
    Approval, BillHistory, DebitRequest, DeductionStatus, Facts, Notice, NoticeFacts,
    RecoveryFacts, Usage, period_key,
};
use crate::domain::mandate::Mandate;
use crate::domain::policy::{MerchantPolicy, RecoveryPolicy};
use crate::storage::backend::{Backend, StoredRow};
use crate::storage::plan::Plan;
use crate::storage::rows::{decode, micros, timestamp};
use crate::storage::{ChainHead, StoreError, approvals, audit, ledger, notices};

/// Earlier deductions of the same bill, by its canonical key.
const BILL_STATUSES: &str = "SELECT status FROM deductions WHERE mandate_id = $1 AND bill_key = $2";
/// What the suspected-refund-recovery rule reads: the earliest refund on the mandate since `$2`
/// of the amount `$3` (or taking its deduction's refunded total to `$3`), when a notice first
/// announced the bill `$4`, and the merchant's policy.
const RECOVERY_FACTS: &str = "SELECT \
    (SELECT MIN(created_at_us) FROM refunds WHERE mandate_id = $1 AND created_at_us >= $2 \
        AND (amount_minor = $3 OR refunded_total_minor = $3)), \
    (SELECT MIN(created_at_us) FROM notices WHERE mandate_id = $1 AND bill_key = $4), \
    (SELECT document FROM merchant_policies WHERE merchant_id = $5)";
/// The usage rows of a period and of the mandate's lifetime (`total`), in one statement.
const USAGES: &str = "SELECT period_key, amount_minor, debit_count FROM mandate_usage \
    WHERE mandate_id = $1 AND period_key IN ($2, 'total')";

/// What a deduction asks, as the reads of its facts need it.
pub struct Asked<'a> {
    pub request: &'a DebitRequest,
    pub now: Timestamp,
    /// The start of the suspected-refund-recovery look-back window.
    pub refunds_since: Timestamp,
}

/// Which of the optional facts are read besides the rule's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extra<'a> {
    /// The payer's wallet, read with the row lock: its balance.
    pub wallet: Option<&'a str>,
    /// The head of the mandate's audit chain (where nothing can move it before the writes).
    pub chain_head: bool,
}

/// The facts, the wallet balance (0 when not read or absent), and the chain head (if read).
pub type Gathered = (Facts, i64, Option<ChainHead>);

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

    /// The reads of the facts, in the order [`Asked::facts_from`] takes their results.
    pub fn reads<B: Backend>(&self, mandate: &Mandate, extra: Extra<'_>) -> Plan {
        let request = self.request;
        let id = mandate.id.as_str();
        let period = period_key(mandate, self.now);
        let bill_key = request.bill_reference.key();
        let mut reads = Plan::default();
        reads.read(BILL_STATUSES, vec![id.into(), bill_key.as_str().into()]);
        if self.reads_recovery(mandate) {
            reads.read(
                RECOVERY_FACTS,
                vec![
                    id.into(),
                    micros(self.refunds_since).into(),
                    request.amount.minor().into(),
                    bill_key.as_str().into(),
                    mandate.merchant_id.as_str().into(),
                ],
            );
        }
        // Without a limit period only the lifetime row is asked for (twice over).
        let period = period.as_deref().unwrap_or("total");
        reads.read(USAGES, vec![id.into(), period.into()]);
        if let Some(notice_id) = &request.notice_id {
            let binds = vec![notice_id.as_str().into(), id.into()];
            reads.read(notices::NOTICE_ON_MANDATE, binds);
        }
        if let Some(approval_id) = &request.approval_id {
            let binds = vec![approval_id.as_str().into(), id.into()];
            reads.read(approvals::APPROVAL_ON_MANDATE, binds);
        }
        if let Some(wallet) = extra.wallet {
            ledger::read_balance_locked::<B>(&mut reads, wallet);
        }
        if extra.chain_head {
            audit::head_read(&mut reads, mandate_chain_id(id));
        }
        reads
    }

    /// The facts from the results of [`Asked::reads`] (taken from `results` in order).
    pub fn facts_from<R: StoredRow>(
        &self,
        results: &mut impl Iterator<Item = Vec<R>>,
        mandate: &Mandate,
        extra: Extra<'_>,
    ) -> Result<Gathered, StoreError> {
        let mut next = || {
            results
                .next()
                .ok_or_else(|| StoreError::Corrupt("a read batch came back short".into()))
        };
        let bill = bill_history(&next()?)?;
        let recovery = if self.reads_recovery(mandate) {
            Some(recovery_facts(&next()?)?)
        } else {
            None
        };
        let (period_usage, total_usage) = usages(&next()?, period_key(mandate, self.now))?;
        let mut notice = None;
        if self.request.notice_id.is_some()
            && let Some(row) = next()?.first()
        {
            let n: Notice = decode(&row.text(0)?)?;
            notice = Some(NoticeFacts {
                amount: n.amount,
                created_at: n.created_at,
                used: row.opt_text(1)?.is_some(),
            });
        }
        let mut approval = None;
        if self.request.approval_id.is_some()
            && let Some(row) = next()?.first()
        {
            approval = Some(decode::<Approval>(&row.text(0)?)?.facts());
        }
        let mut balance = 0;
        if extra.wallet.is_some()
            && let Some(row) = next()?.first()
        {
            balance = row.int(0)?;
        }
        let head = if extra.chain_head {
            Some(audit::head_from(
                mandate_chain_id(mandate.id.as_str()),
                &next()?,
            )?)
        } else {
            None
        };
        let facts = Facts {
            now: self.now,
            bill,
            notice,
            period_usage,
            total_usage,
            approval,
            recovery,
        };
        Ok((facts, balance, head))
    }

    /// Reads the facts in one batch on `conn`.
    pub async fn gather<B: Backend>(
        &self,
        conn: &mut B::Conn,
        mandate: &Mandate,
        extra: Extra<'_>,
    ) -> Result<Gathered, StoreError> {
        let reads = self.reads::<B>(mandate, extra);
        let mut results = B::read_batch(conn, reads).await?.into_iter();
        self.facts_from(&mut results, mandate, extra)
    }
}

/// The bill's history from the statuses of its earlier deductions (the rule is the domain's).
fn bill_history(rows: &[impl StoredRow]) -> Result<BillHistory, StoreError> {
    let statuses = rows
        .iter()
        .map(|row| {
            let status = row.text(0)?;
            DeductionStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("deduction status {status}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BillHistory::of(statuses))
}

fn recovery_facts(rows: &[impl StoredRow]) -> Result<RecoveryFacts, StoreError> {
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Corrupt("the recovery facts came back empty".into()))?;
    Ok(RecoveryFacts {
        matching_refund_at: row.opt_int(0)?.map(timestamp).transpose()?,
        bill_announced_at: row.opt_int(1)?.map(timestamp).transpose()?,
        policy: match row.opt_text(2)? {
            Some(doc) => decode::<MerchantPolicy>(&doc)?.suspected_refund_recovery,
            None => RecoveryPolicy::Flag,
        },
    })
}

/// The period's usage and the lifetime usage from the rows of `USAGES`.
fn usages(rows: &[impl StoredRow], period: Option<String>) -> Result<(Usage, Usage), StoreError> {
    let (mut period_usage, mut total_usage) = (Usage::default(), Usage::default());
    for row in rows {
        let key = row.text(0)?;
        let usage = Usage {
            amount_minor: row.int(1)?,
            count: row.int(2)?,
        };
        if key == "total" {
            total_usage = usage;
        }
        if Some(&key) == period.as_ref() {
            period_usage = usage;
        }
    }
    Ok((period_usage, total_usage))
}
