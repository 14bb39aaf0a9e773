//! Deductions, refunds, checks and notices: as `TestApp` methods, and on a client of a test's
//! own (calls made from spawned tasks, or to the real binary).

use jiff::Timestamp;
use tonic::Status;

use super::violation_codes;
use super::{DeductionClient, TestApp, deduction_status, money, pb, pb_time, refund_request};

/// Deductions and refunds.
impl TestApp {
    /// Collects as `merchant`; the RPC must succeed (the deduction may be declined).
    pub async fn deduct(
        &self,
        merchant: &str,
        request: pb::CreateDeductionRequest,
    ) -> pb::Deduction {
        self.deductions_as(self.merchant_token(merchant))
            .await
            .create_deduction(request)
            .await
            .unwrap()
            .into_inner()
            .deduction
            .unwrap()
    }

    /// Collects as `merchant` and asserts the outcome: the status and the reason code ("" when
    /// none).
    pub async fn deduct_expect(
        &self,
        merchant: &str,
        request: pb::CreateDeductionRequest,
        status: pb::DeductionStatus,
        reason: &str,
    ) -> pb::Deduction {
        let d = self.deduct(merchant, request).await;
        assert_eq!(
            (deduction_status(&d), d.reason_code.as_str()),
            (status, reason),
            "{d:?}"
        );
        d
    }

    /// Refunds `amount` CNY of a deduction as `merchant`.
    pub async fn refund(
        &self,
        merchant: &str,
        request_id: &str,
        deduction_id: &str,
        amount: &str,
    ) -> Result<pb::RefundDeductionResponse, Status> {
        self.deductions_as(self.merchant_token(merchant))
            .await
            .refund_deduction(refund_request(request_id, deduction_id, amount))
            .await
            .map(tonic::Response::into_inner)
    }

