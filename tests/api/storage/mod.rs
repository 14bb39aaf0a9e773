//! The storage contract (DESIGN §6, §8): the `Store` trait driven directly, on both backends.
//! This file builds the domain values the contract is exercised with; the tests are by what they
//! cover: mandate writes, reads, the audit trail, and a deduction's reads.

mod audit;
mod deductions;
mod reads;
mod writes;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jiff::{SignedDuration, Timestamp};
use withholding::domain::actor::Actor;
use withholding::domain::audit::{AuditDraft, verify_chain};
use withholding::domain::bill::BillReference;
use withholding::domain::consent::{ConsentChannel, ConsentEvidence, ConsentInput, ConsentMethod};
use withholding::domain::deduction::{DebitRequest, Deduction, Facts};
use withholding::domain::funding::{FundingSource, FundingSources, Instrument};
use withholding::domain::ids::{ContractId, MandateId, MerchantId, PayerId};
use withholding::domain::ledger::{Account, LedgerMove, MovementKind};
use withholding::domain::mandate::{Mandate, MandateStatus, NewMandate};
use withholding::domain::money::{Currency, Money};
use withholding::domain::terms::{
    AmountType, Period, PeriodLimits, PeriodUnit, Purpose, Terms, TimeZoneName,
};
use withholding::storage::{
    DeductionInput, DeductionWrites, Executed, IdempotencyRecord, Inserted, KeyedRequest,
    MandateInsert, MandateQuery, MandateUpdate, Store, StoreError, TableCounts,
};

use crate::harness::{Backend, TestDatabase};

const T0: &str = "2026-03-01T02:00:00Z";

pub(super) fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

pub(super) fn t0() -> Timestamp {
    at(T0)
}

pub(super) fn later(t: Timestamp, minutes: i64) -> Timestamp {
    t + SignedDuration::from_mins(minutes)
}

pub(super) async fn open(backend: Backend) -> (TestDatabase, Arc<dyn Store>) {
    let db = TestDatabase::new(backend).await;
    let store = withholding::storage::connect(&db.url).await.unwrap();
    (db, store)
}

pub(super) fn cny(amount: &str) -> Money {
    Money::parse(Currency::Cny, amount).unwrap()
}

pub(super) fn terms() -> Terms {
    Terms::new(Terms {
        display_account: "ELEC-0042".into(),
        purposes: [Purpose::Utility].into(),
        currency: Currency::Cny,
        amount_type: AmountType::Maximum,
        per_debit_limit: cny("500"),
        period_limits: Some(PeriodLimits {
            period: Period {
                unit: PeriodUnit::Month,
                count: 1,
            },
            amount_limit: Some(cny("1000")),
            debit_limit: Some(2),
        }),
        total_amount_limit: None,
        total_debit_limit: None,
        valid_from: t0(),
        valid_until: Some(at("2027-03-01T00:00:00Z")),
        collection_window: None,
        pre_notification: None,
        timezone: TimeZoneName::default(),
        single_use: false,
    })
    .unwrap()
}

pub(super) fn new_mandate(
    merchant: &str,
    contract: &str,
    payer: &str,
    created: Timestamp,
) -> Mandate {
    Mandate::create(
        NewMandate {
            id: MandateId::generate(),
            merchant_id: MerchantId::parse("merchant_id", merchant).unwrap(),
            contract_id: ContractId::parse("contract_id", contract).unwrap(),
            payer_id: PayerId::parse("payer_id", payer).unwrap(),
            terms: terms(),
        },
        created,
        jiff::Span::new().hours(24),
    )
    .unwrap()
}

fn evidence(captured: Timestamp) -> ConsentEvidence {
    ConsentEvidence::new(
        ConsentInput {
            channel: ConsentChannel::App,
            method: ConsentMethod::Biometric,
            device_id: "iphone-7f3a".into(),
            user_agent: String::new(),
            ip_address: "203.0.113.7".into(),
            terms_version: "withholding-terms-2026.1".into(),
            terms_digest: "ab".repeat(32),
        },
        captured,
        1,
    )
    .unwrap()
}

pub(super) fn wallet() -> FundingSources {
    FundingSources::new(
        "funding_sources",
        vec![FundingSource {
            instrument: Instrument::Wallet,
            cap_per_debit: None,
        }],
        Currency::Cny,
    )
    .unwrap()
}

/// The event a change of `mandate` is stored with.
pub(super) fn audit(mandate: &Mandate, action: &str) -> AuditDraft {
    let mut draft = AuditDraft::new(mandate.updated_at, &Actor::system(), action, "OK");
    draft.merchant_id = Some(mandate.merchant_id.to_string());
    draft.payer_id = Some(mandate.payer_id.to_string());
    draft.mandate_id = Some(mandate.id.to_string());
    draft.details = format!("{{\"version\":{}}}", mandate.version);
    draft
}

pub(super) async fn insert(store: &dyn Store, mandate: &Mandate, expires_at: Option<Timestamp>) {
    let inserted = store
        .insert_mandate(MandateInsert {
            mandate,
            expires_at,
            fingerprint: "fingerprint",
            audit: &audit(mandate, "MANDATE_CREATED"),
        })
        .await
        .unwrap();
    assert!(matches!(inserted, Inserted::New), "{inserted:?}");
}

/// Stores `next` over `current` with its audit event.
pub(super) async fn update(
    store: &dyn Store,
    current: &Mandate,
    next: &Mandate,
    expires_at: Option<Timestamp>,
    idempotency: Option<&IdempotencyRecord>,
) -> Result<(), StoreError> {
    let draft = audit(next, "MANDATE_CHANGED");
    store
        .update_mandate(MandateUpdate {
            mandate: next,
            expected_version: current.version,
            expires_at,
            audit: &draft,
            idempotency,
        })
        .await
}

pub(super) fn confirmed(m: &Mandate, when: Timestamp) -> Mandate {
    let mut next = m.clone();
    next.confirm(next.version, evidence(when), wallet(), when)
        .unwrap();
    next
}

pub(super) fn paused(m: &Mandate, when: Timestamp) -> Mandate {
    let mut next = m.clone();
    next.pause("holiday", when).unwrap();
    next
}

pub(super) fn record(mandate: &Mandate, scope: &str, request_id: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        scope: scope.into(),
        request_id: request_id.into(),
        fingerprint: format!("fp-{request_id}-{}", mandate.version),
        mandate_id: mandate.id.clone(),
        mandate_version: mandate.version,
        created_at: mandate.updated_at,
    }
}

pub(super) fn chain_id(mandate: &Mandate) -> String {
    format!("mandate:{}", mandate.id)
}

/// Reads a chain and verifies it against its recorded head; returns how many events it has.
pub(super) async fn verified_chain(store: &dyn Store, chain_id: &str) -> usize {
    let chain = store.audit_chain(chain_id).await.unwrap();
    let head = chain.head.as_ref().map(|(seq, hash)| (*seq, hash.as_str()));
    if let Err(broken) = verify_chain(chain_id, &chain.events, head) {
        panic!("{broken}");
    }
    chain.events.len()
}

pub(super) fn diff(before: TableCounts, after: TableCounts) -> [i64; 4] {
    [
        after.mandates - before.mandates,
        after.mandate_versions - before.mandate_versions,
        after.audit_events - before.audit_events,
        after.idempotency_keys - before.idempotency_keys,
    ]
}
