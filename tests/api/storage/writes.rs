//! Mandate writes: insert and read back, a taken contract id, a stale version and a taken
//! idempotency key are refused whole, and an idempotency record reads back.

use super::*;
use crate::both_backends;

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

both_backends!(
    insert_then_read_back,
    taken_contract_returns_the_existing_mandate,
    stale_version_is_a_conflict,
    taken_idempotency_key_is_a_conflict,
    idempotency_record_reads_back,
);