    /// CheckDeduction of `amount` CNY of purpose UTILITY on `bill`, as `merchant`.
    pub async fn check(
        &self,
        merchant: &str,
        mandate_id: &str,
        amount: &str,
        bill: &str,
    ) -> pb::CheckDeductionResponse {
        self.deductions_as(self.merchant_token(merchant))
            .await
            .check_deduction(pb::CheckDeductionRequest {
                mandate_id: mandate_id.into(),
                amount: money(amount),
                purpose: pb::Purpose::Utility as i32,
                bill_reference: bill.into(),
                notice_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
    }
}

/// The audit trail of one deduction.
impl TestApp {
    /// (action, outcome, reason) of a deduction's audit events, in chain order.
    pub async fn deduction_events(
        &self,
        mandate_id: &str,
        deduction_id: &str,
    ) -> Vec<(String, String, Option<String>)> {
        self.mandate_chain(mandate_id)
            .await
            .into_iter()
            .filter(|e| e.deduction_id.as_deref() == Some(deduction_id))
            .map(|e| (e.action, e.outcome, e.reason_code))
            .collect()
    }
}

/// How many of `events` are `action`.
pub fn count_action(events: &[(String, String, Option<String>)], action: &str) -> usize {
    events.iter().filter(|(a, _, _)| a == action).count()
}

/// CreateDeduction of a request id not used before: the RPC must answer OK (a decline is a
/// business outcome, not an RPC error), and not as a replay.
pub async fn new_deduction(
    client: &mut DeductionClient,
    request: pb::CreateDeductionRequest,
) -> pb::Deduction {
    let answer = client
        .create_deduction(request.clone())
        .await
        .unwrap_or_else(|e| panic!("CreateDeduction {request:?} answered {e:?}"))
        .into_inner();
    assert!(!answer.replayed, "{request:?} is a new request: {answer:?}");
    answer.deduction.unwrap()
}

/// CreateDeduction of a request id answered before: the RPC must answer OK, as a replay.
pub async fn replayed_deduction(
    client: &mut DeductionClient,
    request: pb::CreateDeductionRequest,
) -> pb::Deduction {
    let answer = client
        .create_deduction(request.clone())
        .await
        .unwrap_or_else(|e| panic!("CreateDeduction {request:?} answered {e:?}"))
        .into_inner();
    assert!(answer.replayed, "{request:?} was sent before: {answer:?}");
    answer.deduction.unwrap()
}

pub async fn get_deduction(client: &mut DeductionClient, id: &str) -> pb::Deduction {
    client
        .get_deduction(pb::GetDeductionRequest {
            deduction_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap()
}

/// The first page of a mandate's deductions.
pub async fn list_deductions(client: &mut DeductionClient, mandate_id: &str) -> Vec<pb::Deduction> {
    client
        .list_deductions(pb::ListDeductionsRequest {
            mandate_id: mandate_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deductions
}

/// A new deduction that must succeed: no violation, no reason.
pub async fn succeeded_deduction(
    client: &mut DeductionClient,
    request: pb::CreateDeductionRequest,
) -> pb::Deduction {
    let d = new_deduction(client, request).await;
    assert_eq!(
        deduction_status(&d),
        pb::DeductionStatus::Succeeded,
        "{d:?}"
    );
    assert!(d.violations.is_empty() && d.reason_code.is_empty(), "{d:?}");
    d
}

/// A declined deduction: the first reason, every violation in order, the version judged
/// against, and no funding source tried.
pub fn assert_declined(d: &pb::Deduction, expected: &[&str], version: i64, what: &str) {
    assert_eq!(
        deduction_status(d),
        pb::DeductionStatus::Declined,
        "{what}: {d:?}"
    );
    assert_eq!(d.reason_code, expected[0], "{what}: {d:?}");
    assert_eq!(violation_codes(&d.violations), expected, "{what}: {d:?}");
    assert!(
        d.violations.iter().all(|v| !v.description.is_empty()),
        "{what}: every violation says why: {d:?}"
    );
    assert_eq!(d.mandate_version, version, "{what}: {d:?}");
    assert!(d.funding_attempts.is_empty(), "{what}: {d:?}");
    assert_eq!(d.paid_by_source_index, None, "{what}");
}

/// CheckDeduction of exactly what `request` would collect.
pub async fn check_deduction(
    client: &mut DeductionClient,
    request: &pb::CreateDeductionRequest,
) -> pb::CheckDeductionResponse {
    client
        .check_deduction(pb::CheckDeductionRequest {
            mandate_id: request.mandate_id.clone(),
            amount: request.amount.clone(),
            purpose: request.purpose,
            bill_reference: request.bill_reference.clone(),
            notice_id: request.notice_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Every deduction of a mandate (of one status, if given) through ListDeductions, page by page;
/// each page within `page_size`, each id once.
pub async fn list_pages(
    client: &mut DeductionClient,
    mandate_id: &str,
    status: Option<pb::DeductionStatus>,
    page_size: u32,
) -> Vec<pb::Deduction> {
    let mut out: Vec<pb::Deduction> = vec![];
    let mut seen = std::collections::HashSet::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_deductions(pb::ListDeductionsRequest {
                mandate_id: mandate_id.into(),
                status: status.map_or(0, |s| s as i32),
                created_from: None,
                created_until: None,
                page_size,
                page_token: page_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.deductions.len() <= page_size as usize);
        for d in page.deductions {
            assert!(seen.insert(d.deduction_id.clone()), "listed twice: {d:?}");
            out.push(d);
        }
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

/// NotifyUpcomingDebit: a pre-debit notice of `amount` CNY on `bill`, due at `due_at`.
pub async fn notify(
    client: &mut DeductionClient,
    request_id: &str,
    mandate_id: &str,
    amount: &str,
    bill: &str,
    due_at: Timestamp,
) -> pb::Notice {
    client
        .notify_upcoming_debit(pb::NotifyUpcomingDebitRequest {
            mandate_id: mandate_id.into(),
            amount: money(amount),
            due_at: pb_time(due_at),
            bill_reference: bill.into(),
            request_id: request_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .notice
        .unwrap()
}

/// The notices of a mandate, as the caller may see them.
pub async fn list_notices(
    client: &mut DeductionClient,
    mandate_id: &str,
) -> Result<Vec<pb::Notice>, Status> {
    client
        .list_notices(pb::ListNoticesRequest {
            mandate_id: mandate_id.into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .map(|r| r.into_inner().notices)
}
