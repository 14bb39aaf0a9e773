//! Malformed requests (DESIGN §7): each is INVALID_ARGUMENT with a `google.rpc.BadRequest` naming
//! the exact field path, and changes nothing in the database. Oversized messages are
//! RESOURCE_EXHAUSTED and leave the server serving.

mod card_numbers;
mod confirm;
mod create;
mod deductions;

use tonic::Code;
use withholding::pb;
use withholding::storage::TableCounts;

use crate::both_backends;
use crate::harness::*;

type Edit<T> = Box<dyn Fn(&mut T) + Send + Sync>;

/// Which RPC a case calls; the edit turns that RPC's valid base request into a bad one.
enum Call {
    /// Merchant m-1: `create_request("c-bad", "p-1")`.
    Create(Edit<pb::CreateMandateRequest>),
    /// Payer p-1: `confirm_request` of a PENDING_CONSENT mandate.
    Confirm(Edit<pb::ConfirmMandateRequest>),
    /// Payer p-1: pause an ACTIVE mandate, with reason and request id.
    Pause(Edit<pb::PauseMandateRequest>),
    /// Auditor: read the pending mandate.
    Get(Edit<pb::GetMandateRequest>),
    /// Merchant m-1: a page of 10.
    List(Edit<pb::ListMandatesRequest>),
}

struct Case {
    name: String,
    call: Call,
    field: &'static str,
    /// Refused and recorded as a policy event an auditor can see (asking for clawback
    /// authority): exactly one audit event is added, nothing else.
    policy_event: bool,
}

impl Case {
    fn recorded_as_policy_event(mut self) -> Self {
        self.policy_event = true;
        self
    }
}

fn create(
    name: impl Into<String>,
    edit: impl Fn(&mut pb::CreateMandateRequest) + Send + Sync + 'static,
    field: &'static str,
) -> Case {
    Case {
        name: name.into(),
        call: Call::Create(Box::new(edit)),
        field,
        policy_event: false,
    }
}

/// Edits the terms of a create request.
fn terms(
    name: impl Into<String>,
    edit: impl Fn(&mut pb::MandateTerms) + Send + Sync + 'static,
    field: &'static str,
) -> Case {
    create(name, move |r| edit(r.terms.as_mut().unwrap()), field)
}

fn confirm(
    name: impl Into<String>,
    edit: impl Fn(&mut pb::ConfirmMandateRequest) + Send + Sync + 'static,
    field: &'static str,
) -> Case {
    Case {
        name: name.into(),
        call: Call::Confirm(Box::new(edit)),
        field,
        policy_event: false,
    }
}

/// Edits the consent of a confirm request.
fn consent_case(
    name: impl Into<String>,
    edit: impl Fn(&mut pb::ConsentEvidence) + Send + Sync + 'static,
    field: &'static str,
) -> Case {
    confirm(name, move |r| edit(r.consent.as_mut().unwrap()), field)
}

/// Edits the bank card (the second source) of a confirm request.
fn card(
    name: impl Into<String>,
    edit: impl Fn(&mut pb::BankCardSource) + Send + Sync + 'static,
    field: &'static str,
) -> Case {
    confirm(
        name,
        move |r| match r.funding_sources[1].instrument.as_mut() {
            Some(pb::funding_source::Instrument::BankCard(card)) => edit(card),
            other => panic!("base request's second source is not a card: {other:?}"),
        },
        field,
    )
}

fn pause(
    name: impl Into<String>,
    edit: impl Fn(&mut pb::PauseMandateRequest) + Send + Sync + 'static,
    field: &'static str,
) -> Case {
    Case {
        name: name.into(),
        call: Call::Pause(Box::new(edit)),
        field,
        policy_event: false,
    }
}

fn get(
    name: impl Into<String>,
    edit: impl Fn(&mut pb::GetMandateRequest) + Send + Sync + 'static,
    field: &'static str,
) -> Case {
    Case {
        name: name.into(),
        call: Call::Get(Box::new(edit)),
        field,
        policy_event: false,
    }
}

fn list(
    name: impl Into<String>,
    edit: impl Fn(&mut pb::ListMandatesRequest) + Send + Sync + 'static,
    field: &'static str,
) -> Case {
    Case {
        name: name.into(),
        call: Call::List(Box::new(edit)),
        field,
        policy_event: false,
    }
}

fn in_currency(currency: &str, amount: &str) -> Option<pb::Money> {
    Some(pb::Money {
        currency_code: currency.into(),
        amount: amount.into(),
    })
}

