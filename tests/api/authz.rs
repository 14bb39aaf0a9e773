//! Who may call what (DESIGN §2): the role × RPC matrix over real gRPC, tenancy (another tenant's
//! mandate is NOT_FOUND, indistinguishable from a missing one, and audited), and what each caller
//! sees in `ListMandates`.

use std::collections::HashSet;

use tonic::{Code, Status};
use withholding::domain::actor::Role;
use withholding::domain::ids::MandateId;
use withholding::pb;
use withholding::service::Rpc;

use crate::both_backends;
use crate::harness::*;

/// Every role a token can carry (`System` has no token).
const ROLES: [Role; 4] = [Role::Merchant, Role::Payer, Role::Auditor, Role::Operator];

/// One client per role, with the identities the mandates under test belong to: merchant m-1,
/// payer p-1, an institution-wide auditor and an operator.
struct Callers {
    merchant: Client,
    payer: Client,
    auditor: Client,
    operator: Client,
}

impl Callers {
    async fn new(app: &TestApp) -> Self {
        Self {
            merchant: app.merchant("m-1").await,
            payer: app.payer("p-1").await,
            auditor: app.auditor(None).await,
            operator: app.operator().await,
        }
    }

    fn of(&mut self, role: Role) -> &mut Client {
        match role {
            Role::Merchant => &mut self.merchant,
            Role::Payer => &mut self.payer,
            Role::Auditor => &mut self.auditor,
            Role::Operator => &mut self.operator,
            Role::System => panic!("no token carries the system role"),
        }
    }
}

/// What one RPC call is aimed at.
struct Target {
    mandate_id: String,
    /// The version the caller was shown (ConfirmMandate, ConfirmAmendment).
    version: i64,
    /// A fresh contract id, for CreateMandate.
    contract: String,
}

impl Target {
    fn of(mandate: &pb::Mandate, contract: &str) -> Self {
        Self {
            mandate_id: mandate.mandate_id.clone(),
            version: mandate.version,
            contract: contract.to_owned(),
        }
    }
}

/// The utility terms with a lower per-debit limit: a tightening amendment.
fn tighter_terms() -> pb::MandateTerms {
    pb::MandateTerms {
        per_debit_limit: money("400.00"),
        ..utility_terms()
    }
}

/// The utility terms with a higher per-debit limit: a loosening amendment.
fn looser_terms() -> pb::MandateTerms {
    pb::MandateTerms {
        per_debit_limit: money("800.00"),
        ..utility_terms()
    }
}

fn wallet_only() -> Vec<pb::FundingSource> {
    vec![pb::FundingSource {
        instrument: Some(pb::funding_source::Instrument::Wallet(pb::WalletSource {})),
        cap_per_debit: None,
    }]
}

/// The RPCs of the other services (DeductionService, WalletService) that share the `Rpc` enum.
/// This suite covers MandateService (`deduction_access.rs` covers the other two, with its own
/// role × RPC table); the others are named here one by one, so an RPC added to
/// `Rpc` still breaks the build until it is placed on one side or the other.
macro_rules! not_mandate_service {
    () => {
        Rpc::NotifyUpcomingDebit
            | Rpc::ListNotices
            | Rpc::CreateDeduction
            | Rpc::CheckDeduction
            | Rpc::GetDeduction
            | Rpc::ListDeductions
            | Rpc::RefundDeduction
            | Rpc::RequestOneOffApproval
            | Rpc::ApproveOneOff
            | Rpc::RejectOneOff
            | Rpc::CreditWallet
            | Rpc::GetWalletBalance
            | Rpc::GetMerchantPolicy
            | Rpc::SetMerchantPolicy
    };
}

