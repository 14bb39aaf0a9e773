//! DeductionService and WalletService over real gRPC: who may call what (DESIGN §2), tenancy
//! (another tenant's deduction, approval, mandate or wallet is NOT_FOUND, audited, and changes
//! nothing), refunds (§4.2), one-off approvals and the clawback rule (§5), the wallet ledger
//! (§4.1, §9.4) and bad input on the new RPCs (§7).

use std::collections::{BTreeSet, HashSet};

use jiff::{SignedDuration, Timestamp};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use withholding::domain::actor::Role;
use withholding::domain::ids::MandateId;
use withholding::pb;
use withholding::service::Rpc;
use withholding::storage::LedgerTotals;

use crate::both_backends;
use crate::harness::*;

use pb::DeductionStatus as D;

// ---------------------------------------------------------------------------------------------
// Database state, read around the service.
// ---------------------------------------------------------------------------------------------

/// One row per line of every table a deduction RPC can write, except the audit trail (counted
/// separately): comparing two snapshots shows whether anything at all was written.
const SNAPSHOT: [&str; 11] = [
    "SELECT 'mandate ' || mandate_id || ' ' || status || ' ' || CAST(version AS TEXT) || ' ' || COALESCE(CAST(last_collected_at_us AS TEXT), '-') || ' ' || CAST(document AS TEXT) FROM mandates",
    "SELECT 'mandate_version ' || mandate_id || ' ' || CAST(version AS TEXT) FROM mandate_versions",
    "SELECT 'idempotency ' || scope || ' ' || request_id FROM idempotency_keys",
    "SELECT 'deduction ' || deduction_id || ' ' || status || ' ' || CAST(document AS TEXT) FROM deductions",
    "SELECT 'usage ' || mandate_id || ' ' || period_key || ' ' || CAST(amount_minor AS TEXT) || ' ' || CAST(debit_count AS TEXT) FROM mandate_usage",
    "SELECT 'notice ' || notice_id || ' ' || COALESCE(used_by, '-') || ' ' || CAST(document AS TEXT) FROM notices",
    "SELECT 'refund ' || refund_id || ' ' || CAST(document AS TEXT) FROM refunds",
    "SELECT 'approval ' || approval_id || ' ' || status || ' ' || CAST(document AS TEXT) FROM approvals",
    "SELECT 'account ' || account_id || ' ' || CAST(balance_minor AS TEXT) FROM ledger_accounts",
    "SELECT 'movement ' || movement_id FROM ledger_movements",
    "SELECT 'entry ' || CAST(entry_id AS TEXT) FROM ledger_entries",
];

const TOTALS_BY_KIND: &str = "SELECT kind, CAST(SUM(balance_minor) AS BIGINT) FROM ledger_accounts GROUP BY kind ORDER BY kind";

/// A direct connection to the test database, as someone with database access would read it.
enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Raw {
    async fn open(app: &TestApp) -> Self {
        match app.backend {
            Backend::Sqlite => Self::Sqlite(sqlx::SqlitePool::connect(&app.db.url).await.unwrap()),
            Backend::Postgres => Self::Postgres(sqlx::PgPool::connect(&app.db.url).await.unwrap()),
        }
    }

    async fn rows(&self) -> Vec<String> {
        let mut rows = vec![];
        for sql in SNAPSHOT {
            let found: Vec<(String,)> = match self {
                Self::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
                Self::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
            };
            rows.extend(found.into_iter().map(|(row,)| row));
        }
        rows.sort();
        rows
    }

    /// Balance totals per account kind (CLEARING, MERCHANT, WALLET), in minor units.
    async fn totals_by_kind(&self) -> Vec<(String, i64)> {
        match self {
            Self::Sqlite(pool) => sqlx::query_as(TOTALS_BY_KIND)
                .fetch_all(pool)
                .await
                .unwrap(),
            Self::Postgres(pool) => sqlx::query_as(TOTALS_BY_KIND)
                .fetch_all(pool)
                .await
                .unwrap(),
        }
    }
}

/// Everything the service stores: the rows, the number of audit events, the ledger totals.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    rows: Vec<String>,
    audit_events: i64,
    ledger: LedgerTotals,
}

async fn state(app: &TestApp, raw: &Raw) -> State {
    let counts = app.counts().await;
    State {
        rows: raw.rows().await,
        audit_events: counts.audit_events,
        ledger: app.db().deductions.ledger_totals().await.unwrap(),
    }
}

/// What differs between two states, for failure messages.
fn diff(before: &State, after: &State) -> String {
    let b: BTreeSet<&String> = before.rows.iter().collect();
    let a: BTreeSet<&String> = after.rows.iter().collect();
    format!(
        "removed {:?}, added {:?}, audit events {} -> {}, ledger {:?} -> {:?}",
        b.difference(&a).collect::<Vec<_>>(),
        a.difference(&b).collect::<Vec<_>>(),
        before.audit_events,
        after.audit_events,
        before.ledger,
        after.ledger
    )
}

fn assert_unchanged(before: &State, after: &State, what: &str) {
    assert!(
        before == after,
        "{what} changed the database: {}",
        diff(before, after)
    );
}

fn assert_ledger_balanced(totals: LedgerTotals) {
    assert_eq!(totals.sum_minor, 0, "account balances do not sum to zero");
    assert_eq!(
        totals.entries_sum_minor, 0,
        "ledger entries do not sum to zero"
    );
    assert!(totals.min_wallet_minor >= 0, "a wallet went negative");
}

async fn chain(app: &TestApp, mandate_id: &str) -> Vec<withholding::domain::audit::AuditDraft> {
    app.store
        .audit_chain(&format!("mandate:{mandate_id}"))
        .await
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.draft)
        .collect()
}