/// Every case, CreateMandate's first.
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    create::cases(&mut cases);
    confirm::cases(&mut cases);
    cases
}

async fn malformed_requests_are_invalid_argument(backend: Backend) {
    let app = spawn_app(backend).await;
    let pending = create_mandate(&app, "c-pending").await;
    let active = active_mandate(&app, "c-active").await;
    let mut merchant = app.merchant("m-1").await;
    let mut payer = app.payer("p-1").await;
    let mut auditor = app.auditor(None).await;
    let pause_base = || pb::PauseMandateRequest {
        mandate_id: active.mandate_id.clone(),
        reason: "travelling".into(),
        request_id: "pause-1".into(),
    };
    let get_base = || pb::GetMandateRequest {
        mandate_id: pending.mandate_id.clone(),
        as_of: None,
    };
    let list_base = || pb::ListMandatesRequest {
        page_size: 10,
        ..Default::default()
    };

    let cases = cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let before = app.counts().await;
        let result = match &case.call {
            Call::Create(edit) => {
                let mut r = create_request("c-bad", "p-1");
                edit(&mut r);
                merchant.create_mandate(r).await.map(drop)
            }
            Call::Confirm(edit) => {
                let mut r = confirm_request(&pending);
                edit(&mut r);
                payer.confirm_mandate(r).await.map(drop)
            }
            Call::Pause(edit) => {
                let mut r = pause_base();
                edit(&mut r);
                payer.pause_mandate(r).await.map(drop)
            }
            Call::Get(edit) => {
                let mut r = get_base();
                edit(&mut r);
                auditor.get_mandate(r).await.map(drop)
            }
            Call::List(edit) => {
                let mut r = list_base();
                edit(&mut r);
                merchant.list_mandates(r).await.map(drop)
            }
        };
        let after = app.counts().await;
        match result {
            Ok(()) => failures.push(format!("{}: accepted", case.name)),
            Err(status) => match violated_field(&status) {
                Ok(field) if field == case.field => {}
                Ok(field) => failures.push(format!(
                    "{}: names {field:?}, expected {:?} ({})",
                    case.name,
                    case.field,
                    status.message()
                )),
                Err(why) => failures.push(format!("{}: {why}", case.name)),
            },
        }
        let expected = if case.policy_event {
            TableCounts {
                audit_events: before.audit_events + 1,
                ..before
            }
        } else {
            before
        };
        if after != expected {
            failures.push(format!(
                "{}: database changed: {before:?} -> {after:?}",
                case.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} malformed requests misbehaved:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // The base requests the cases were made from are themselves valid, so each refusal above
    // was caused by its one edit.
    merchant
        .create_mandate(create_request("c-bad", "p-1"))
        .await
        .expect("base CreateMandate");
    payer
        .confirm_mandate(confirm_request(&pending))
        .await
        .expect("base ConfirmMandate");
    payer
        .pause_mandate(pause_base())
        .await
        .expect("base PauseMandate");
    auditor
        .get_mandate(get_base())
        .await
        .expect("base GetMandate");
    merchant
        .list_mandates(list_base())
        .await
        .expect("base ListMandates");
    app.verify_audit().await;
}

/// A message over the 64 KiB bound is RESOURCE_EXHAUSTED, changes nothing, and neither the
/// connection nor the server is harmed. One just under the bound is decoded and judged on its
/// fields.
async fn oversized_request_is_resource_exhausted(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut merchant = app.merchant("m-1").await;
    let before = app.counts().await;

    let mut huge = create_request("c-huge", "p-1");
    huge.terms.as_mut().unwrap().display_account = "x".repeat(100 * 1024);
    let status = merchant.create_mandate(huge).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert_eq!(app.counts().await, before);

    let mut large = create_request("c-large", "p-1");
    large.terms.as_mut().unwrap().display_account = "x".repeat(60 * 1024);
    let status = merchant.create_mandate(large).await.unwrap_err();
    assert_eq!(violated_field(&status).unwrap(), "terms.display_account");
    assert_eq!(app.counts().await, before);

    let same = merchant
        .create_mandate(create_request("c-after-1", "p-1"))
        .await
        .expect("same client after the oversized request")
        .into_inner();
    assert!(!same.existing);
    let fresh = app
        .merchant("m-1")
        .await
        .create_mandate(create_request("c-after-2", "p-1"))
        .await
        .expect("new client after the oversized request")
        .into_inner();
    assert!(!fresh.existing);
    assert_eq!(app.counts().await.mandates, before.mandates + 2);
}

both_backends!(
    malformed_requests_are_invalid_argument,
    oversized_request_is_resource_exhausted,
);