/// The MandateService RPCs, in `Rpc::ALL` order.
fn mandate_rpcs() -> Vec<Rpc> {
    let rpcs: Vec<Rpc> = Rpc::ALL
        .into_iter()
        .filter(|rpc| !matches!(rpc, not_mandate_service!()))
        .collect();
    assert_eq!(rpcs.len(), 13, "MandateService has 13 RPCs: {rpcs:?}");
    rpcs
}

fn not_mandate_service(rpc: Rpc) -> ! {
    panic!("{} is not a MandateService RPC", rpc.name())
}

/// Issues `rpc` with a well-formed request aimed at `target`. No `_` arm: a new RPC must be
/// added here before the suite builds.
async fn call(client: &mut Client, rpc: Rpc, target: &Target) -> Result<(), Status> {
    let mandate_id = target.mandate_id.clone();
    let reason = "authz test".to_owned();
    let request_id = String::new();
    match rpc {
        Rpc::CreateMandate => client
            .create_mandate(create_request(&target.contract, "p-1"))
            .await
            .map(drop),
        Rpc::GetMandate => client
            .get_mandate(pb::GetMandateRequest {
                mandate_id,
                as_of: None,
            })
            .await
            .map(drop),
        Rpc::ListMandates => client
            .list_mandates(pb::ListMandatesRequest::default())
            .await
            .map(drop),
        Rpc::ConfirmMandate => client
            .confirm_mandate(pb::ConfirmMandateRequest {
                mandate_id,
                mandate_version: target.version,
                consent: Some(consent()),
                funding_sources: wallet_then_card(),
                request_id,
            })
            .await
            .map(drop),
        Rpc::SetFundingSources => client
            .set_funding_sources(pb::SetFundingSourcesRequest {
                mandate_id,
                funding_sources: wallet_only(),
                request_id,
            })
            .await
            .map(drop),
        Rpc::PauseMandate => client
            .pause_mandate(pb::PauseMandateRequest {
                mandate_id,
                reason,
                request_id,
            })
            .await
            .map(drop),
        Rpc::ResumeMandate => client
            .resume_mandate(pb::ResumeMandateRequest {
                mandate_id,
                reason,
                request_id,
            })
            .await
            .map(drop),
        Rpc::SuspendMandate => client
            .suspend_mandate(pb::SuspendMandateRequest {
                mandate_id,
                reason,
                request_id,
            })
            .await
            .map(drop),
        Rpc::ReinstateMandate => client
            .reinstate_mandate(pb::ReinstateMandateRequest {
                mandate_id,
                reason,
                request_id,
            })
            .await
            .map(drop),
        Rpc::RevokeMandate => client
            .revoke_mandate(pb::RevokeMandateRequest {
                mandate_id,
                reason,
                request_id,
            })
            .await
            .map(drop),
        Rpc::TerminateMandate => client
            .terminate_mandate(pb::TerminateMandateRequest {
                mandate_id,
                reason,
                request_id,
            })
            .await
            .map(drop),
        Rpc::AmendMandate => client
            .amend_mandate(pb::AmendMandateRequest {
                mandate_id,
                terms: Some(tighter_terms()),
                reason,
                request_id,
            })
            .await
            .map(drop),
        Rpc::ConfirmAmendment => client
            .confirm_amendment(pb::ConfirmAmendmentRequest {
                consent: Some(consent()),
                mandate_id,
                mandate_version: target.version,
                request_id,
            })
            .await
            .map(drop),
        not_mandate_service!() => not_mandate_service(rpc),
    }
}

/// Whether the RPC's request names an existing mandate (so a refusal is audited on its chain).
fn names_a_mandate(rpc: Rpc) -> bool {
    match rpc {
        Rpc::CreateMandate | Rpc::ListMandates => false,
        Rpc::GetMandate
        | Rpc::ConfirmMandate
        | Rpc::SetFundingSources
        | Rpc::PauseMandate
        | Rpc::ResumeMandate
        | Rpc::SuspendMandate
        | Rpc::ReinstateMandate
        | Rpc::RevokeMandate
        | Rpc::TerminateMandate
        | Rpc::AmendMandate
        | Rpc::ConfirmAmendment => true,
        not_mandate_service!() => not_mandate_service(rpc),
    }
}

