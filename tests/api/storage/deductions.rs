//! A deduction's reads in storage: the facts are read for the mandate as stored, not as the
//! caller saw it.

use super::*;
use crate::both_backends;

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
        let given: std::sync::Arc<std::sync::Mutex<Option<(Facts, i64)>>> = Default::default();
        let decide = {
            let (given, request) = (given.clone(), request.clone());
            move |current: &Mandate, facts: &Facts, balance: i64| {
                *given.lock().unwrap() = Some((facts.clone(), balance));
                DeductionWrites::only(Deduction::new(
                    format!("ddn-{name}"),
                    current,
                    format!("debit-{name}"),
                    request.clone(),
                    String::new(),
                    now,
                ))
            }
        };
        let executed = database
            .deductions
            .execute_deduction(input, std::sync::Arc::new(decide))
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

both_backends!(facts_follow_the_mandate_as_stored_not_as_the_caller_saw_it);
