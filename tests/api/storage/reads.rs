//! Mandate reads: versions and the version in force at a time, listing with filters and a
//! cursor, and the mandates due to expire.

use super::*;
use crate::both_backends;

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
    // A contract id names one mandate per merchant; without the merchant, every merchant's.
    let contract = |c: &str| Some(ContractId::parse("merchant_contract_id", c).unwrap());
    assert_eq!(
        list(MandateQuery {
            contract_id: contract("c-2"),
            ..query(50)
        })
        .await,
        newest_first(&[2])
    );
    assert_eq!(
        list(MandateQuery {
            contract_id: contract("c-2"),
            merchant_id: merchant("m-1"),
            ..query(50)
        })
        .await,
        vec![]
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

both_backends!(
    versions_and_as_of,
    list_mandates_filters_and_pages,
    mandates_expiring_by,
);
