//! Card numbers never get in (DESIGN §3.3, §7): a Luhn-valid run of 13–19 digits, together or
//! split by spaces, `-` or `.`, is refused in every token field and every free-text field, with
//! the field named and nothing stored.

use tonic::{Code, Status};
use tonic_types::StatusExt;
use withholding::pb;

use crate::both_backends;
use crate::harness::*;

const CARDS: [&str; 4] = [
    "4111111111111111",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4111.1111.1111.1111",
];

fn assert_refused(status: &Status, field: &str, what: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    let bad = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("{what}: no BadRequest: {status:?}"));
    assert_eq!(bad.field_violations[0].field, field, "{what}");
    assert!(
        bad.field_violations[0].description.contains("card number"),
        "{what}: {status:?}"
    );
}

fn card_source(token: &str) -> pb::FundingSource {
    pb::FundingSource {
        instrument: Some(pb::funding_source::Instrument::BankCard(
            pb::BankCardSource {
                vault_token: token.into(),
                bank_name: "ICBC".into(),
                last_four: "1111".into(),
            },
        )),
        cap_per_debit: None,
    }
}

async fn card_numbers_are_refused_in_tokens_and_free_text(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = app.mandate_for("m-1", "p-1", "c-1", roomy_terms()).await;
    app.credit("p-1", "500.00").await;
    let paid = app
        .deduct("m-1", collect("r-1", &m.mandate_id, "50.00", "B-1"))
        .await;
    let mut payer = app.payer("p-1").await;
    let mut merchant = app.merchant("m-1").await;
    let mut deductions = app.deductions_as(app.merchant_token("m-1")).await;
    let before = app.counts().await;
    let chain_before = app.chain_events(&format!("mandate:{}", m.mandate_id)).await;

    for card in CARDS {
        for token in [card.to_owned(), format!("tok_{}", card.replace(' ', ""))] {
            if token.contains(' ') {
                continue; // not an identifier, refused as such already
            }
            let err = payer
                .set_funding_sources(pb::SetFundingSourcesRequest {
                    mandate_id: m.mandate_id.clone(),
                    funding_sources: vec![card_source(&token)],
                    request_id: String::new(),
                })
                .await
                .unwrap_err();
            assert_refused(&err, "funding_sources[0].bank_card.vault_token", &token);
        }
        let text = format!("card {card} charged twice");
        let err = deductions
            .create_deduction(pb::CreateDeductionRequest {
                description: text.clone(),
                ..collect("r-card", &m.mandate_id, "10.00", "B-2")
            })
            .await
            .unwrap_err();
        assert_refused(&err, "description", card);
        let err = deductions
            .refund_deduction(pb::RefundDeductionRequest {
                request_id: "rf-card".into(),
                deduction_id: paid.deduction_id.clone(),
                amount: money("1.00"),
                reason: text.clone(),
            })
            .await
            .unwrap_err();
        assert_refused(&err, "reason", card);
        let err = payer
            .pause_mandate(pb::PauseMandateRequest {
                mandate_id: m.mandate_id.clone(),
                reason: text.clone(),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_refused(&err, "reason", card);
        let mut terms = roomy_terms();
        terms.display_account = text.clone();
        let err = merchant
            .create_mandate(pb::CreateMandateRequest {
                merchant_contract_id: "c-card".into(),
                payer_id: "p-1".into(),
                terms: Some(terms),
            })
            .await
            .unwrap_err();
        assert_refused(&err, "terms.display_account", card);
    }
    let created = app
        .merchant("m-1")
        .await
        .create_mandate(create_request("c-2", "p-1"))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let mut confirm = confirm_request(&created);
    confirm.consent.as_mut().unwrap().device_id = "4111-1111-1111-1111".into();
    let err = payer.confirm_mandate(confirm).await.unwrap_err();
    assert_refused(&err, "consent.device_id", "device id");

    // Nothing of the refused requests was stored.
    let after = app.counts().await;
    assert_eq!(after.mandates, before.mandates + 1, "only c-2");
    assert_eq!(
        app.chain_events(&format!("mandate:{}", m.mandate_id)).await,
        chain_before
    );
}

both_backends!(card_numbers_are_refused_in_tokens_and_free_text);
