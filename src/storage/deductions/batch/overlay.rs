//! The facts of a batch as the decisions before each member left them: what a decided
//! deduction changes in what the next one on the same mandate, bill or wallet is judged on. It
//! must agree exactly with what the database would read after committing them one by one; the
//! batch tests and the concurrency and property tests hold it to that.

use std::collections::HashMap;

use crate::domain::audit::mandate_chain_id;
use crate::domain::deduction::{BillHistory, Deduction, DeductionStatus, Facts, Usage, period_key};
use crate::domain::ledger::Account;
use crate::domain::mandate::Mandate;
use crate::storage::StoreError;
use crate::storage::deductions::{DeductionInput, DeductionWrites, Reservation};

/// A merchant's request id.
pub(super) type Key = (String, String);

/// The facts of a batch as its decisions so far left them.
#[derive(Default)]
pub(super) struct Overlay {
    /// Request ids used, with the deduction and the fingerprint of the request that used them.
    pub(super) used: HashMap<Key, (Deduction, String)>,
    /// Statuses of the deductions of a bill (mandate, bill key).
    pub(super) bills: HashMap<Key, Vec<DeductionStatus>>,
    /// Usage rows (mandate, period key); absent ones are empty.
    pub(super) usage: HashMap<Key, Usage>,
    /// Wallet balances by account; absent ones are 0.
    pub(super) balances: HashMap<String, i64>,
}

impl Overlay {
    fn usage(&self, mandate_id: &str, key: &str) -> Usage {
        self.usage
            .get(&(mandate_id.to_owned(), key.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    pub(super) fn facts(&self, input: &DeductionInput, mandate: &Mandate) -> Facts {
        let id = mandate.id.as_str();
        let bill_key = (
            id.to_owned(),
            input.request.bill_reference.key().as_str().to_owned(),
        );
        let statuses = self.bills.get(&bill_key).into_iter().flatten().copied();
        Facts {
            now: input.now,
            bill: BillHistory::of(statuses),
            notice: None,
            period_usage: period_key(mandate, input.now)
                .map(|period| self.usage(id, &period))
                .unwrap_or_default(),
            total_usage: self.usage(id, "total"),
            approval: None,
            recovery: None,
        }
    }

    /// Takes a decided deduction's effects into the facts of those after it.
    pub(super) fn apply(
        &mut self,
        writes: &DeductionWrites,
        fingerprint: &str,
    ) -> Result<(), StoreError> {
        let d = &writes.deduction;
        let id = d.mandate_id.as_str();
        let key = (d.merchant_id.to_string(), d.request_id.clone());
        self.used.insert(key, (d.clone(), fingerprint.to_owned()));
        let bill_key = (
            id.to_owned(),
            d.request.bill_reference.key().as_str().to_owned(),
        );
        self.bills.entry(bill_key).or_default().push(d.status);
        let out_of_range = || StoreError::OutOfRange(format!("the usage of mandate {id}"));
        if let Reservation::Take { usage_keys, .. } = &writes.reservation {
            for period in usage_keys {
                let usage = self
                    .usage
                    .entry((id.to_owned(), period.clone()))
                    .or_default();
                usage.amount_minor = usage
                    .amount_minor
                    .checked_add(d.request.amount.minor())
                    .ok_or_else(out_of_range)?;
                usage.count = usage.count.checked_add(1).ok_or_else(out_of_range)?;
            }
        }
        if let Some(movement) = &writes.ledger {
            let amount = movement.amount_minor;
            for (account, delta) in [(&movement.from, -amount), (&movement.to, amount)] {
                if let Some(balance) = self.balances.get_mut(&account.id) {
                    *balance = balance.checked_add(delta).ok_or_else(|| {
                        StoreError::OutOfRange(format!("the balance of account {}", account.id))
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// Whether a decision writes only what a batch writes: a new deduction, its usage, its ledger
/// movement, a card charge to make, its collection time, its events, and audit events on its
/// mandate's chain.
pub(super) fn writes_batch(writes: &DeductionWrites) -> bool {
    let reserved_alone = match &writes.reservation {
        Reservation::None => false,
        Reservation::Take {
            notice, approval, ..
        } => notice.is_some() || approval.is_some(),
        Reservation::Release { .. } => true,
    };
    let mandate_chain = mandate_chain_id(writes.deduction.mandate_id.as_str());
    !reserved_alone
        && writes.audits.iter().all(|a| a.chain_id() == mandate_chain)
        && writes.charge_update.is_none()
        && writes
            .collected
            .as_ref()
            .is_none_or(|collected| collected.consumed.is_none())
}

pub(super) fn wallet_of(mandate: &Mandate) -> String {
    Account::wallet(&mandate.payer_id, mandate.terms.currency).id
}
