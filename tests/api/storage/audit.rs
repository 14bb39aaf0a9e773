//! The audit trail in storage: every write appends exactly one event, the database refuses to
//! change events, and concurrent appends and reads keep every chain verifiable.

use super::*;
use crate::both_backends;
use crate::harness::Raw;

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

async fn database_refuses_changing_audit_events(backend: Backend) {
    let (db, store) = open(backend).await;
    let v1 = new_mandate("m-1", "c-1", "p-1", t0());
    insert(&*store, &v1, None).await;
    let v2 = confirmed(&v1, later(t0(), 1));
    update(&*store, &v1, &v2, None, None).await.unwrap();
    let before = store.table_counts().await.unwrap();
    let chain_before = store.audit_chain(&chain_id(&v1)).await.unwrap().events;

    // The raw connection works: reading is fine.
    let raw = Raw::connect(backend, &db.url).await;
    raw.execute("SELECT COUNT(*) FROM audit_events")
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
        match raw.execute(sql).await {
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

both_backends!(
    every_write_appends_one_audit_event,
    database_refuses_changing_audit_events,
    concurrent_appends_keep_the_chain,
    chain_reads_are_consistent_during_appends,
);