/// (action, outcome, reason code) of audit events.
fn steps(events: &[withholding::domain::audit::AuditDraft]) -> Vec<(&str, &str, Option<&str>)> {
    events
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.outcome.as_str(),
                e.reason_code.as_deref(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Statuses.
// ---------------------------------------------------------------------------------------------

/// The one field an INVALID_ARGUMENT names, or why it is not a proper one.
fn violated_field(status: &Status) -> Result<String, String> {
    if status.code() != Code::InvalidArgument {
        return Err(format!("{:?}: {}", status.code(), status.message()));
    }
    let Some(bad_request) = status.get_details_bad_request() else {
        return Err(format!("no BadRequest detail ({})", status.message()));
    };
    match bad_request.field_violations.as_slice() {
        [one] => Ok(one.field.clone()),
        many => Err(format!(
            "{} field violations: {:?}",
            many.len(),
            many.iter().map(|v| &v.field).collect::<Vec<_>>()
        )),
    }
}

fn assert_bad_field(status: &Status, field: &str) {
    assert_eq!(violated_field(status).as_deref(), Ok(field), "{status:?}");
}

/// FAILED_PRECONDITION with a PreconditionFailure of `kind` about `subject`.
fn assert_precondition(status: &Status, kind: &str, subject: &str) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let details = status
        .get_details_precondition_failure()
        .unwrap_or_else(|| panic!("no PreconditionFailure detail: {status:?}"));
    assert_eq!(details.violations.len(), 1, "{status:?}");
    assert_eq!(
        (
            details.violations[0].r#type.as_str(),
            details.violations[0].subject.as_str()
        ),
        (kind, subject),
        "{status:?}"
    );
}

fn assert_key_reused(status: &Status, what: &str) {
    assert_eq!(status.code(), Code::AlreadyExists, "{what}: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("{what}: no ErrorInfo detail: {status:?}"));
    assert_eq!(info.reason, "IDEMPOTENCY_KEY_REUSED", "{what}: {status:?}");
}

// ---------------------------------------------------------------------------------------------
// Requests.
// ---------------------------------------------------------------------------------------------

fn ts(at: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.as_second(),
        nanos: 0,
    }
}

/// Creates a mandate as `merchant` for `payer` and has the payer confirm it (wallet up to
/// 200.00, then a card).
async fn mandate_for(app: &TestApp, merchant: &str, payer: &str, contract: &str) -> pb::Mandate {
    let created = app
        .merchant(merchant)
        .await
        .create_mandate(create_request(contract, payer))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    app.payer(payer)
        .await
        .confirm_mandate(confirm_request(&created))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap()
}

async fn deduct(
    client: &mut DeductionClient,
    request: pb::CreateDeductionRequest,
) -> pb::Deduction {
    client
        .create_deduction(request)
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap()
}

/// Collects and asserts the outcome: the status and the reason code ("" when none).
async fn deduct_expect(
    client: &mut DeductionClient,
    request: pb::CreateDeductionRequest,
    status: D,
    reason: &str,
) -> pb::Deduction {
    let d = deduct(client, request).await;
    assert_eq!(
        (deduction_status(&d), d.reason_code.as_str()),
        (status, reason),
        "{d:?}"
    );
    d
}

fn refund_request(
    request_id: &str,
    deduction_id: &str,
    amount: &str,
) -> pb::RefundDeductionRequest {
    pb::RefundDeductionRequest {
        request_id: request_id.into(),
        deduction_id: deduction_id.into(),
        amount: money(amount),
        reason: "customer complaint".into(),
    }
}

async fn refund(
    client: &mut DeductionClient,
    request_id: &str,
    deduction_id: &str,
    amount: &str,
) -> Result<pb::RefundDeductionResponse, Status> {
    client
        .refund_deduction(refund_request(request_id, deduction_id, amount))
        .await
        .map(tonic::Response::into_inner)
}

async fn request_approval(
    client: &mut DeductionClient,
    request_id: &str,
    deduction_id: &str,
) -> Result<pb::OneOffApproval, Status> {
    client
        .request_one_off_approval(pb::RequestOneOffApprovalRequest {
            request_id: request_id.into(),
            deduction_id: deduction_id.into(),
            reason: "refunded by mistake; please approve".into(),
        })
        .await
        .map(|r| r.into_inner().approval.unwrap())
}

async fn approve(
    client: &mut DeductionClient,
    approval_id: &str,
) -> Result<pb::OneOffApproval, Status> {
    client
        .approve_one_off(pb::ApproveOneOffRequest {
            approval_id: approval_id.into(),
        })
        .await
        .map(|r| r.into_inner().approval.unwrap())
}

async fn reject(
    client: &mut DeductionClient,
    approval_id: &str,
) -> Result<pb::OneOffApproval, Status> {
    client
        .reject_one_off(pb::RejectOneOffRequest {
            approval_id: approval_id.into(),
            reason: "I did not agree to this".into(),
        })
        .await
        .map(|r| r.into_inner().approval.unwrap())
}

fn approval_status(a: &pb::OneOffApproval) -> pb::ApprovalStatus {
    pb::ApprovalStatus::try_from(a.status).unwrap()
}

/// A collection that uses a one-off approval.
fn with_approval(
    request_id: &str,
    mandate_id: &str,
    amount: &str,
    purpose: pb::Purpose,
    bill: &str,
    approval_id: &str,
) -> pb::CreateDeductionRequest {
    pb::CreateDeductionRequest {
        purpose: purpose as i32,
        one_off_approval_id: approval_id.into(),
        ..collect(request_id, mandate_id, amount, bill)
    }
}

fn refunded(d: &pb::Deduction) -> &str {
    d.refunded_amount.as_ref().map_or("", |m| m.amount.as_str())
}

// ---------------------------------------------------------------------------------------------
// 1. Role × RPC.
// ---------------------------------------------------------------------------------------------

/// The MandateService RPCs (covered in `authz.rs`), named one by one so that an RPC added to
/// `Rpc` breaks this file's build until it is placed.
macro_rules! mandate_service {
    () => {
        Rpc::CreateMandate
            | Rpc::GetMandate
            | Rpc::ListMandates
            | Rpc::ConfirmMandate
            | Rpc::SetFundingSources
            | Rpc::PauseMandate
            | Rpc::ResumeMandate
            | Rpc::SuspendMandate
            | Rpc::ReinstateMandate
            | Rpc::RevokeMandate
            | Rpc::TerminateMandate
            | Rpc::AmendMandate
            | Rpc::ConfirmAmendment
            | Rpc::GetMerchantPolicy
            | Rpc::SetMerchantPolicy
    };
}

const ROLES: [Role; 4] = [Role::Merchant, Role::Payer, Role::Auditor, Role::Operator];

/// The DeductionService and WalletService RPCs, in `Rpc::ALL` order.
const RPCS: [Rpc; 12] = [
    Rpc::NotifyUpcomingDebit,
    Rpc::ListNotices,
    Rpc::CreateDeduction,
    Rpc::CheckDeduction,
    Rpc::GetDeduction,
    Rpc::ListDeductions,
    Rpc::RefundDeduction,
    Rpc::RequestOneOffApproval,
    Rpc::ApproveOneOff,
    Rpc::RejectOneOff,
    Rpc::CreditWallet,
    Rpc::GetWalletBalance,
];

/// DESIGN §2, written out by hand: merchants collect, notify, refund and ask for one-off
/// approvals; payers approve or reject them and read their wallet; auditors read deductions (and
/// the notices of the mandates they may read); operators credit wallets and read; everyone reads
/// deductions inside their own tenancy.
fn design_roles(rpc: Rpc) -> &'static [Role] {
    use Role::{Auditor, Merchant, Operator, Payer};
    match rpc {
        Rpc::NotifyUpcomingDebit
        | Rpc::CreateDeduction
        | Rpc::CheckDeduction
        | Rpc::RefundDeduction
        | Rpc::RequestOneOffApproval => &[Merchant],
        Rpc::ListNotices | Rpc::GetDeduction | Rpc::ListDeductions => {
            &[Merchant, Payer, Auditor, Operator]
        }
        Rpc::ApproveOneOff | Rpc::RejectOneOff => &[Payer],
        Rpc::CreditWallet => &[Operator],
        Rpc::GetWalletBalance => &[Payer, Operator],
        mandate_service!() => panic!(
            "{} is not a DeductionService or WalletService RPC",
            rpc.name()
        ),
    }
}

/// Whether the request names a stored resource (a mandate, deduction or one-off approval of
/// mandate under test), so that a refusal is an audit event on that mandate's chain (DESIGN §2:
/// "each refusal on a real resource is an audit event"). The wallet RPCs name a payer, not a
/// resource with a chain; their refusals are not counted.
fn names_a_resource(rpc: Rpc) -> bool {
    match rpc {
        Rpc::NotifyUpcomingDebit
        | Rpc::ListNotices
        | Rpc::CreateDeduction
        | Rpc::CheckDeduction
        | Rpc::GetDeduction
        | Rpc::ListDeductions
        | Rpc::RefundDeduction
        | Rpc::RequestOneOffApproval
        | Rpc::ApproveOneOff
        | Rpc::RejectOneOff => true,
        Rpc::CreditWallet | Rpc::GetWalletBalance => false,
        mandate_service!() => panic!(
            "{} is not a DeductionService or WalletService RPC",
            rpc.name()
        ),
    }
}

#[test]
fn matrix_matches_the_design() {
    let ours: Vec<Rpc> = Rpc::ALL
        .into_iter()
        .filter(|rpc| !matches!(rpc, mandate_service!()))
        .collect();
    assert_eq!(ours, RPCS.to_vec());
    for rpc in RPCS {
        let got: HashSet<Role> = rpc.allowed_roles().iter().copied().collect();
        let want: HashSet<Role> = design_roles(rpc).iter().copied().collect();
        assert_eq!(got, want, "{}", rpc.name());
        assert!(!got.contains(&Role::System), "{}", rpc.name());
    }
}

/// What one call is aimed at.
#[derive(Clone)]
struct Target {
    mandate_id: String,
    /// A SUCCEEDED deduction (Get, Refund).
    deduction_id: String,
    /// A DECLINED deduction (RequestOneOffApproval).
    declined_id: String,
    /// A PENDING one-off approval (Approve, Reject).
    approval_id: String,
    payer_id: String,
    /// Makes request ids and bills unique per call.
    tag: String,
}

impl Target {
    /// Well-formed ids that name nothing.
    fn missing(tag: &str) -> Self {
        Self {
            mandate_id: MandateId::generate().to_string(),
            deduction_id: "ddn-0000000000000000000000000000missing".into(),
            declined_id: "ddn-0000000000000000000000000000missing".into(),
            approval_id: "apv-0000000000000000000000000000missing".into(),
            payer_id: "p-1".into(),
            tag: tag.into(),
        }
    }
}

/// One client of each service, for one identity.
struct Caller {
    deductions: DeductionClient,
    wallet: WalletClient,
}

impl Caller {
    async fn new(app: &TestApp, token: String) -> Self {
        Self {
            deductions: app.deductions_as(token.clone()).await,
            wallet: app.wallet_as(token).await,
        }
    }
}

