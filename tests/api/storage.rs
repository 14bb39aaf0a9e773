//! The storage contract (DESIGN §6, §8): the `Store` trait driven directly, on both backends.

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

use crate::both_backends;
use crate::harness::{Backend, TestDatabase};

// ---- helpers ----

const T0: &str = "2026-03-01T02:00:00Z";

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn t0() -> Timestamp {
    at(T0)
}

fn later(t: Timestamp, minutes: i64) -> Timestamp {
    t + SignedDuration::from_mins(minutes)
}

async fn open(backend: Backend) -> (TestDatabase, Arc<dyn Store>) {
    let db = TestDatabase::new(backend).await;
    let store = withholding::storage::connect(&db.url).await.unwrap();
    (db, store)
}

fn cny(amount: &str) -> Money {
    Money::parse(Currency::Cny, amount).unwrap()
}

fn terms() -> Terms {
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

fn new_mandate(merchant: &str, contract: &str, payer: &str, created: Timestamp) -> Mandate {
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

fn wallet() -> FundingSources {
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
fn audit(mandate: &Mandate, action: &str) -> AuditDraft {
    let mut draft = AuditDraft::new(mandate.updated_at, &Actor::system(), action, "OK");
    draft.merchant_id = Some(mandate.merchant_id.to_string());
    draft.payer_id = Some(mandate.payer_id.to_string());
    draft.mandate_id = Some(mandate.id.to_string());
    draft.details = format!("{{\"version\":{}}}", mandate.version);
    draft
}

async fn insert(store: &dyn Store, mandate: &Mandate, expires_at: Option<Timestamp>) {
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
async fn update(
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

fn confirmed(m: &Mandate, when: Timestamp) -> Mandate {
    let mut next = m.clone();
    next.confirm(next.version, evidence(when), wallet(), when)
        .unwrap();
    next
}

fn paused(m: &Mandate, when: Timestamp) -> Mandate {
    let mut next = m.clone();
    next.pause("holiday", when).unwrap();
    next
}

fn record(mandate: &Mandate, scope: &str, request_id: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        scope: scope.into(),
        request_id: request_id.into(),
        fingerprint: format!("fp-{request_id}-{}", mandate.version),
        mandate_id: mandate.id.clone(),
        mandate_version: mandate.version,
        created_at: mandate.updated_at,
    }
}

fn chain_id(mandate: &Mandate) -> String {
    format!("mandate:{}", mandate.id)
}

/// Reads a chain and verifies it against its recorded head; returns how many events it has.
async fn verified_chain(store: &dyn Store, chain_id: &str) -> usize {
    let chain = store.audit_chain(chain_id).await.unwrap();
    let head = chain.head.as_ref().map(|(seq, hash)| (*seq, hash.as_str()));
    if let Err(broken) = verify_chain(chain_id, &chain.events, head) {
        panic!("{broken}");
    }
    chain.events.len()
}

fn diff(before: TableCounts, after: TableCounts) -> [i64; 4] {
    [
        after.mandates - before.mandates,
        after.mandate_versions - before.mandate_versions,
        after.audit_events - before.audit_events,
        after.idempotency_keys - before.idempotency_keys,
    ]
}

// ---- tests ----

async fn insert_then_read_back(backend: Backend) {
    let (_db, store) = open(backend).await;
    let empty = store.table_counts().await.unwrap();
    assert_eq!(
        empty,
        TableCounts {
            mandates: 0,
            mandate_versions: 0,
            audit_events: 0,
            idempotency_keys: 0
        }
    );
    let mandate = new_mandate("m-1", "c-1", "p-1", t0());
    insert(&*store, &mandate, Some(mandate.consent_deadline)).await;
    assert_eq!(
        diff(empty, store.table_counts().await.unwrap()),
        [1, 1, 1, 0]
    );
    assert_eq!(
        store.mandate(&mandate.id).await.unwrap(),
        Some(mandate.clone())
    );
    assert_eq!(
        store.mandate_version(&mandate.id, 1).await.unwrap(),
        Some(mandate.clone())
    );
    assert_eq!(store.mandate(&MandateId::generate()).await.unwrap(), None);

    // A fully populated mandate (consent, funding, pending amendment) round-trips too.
    let active = confirmed(&mandate, later(t0(), 10));
    update(&*store, &mandate, &active, None, None)
        .await
        .unwrap();
    let mut amended = active.clone();
    let mut looser = amended.terms.clone();
    looser.per_debit_limit = cny("800.50");
    amended.amend(looser, "raise", later(t0(), 20)).unwrap();
    assert!(amended.pending_amendment.is_some());
    update(&*store, &active, &amended, None, None)
        .await
        .unwrap();
    assert_eq!(
        store.mandate(&mandate.id).await.unwrap(),
        Some(amended.clone())
    );
    assert_eq!(
        store.mandate_version(&mandate.id, 2).await.unwrap(),
        Some(active)
    );
}

async fn taken_contract_returns_the_existing_mandate(backend: Backend) {
    let (_db, store) = open(backend).await;
    let first = new_mandate("m-1", "c-1", "p-1", t0());
    store
        .insert_mandate(MandateInsert {
            mandate: &first,
            expires_at: None,
            fingerprint: "fp-first",
            audit: &audit(&first, "MANDATE_CREATED"),
        })
        .await
        .unwrap();
    let before = store.table_counts().await.unwrap();
    let chain_before = verified_chain(&*store, &chain_id(&first)).await;

    // Same merchant and contract, another id, payer and fingerprint.
    let second = new_mandate("m-1", "c-1", "p-2", later(t0(), 5));
    let inserted = store
        .insert_mandate(MandateInsert {
            mandate: &second,
            expires_at: None,
            fingerprint: "fp-second",
            audit: &audit(&second, "MANDATE_CREATED"),
        })
        .await
        .unwrap();
    match inserted {
        Inserted::Existing {
            mandate,
            fingerprint,
        } => {
            assert_eq!(*mandate, first);
            assert_eq!(fingerprint, "fp-first");
        }
        Inserted::New => panic!("a taken contract id inserted a second mandate"),
    }
    assert_eq!(store.table_counts().await.unwrap(), before);
    assert_eq!(store.mandate(&second.id).await.unwrap(), None);
    assert_eq!(
        verified_chain(&*store, &chain_id(&first)).await,
        chain_before
    );
    assert!(
        !store
            .audit_chain_ids()
            .await
            .unwrap()
            .contains(&chain_id(&second)),
        "the refused insert started an audit chain"
    );

    // The contract id is unique per merchant only.
    let other_merchant = new_mandate("m-2", "c-1", "p-1", later(t0(), 6));
    insert(&*store, &other_merchant, None).await;
    assert_eq!(
        diff(before, store.table_counts().await.unwrap()),
        [1, 1, 1, 0]
    );
}

async fn stale_version_is_a_conflict(backend: Backend) {
    let (_db, store) = open(backend).await;
    let v1 = new_mandate("m-1", "c-1", "p-1", t0());
    insert(&*store, &v1, None).await;
    let v2 = confirmed(&v1, later(t0(), 1));
    update(&*store, &v1, &v2, None, None).await.unwrap();
    let before = store.table_counts().await.unwrap();

    // Someone else already moved v1 to v2: a change computed from v1 is refused.
    let mut stale = v1.clone();
    stale.revoke("changed my mind", later(t0(), 2)).unwrap();
    let err = update(
        &*store,
        &v1,
        &stale,
        None,
        Some(&record(&stale, "payer:p-1", "r-stale")),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
    // An expected version from the future, too.
    let mut ahead = v2.clone();
    ahead.version = 7;
    let mut future = ahead.clone();
    future.pause("", later(t0(), 3)).unwrap();
    let err = update(&*store, &ahead, &future, None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");

    assert_eq!(store.table_counts().await.unwrap(), before);
    assert_eq!(store.mandate(&v1.id).await.unwrap(), Some(v2.clone()));
    assert_eq!(store.mandate_version(&v1.id, 3).await.unwrap(), None);
    assert_eq!(
        store
            .idempotency_record("payer:p-1", "r-stale")
            .await
            .unwrap(),
        None
    );
    assert_eq!(verified_chain(&*store, &chain_id(&v1)).await, 2);
}

async fn taken_idempotency_key_is_a_conflict(backend: Backend) {
    let (_db, store) = open(backend).await;
    let v1 = new_mandate("m-1", "c-1", "p-1", t0());
    let other = new_mandate("m-1", "c-2", "p-1", t0());
    insert(&*store, &v1, None).await;
    insert(&*store, &other, None).await;
    let v2 = confirmed(&v1, later(t0(), 1));
    update(
        &*store,
        &v1,
        &v2,
        None,
        Some(&record(&v2, "payer:p-1", "r-1")),
    )
    .await
    .unwrap();
    let before = store.table_counts().await.unwrap();

    // The right version, but a request id this scope already used: nothing of it is kept, not
    // even the mandate row that was updated before the key was tried.
    let v3 = paused(&v2, later(t0(), 2));
    let err = update(
        &*store,
        &v2,
        &v3,
        None,
        Some(&record(&v3, "payer:p-1", "r-1")),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
    // Also when the key was used on another mandate.
    let other_v2 = confirmed(&other, later(t0(), 2));
    let err = update(
        &*store,
        &other,
        &other_v2,
        None,
        Some(&record(&other_v2, "payer:p-1", "r-1")),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");

    assert_eq!(store.table_counts().await.unwrap(), before);
    assert_eq!(store.mandate(&v1.id).await.unwrap(), Some(v2.clone()));
    assert_eq!(store.mandate(&other.id).await.unwrap(), Some(other.clone()));
    assert_eq!(store.mandate_version(&v1.id, 3).await.unwrap(), None);
    assert_eq!(
        store.idempotency_record("payer:p-1", "r-1").await.unwrap(),
        Some(record(&v2, "payer:p-1", "r-1"))
    );
    assert_eq!(verified_chain(&*store, &chain_id(&v1)).await, 2);
    assert_eq!(verified_chain(&*store, &chain_id(&other)).await, 1);

    // The same request id in another scope is another key.
    update(
        &*store,
        &v2,
        &v3,
        None,
        Some(&record(&v3, "payer:p-9", "r-1")),
    )
    .await
    .unwrap();
    assert_eq!(
        diff(before, store.table_counts().await.unwrap()),
        [0, 1, 1, 1]
    );
}

async fn idempotency_record_reads_back(backend: Backend) {
    let (_db, store) = open(backend).await;
    let v1 = new_mandate("m-1", "c-1", "p-1", t0());
    insert(&*store, &v1, None).await;
    assert_eq!(
        store.idempotency_record("payer:p-1", "r-1").await.unwrap(),
        None
    );
    let v2 = confirmed(&v1, later(t0(), 1));
    let mut written = record(&v2, "payer:p-1", "r-1");
    // Sub-second times survive (to the microsecond the store keeps).
    written.created_at = at("2026-03-01T03:00:00.123456Z");
    update(&*store, &v1, &v2, None, Some(&written))
        .await
        .unwrap();
    assert_eq!(
        store.idempotency_record("payer:p-1", "r-1").await.unwrap(),
        Some(written.clone())
    );
    // Scope and request id are both part of the key.
    assert_eq!(
        store.idempotency_record("payer:p-2", "r-1").await.unwrap(),
        None
    );
    assert_eq!(
        store.idempotency_record("payer:p-1", "r-2").await.unwrap(),
        None
    );
    // The record names the version it produced, which can be read back.
    assert_eq!(
        store
            .mandate_version(&written.mandate_id, written.mandate_version)
            .await
            .unwrap(),
        Some(v2)
    );
}

async fn versions_and_as_of(backend: Backend) {
    let (_db, store) = open(backend).await;
    let t1 = later(t0(), 60);
    let t2 = later(t0(), 120);
    let v1 = new_mandate("m-1", "c-1", "p-1", t0());
    insert(&*store, &v1, None).await;
    let v2 = confirmed(&v1, t1);
    update(&*store, &v1, &v2, None, None).await.unwrap();
    let v3 = paused(&v2, t2);
    update(&*store, &v2, &v3, None, None).await.unwrap();
    let id = &v1.id.clone();

    assert_eq!(
        store.mandate_as_of(id, later(t0(), -1)).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .mandate_as_of(id, t0() - SignedDuration::from_micros(1))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.mandate_as_of(id, t0()).await.unwrap(),
        Some(v1.clone())
    );
    assert_eq!(
        store.mandate_as_of(id, later(t0(), 30)).await.unwrap(),
        Some(v1.clone())
    );
    assert_eq!(
        store
            .mandate_as_of(id, t1 - SignedDuration::from_micros(1))
            .await
            .unwrap(),
        Some(v1.clone())
    );
    assert_eq!(store.mandate_as_of(id, t1).await.unwrap(), Some(v2.clone()));
    assert_eq!(
        store.mandate_as_of(id, later(t1, 30)).await.unwrap(),
        Some(v2.clone())
    );
    assert_eq!(
        store
            .mandate_as_of(id, later(t2, 60 * 24 * 365))
            .await
            .unwrap(),
        Some(v3.clone())
    );
    assert_eq!(
        store
            .mandate_as_of(&MandateId::generate(), t2)
            .await
            .unwrap(),
        None
    );

    assert_eq!(store.mandate_version(id, 0).await.unwrap(), None);
    assert_eq!(store.mandate_version(id, 1).await.unwrap(), Some(v1));
    assert_eq!(store.mandate_version(id, 2).await.unwrap(), Some(v2));
    assert_eq!(
        store.mandate_version(id, 3).await.unwrap(),
        Some(v3.clone())
    );
    assert_eq!(store.mandate_version(id, 4).await.unwrap(), None);
    assert_eq!(
        store
            .mandate_version(&MandateId::generate(), 1)
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.mandate(id).await.unwrap(), Some(v3));
}

async fn list_mandates_filters_and_pages(backend: Backend) {
    let (_db, store) = open(backend).await;
    // Created in this order, so ids ascend (`MandateId` is time-ordered).
    let specs = [
        ("m-1", "p-1", MandateStatus::PendingConsent),
        ("m-1", "p-2", MandateStatus::Active),
        ("m-2", "p-1", MandateStatus::PendingConsent),
        ("m-1", "p-1", MandateStatus::Paused),
        ("m-2", "p-2", MandateStatus::Active),
    ];
    let mut stored = vec![];
    for (i, (merchant, payer, status)) in specs.into_iter().enumerate() {
        let created = later(t0(), i as i64);
        let v1 = new_mandate(merchant, &format!("c-{i}"), payer, created);
        insert(&*store, &v1, None).await;
        let mut current = v1;
        if matches!(status, MandateStatus::Active | MandateStatus::Paused) {
            let next = confirmed(&current, later(created, 30));
            update(&*store, &current, &next, None, None).await.unwrap();
            current = next;
        }
        if status == MandateStatus::Paused {
            let next = paused(&current, later(created, 40));
            update(&*store, &current, &next, None, None).await.unwrap();
            current = next;
        }
        assert_eq!(current.status, status);
        stored.push(current);
    }
    for pair in stored.windows(2) {
        assert!(
            pair[0].id < pair[1].id,
            "MandateId::generate is not time-ordered: {} then {}",
            pair[0].id,
            pair[1].id
        );
    }
    let newest_first = |picks: &[usize]| -> Vec<Mandate> {
        let mut picked: Vec<Mandate> = picks.iter().map(|&i| stored[i].clone()).collect();
        picked.sort_by(|a, b| b.id.cmp(&a.id));
        picked
    };
    let merchant = |m: &str| Some(MerchantId::parse("merchant_id", m).unwrap());
    let payer = |p: &str| Some(PayerId::parse("payer_id", p).unwrap());
    let query = |limit: u32| MandateQuery {
        limit,
        ..Default::default()
    };
    let list = |q: MandateQuery| {
        let store = store.clone();
        async move { store.list_mandates(&q).await.unwrap() }
    };

    assert_eq!(list(query(50)).await, newest_first(&[0, 1, 2, 3, 4]));
    assert_eq!(
        list(MandateQuery {
            merchant_id: merchant("m-1"),
            ..query(50)
        })
        .await,
        newest_first(&[0, 1, 3])
    );
    assert_eq!(
        list(MandateQuery {
            payer_id: payer("p-1"),
            ..query(50)
        })
        .await,
        newest_first(&[0, 2, 3])
    );
    assert_eq!(
        list(MandateQuery {
            status: Some(MandateStatus::Active),
            ..query(50)
        })
        .await,
        newest_first(&[1, 4])
    );
    assert_eq!(
        list(MandateQuery {
            status: Some(MandateStatus::PendingConsent),
            ..query(50)
        })
        .await,
        newest_first(&[0, 2])
    );
    assert_eq!(
        list(MandateQuery {
            merchant_id: merchant("m-1"),
            payer_id: payer("p-1"),
            ..query(50)
        })
        .await,
        newest_first(&[0, 3])
    );
    assert_eq!(
        list(MandateQuery {
            merchant_id: merchant("m-1"),
            status: Some(MandateStatus::Paused),
            ..query(50)
        })
        .await,
        newest_first(&[3])
    );
    assert!(
        list(MandateQuery {
            merchant_id: merchant("m-3"),
            ..query(50)
        })
        .await
        .is_empty()
    );
    assert!(
        list(MandateQuery {
            status: Some(MandateStatus::Revoked),
            ..query(50)
        })
        .await
        .is_empty()
    );

    // Limit and cursor.
    assert_eq!(list(query(2)).await, newest_first(&[3, 4]));
    assert_eq!(list(query(1)).await, newest_first(&[4]));
    assert!(list(query(0)).await.is_empty());
    assert_eq!(
        list(MandateQuery {
            before: Some(stored[3].id.clone()),
            ..query(50)
        })
        .await,
        newest_first(&[0, 1, 2])
    );
    assert_eq!(
        list(MandateQuery {
            before: Some(stored[3].id.clone()),
            ..query(2)
        })
        .await,
        newest_first(&[1, 2])
    );
    assert_eq!(
        list(MandateQuery {
            merchant_id: merchant("m-1"),
            before: Some(stored[3].id.clone()),
            ..query(50)
        })
        .await,
        newest_first(&[0, 1])
    );
    assert!(
        list(MandateQuery {
            before: Some(stored[0].id.clone()),
            ..query(50)
        })
        .await
        .is_empty()
    );
    // Walking with the cursor, one at a time, visits each mandate once, newest first.
    let mut walked = vec![];
    let mut before = None;
    loop {
        let page = list(MandateQuery {
            before: before.clone(),
            ..query(1)
        })
        .await;
        let Some(last) = page.last() else { break };
        before = Some(last.id.clone());
        walked.extend(page);
        assert!(walked.len() <= stored.len(), "the cursor does not advance");
    }
    assert_eq!(walked, newest_first(&[0, 1, 2, 3, 4]));
}

async fn mandates_expiring_by(backend: Backend) {
    let (_db, store) = open(backend).await;
    let a = new_mandate("m-1", "c-a", "p-1", t0());
    let b = new_mandate("m-1", "c-b", "p-1", t0());
    let c = new_mandate("m-1", "c-c", "p-1", t0());
    let d = new_mandate("m-1", "c-d", "p-1", t0());
    // Inserted out of expiry order; c never expires.
    insert(&*store, &d, Some(later(t0(), 180))).await;
    insert(&*store, &b, Some(later(t0(), 120))).await;
    insert(&*store, &c, None).await;
    insert(&*store, &a, Some(later(t0(), 60))).await;
    let due = |when: Timestamp, limit: u32| {
        let store = store.clone();
        async move { store.mandates_expiring_by(when, limit).await.unwrap() }
    };
    assert!(due(t0(), 10).await.is_empty());
    assert!(due(later(t0(), 59), 10).await.is_empty());
    assert_eq!(due(later(t0(), 60), 10).await, vec![a.id.clone()]);
    assert_eq!(
        due(later(t0(), 150), 10).await,
        vec![a.id.clone(), b.id.clone()]
    );
    assert_eq!(
        due(later(t0(), 10_000), 10).await,
        vec![a.id.clone(), b.id.clone(), d.id.clone()]
    );
    assert_eq!(
        due(later(t0(), 10_000), 2).await,
        vec![a.id.clone(), b.id.clone()]
    );
    assert_eq!(due(later(t0(), 10_000), 1).await, vec![a.id.clone()]);
    assert!(due(later(t0(), 10_000), 0).await.is_empty());

    // An update sets the new expiry: a ends (none), c gains one before b.
    let mut a_ended = a.clone();
    a_ended.revoke("", later(t0(), 10)).unwrap();
    update(&*store, &a, &a_ended, None, None).await.unwrap();
    let c_active = confirmed(&c, later(t0(), 10));
    update(&*store, &c, &c_active, Some(later(t0(), 90)), None)
        .await
        .unwrap();
    assert_eq!(
        due(later(t0(), 10_000), 10).await,
        vec![c.id.clone(), b.id.clone(), d.id.clone()]
    );
}

async fn every_write_appends_one_audit_event(backend: Backend) {
    let (_db, store) = open(backend).await;
    let counts = || {
        let store = store.clone();
        async move { store.table_counts().await.unwrap() }
    };
    let v1 = new_mandate("m-1", "c-1", "p-1", t0());
    let chain = chain_id(&v1);

    let before = counts().await;
    let created = audit(&v1, "MANDATE_CREATED");
    store
        .insert_mandate(MandateInsert {
            mandate: &v1,
            expires_at: None,
            fingerprint: "fp",
            audit: &created,
        })
        .await
        .unwrap();
    assert_eq!(diff(before, counts().await), [1, 1, 1, 0]);

    let before = counts().await;
    let v2 = confirmed(&v1, later(t0(), 1));
    update(&*store, &v1, &v2, None, None).await.unwrap();
    assert_eq!(diff(before, counts().await), [0, 1, 1, 0]);

    let before = counts().await;
    let v3 = paused(&v2, later(t0(), 2));
    update(
        &*store,
        &v2,
        &v3,
        None,
        Some(&record(&v3, "payer:p-1", "r-1")),
    )
    .await
    .unwrap();
    assert_eq!(diff(before, counts().await), [0, 1, 1, 1]);

    let before = counts().await;
    let mut refusal = AuditDraft::new(later(t0(), 3), &Actor::system(), "ACCESS_DENIED", "DENIED");
    refusal.mandate_id = Some(v1.id.to_string());
    refusal.merchant_id = Some("m-1".into());
    refusal.reason_code = Some("OTHER_TENANT".into());
    store.append_audit(&refusal).await.unwrap();
    assert_eq!(diff(before, counts().await), [0, 0, 1, 0]);

    // The chain holds the four events, in order, exactly as drafted.
    assert_eq!(verified_chain(&*store, &chain).await, 4);
    let stored = store.audit_chain(&chain).await.unwrap();
    let drafts: Vec<AuditDraft> = stored.events.iter().map(|e| e.draft.clone()).collect();
    assert_eq!(
        drafts,
        vec![
            created,
            audit(&v2, "MANDATE_CHANGED"),
            audit(&v3, "MANDATE_CHANGED"),
            refusal
        ]
    );
    let positions: Vec<i64> = stored.events.iter().map(|e| e.chain_seq).collect();
    assert_eq!(positions, vec![1, 2, 3, 4]);
    assert!(stored.events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(stored.events.iter().all(|e| e.chain_id == chain));
    assert_eq!(
        stored.head,
        Some((4, stored.events[3].hash.clone())),
        "the head is the last event"
    );

    // Events with no mandate chain per merchant, and with neither, on the service's chain.
    let mut merchant_event = AuditDraft::new(later(t0(), 4), &Actor::system(), "NOTICE", "OK");
    merchant_event.merchant_id = Some("m-1".into());
    store.append_audit(&merchant_event).await.unwrap();
    let system_event = AuditDraft::new(later(t0(), 5), &Actor::system(), "SWEEP", "OK");
    store.append_audit(&system_event).await.unwrap();
    assert_eq!(verified_chain(&*store, "merchant:m-1").await, 1);
    assert_eq!(verified_chain(&*store, "system").await, 1);
    let mut ids = store.audit_chain_ids().await.unwrap();
    ids.sort();
    let mut want = vec![
        chain.clone(),
        "merchant:m-1".to_owned(),
        "system".to_owned(),
    ];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(counts().await.audit_events, 6);

    // A failed write appends nothing.
    let before = counts().await;
    assert!(matches!(
        update(&*store, &v1, &v2, None, None).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(counts().await, before);
    assert_eq!(verified_chain(&*store, &chain).await, 4);
}

/// Runs one statement straight against the database, around the store.
async fn raw(backend: Backend, url: &str, sql: &'static str) -> Result<u64, sqlx::Error> {
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await?;
            let result = sqlx::query(sql)
                .execute(&pool)
                .await
                .map(|r| r.rows_affected());
            pool.close().await;
            result
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(url).await?;
            let result = sqlx::query(sql)
                .execute(&pool)
                .await
                .map(|r| r.rows_affected());
            pool.close().await;
            result
        }
    }
}

async fn database_refuses_changing_audit_events(backend: Backend) {
    let (db, store) = open(backend).await;
    let v1 = new_mandate("m-1", "c-1", "p-1", t0());
    insert(&*store, &v1, None).await;
    let v2 = confirmed(&v1, later(t0(), 1));
    update(&*store, &v1, &v2, None, None).await.unwrap();
    let before = store.table_counts().await.unwrap();
    let chain_before = store.audit_chain(&chain_id(&v1)).await.unwrap().events;

    // The raw connection works: reading is fine.
    raw(backend, &db.url, "SELECT COUNT(*) FROM audit_events")
        .await
        .unwrap();
    let mut statements = vec![
        "UPDATE audit_events SET action = 'TAMPERED'",
        "UPDATE audit_events SET details = '{}' WHERE chain_seq = 1",
        "DELETE FROM audit_events WHERE chain_seq = 2",
        "DELETE FROM audit_events",
    ];
    if backend == Backend::Postgres {
        statements.push("TRUNCATE audit_events");
    }
    for sql in statements {
        match raw(backend, &db.url, sql).await {
            Err(e) => assert!(
                e.to_string().contains("append-only"),
                "{sql}: refused for another reason: {e}"
            ),
            Ok(rows) => panic!("{sql}: the database allowed it ({rows} rows)"),
        }
    }
    assert_eq!(store.table_counts().await.unwrap(), before);
    assert_eq!(
        store.audit_chain(&chain_id(&v1)).await.unwrap().events,
        chain_before
    );
    assert_eq!(verified_chain(&*store, &chain_id(&v1)).await, 2);
    // Appending still works.
    let v3 = paused(&v2, later(t0(), 2));
    update(&*store, &v2, &v3, None, None).await.unwrap();
    assert_eq!(verified_chain(&*store, &chain_id(&v1)).await, 3);
}

async fn concurrent_appends_keep_the_chain(backend: Backend) {
    const TASKS: usize = 20;
    let (_db, store) = open(backend).await;
    let v1 = new_mandate("m-1", "c-1", "p-1", t0());
    insert(&*store, &v1, None).await;
    let id = v1.id.clone();
    let start = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = vec![];
    for i in 0..TASKS {
        let store = store.clone();
        let id = id.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            if i % 2 == 0 {
                // A change of the mandate, retried on conflict as the service does.
                for _ in 0..1000 {
                    let current = store.mandate(&id).await.unwrap().unwrap();
                    let mut next = current.clone();
                    next.set_funding_sources(wallet(), later(t0(), 1 + i as i64))
                        .unwrap();
                    match update(&*store, &current, &next, None, None).await {
                        Ok(()) => return,
                        Err(StoreError::Conflict) => continue,
                        Err(e) => panic!("task {i}: {e}"),
                    }
                }
                panic!("task {i}: never got its change in");
            } else {
                // A refusal: only an audit event.
                let mut draft = AuditDraft::new(
                    later(t0(), 1 + i as i64),
                    &Actor::system(),
                    "ACCESS_DENIED",
                    "DENIED",
                );
                draft.mandate_id = Some(id.to_string());
                draft.merchant_id = Some("m-1".into());
                draft.details = format!("{{\"task\":{i}}}");
                store.append_audit(&draft).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let chain = store.audit_chain(&chain_id(&v1)).await.unwrap();
    let positions: Vec<i64> = chain.events.iter().map(|e| e.chain_seq).collect();
    let distinct: HashSet<i64> = positions.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        positions.len(),
        "duplicate positions: {positions:?}"
    );
    assert_eq!(positions, (1..=(TASKS as i64 + 1)).collect::<Vec<_>>());
    assert_eq!(verified_chain(&*store, &chain_id(&v1)).await, TASKS + 1);
    let counts = store.table_counts().await.unwrap();
    assert_eq!(counts.audit_events, TASKS as i64 + 1);
    assert_eq!(counts.mandate_versions, TASKS as i64 / 2 + 1);
    assert_eq!(
        store.mandate(&id).await.unwrap().unwrap().version,
        TASKS as i64 / 2 + 1
    );
}

/// `audit_chain` is one consistent reading: while other writers append to the chain, every
/// reading verifies against the head it was read with (else VerifyAuditChain would report
/// tampering that is not there).
async fn chain_reads_are_consistent_during_appends(backend: Backend) {
    const WRITERS: usize = 4;
    const READS: usize = 50;
    let (_db, store) = open(backend).await;
    let v1 = new_mandate("m-1", "c-1", "p-1", t0());
    insert(&*store, &v1, None).await;
    let chain = chain_id(&v1);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = vec![];
    for w in 0..WRITERS {
        let store = store.clone();
        let stop = stop.clone();
        let id = v1.id.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut draft = AuditDraft::new(t0(), &Actor::system(), "ACCESS_DENIED", "DENIED");
                draft.mandate_id = Some(id.to_string());
                draft.details = format!("{{\"n\":{n},\"writer\":{w}}}");
                store.append_audit(&draft).await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut broken = vec![];
    for _ in 0..READS {
        let read = store.audit_chain(&chain).await.unwrap();
        let head = read.head.as_ref().map(|(seq, hash)| (*seq, hash.as_str()));
        if let Err(e) = verify_chain(&chain, &read.events, head) {
            broken.push(format!(
                "{e} ({} events read, head at {:?})",
                read.events.len(),
                read.head.as_ref().map(|h| h.0)
            ));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut appended = 0;
    for writer in writers {
        appended += writer.await.unwrap();
    }
    assert!(
        broken.is_empty(),
        "{} of {READS} readings of a chain being appended to did not verify; first: {}",
        broken.len(),
        broken[0]
    );
    assert_eq!(verified_chain(&*store, &chain).await, appended + 1);
}

/// A deduction's facts are read in one batch with the mandate, shaped by the mandate as the
/// caller read it beforehand; when the stored mandate calls for other reads (here another
/// payer's wallet and another limit period), they are read again for it.
async fn facts_follow_the_mandate_as_stored_not_as_the_caller_saw_it(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let database = withholding::storage::open(&db.url).await.unwrap();
    let mandate = new_mandate("m-1", "c-1", "p-1", t0());
    insert(&*database.mandates, &mandate, None).await;
    let wallet = Account::wallet(&mandate.payer_id, Currency::Cny);
    let credit = LedgerMove {
        movement_id: "mv-credit".into(),
        kind: MovementKind::WalletCredit,
        from: Account::clearing(&mandate.payer_id, Currency::Cny),
        to: wallet,
        amount_minor: 12_345,
    };
    let mut draft = AuditDraft::new(t0(), &Actor::system(), "WALLET_CREDITED", "OK");
    draft.payer_id = Some("p-1".into());
    database
        .deductions
        .credit_wallet(
            &credit,
            KeyedRequest {
                scope: "payer:p-1",
                request_id: "credit-1",
                fingerprint: "fp",
            },
            &draft,
        )
        .await
        .unwrap();
    let mut seen = mandate.clone();
    seen.payer_id = PayerId::parse("payer_id", "p-2").unwrap();
    seen.terms.period_limits = None;
    let request = DebitRequest {
        amount: cny("1"),
        purpose: Purpose::Utility,
        bill_reference: BillReference::parse("bill_reference", "bill-1").unwrap(),
        notice_id: None,
        approval_id: None,
    };
    let now = later(t0(), 60);
    for (name, seen) in [("as stored", mandate.clone()), ("out of date", seen)] {
        let input = DeductionInput {
            merchant_id: mandate.merchant_id.clone(),
            request_id: format!("debit-{name}"),
            fingerprint: "fp".into(),
            mandate_id: mandate.id.clone(),
            seen,
            request: request.clone(),
            now,
            refunds_since: t0(),
        };
        let given: std::sync::Mutex<Option<(Facts, i64)>> = Default::default();
        let decide = |current: &Mandate, facts: &Facts, balance: i64| {
            *given.lock().unwrap() = Some((facts.clone(), balance));
            DeductionWrites::only(Deduction::new(
                format!("ddn-{name}"),
                current,
                format!("debit-{name}"),
                request.clone(),
                String::new(),
                now,
            ))
        };
        let executed = database
            .deductions
            .execute_deduction(&input, &decide)
            .await
            .unwrap();
        assert!(
            matches!(executed, Executed::New(..)),
            "{name}: {executed:?}"
        );
        let (facts, balance) = given.lock().unwrap().take().unwrap();
        assert_eq!(balance, 12_345, "{name}: the stored payer's wallet");
        assert_eq!(facts.now, now, "{name}");
    }
}

both_backends!(
    insert_then_read_back,
    taken_contract_returns_the_existing_mandate,
    stale_version_is_a_conflict,
    taken_idempotency_key_is_a_conflict,
    idempotency_record_reads_back,
    versions_and_as_of,
    list_mandates_filters_and_pages,
    mandates_expiring_by,
    every_write_appends_one_audit_event,
    database_refuses_changing_audit_events,
    concurrent_appends_keep_the_chain,
    chain_reads_are_consistent_during_appends,
    facts_follow_the_mandate_as_stored_not_as_the_caller_saw_it,
);