/// A mandate of merchant m-1 and payer p-1 in a state where `rpc` succeeds for a role allowed to
/// call it, so a refusal can only come from the role check.
async fn fixture(callers: &mut Callers, rpc: Rpc, contract: &str) -> pb::Mandate {
    let created = callers
        .merchant
        .create_mandate(create_request(contract, "p-1"))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    if rpc == Rpc::ConfirmMandate {
        return created;
    }
    let active = callers
        .payer
        .confirm_mandate(confirm_request(&created))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let reason = || "setup".to_owned();
    let mandate_id = || active.mandate_id.clone();
    let mandate = match rpc {
        Rpc::ResumeMandate => {
            callers
                .payer
                .pause_mandate(pb::PauseMandateRequest {
                    mandate_id: mandate_id(),
                    reason: reason(),
                    request_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .mandate
        }
        Rpc::ReinstateMandate => {
            callers
                .operator
                .suspend_mandate(pb::SuspendMandateRequest {
                    mandate_id: mandate_id(),
                    reason: reason(),
                    request_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .mandate
        }
        Rpc::ConfirmAmendment => {
            let amended = callers
                .merchant
                .amend_mandate(pb::AmendMandateRequest {
                    mandate_id: mandate_id(),
                    terms: Some(looser_terms()),
                    reason: reason(),
                    request_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                amended.outcome,
                pb::AmendmentOutcome::PendingPayerConfirmation as i32
            );
            amended.mandate
        }
        Rpc::CreateMandate
        | Rpc::GetMandate
        | Rpc::ListMandates
        | Rpc::ConfirmMandate
        | Rpc::SetFundingSources
        | Rpc::PauseMandate
        | Rpc::SuspendMandate
        | Rpc::RevokeMandate
        | Rpc::TerminateMandate
        | Rpc::AmendMandate => Some(active.clone()),
        not_mandate_service!() => not_mandate_service(rpc),
    };
    mandate.unwrap()
}

fn mandate_id(id: &str) -> MandateId {
    MandateId::parse("mandate_id", id).unwrap()
}

/// A well-formed mandate id that names nothing.
fn missing_id() -> String {
    MandateId::generate().to_string()
}

/// The matrix the service enforces is the one DESIGN §2 and the proto describe.
#[test]
fn matrix_matches_the_design() {
    use Role::{Auditor, Merchant, Operator, Payer};
    for rpc in mandate_rpcs() {
        let expected: &[Role] = match rpc {
            Rpc::CreateMandate | Rpc::AmendMandate | Rpc::TerminateMandate => &[Merchant],
            Rpc::GetMandate | Rpc::ListMandates => &[Merchant, Payer, Auditor, Operator],
            Rpc::ConfirmMandate
            | Rpc::SetFundingSources
            | Rpc::PauseMandate
            | Rpc::ResumeMandate
            | Rpc::RevokeMandate
            | Rpc::ConfirmAmendment => &[Payer],
            Rpc::SuspendMandate | Rpc::ReinstateMandate => &[Operator],
            not_mandate_service!() => continue,
        };
        let got: HashSet<Role> = rpc.allowed_roles().iter().copied().collect();
        let want: HashSet<Role> = expected.iter().copied().collect();
        assert_eq!(got, want, "{}", rpc.name());
        assert!(!got.contains(&Role::System), "{}", rpc.name());
    }
    let distinct: HashSet<Rpc> = Rpc::ALL.into_iter().collect();
    assert_eq!(distinct.len(), Rpc::ALL.len());
}

/// Every RPC × every role on a mandate inside the caller's tenancy: a role outside the matrix is
/// PERMISSION_DENIED, changes nothing, and (when the request names a mandate) leaves exactly one
/// ACCESS_DENIED event on that mandate's chain; a role inside it gets through.
async fn every_rpc_for_every_role(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut callers = Callers::new(&app).await;
    let mut failures: Vec<String> = vec![];
    for rpc in mandate_rpcs() {
        for role in ROLES {
            let cell = format!("{} as {}", rpc.name(), role.as_str());
            let contract = format!("c-{}-{}", rpc.name(), role.as_str());
            let mandate = fixture(&mut callers, rpc, &contract).await;
            let target = Target::of(&mandate, &format!("new-{contract}"));
            let mandate_chain = format!("mandate:{}", mandate.mandate_id);
            let mandate_events = app.chain_events(&mandate_chain).await.len();
            app.next_refusal_window();
            let before = app.counts().await;
            let result = call(callers.of(role), rpc, &target).await;
            let after = app.counts().await;
            if rpc.allowed_roles().contains(&role) {
                match &result {
                    Ok(()) => {}
                    Err(status)
                        if matches!(
                            status.code(),
                            Code::PermissionDenied | Code::Unauthenticated
                        ) =>
                    {
                        failures.push(format!("{cell}: allowed role refused: {status:?}"));
                    }
                    // The fixture puts the mandate in a state where the call succeeds, so any
                    // other code is worth a look too.
                    Err(status) => {
                        failures.push(format!("{cell}: allowed role failed: {status:?}"))
                    }
                }
                continue;
            }
            match &result {
                Err(status) if status.code() == Code::PermissionDenied => {}
                other => {
                    failures.push(format!("{cell}: want PERMISSION_DENIED, got {other:?}"));
                    continue;
                }
            }
            let events = if names_a_mandate(rpc) { 1 } else { 0 };
            if after.audit_events != before.audit_events + events {
                failures.push(format!(
                    "{cell}: refusal wrote {} audit events, want {events}",
                    after.audit_events - before.audit_events
                ));
            }
            if (
                after.mandates,
                after.mandate_versions,
                after.idempotency_keys,
            ) != (
                before.mandates,
                before.mandate_versions,
                before.idempotency_keys,
            ) {
                failures.push(format!(
                    "{cell}: refusal changed rows: {before:?} -> {after:?}"
                ));
            }
            let stored = app
                .store
                .mandate(&mandate_id(&mandate.mandate_id))
                .await
                .unwrap()
                .unwrap();
            if stored.version != mandate.version {
                failures.push(format!("{cell}: refusal changed the mandate's version"));
            }
            if names_a_mandate(rpc) {
                if app.chain_events(&mandate_chain).await.len() != mandate_events {
                    failures.push(format!("{cell}: the refusal grew the mandate's chain"));
                }
                let events = app.chain_events(&caller_chain(scope_of(role))).await;
                let last = events.last().unwrap();
                let reason = last.reason_code.as_deref();
                if (
                    last.action.as_str(),
                    last.outcome.as_str(),
                    reason,
                    last.actor_role.as_str(),
                ) != (
                    "ACCESS_DENIED",
                    "DENIED",
                    Some("ROLE_NOT_ALLOWED"),
                    role.as_str(),
                ) {
                    failures.push(format!(
                        "{cell}: last event on the caller's chain is {last:?}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    app.verify_audit().await;
}

/// The idempotency scope of each role's caller in these tests.
fn scope_of(role: Role) -> &'static str {
    match role {
        Role::Merchant => "merchant:m-1",
        Role::Payer => "payer:p-1",
        Role::Auditor => "auditor:compliance",
        Role::Operator => "operator:ops-1",
        Role::System => panic!("no caller is the system"),
    }
}

/// Another tenant's mandate: NOT_FOUND, exactly as for an id that names nothing, the mandate
/// untouched, and the attempt recorded against the caller, never on the mandate's chain (the
/// missing id records nothing).
async fn other_tenants_mandate_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let pending = create_mandate(&app, "c-tenancy-pending").await;
    let active = active_mandate(&app, "c-tenancy-active").await;
    let mut other_merchant = app.merchant("m-2").await;
    let mut other_payer = app.payer("p-2").await;
    let mut other_auditor = app.auditor(Some("m-2")).await;

    // GetMandate of an id that names nothing: the reference answer.
    let reference = call(
        &mut other_payer,
        Rpc::GetMandate,
        &Target {
            mandate_id: missing_id(),
            version: 1,
            contract: String::new(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(reference.code(), Code::NotFound);

    let cases: [(&str, Rpc, &pb::Mandate); 9] = [
        ("merchant m-2", Rpc::GetMandate, &active),
        ("merchant m-2", Rpc::TerminateMandate, &active),
        ("merchant m-2", Rpc::AmendMandate, &active),
        ("payer p-2", Rpc::GetMandate, &active),
        ("payer p-2", Rpc::ConfirmMandate, &pending),
        ("payer p-2", Rpc::PauseMandate, &active),
        ("payer p-2", Rpc::RevokeMandate, &active),
        ("payer p-2", Rpc::SetFundingSources, &active),
        ("auditor of m-2", Rpc::GetMandate, &active),
    ];
    let mut failures: Vec<String> = vec![];
    for (who, rpc, mandate) in cases {
        let client = match who {
            "merchant m-2" => &mut other_merchant,
            "payer p-2" => &mut other_payer,
            "auditor of m-2" => &mut other_auditor,
            other => panic!("no client for {other}"),
        };
        let cell = format!("{} by {who}", rpc.name());
        let chain_id = format!("mandate:{}", mandate.mandate_id);
        let chain_before = app.store.audit_chain(&chain_id).await.unwrap().events.len();
        let caller = caller_chain(match who {
            "merchant m-2" => "merchant:m-2",
            "payer p-2" => "payer:p-2",
            _ => "auditor:compliance",
        });
        app.next_refusal_window();
        let before = app.counts().await;
        let refused = call(client, rpc, &Target::of(mandate, "unused")).await;
        let after = app.counts().await;
        let Err(refused) = refused else {
            failures.push(format!("{cell}: succeeded"));
            continue;
        };
        if refused.code() != Code::NotFound {
            failures.push(format!("{cell}: want NOT_FOUND, got {refused:?}"));
        }
        if (refused.code(), refused.message()) != (reference.code(), reference.message()) {
            failures.push(format!(
                "{cell}: {refused:?} differs from GetMandate of a missing id {reference:?}"
            ));
        }
        if after.audit_events != before.audit_events + 1 {
            failures.push(format!(
                "{cell}: wrote {} audit events, want 1",
                after.audit_events - before.audit_events
            ));
        }
        if (
            after.mandates,
            after.mandate_versions,
            after.idempotency_keys,
        ) != (
            before.mandates,
            before.mandate_versions,
            before.idempotency_keys,
        ) {
            failures.push(format!("{cell}: changed rows: {before:?} -> {after:?}"));
        }
        let chain = app.store.audit_chain(&chain_id).await.unwrap();
        if chain.events.len() != chain_before {
            failures.push(format!("{cell}: the refusal grew the mandate's chain"));
        }
        let events = app.chain_events(&caller).await;
        match events.last() {
            Some(last)
                if (
                    last.action.as_str(),
                    last.outcome.as_str(),
                    last.reason_code.as_deref(),
                ) == ("ACCESS_DENIED", "DENIED", Some("OTHER_TENANT")) => {}
            last => failures.push(format!("{cell}: the caller's chain ends with {last:?}")),
        }

        // The same request for an id that names nothing: the same answer, and no event.
        let client = match who {
            "merchant m-2" => &mut other_merchant,
            "payer p-2" => &mut other_payer,
            "auditor of m-2" => &mut other_auditor,
            other => panic!("no client for {other}"),
        };
        let missing = Target {
            mandate_id: missing_id(),
            version: mandate.version,
            contract: "unused".into(),
        };
        let before = app.counts().await;
        let absent = call(client, rpc, &missing).await;
        let after = app.counts().await;
        match absent {
            Err(absent) => {
                if (absent.code(), absent.message(), absent.details())
                    != (refused.code(), refused.message(), refused.details())
                {
                    failures.push(format!(
                        "{cell}: other tenant's {refused:?} differs from missing id's {absent:?}"
                    ));
                }
            }
            Ok(()) => failures.push(format!("{cell}: a missing id succeeded")),
        }
        if after != before {
            failures.push(format!(
                "{cell}: a missing id wrote rows: {before:?} -> {after:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Nothing changed for the owners.
    for mandate in [&pending, &active] {
        let read = app
            .operator()
            .await
            .get_mandate(pb::GetMandateRequest {
                mandate_id: mandate.mandate_id.clone(),
                as_of: None,
            })
            .await
            .unwrap()
            .into_inner()
            .mandate
            .unwrap();
        assert_eq!(&read, mandate);
    }
    app.verify_audit().await;
}

/// Lists every page of `request` with page size 1 and returns the mandate ids in order.
async fn walk_pages(client: &mut Client, request: pb::ListMandatesRequest) -> Vec<String> {
    let mut ids = vec![];
    let mut token = String::new();
    loop {
        let page = client
            .list_mandates(pb::ListMandatesRequest {
                page_size: 1,
                page_token: token.clone(),
                ..request.clone()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.mandates.len() <= 1, "page size 1 exceeded");
        ids.extend(page.mandates.into_iter().map(|m| m.mandate_id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        assert!(ids.len() <= 10, "pagination does not end");
        token = page.next_page_token;
    }
}

async fn list(client: &mut Client, request: pb::ListMandatesRequest) -> Vec<pb::Mandate> {
    let page = client.list_mandates(request).await.unwrap().into_inner();
    assert!(page.next_page_token.is_empty(), "expected a single page");
    page.mandates
}

fn ids(mandates: &[pb::Mandate]) -> Vec<String> {
    mandates.iter().map(|m| m.mandate_id.clone()).collect()
}

/// ListMandates returns exactly what lies inside the caller's tenancy, newest first.
async fn list_mandates_is_isolated(backend: Backend) {
    let app = spawn_app(backend).await;
    let create = |merchant: &'static str, contract: &'static str, payer: &'static str| {
        let app = &app;
        async move {
            app.merchant(merchant)
                .await
                .create_mandate(create_request(contract, payer))
                .await
                .unwrap()
                .into_inner()
                .mandate
                .unwrap()
        }
    };
    let a = create("m-1", "c-list-a", "p-1").await; // (m-1, p-1)
    let b = create("m-1", "c-list-b", "p-2").await; // (m-1, p-2)
    let c = create("m-2", "c-list-c", "p-1").await; // (m-2, p-1)
    let all = |ms: &[&pb::Mandate]| ms.iter().map(|m| m.mandate_id.clone()).collect::<Vec<_>>();
    let everything = pb::ListMandatesRequest::default();

    let mut m1 = app.merchant("m-1").await;
    let mut m2 = app.merchant("m-2").await;
    let mut p1 = app.payer("p-1").await;
    let mut p2 = app.payer("p-2").await;
    let mut auditor_m2 = app.auditor(Some("m-2")).await;
    let mut auditor = app.auditor(None).await;
    let mut operator = app.operator().await;

    // Newest first.
    assert_eq!(
        ids(&list(&mut m1, everything.clone()).await),
        all(&[&b, &a])
    );
    assert_eq!(ids(&list(&mut m2, everything.clone()).await), all(&[&c]));
    assert_eq!(
        ids(&list(&mut p1, everything.clone()).await),
        all(&[&c, &a])
    );
    assert_eq!(ids(&list(&mut p2, everything.clone()).await), all(&[&b]));
    assert_eq!(
        ids(&list(&mut auditor_m2, everything.clone()).await),
        all(&[&c])
    );
    assert_eq!(
        ids(&list(&mut auditor, everything.clone()).await),
        all(&[&c, &b, &a])
    );
    assert_eq!(
        ids(&list(&mut operator, everything.clone()).await),
        all(&[&c, &b, &a])
    );
    // What is listed is the mandate as it is.
    assert_eq!(list(&mut m2, everything.clone()).await, vec![c.clone()]);

    // A filter outside the caller's tenancy matches nothing.
    let merchant_filter = |m: &str| pb::ListMandatesRequest {
        merchant_id: m.into(),
        ..Default::default()
    };
    let payer_filter = |p: &str| pb::ListMandatesRequest {
        payer_id: p.into(),
        ..Default::default()
    };
    assert!(list(&mut m1, merchant_filter("m-2")).await.is_empty());
    assert!(
        list(&mut auditor_m2, merchant_filter("m-1"))
            .await
            .is_empty()
    );
    assert!(list(&mut p1, payer_filter("p-2")).await.is_empty());
    // A filter inside it narrows.
    assert_eq!(ids(&list(&mut m1, payer_filter("p-2")).await), all(&[&b]));
    assert_eq!(
        ids(&list(&mut p1, merchant_filter("m-1")).await),
        all(&[&a])
    );
    assert_eq!(
        ids(&list(&mut operator, merchant_filter("m-1")).await),
        all(&[&b, &a])
    );
    assert_eq!(
        ids(&list(&mut auditor, payer_filter("p-1")).await),
        all(&[&c, &a])
    );

    // Page size 1 walks every page once, in order.
    for (client, want) in [
        (&mut operator, all(&[&c, &b, &a])),
        (&mut auditor, all(&[&c, &b, &a])),
        (&mut m1, all(&[&b, &a])),
        (&mut p1, all(&[&c, &a])),
    ] {
        let walked = walk_pages(client, everything.clone()).await;
        let distinct: HashSet<&String> = walked.iter().collect();
        assert_eq!(distinct.len(), walked.len(), "a page repeated: {walked:?}");
        assert_eq!(walked, want);
    }

    // Status filter.
    let mut payer1 = app.payer("p-1").await;
    payer1.confirm_mandate(confirm_request(&a)).await.unwrap();
    let status_filter = |s: pb::MandateStatus| pb::ListMandatesRequest {
        status: s as i32,
        ..Default::default()
    };
    let active = list(&mut operator, status_filter(pb::MandateStatus::Active)).await;
    assert_eq!(ids(&active), all(&[&a]));
    assert_eq!(status_of(&active[0]), pb::MandateStatus::Active);
    assert_eq!(
        ids(&list(
            &mut operator,
            status_filter(pb::MandateStatus::PendingConsent)
        )
        .await),
        all(&[&c, &b])
    );
    assert_eq!(
        ids(&list(&mut m1, status_filter(pb::MandateStatus::PendingConsent)).await),
        all(&[&b])
    );
    assert_eq!(
        ids(&list(&mut p1, status_filter(pb::MandateStatus::Active)).await),
        all(&[&a])
    );
    assert!(
        list(&mut m2, status_filter(pb::MandateStatus::Active))
            .await
            .is_empty()
    );
    assert!(
        list(&mut operator, status_filter(pb::MandateStatus::Revoked))
            .await
            .is_empty()
    );
    assert_eq!(
        walk_pages(
            &mut operator,
            status_filter(pb::MandateStatus::PendingConsent)
        )
        .await,
        all(&[&c, &b])
    );
}

both_backends!(
    every_rpc_for_every_role,
    other_tenants_mandate_is_not_found,
    list_mandates_is_isolated,
);