/// Issues `rpc` with a well-formed request aimed at `t`. No `_` arm.
async fn call(caller: &mut Caller, rpc: Rpc, t: &Target) -> Result<(), Status> {
    let d = &mut caller.deductions;
    let tag = &t.tag;
    match rpc {
        Rpc::NotifyUpcomingDebit => d
            .notify_upcoming_debit(pb::NotifyUpcomingDebitRequest {
                mandate_id: t.mandate_id.clone(),
                amount: money("50.00"),
                due_at: Some(ts("2026-03-05T02:00:00Z".parse().unwrap())),
                bill_reference: format!("b-ntc-{tag}"),
                request_id: format!("ntc-{tag}"),
            })
            .await
            .map(drop),
        Rpc::ListNotices => d
            .list_notices(pb::ListNoticesRequest {
                mandate_id: t.mandate_id.clone(),
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .map(drop),
        Rpc::CreateDeduction => d
            .create_deduction(collect(
                &format!("r-{tag}"),
                &t.mandate_id,
                "10.00",
                &format!("b-{tag}"),
            ))
            .await
            .map(drop),
        Rpc::CheckDeduction => d
            .check_deduction(pb::CheckDeductionRequest {
                mandate_id: t.mandate_id.clone(),
                amount: money("10.00"),
                purpose: pb::Purpose::Utility as i32,
                bill_reference: format!("b-chk-{tag}"),
                notice_id: String::new(),
            })
            .await
            .map(drop),
        Rpc::GetDeduction => d
            .get_deduction(pb::GetDeductionRequest {
                deduction_id: t.deduction_id.clone(),
            })
            .await
            .map(drop),
        Rpc::ListDeductions => d
            .list_deductions(pb::ListDeductionsRequest {
                mandate_id: t.mandate_id.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::RefundDeduction => d
            .refund_deduction(refund_request(
                &format!("rf-{tag}"),
                &t.deduction_id,
                "1.00",
            ))
            .await
            .map(drop),
        Rpc::RequestOneOffApproval => request_approval(d, &format!("ap-{tag}"), &t.declined_id)
            .await
            .map(drop),
        Rpc::ApproveOneOff => approve(d, &t.approval_id).await.map(drop),
        Rpc::RejectOneOff => reject(d, &t.approval_id).await.map(drop),
        Rpc::CreditWallet => caller
            .wallet
            .credit_wallet(pb::CreditWalletRequest {
                request_id: format!("cw-{tag}"),
                payer_id: t.payer_id.clone(),
                amount: money("5.00"),
                reason: "top-up".into(),
            })
            .await
            .map(drop),
        Rpc::GetWalletBalance => caller
            .wallet
            .get_wallet_balance(pb::GetWalletBalanceRequest {
                payer_id: t.payer_id.clone(),
                currency_code: "CNY".into(),
            })
            .await
            .map(drop),
        mandate_service!() => panic!(
            "{} is not a DeductionService or WalletService RPC",
            rpc.name()
        ),
    }
}

/// A DECLINED deduction (above the per-debit limit) of m-1 on `mandate_id`, and a PENDING
/// one-off approval for it.
async fn pending_approval(
    merchant: &mut DeductionClient,
    mandate_id: &str,
    tag: &str,
) -> pb::OneOffApproval {
    let declined = deduct_expect(
        merchant,
        collect(
            &format!("r-big-{tag}"),
            mandate_id,
            "600.00",
            &format!("b-big-{tag}"),
        ),
        D::Declined,
        "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
    )
    .await;
    let approval = request_approval(merchant, &format!("ap-big-{tag}"), &declined.deduction_id)
        .await
        .unwrap();
    assert_eq!(approval_status(&approval), pb::ApprovalStatus::Pending);
    approval
}

/// m-1's mandate for p-1 with a SUCCEEDED and a DECLINED deduction on it, and 500.00 in p-1's
/// wallet beforehand.
async fn tenancy_fixture(app: &TestApp, merchant: &mut DeductionClient, contract: &str) -> Target {
    let m = active_mandate(app, contract).await;
    app.credit("p-1", "500.00").await;
    let ok = deduct_expect(
        merchant,
        collect("r-fixture-ok", &m.mandate_id, "100.00", "b-fixture-ok"),
        D::Succeeded,
        "",
    )
    .await;
    let declined = deduct_expect(
        merchant,
        collect("r-fixture-no", &m.mandate_id, "600.00", "b-fixture-no"),
        D::Declined,
        "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
    )
    .await;
    Target {
        mandate_id: m.mandate_id,
        deduction_id: ok.deduction_id,
        declined_id: declined.deduction_id,
        approval_id: String::new(),
        payer_id: "p-1".into(),
        tag: String::new(),
    }
}

/// Every new RPC × every role, inside the caller's tenancy: a role outside the matrix is
/// PERMISSION_DENIED, writes nothing but (when the request names a stored resource) one
/// ACCESS_DENIED / ROLE_NOT_ALLOWED event on the caller's own chain — never on the mandate's;
/// a role inside it succeeds.
async fn every_rpc_for_every_role(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    // In the order of ROLES.
    let mut callers = [
        Caller::new(&app, app.merchant_token("m-1")).await,
        Caller::new(&app, app.payer_token("p-1")).await,
        Caller::new(&app, app.auditor_token(None)).await,
        Caller::new(&app, app.operator_token()).await,
    ];
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let base = tenancy_fixture(&app, &mut merchant, "c-matrix").await;
    let mut failures: Vec<String> = vec![];
    for rpc in RPCS {
        for (i, role) in ROLES.into_iter().enumerate() {
            let cell = format!("{} as {}", rpc.name(), role.as_str());
            let tag = format!("{}-{}", rpc.name(), role.as_str());
            let mut target = Target {
                tag: tag.clone(),
                ..base.clone()
            };
            if matches!(rpc, Rpc::ApproveOneOff | Rpc::RejectOneOff) {
                target.approval_id = pending_approval(&mut merchant, &base.mandate_id, &tag)
                    .await
                    .approval_id;
            }
            let chain_before = chain(&app, &base.mandate_id).await.len();
            app.next_refusal_window();
            let before = state(&app, &raw).await;
            let result = call(&mut callers[i], rpc, &target).await;
            let after = state(&app, &raw).await;
            if rpc.allowed_roles().contains(&role) {
                if let Err(status) = result {
                    failures.push(format!("{cell}: allowed role failed: {status:?}"));
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
            if before.rows != after.rows || before.ledger != after.ledger {
                failures.push(format!("{cell}: refusal wrote {}", diff(&before, &after)));
            }
            if !names_a_resource(rpc) {
                continue;
            }
            if after.audit_events != before.audit_events + 1 {
                failures.push(format!(
                    "{cell}: refusal of a call on a stored resource wrote {} audit events, want 1",
                    after.audit_events - before.audit_events
                ));
                continue;
            }
            if chain(&app, &base.mandate_id).await.len() != chain_before {
                failures.push(format!("{cell}: the refusal grew the mandate's chain"));
            }
            let scope = [
                "merchant:m-1",
                "payer:p-1",
                "auditor:compliance",
                "operator:ops-1",
            ][i];
            let events = app.chain_events(&caller_chain(scope)).await;
            let last = events.last().unwrap();
            if (
                last.action.as_str(),
                last.outcome.as_str(),
                last.reason_code.as_deref(),
                last.actor_role.as_str(),
            ) != (
                "ACCESS_DENIED",
                "DENIED",
                Some("ROLE_NOT_ALLOWED"),
                role.as_str(),
            ) {
                failures.push(format!("{cell}: the caller's chain ends with {last:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    app.verify_audit().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Tenancy.
// ---------------------------------------------------------------------------------------------

/// Another tenant's deduction, approval or mandate: NOT_FOUND exactly as for an id that names
/// nothing, one ACCESS_DENIED / OTHER_TENANT event on the caller's own chain (never on the
/// mandate's) and nothing else written; the id that names nothing writes nothing at all.
async fn other_tenants_resources_are_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    let mut owner = app.deductions_as(app.merchant_token("m-1")).await;
    let mut target = tenancy_fixture(&app, &mut owner, "c-tenancy").await;
    let approval = pending_approval(&mut owner, &target.mandate_id, "tenancy").await;
    target.approval_id = approval.approval_id.clone();
    let original = owner
        .get_deduction(pb::GetDeductionRequest {
            deduction_id: target.deduction_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();

    let mut m2 = Caller::new(&app, app.merchant_token("m-2")).await;
    let mut p2 = Caller::new(&app, app.payer_token("p-2")).await;
    let mut a2 = Caller::new(&app, app.auditor_token(Some("m-2"))).await;
    let cases: [(&str, Rpc); 16] = [
        ("merchant m-2", Rpc::GetDeduction),
        ("merchant m-2", Rpc::RefundDeduction),
        ("merchant m-2", Rpc::RequestOneOffApproval),
        ("merchant m-2", Rpc::CreateDeduction),
        ("merchant m-2", Rpc::CheckDeduction),
        ("merchant m-2", Rpc::NotifyUpcomingDebit),
        ("merchant m-2", Rpc::ListNotices),
        ("merchant m-2", Rpc::ListDeductions),
        ("payer p-2", Rpc::ApproveOneOff),
        ("payer p-2", Rpc::RejectOneOff),
        ("payer p-2", Rpc::GetDeduction),
        ("payer p-2", Rpc::ListNotices),
        ("payer p-2", Rpc::ListDeductions),
        ("auditor of m-2", Rpc::GetDeduction),
        ("auditor of m-2", Rpc::ListNotices),
        ("auditor of m-2", Rpc::ListDeductions),
    ];
    let mut failures: Vec<String> = vec![];
    for (who, rpc) in cases {
        let caller = match who {
            "merchant m-2" => &mut m2,
            "payer p-2" => &mut p2,
            "auditor of m-2" => &mut a2,
            other => panic!("no caller {other}"),
        };
        let cell = format!("{} by {who}", rpc.name());
        let tag = format!("x-{}-{}", rpc.name(), who.replace(' ', "-"));

        // The reference: the same call for ids that name nothing.
        let before = state(&app, &raw).await;
        let absent = call(caller, rpc, &Target::missing(&format!("{tag}-missing"))).await;
        let after = state(&app, &raw).await;
        let Err(absent) = absent else {
            failures.push(format!("{cell}: an id that names nothing succeeded"));
            continue;
        };
        if absent.code() != Code::NotFound {
            failures.push(format!("{cell}: a missing id gave {absent:?}"));
        }
        if before != after {
            failures.push(format!(
                "{cell}: a missing id wrote {}",
                diff(&before, &after)
            ));
        }

        let chain_before = chain(&app, &target.mandate_id).await.len();
        app.next_refusal_window();
        let before = state(&app, &raw).await;
        let refused = call(
            caller,
            rpc,
            &Target {
                tag: tag.clone(),
                ..target.clone()
            },
        )
        .await;
        let after = state(&app, &raw).await;
        let Err(refused) = refused else {
            failures.push(format!("{cell}: succeeded on another tenant's resource"));
            continue;
        };
        if (refused.code(), refused.message()) != (absent.code(), absent.message()) {
            failures.push(format!(
                "{cell}: {refused:?} differs from the answer for a missing id {absent:?}"
            ));
        }
        if before.rows != after.rows || before.ledger != after.ledger {
            failures.push(format!("{cell}: wrote {}", diff(&before, &after)));
        }
        if after.audit_events != before.audit_events + 1 {
            failures.push(format!(
                "{cell}: wrote {} audit events, want 1",
                after.audit_events - before.audit_events
            ));
        }
        if chain(&app, &target.mandate_id).await.len() != chain_before {
            failures.push(format!("{cell}: the refusal grew the mandate's chain"));
        }
        let scope = match who {
            "merchant m-2" => "merchant:m-2",
            "payer p-2" => "payer:p-2",
            _ => "auditor:compliance",
        };
        let events = app.chain_events(&caller_chain(scope)).await;
        match events.last() {
            Some(last)
                if (
                    last.action.as_str(),
                    last.outcome.as_str(),
                    last.reason_code.as_deref(),
                ) == ("ACCESS_DENIED", "DENIED", Some("OTHER_TENANT")) => {}
            last => failures.push(format!("{cell}: the caller's chain ends with {last:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Another payer's wallet does not exist for p-2; its own (never credited) is empty.
    let before = state(&app, &raw).await;
    let foreign = p2
        .wallet
        .get_wallet_balance(pb::GetWalletBalanceRequest {
            payer_id: "p-1".into(),
            currency_code: "CNY".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound, "{foreign:?}");
    assert_eq!(state(&app, &raw).await.rows, before.rows);
    let own = p2
        .wallet
        .get_wallet_balance(pb::GetWalletBalanceRequest {
            payer_id: String::new(),
            currency_code: "CNY".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.balance, money("0.00"));
    assert_eq!(app.balance("p-1").await, "400.00");

    // Nothing changed for the owners: the deduction is as it was, the approval still pending.
    let now = owner
        .get_deduction(pb::GetDeductionRequest {
            deduction_id: target.deduction_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(now, original);
    let mut p1 = app.deductions_as(app.payer_token("p-1")).await;
    let approved = approve(&mut p1, &approval.approval_id).await.unwrap();
    assert_eq!(approval_status(&approved), pb::ApprovalStatus::Approved);
    app.verify_audit().await;
}

async fn list_ids(client: &mut DeductionClient, request: pb::ListDeductionsRequest) -> Vec<String> {
    let page = client.list_deductions(request).await.unwrap().into_inner();
    assert!(page.next_page_token.is_empty(), "expected a single page");
    page.deductions
        .into_iter()
        .map(|d| d.deduction_id)
        .collect()
}

fn set(ids: &[&pb::Deduction]) -> BTreeSet<String> {
    ids.iter().map(|d| d.deduction_id.clone()).collect()
}

/// ListDeductions returns exactly what lies inside the caller's tenancy.
async fn list_deductions_is_isolated(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = mandate_for(&app, "m-1", "p-1", "c-list-a").await; // (m-1, p-1)
    let b = mandate_for(&app, "m-2", "p-2", "c-list-b").await; // (m-2, p-2)
    let c = mandate_for(&app, "m-2", "p-1", "c-list-c").await; // (m-2, p-1)
    app.credit("p-1", "300.00").await;
    app.credit("p-2", "50.00").await;
    let mut m1 = app.deductions_as(app.merchant_token("m-1")).await;
    let mut m2 = app.deductions_as(app.merchant_token("m-2")).await;

    let a1 = deduct_expect(
        &mut m1,
        collect("r-a1", &a.mandate_id, "100.00", "b-a1"),
        D::Succeeded,
        "",
    )
    .await;
    let a2 = deduct_expect(
        &mut m1,
        collect("r-a2", &a.mandate_id, "700.00", "b-a2"),
        D::Declined,
        "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
    )
    .await;
    let b1 = deduct_expect(
        &mut m2,
        collect("r-b1", &b.mandate_id, "40.00", "b-b1"),
        D::Succeeded,
        "",
    )
    .await;
    let b2 = deduct_expect(
        &mut m2,
        collect("r-b2", &b.mandate_id, "80.00", "b-b2"),
        D::Failed,
        "CARD_NOT_CONNECTED",
    )
    .await;
    // The same request id as m-1's: a different merchant's key.
    let c1 = deduct_expect(
        &mut m2,
        collect("r-a1", &c.mandate_id, "20.00", "b-c1"),
        D::Succeeded,
        "",
    )
    .await;

    let everything = pb::ListDeductionsRequest::default;
    let all = set(&[&a1, &a2, &b1, &b2, &c1]);
    let m1_set = set(&[&a1, &a2]);
    // (who, token, exactly what it sees, whether it is outside m-1's tenancy)
    for (who, token, want, outsider) in [
        (
            "merchant m-1",
            app.merchant_token("m-1"),
            m1_set.clone(),
            false,
        ),
        (
            "merchant m-2",
            app.merchant_token("m-2"),
            set(&[&b1, &b2, &c1]),
            true,
        ),
        (
            "payer p-1",
            app.payer_token("p-1"),
            set(&[&a1, &a2, &c1]),
            false,
        ),
        ("payer p-2", app.payer_token("p-2"), set(&[&b1, &b2]), true),
        (
            "auditor of m-2",
            app.auditor_token(Some("m-2")),
            set(&[&b1, &b2, &c1]),
            true,
        ),
        (
            "auditor of m-1",
            app.auditor_token(Some("m-1")),
            m1_set.clone(),
            false,
        ),
        (
            "institution-wide auditor",
            app.auditor_token(None),
            all.clone(),
            false,
        ),
        ("operator", app.operator_token(), all.clone(), false),
    ] {
        let mut client = app.deductions_as(token).await;
        let got: BTreeSet<String> = list_ids(&mut client, everything())
            .await
            .into_iter()
            .collect();
        if outsider {
            assert!(
                got.is_disjoint(&m1_set),
                "{who} sees m-1's deductions: {got:?}"
            );
        }
        assert_eq!(got, want, "{who}");
    }

    // Filters narrow inside the tenancy.
    let mut operator = app.deductions_as(app.operator_token()).await;
    let by_mandate = |id: &str| pb::ListDeductionsRequest {
        mandate_id: id.into(),
        ..Default::default()
    };
    let by_status = |s: D| pb::ListDeductionsRequest {
        status: s as i32,
        ..Default::default()
    };
    let ids_set = |v: Vec<String>| v.into_iter().collect::<BTreeSet<_>>();
    assert_eq!(
        ids_set(list_ids(&mut m1, by_mandate(&a.mandate_id)).await),
        m1_set
    );
    assert_eq!(
        ids_set(list_ids(&mut operator, by_mandate(&b.mandate_id)).await),
        set(&[&b1, &b2])
    );
    assert_eq!(
        ids_set(list_ids(&mut operator, by_status(D::Succeeded)).await),
        set(&[&a1, &b1, &c1])
    );
    assert_eq!(
        ids_set(list_ids(&mut m2, by_status(D::Declined)).await),
        BTreeSet::new()
    );
    let mut p1 = app.deductions_as(app.payer_token("p-1")).await;
    assert_eq!(
        ids_set(list_ids(&mut p1, by_mandate(&c.mandate_id)).await),
        set(&[&c1])
    );
    // Naming another tenant's mandate is NOT_FOUND.
    let err = m2
        .list_deductions(by_mandate(&a.mandate_id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Page size 1 walks every page once, in the order of the single page.
    let mut auditor = app.deductions_as(app.auditor_token(None)).await;
    let single = list_ids(&mut auditor, everything()).await;
    let mut walked = vec![];
    let mut token = String::new();
    loop {
        let page = auditor
            .list_deductions(pb::ListDeductionsRequest {
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.deductions.len() <= 1);
        walked.extend(page.deductions.into_iter().map(|d| d.deduction_id));
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(walked.len() <= 10, "pagination does not end");
        token = page.next_page_token;
    }
    assert_eq!(walked, single);
}

// ---------------------------------------------------------------------------------------------
// 3. Refunds.
// ---------------------------------------------------------------------------------------------

/// A full refund gives the wallet everything back; partial refunds add up to at most what was
/// collected, and the refund that would go over changes nothing. Refunds do not give back limit
/// usage.
async fn refunds_full_and_partial(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    let m = active_mandate(&app, "c-refund").await;
    app.credit("p-1", "1000.00").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;

    // Full.
    let d1 = deduct_expect(
        &mut merchant,
        collect("r-1", &m.mandate_id, "150.00", "b-1"),
        D::Succeeded,
        "",
    )
    .await;
    assert_eq!(refunded(&d1), "0.00");
    assert_eq!(app.balance("p-1").await, "850.00");
    let full = refund(&mut merchant, "rf-1", &d1.deduction_id, "150.00")
        .await
        .unwrap();
    assert!(!full.replayed);
    let refund1 = full.refund.unwrap();
    assert_eq!(refund1.deduction_id, d1.deduction_id);
    assert_eq!(refund1.amount, money("150.00"));
    let after = full.deduction.unwrap();
    assert_eq!(
        (deduction_status(&after), refunded(&after)),
        (D::Refunded, "150.00")
    );
    assert_eq!(app.balance("p-1").await, "1000.00");
    // Nothing is left to refund.
    let before = state(&app, &raw).await;
    let err = refund(&mut merchant, "rf-1b", &d1.deduction_id, "0.01")
        .await
        .unwrap_err();
    assert_precondition(&err, "DEDUCTION_STATUS", &d1.deduction_id);
    assert_unchanged(
        &before,
        &state(&app, &raw).await,
        "refunding a REFUNDED deduction",
    );

    // Partial, adding up.
    let d2 = deduct_expect(
        &mut merchant,
        collect("r-2", &m.mandate_id, "100.00", "b-2"),
        D::Succeeded,
        "",
    )
    .await;
    assert_eq!(app.balance("p-1").await, "900.00");
    for (rid, amount, total, balance) in [
        ("rf-2a", "30.00", "30.00", "930.00"),
        ("rf-2b", "50.00", "80.00", "980.00"),
    ] {
        let r = refund(&mut merchant, rid, &d2.deduction_id, amount)
            .await
            .unwrap();
        let d = r.deduction.unwrap();
        assert_eq!(
            (deduction_status(&d), refunded(&d)),
            (D::PartiallyRefunded, total),
            "{rid}"
        );
        assert_eq!(r.refund.unwrap().amount, money(amount));
        assert_eq!(app.balance("p-1").await, balance, "{rid}");
    }
    // 20.01 more would be 100.01 of 100.00.
    let before = state(&app, &raw).await;
    let err = refund(&mut merchant, "rf-2c", &d2.deduction_id, "20.01")
        .await
        .unwrap_err();
    assert_precondition(&err, "DEDUCTION_STATUS", &d2.deduction_id);
    assert_unchanged(&before, &state(&app, &raw).await, "an over-refund");
    let last = refund(&mut merchant, "rf-2d", &d2.deduction_id, "20.00")
        .await
        .unwrap();
    assert!(!last.replayed);
    let d = last.deduction.unwrap();
    assert_eq!(
        (deduction_status(&d), refunded(&d)),
        (D::Refunded, "100.00")
    );
    assert_eq!(app.balance("p-1").await, "1000.00");
    let read = merchant
        .get_deduction(pb::GetDeductionRequest {
            deduction_id: d2.deduction_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(read, d);

    // Every refund is an audit event.
    let events = chain(&app, &m.mandate_id).await;
    let refunds: Vec<_> = events
        .iter()
        .filter(|e| e.action == "REFUND_RECORDED")
        .map(|e| {
            (
                e.deduction_id.clone().unwrap(),
                e.request_id.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        refunds,
        vec![
            (d1.deduction_id.clone(), "rf-1".to_owned()),
            (d2.deduction_id.clone(), "rf-2a".to_owned()),
            (d2.deduction_id.clone(), "rf-2b".to_owned()),
            (d2.deduction_id.clone(), "rf-2d".to_owned()),
        ]
    );

    // Both debits still count: the month's two debits are used.
    deduct_expect(
        &mut merchant,
        collect("r-3", &m.mandate_id, "10.00", "b-3"),
        D::Declined,
        "PERIOD_COUNT_LIMIT_EXCEEDED",
    )
    .await;
    assert_ledger_balanced(app.db().deductions.ledger_totals().await.unwrap());
    app.verify_audit().await;
}

/// Only a SUCCEEDED (or partly refunded) deduction can be refunded.
async fn refunding_declined_or_failed_is_a_precondition(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    let m = active_mandate(&app, "c-refund-bad").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let declined = deduct_expect(
        &mut merchant,
        collect("r-1", &m.mandate_id, "600.00", "b-1"),
        D::Declined,
        "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
    )
    .await;
    // The wallet is empty and the card is not connected.
    let failed = deduct_expect(
        &mut merchant,
        collect("r-2", &m.mandate_id, "100.00", "b-2"),
        D::Failed,
        "CARD_NOT_CONNECTED",
    )
    .await;
    // Over the wallet's cap, straight to the card.
    let card = deduct_expect(
        &mut merchant,
        collect("r-3", &m.mandate_id, "300.00", "b-3"),
        D::Failed,
        "CARD_NOT_CONNECTED",
    )
    .await;
    for (i, d) in [&declined, &failed, &card].into_iter().enumerate() {
        let before = state(&app, &raw).await;
        let err = refund(&mut merchant, &format!("rf-{i}"), &d.deduction_id, "1.00")
            .await
            .unwrap_err();
        assert_precondition(&err, "DEDUCTION_STATUS", &d.deduction_id);
        assert_unchanged(
            &before,
            &state(&app, &raw).await,
            "refunding an unpaid deduction",
        );
    }
    assert_eq!(app.balance("p-1").await, "0.00");
}

/// RefundDeduction is idempotent on its request id.
async fn refund_is_idempotent(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    let m = active_mandate(&app, "c-refund-idem").await;
    app.credit("p-1", "500.00").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let d = deduct_expect(
        &mut merchant,
        collect("r-1", &m.mandate_id, "100.00", "b-1"),
        D::Succeeded,
        "",
    )
    .await;
    let other = deduct_expect(
        &mut merchant,
        collect("r-2", &m.mandate_id, "100.00", "b-2"),
        D::Succeeded,
        "",
    )
    .await;
    assert_eq!(app.balance("p-1").await, "300.00");

    let first = refund(&mut merchant, "rf-1", &d.deduction_id, "40.00")
        .await
        .unwrap();
    assert!(!first.replayed);
    assert_eq!(app.balance("p-1").await, "340.00");

    // The same request again: the same refund, no money moves, nothing is written.
    let before = state(&app, &raw).await;
    let again = refund(&mut merchant, "rf-1", &d.deduction_id, "40.00")
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.refund, first.refund);
    assert_eq!(again.deduction, first.deduction);
    assert_unchanged(&before, &state(&app, &raw).await, "a replayed refund");
    assert_eq!(app.balance("p-1").await, "340.00");

    // The same id for another amount, or another deduction: ALREADY_EXISTS, nothing written.
    for (deduction, amount) in [(&d, "41.00"), (&other, "40.00")] {
        let before = state(&app, &raw).await;
        let err = refund(&mut merchant, "rf-1", &deduction.deduction_id, amount)
            .await
            .unwrap_err();
        let what = format!(
            "refund key rf-1 reused for {amount} on {}",
            deduction.deduction_id
        );
        assert_key_reused(&err, &what);
        assert_unchanged(&before, &state(&app, &raw).await, &what);
    }

    // No request id.
    let before = state(&app, &raw).await;
    let err = refund(&mut merchant, "", &d.deduction_id, "10.00")
        .await
        .unwrap_err();
    assert_bad_field(&err, "request_id");
    assert_unchanged(
        &before,
        &state(&app, &raw).await,
        "a refund without request_id",
    );

    // A replay after the deduction is fully refunded still answers with the original refund.
    let rest = refund(&mut merchant, "rf-2", &d.deduction_id, "60.00")
        .await
        .unwrap();
    let rest_d = rest.deduction.clone().unwrap();
    assert_eq!(
        (deduction_status(&rest_d), refunded(&rest_d)),
        (D::Refunded, "100.00")
    );
    let before = state(&app, &raw).await;
    let replay = refund(&mut merchant, "rf-1", &d.deduction_id, "40.00")
        .await
        .unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.refund, first.refund);
    let replay2 = refund(&mut merchant, "rf-2", &d.deduction_id, "60.00")
        .await
        .unwrap();
    assert!(replay2.replayed);
    assert_eq!(replay2.refund, rest.refund);
    assert_unchanged(
        &before,
        &state(&app, &raw).await,
        "replays after a full refund",
    );
    assert_eq!(app.balance("p-1").await, "400.00");
    assert_ledger_balanced(app.db().deductions.ledger_totals().await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// 4. One-off approvals and the clawback rule.
// ---------------------------------------------------------------------------------------------

/// Only a DECLINED deduction can be put to the payer; a rejected or undecided approval collects
/// nothing; a decided approval cannot be decided again.
async fn one_off_needs_a_decline_and_a_yes(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    let m = active_mandate(&app, "c-oneoff").await;
    app.credit("p-1", "500.00").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let mut payer = app.deductions_as(app.payer_token("p-1")).await;

    // A SUCCEEDED deduction needs no approval.
    let ok = deduct_expect(
        &mut merchant,
        collect("r-ok", &m.mandate_id, "50.00", "b-ok"),
        D::Succeeded,
        "",
    )
    .await;
    let before = state(&app, &raw).await;
    let err = request_approval(&mut merchant, "ap-ok", &ok.deduction_id)
        .await
        .unwrap_err();
    assert_precondition(&err, "DEDUCTION_STATUS", &ok.deduction_id);
    assert_unchanged(
        &before,
        &state(&app, &raw).await,
        "an approval for a SUCCEEDED deduction",
    );

    // TELECOM is outside the mandate.
    let declined = deduct_expect(
        &mut merchant,
        pb::CreateDeductionRequest {
            purpose: pb::Purpose::Telecom as i32,
            ..collect("r-tel", &m.mandate_id, "80.00", "b-tel")
        },
        D::Declined,
        "PURPOSE_NOT_ALLOWED",
    )
    .await;
    let mark = chain(&app, &m.mandate_id).await.len();
    let approval = request_approval(&mut merchant, "ap-1", &declined.deduction_id)
        .await
        .unwrap();
    assert_eq!(approval_status(&approval), pb::ApprovalStatus::Pending);
    assert_eq!(
        (
            approval.mandate_id.as_str(),
            approval.declined_deduction_id.as_str(),
            approval.amount.clone(),
            approval.purpose,
            approval.bill_reference.as_str(),
        ),
        (
            m.mandate_id.as_str(),
            declined.deduction_id.as_str(),
            money("80.00"),
            pb::Purpose::Telecom as i32,
            "b-tel",
        )
    );
    let requested = approval.requested_at.unwrap();
    assert_eq!(requested, ts(app.clock_now()));
    assert_eq!(
        approval.expires_at.unwrap().seconds,
        requested.seconds + 24 * 3600
    );
    assert_eq!(approval.decided_at, None);

    // Not decided yet: collecting with it is declined.
    let exact = |rid: &str| {
        with_approval(
            rid,
            &m.mandate_id,
            "80.00",
            pb::Purpose::Telecom,
            "b-tel",
            &approval.approval_id,
        )
    };
    deduct_expect(
        &mut merchant,
        exact("r-pending"),
        D::Declined,
        "ONE_OFF_APPROVAL_INVALID",
    )
    .await;

    // The payer rejects it: collecting with it is declined.
    let rejected = reject(&mut payer, &approval.approval_id).await.unwrap();
    assert_eq!(approval_status(&rejected), pb::ApprovalStatus::Rejected);
    assert_eq!(rejected.decided_at, Some(ts(app.clock_now())));
    let d = deduct_expect(
        &mut merchant,
        exact("r-rejected"),
        D::Declined,
        "ONE_OFF_APPROVAL_INVALID",
    )
    .await;
    assert_eq!(d.one_off_approval_id, approval.approval_id);
    assert_eq!(app.balance("p-1").await, "450.00");

    // A decided approval stays decided: rejecting again answers with it as it is (a retry),
    // approving it is refused.
    let again = reject(&mut payer, &approval.approval_id).await.unwrap();
    assert_eq!(again, rejected);
    let err = approve(&mut payer, &approval.approval_id)
        .await
        .unwrap_err();
    assert_precondition(&err, "APPROVAL_STATUS", &approval.approval_id);
    assert!(err.message().contains("REJECTED"), "{err:?}");

    let events = chain(&app, &m.mandate_id).await;
    assert_eq!(
        steps(&events[mark..]),
        vec![
            ("ONE_OFF_APPROVAL_REQUESTED", "OK", None),
            (
                "DEDUCTION_DECLINED",
                "DENIED",
                Some("ONE_OFF_APPROVAL_INVALID")
            ),
            ("ONE_OFF_REJECTED", "OK", None),
            (
                "DEDUCTION_DECLINED",
                "DENIED",
                Some("ONE_OFF_APPROVAL_INVALID")
            ),
        ]
    );
    assert_eq!(
        events[mark].deduction_id.as_deref(),
        Some(declined.deduction_id.as_str())
    );
    assert_eq!(
        (
            events[mark + 2].actor_role.as_str(),
            events[mark + 2].actor_subject.as_str()
        ),
        ("payer", "p-1")
    );
    app.verify_audit().await;
}

/// An approved request collects exactly what was approved, once, and outside the mandate's
/// limits; it cannot be approved twice.
async fn one_off_collects_exactly_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-oneoff-exact").await;
    app.credit("p-1", "500.00").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let mut payer = app.deductions_as(app.payer_token("p-1")).await;
    let declined = deduct_expect(
        &mut merchant,
        pb::CreateDeductionRequest {
            purpose: pb::Purpose::Telecom as i32,
            ..collect("r-tel", &m.mandate_id, "80.00", "b-tel")
        },
        D::Declined,
        "PURPOSE_NOT_ALLOWED",
    )
    .await;
    let approval = request_approval(&mut merchant, "ap-1", &declined.deduction_id)
        .await
        .unwrap();
    let id = approval.approval_id.clone();
    let approved = approve(&mut payer, &id).await.unwrap();
    assert_eq!(approval_status(&approved), pb::ApprovalStatus::Approved);
    assert_eq!(approved.decided_at, Some(ts(app.clock_now())));

    // Approving twice answers with the approval as it is (a retry); rejecting after
    // approving is refused.
    assert_eq!(approve(&mut payer, &id).await.unwrap(), approved);
    assert_precondition(
        &reject(&mut payer, &id).await.unwrap_err(),
        "APPROVAL_STATUS",
        &id,
    );

    // Anything but exactly what was approved.
    let m_id = m.mandate_id.as_str();
    for (rid, request) in [
        (
            "r-amount",
            with_approval(
                "r-amount",
                m_id,
                "79.99",
                pb::Purpose::Telecom,
                "b-tel",
                &id,
            ),
        ),
        (
            "r-more",
            with_approval("r-more", m_id, "80.01", pb::Purpose::Telecom, "b-tel", &id),
        ),
        (
            "r-purpose",
            with_approval(
                "r-purpose",
                m_id,
                "80.00",
                pb::Purpose::Utility,
                "b-tel",
                &id,
            ),
        ),
        (
            "r-bill",
            with_approval(
                "r-bill",
                m_id,
                "80.00",
                pb::Purpose::Telecom,
                "b-other",
                &id,
            ),
        ),
    ] {
        let d = deduct(&mut merchant, request).await;
        assert_eq!(
            (deduction_status(&d), d.reason_code.as_str()),
            (D::Declined, "ONE_OFF_APPROVAL_INVALID"),
            "{rid}: {d:?}"
        );
    }
    assert_eq!(app.balance("p-1").await, "500.00");

    // Exactly it: collected once.
    let exact = with_approval("r-exact", m_id, "80.00", pb::Purpose::Telecom, "b-tel", &id);
    let ok = deduct_expect(&mut merchant, exact.clone(), D::Succeeded, "").await;
    assert_eq!(ok.one_off_approval_id, id);
    assert_eq!(app.balance("p-1").await, "420.00");
    let stored = app.db().deductions.approval(&id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status.as_str(), stored.used_by.as_deref()),
        ("USED", Some(ok.deduction_id.as_str()))
    );
    // A replay is the same deduction; a new request is declined.
    let replay = merchant.create_deduction(exact).await.unwrap().into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.deduction.unwrap(), ok);
    deduct_expect(
        &mut merchant,
        with_approval("r-again", m_id, "80.00", pb::Purpose::Telecom, "b-tel", &id),
        D::Declined,
        "ONE_OFF_APPROVAL_INVALID",
    )
    .await;
    assert_eq!(app.balance("p-1").await, "420.00");

    // The one-off debit did not count against the mandate: the month's two debits are free.
    for i in 0..2 {
        deduct_expect(
            &mut merchant,
            collect(&format!("r-u{i}"), m_id, "100.00", &format!("b-u{i}")),
            D::Succeeded,
            "",
        )
        .await;
    }
    assert_eq!(app.balance("p-1").await, "220.00");
    assert_ledger_balanced(app.db().deductions.ledger_totals().await.unwrap());
    app.verify_audit().await;
}

/// An approval is good for 24 hours from the request: approved and expired collects nothing,
/// and an expired request cannot be approved.
async fn one_off_expires(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-oneoff-expiry").await;
    app.credit("p-1", "500.00").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let mut payer = app.deductions_as(app.payer_token("p-1")).await;
    let m_id = m.mandate_id.as_str();

    let expired = pending_approval(&mut merchant, m_id, "late").await;
    approve(&mut payer, &expired.approval_id).await.unwrap();
    let undecided = pending_approval(&mut merchant, m_id, "undecided").await;

    app.clock.advance(SignedDuration::from_hours(25));
    deduct_expect(
        &mut merchant,
        with_approval(
            "r-late",
            m_id,
            "600.00",
            pb::Purpose::Utility,
            "b-big-late",
            &expired.approval_id,
        ),
        D::Declined,
        "ONE_OFF_APPROVAL_INVALID",
    )
    .await;
    let err = approve(&mut payer, &undecided.approval_id)
        .await
        .unwrap_err();
    assert_precondition(&err, "APPROVAL_STATUS", &undecided.approval_id);
    let err = reject(&mut payer, &undecided.approval_id)
        .await
        .unwrap_err();
    assert_precondition(&err, "APPROVAL_STATUS", &undecided.approval_id);
    let stored = app
        .db()
        .deductions
        .approval(&undecided.approval_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status.as_str(), "PENDING");

    // Just inside the 24 hours it still collects (600.00 is over the wallet's cap and the card
    // is not connected, so take a bill the wallet can pay).
    let declined = deduct_expect(
        &mut merchant,
        pb::CreateDeductionRequest {
            purpose: pb::Purpose::Telecom as i32,
            ..collect("r-tel", m_id, "150.00", "b-tel")
        },
        D::Declined,
        "PURPOSE_NOT_ALLOWED",
    )
    .await;
    let fresh = request_approval(&mut merchant, "ap-fresh", &declined.deduction_id)
        .await
        .unwrap();
    approve(&mut payer, &fresh.approval_id).await.unwrap();
    app.clock
        .advance(SignedDuration::from_hours(24) - SignedDuration::from_secs(1));
    deduct_expect(
        &mut merchant,
        with_approval(
            "r-fresh",
            m_id,
            "150.00",
            pb::Purpose::Telecom,
            "b-tel",
            &fresh.approval_id,
        ),
        D::Succeeded,
        "",
    )
    .await;
    assert_eq!(app.balance("p-1").await, "350.00");
}

/// The clawback expected in the audit trail: declined REFUND_CLAWBACK_FORBIDDEN, put to the
/// payer, approved, collected once, and a second try declined.
fn clawback_steps() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    vec![
        (
            "DEDUCTION_DECLINED",
            "DENIED",
            Some("REFUND_CLAWBACK_FORBIDDEN"),
        ),
        ("ONE_OFF_APPROVAL_REQUESTED", "OK", None),
        ("ONE_OFF_APPROVED", "OK", None),
        ("DEDUCTION_APPROVED", "OK", None),
        ("FUNDING_ATTEMPT", "SUCCEEDED", None),
        ("DEDUCTION_SUCCEEDED", "OK", None),
        (
            "DEDUCTION_DECLINED",
            "DENIED",
            Some("ONE_OFF_APPROVAL_INVALID"),
        ),
    ]
}

/// Runs the compliant path for a declined clawback `claw` (collected again as `purpose` on
/// `bill` for `amount`) and checks it is collected exactly once.
async fn clawback_with_consent(
    app: &TestApp,
    m: &pb::Mandate,
    claw: &pb::Deduction,
    purpose: pb::Purpose,
    amount: &str,
    bill: &str,
) -> pb::Deduction {
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let mut payer = app.deductions_as(app.payer_token("p-1")).await;
    let approval = request_approval(&mut merchant, "ap-claw", &claw.deduction_id)
        .await
        .unwrap();
    assert_eq!(
        (
            approval.amount.clone(),
            approval.purpose,
            approval.bill_reference.as_str()
        ),
        (money(amount), purpose as i32, bill)
    );
    let approved = approve(&mut payer, &approval.approval_id).await.unwrap();
    assert_eq!(approval_status(&approved), pb::ApprovalStatus::Approved);
    let m_id = &m.mandate_id;
    let ok = deduct_expect(
        &mut merchant,
        with_approval(
            "r-claw-ok",
            m_id,
            amount,
            purpose,
            bill,
            &approval.approval_id,
        ),
        D::Succeeded,
        "",
    )
    .await;
    deduct_expect(
        &mut merchant,
        with_approval(
            "r-claw-again",
            m_id,
            amount,
            purpose,
            bill,
            &approval.approval_id,
        ),
        D::Declined,
        "ONE_OFF_APPROVAL_INVALID",
    )
    .await;
    ok
}

/// Form one: purpose REFUND_RECOVERY is declined under any mandate, audited, and collectable
/// only with the payer's one-off approval, once.
async fn clawback_by_purpose(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-claw-purpose").await;
    app.credit("p-1", "500.00").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let recovery = || pb::CreateDeductionRequest {
        purpose: pb::Purpose::RefundRecovery as i32,
        ..collect("r-claw", &m.mandate_id, "60.00", "b-rr")
    };
    let check = merchant
        .check_deduction(pb::CheckDeductionRequest {
            mandate_id: m.mandate_id.clone(),
            amount: money("60.00"),
            purpose: pb::Purpose::RefundRecovery as i32,
            bill_reference: "b-rr".into(),
            notice_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!check.allowed);
    assert_eq!(
        check
            .violations
            .iter()
            .map(|v| v.reason_code.as_str())
            .collect::<Vec<_>>(),
        vec!["REFUND_CLAWBACK_FORBIDDEN"]
    );

    let mark = chain(&app, &m.mandate_id).await.len();
    let claw = deduct_expect(
        &mut merchant,
        recovery(),
        D::Declined,
        "REFUND_CLAWBACK_FORBIDDEN",
    )
    .await;
    assert_eq!(app.balance("p-1").await, "500.00");
    let ok = clawback_with_consent(
        &app,
        &m,
        &claw,
        pb::Purpose::RefundRecovery,
        "60.00",
        "b-rr",
    )
    .await;
    assert_eq!(app.balance("p-1").await, "440.00");

    let events = chain(&app, &m.mandate_id).await;
    assert_eq!(steps(&events[mark..]), clawback_steps());
    assert_eq!(
        events[mark].deduction_id.as_deref(),
        Some(claw.deduction_id.as_str())
    );
    assert_eq!(
        events[mark + 1].deduction_id.as_deref(),
        Some(claw.deduction_id.as_str())
    );
    assert_eq!(events[mark + 2].actor_role, "payer");
    assert_eq!(
        events[mark + 5].deduction_id.as_deref(),
        Some(ok.deduction_id.as_str())
    );
    assert_ledger_balanced(app.db().deductions.ledger_totals().await.unwrap());
    app.verify_audit().await;
}

/// Form two: collecting a bill again after refunding it (fully or in part) is a clawback,
/// whatever the amount; with the payer's approval it is collected once.
async fn clawback_by_refunded_bill(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-claw-bill").await;
    app.credit("p-1", "500.00").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let m_id = m.mandate_id.as_str();
    let d = deduct_expect(
        &mut merchant,
        collect("r-1", m_id, "120.00", "b-bill"),
        D::Succeeded,
        "",
    )
    .await;
    refund(&mut merchant, "rf-1", &d.deduction_id, "120.00")
        .await
        .unwrap();
    assert_eq!(app.balance("p-1").await, "500.00");

    let mark = chain(&app, m_id).await.len();
    let claw = deduct_expect(
        &mut merchant,
        collect("r-claw", m_id, "120.00", "b-bill"),
        D::Declined,
        "REFUND_CLAWBACK_FORBIDDEN",
    )
    .await;
    let ok = clawback_with_consent(&app, &m, &claw, pb::Purpose::Utility, "120.00", "b-bill").await;
    assert_eq!(app.balance("p-1").await, "380.00");
    let events = chain(&app, m_id).await;
    assert_eq!(steps(&events[mark..]), clawback_steps());
    assert_eq!(
        events[mark].deduction_id.as_deref(),
        Some(claw.deduction_id.as_str())
    );
    assert_eq!(
        events[mark + 5].deduction_id.as_deref(),
        Some(ok.deduction_id.as_str())
    );

    // Another amount on the refunded bill is still a clawback; so is a partly refunded bill.
    deduct_expect(
        &mut merchant,
        collect("r-claw-2", m_id, "5.00", "b-bill"),
        D::Declined,
        "REFUND_CLAWBACK_FORBIDDEN",
    )
    .await;
    let part = deduct_expect(
        &mut merchant,
        collect("r-2", m_id, "100.00", "b-part"),
        D::Succeeded,
        "",
    )
    .await;
    refund(&mut merchant, "rf-2", &part.deduction_id, "0.01")
        .await
        .unwrap();
    deduct_expect(
        &mut merchant,
        collect("r-claw-3", m_id, "0.01", "b-part"),
        D::Declined,
        "REFUND_CLAWBACK_FORBIDDEN",
    )
    .await;
    assert_eq!(app.balance("p-1").await, "280.01");
    assert_ledger_balanced(app.db().deductions.ledger_totals().await.unwrap());
    app.verify_audit().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Wallet.
// ---------------------------------------------------------------------------------------------

fn credit_request(request_id: &str, payer: &str, amount: &str) -> pb::CreditWalletRequest {
    pb::CreditWalletRequest {
        request_id: request_id.into(),
        payer_id: payer.into(),
        amount: money(amount),
        reason: "top-up".into(),
    }
}

/// CreditWallet is idempotent on its request id; an unknown payer's balance is 0.00.
async fn credit_wallet_is_idempotent(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    let mut operator = app.wallet_as(app.operator_token()).await;

    let first = operator
        .credit_wallet(credit_request("cw-1", "p-9", "100.00"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    assert_eq!(first.balance, money("100.00"));

    let before = state(&app, &raw).await;
    let again = operator
        .credit_wallet(credit_request("cw-1", "p-9", "100.00"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.balance, money("100.00"));
    assert_unchanged(&before, &state(&app, &raw).await, "a replayed credit");

    // The same id for another amount, or another payer (with a wallet; one without comes last).
    app.credit("p-1", "1.00").await;
    for (payer, amount) in [("p-9", "100.01"), ("p-1", "100.00")] {
        let before = state(&app, &raw).await;
        let err = operator
            .credit_wallet(credit_request("cw-1", payer, amount))
            .await
            .unwrap_err();
        let what = format!("credit key cw-1 reused for {amount} to {payer}");
        assert_key_reused(&err, &what);
        assert_unchanged(&before, &state(&app, &raw).await, &what);
    }
    assert_eq!(app.balance("p-9").await, "100.00");

    // Balances: unknown payers hold 0.00; a payer reads its own.
    let balance = |payer: &str| pb::GetWalletBalanceRequest {
        payer_id: payer.into(),
        currency_code: "CNY".into(),
    };
    let unknown = operator
        .get_wallet_balance(balance("p-unknown"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown.balance, money("0.00"));
    let mut p9 = app.wallet_as(app.payer_token("p-9")).await;
    let own = p9
        .get_wallet_balance(balance(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.balance, money("100.00"));
    let own = p9
        .get_wallet_balance(balance("p-9"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.balance, money("100.00"));
    let mut p7 = app.wallet_as(app.payer_token("p-7")).await;
    assert_eq!(
        p7.get_wallet_balance(balance(""))
            .await
            .unwrap()
            .into_inner()
            .balance,
        money("0.00")
    );
    assert_eq!(app.balance("p-9").await, "100.00");

    // The same id for a payer that has no wallet yet is a reused key too, and creates no wallet.
    let before = state(&app, &raw).await;
    let err = operator
        .credit_wallet(credit_request("cw-1", "p-8", "100.00"))
        .await
        .unwrap_err();
    let what = "credit key cw-1 reused for 100.00 to p-8 (no wallet yet)";
    assert_key_reused(&err, what);
    assert_unchanged(&before, &state(&app, &raw).await, what);
    assert_eq!(app.balance("p-8").await, "0.00");
}

/// After credits, debits (paid and refused) and refunds, every wallet holds what it should, the
/// ledger sums to zero and no wallet is negative.
async fn ledger_is_conserved(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    let a = mandate_for(&app, "m-1", "p-1", "c-ledger-a").await;
    let b = mandate_for(&app, "m-2", "p-2", "c-ledger-b").await;
    app.credit("p-1", "300.00").await;
    app.credit("p-2", "50.00").await;
    let mut m1 = app.deductions_as(app.merchant_token("m-1")).await;
    let mut m2 = app.deductions_as(app.merchant_token("m-2")).await;

    let a1 = deduct_expect(
        &mut m1,
        collect("r-a1", &a.mandate_id, "120.00", "b-a1"),
        D::Succeeded,
        "",
    )
    .await;
    deduct_expect(
        &mut m1,
        collect("r-a2", &a.mandate_id, "250.00", "b-a2"),
        D::Failed,
        "CARD_NOT_CONNECTED",
    )
    .await;
    // p-2 has 50.00: the wallet refuses 80.00 rather than go negative.
    deduct_expect(
        &mut m2,
        collect("r-b1", &b.mandate_id, "80.00", "b-b1"),
        D::Failed,
        "CARD_NOT_CONNECTED",
    )
    .await;
    deduct_expect(
        &mut m2,
        collect("r-b2", &b.mandate_id, "50.00", "b-b2"),
        D::Succeeded,
        "",
    )
    .await;
    deduct_expect(
        &mut m2,
        collect("r-b3", &b.mandate_id, "0.01", "b-b3"),
        D::Failed,
        "CARD_NOT_CONNECTED",
    )
    .await;
    refund(&mut m1, "rf-a1", &a1.deduction_id, "20.00")
        .await
        .unwrap();
    refund(&mut m1, "rf-a1b", &a1.deduction_id, "0.50")
        .await
        .unwrap();
    app.credit("p-2", "0.99").await;

    assert_eq!(app.balance("p-1").await, "200.50");
    assert_eq!(app.balance("p-2").await, "0.99");
    let totals = app.db().deductions.ledger_totals().await.unwrap();
    assert_ledger_balanced(totals);
    assert_eq!(totals.min_wallet_minor, 99);
    assert_eq!(
        raw.totals_by_kind().await,
        vec![
            ("CLEARING".to_owned(), -35_099),
            ("MERCHANT".to_owned(), 9_950 + 5_000),
            ("WALLET".to_owned(), 20_050 + 99),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Bad input.
// ---------------------------------------------------------------------------------------------

type Edit<T> = Box<dyn Fn(&mut T) + Send + Sync>;

enum BadCall {
    Create(Edit<pb::CreateDeductionRequest>),
    Notify(Edit<pb::NotifyUpcomingDebitRequest>),
    Refund(Edit<pb::RefundDeductionRequest>),
    Credit(Edit<pb::CreditWalletRequest>),
    List(Edit<pb::ListDeductionsRequest>),
}

/// Bad fields on the new RPCs: INVALID_ARGUMENT with a BadRequest naming the field, and nothing
/// written; the untouched requests go through.
async fn bad_input_is_invalid_argument(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    let m = active_mandate(&app, "c-bad").await;
    app.credit("p-1", "500.00").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let mut operator = app.wallet_as(app.operator_token()).await;
    let paid = deduct_expect(
        &mut merchant,
        collect("r-paid", &m.mandate_id, "100.00", "b-paid"),
        D::Succeeded,
        "",
    )
    .await;

    let create_base = collect("r-bad", &m.mandate_id, "10.00", "b-bad");
    let notify_base = pb::NotifyUpcomingDebitRequest {
        mandate_id: m.mandate_id.clone(),
        amount: money("10.00"),
        due_at: Some(ts("2026-03-05T02:00:00Z".parse().unwrap())),
        bill_reference: "b-ntc".into(),
        request_id: "ntc-bad".into(),
    };
    let refund_base = refund_request("rf-bad", &paid.deduction_id, "1.00");
    let credit_base = credit_request("cw-bad", "p-1", "1.00");
    let list_base = pb::ListDeductionsRequest {
        page_size: 500,
        ..Default::default()
    };

    let cases: Vec<(&str, BadCall, &str)> = vec![
        (
            "CreateDeduction without request_id",
            BadCall::Create(Box::new(|r| r.request_id.clear())),
            "request_id",
        ),
        (
            "CreateDeduction of 0",
            BadCall::Create(Box::new(|r| r.amount = money("0"))),
            "amount.amount",
        ),
        (
            "CreateDeduction of 1.001",
            BadCall::Create(Box::new(|r| r.amount = money("1.001"))),
            "amount.amount",
        ),
        (
            "CreateDeduction without amount",
            BadCall::Create(Box::new(|r| r.amount = None)),
            "amount",
        ),
        (
            "CreateDeduction of purpose UNSPECIFIED",
            BadCall::Create(Box::new(|r| r.purpose = pb::Purpose::Unspecified as i32)),
            "purpose",
        ),
        (
            "CreateDeduction without bill",
            BadCall::Create(Box::new(|r| r.bill_reference.clear())),
            "bill_reference",
        ),
        (
            "CreateDeduction of a malformed mandate id",
            BadCall::Create(Box::new(|r| r.mandate_id = "not a mandate!".into())),
            "mandate_id",
        ),
        (
            "CreateDeduction with a 257-character description",
            BadCall::Create(Box::new(|r| r.description = "é".repeat(257))),
            "description",
        ),
        (
            "NotifyUpcomingDebit without due_at",
            BadCall::Notify(Box::new(|r| r.due_at = None)),
            "due_at",
        ),
        (
            "RefundDeduction of -1",
            BadCall::Refund(Box::new(|r| r.amount = money("-1"))),
            "amount.amount",
        ),
        (
            "CreditWallet in an unknown currency",
            BadCall::Credit(Box::new(|r| {
                r.amount = Some(pb::Money {
                    currency_code: "XXX".into(),
                    amount: "1.00".into(),
                })
            })),
            "amount.currency_code",
        ),
        (
            "ListDeductions of 501",
            BadCall::List(Box::new(|r| r.page_size = 501)),
            "page_size",
        ),
    ];
    let mut failures = vec![];
    for (name, bad, field) in cases {
        let before = state(&app, &raw).await;
        let result = match &bad {
            BadCall::Create(edit) => {
                let mut r = create_base.clone();
                edit(&mut r);
                merchant.create_deduction(r).await.map(drop)
            }
            BadCall::Notify(edit) => {
                let mut r = notify_base.clone();
                edit(&mut r);
                merchant.notify_upcoming_debit(r).await.map(drop)
            }
            BadCall::Refund(edit) => {
                let mut r = refund_base.clone();
                edit(&mut r);
                merchant.refund_deduction(r).await.map(drop)
            }
            BadCall::Credit(edit) => {
                let mut r = credit_base.clone();
                edit(&mut r);
                operator.credit_wallet(r).await.map(drop)
            }
            BadCall::List(edit) => {
                let mut r = list_base.clone();
                edit(&mut r);
                merchant.list_deductions(r).await.map(drop)
            }
        };
        let after = state(&app, &raw).await;
        match result {
            Ok(()) => failures.push(format!("{name}: accepted")),
            Err(status) => match violated_field(&status) {
                Ok(got) if got == field => {}
                Ok(got) => failures.push(format!("{name}: names {got:?}, want {field:?}")),
                Err(why) => failures.push(format!("{name}: {why}")),
            },
        }
        if before != after {
            failures.push(format!("{name}: wrote {}", diff(&before, &after)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The untouched requests are fine, and 256 characters of description are allowed.
    let d = deduct_expect(
        &mut merchant,
        pb::CreateDeductionRequest {
            description: "é".repeat(256),
            ..create_base
        },
        D::Succeeded,
        "",
    )
    .await;
    assert_eq!(d.description.chars().count(), 256);
    merchant.notify_upcoming_debit(notify_base).await.unwrap();
    merchant.refund_deduction(refund_base).await.unwrap();
    operator.credit_wallet(credit_base).await.unwrap();
    merchant.list_deductions(list_base).await.unwrap();
    assert_eq!(app.balance("p-1").await, "392.00");
}

both_backends!(
    every_rpc_for_every_role,
    other_tenants_resources_are_not_found,
    list_deductions_is_isolated,
    refunds_full_and_partial,
    refunding_declined_or_failed_is_a_precondition,
    refund_is_idempotent,
    one_off_needs_a_decline_and_a_yes,
    one_off_collects_exactly_once,
    one_off_expires,
    clawback_by_purpose,
    clawback_by_refunded_bill,
    credit_wallet_is_idempotent,
    ledger_is_conserved,
    bad_input_is_invalid_argument,
);
