//! §9.2: once and only once — per request id, per deduction, per bank charge and refund.

use super::*;

/// §9.2: one deduction per request id (and the same one in every answer), at most one
/// successful charge per deduction, every bank charge ours, ours and the bank's agreeing on
/// every charge and refund.
pub(super) fn once(
    stored: &Stored,
    bank: &[bank_pb::SimulatedCharge],
    records: &Records,
    report: &mut Report,
) {
    const I: &str = "I2 once";
    let mut by_request: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for (id, (merchant, request, _)) in &stored.deductions {
        by_request.entry((merchant, request)).or_default().push(id);
    }
    for ((merchant, request), ids) in &by_request {
        if ids.len() > 1 {
            report.violation(
                I,
                format!(
                    "request {merchant}/{request} made {} deductions: {ids:?}",
                    ids.len()
                ),
            );
        }
    }
    let sent: BTreeSet<(&str, &str)> = records
        .deductions
        .iter()
        .map(|s| (s.merchant, s.request_id.as_str()))
        .collect();
    for key in by_request.keys() {
        if !sent.contains(key) {
            report.violation(
                I,
                format!("deduction for request {key:?} that no client sent"),
            );
        }
    }
    let mut resent = 0;
    for s in &records.deductions {
        let stored_ids = by_request.get(&(s.merchant, s.request_id.as_str()));
        let oks: Vec<&pb::CreateDeductionResponse> =
            s.answers.iter().filter_map(Answer::ok).collect();
        if s.answers.len() > 1 {
            resent += 1;
        }
        let ids: BTreeSet<&str> = oks
            .iter()
            .filter_map(|r| r.deduction.as_ref())
            .map(|d| d.deduction_id.as_str())
            .collect();
        if ids.len() > 1 {
            report.violation(
                I,
                format!(
                    "request {} was answered with deductions {ids:?}",
                    s.request_id
                ),
            );
        }
        let fresh = oks.iter().filter(|r| !r.replayed).count();
        if fresh > 1 {
            report.violation(
                I,
                format!("request {} was answered as new {fresh} times", s.request_id),
            );
        }
        for r in &oks {
            let Some(d) = &r.deduction else {
                report.violation(
                    I,
                    format!("request {} answered without a deduction", s.request_id),
                );
                continue;
            };
            let amount = d.amount.as_ref().map(|m| m.amount.clone());
            if d.request_id != s.request_id
                || d.mandate_id != s.mandate_id
                || amount != crate::faults::workload::cny(s.amount_minor).map(|m| m.amount)
            {
                report.violation(
                    I,
                    format!(
                        "request {} was answered with another request's deduction {d:?}",
                        s.request_id
                    ),
                );
            }
        }
        if let Some(id) = ids.iter().next()
            && stored_ids.is_none_or(|stored| stored.as_slice() != [*id])
        {
            report.violation(
                I,
                format!(
                    "request {} was answered with {id}; the database holds {stored_ids:?}",
                    s.request_id
                ),
            );
        }
    }

    // Charges: ours and the bank's.
    let bank_by_id: BTreeMap<&str, &bank_pb::SimulatedCharge> =
        bank.iter().map(|c| (c.charge_id.as_str(), c)).collect();
    for c in bank {
        match stored.charges.get(&c.charge_id) {
            None => report.violation(
                I,
                format!(
                    "the bank holds charge {} that no deduction recorded",
                    c.charge_id
                ),
            ),
            Some(ours) => {
                if ours.charge.amount.minor() != c.amount_minor
                    || ours.charge.card_token != c.card_token
                {
                    report.violation(
                        I,
                        format!(
                            "charge {}: we recorded {} on {}, the bank took {} on {}",
                            c.charge_id,
                            ours.charge.amount.minor(),
                            ours.charge.card_token,
                            c.amount_minor,
                            c.card_token
                        ),
                    );
                }
            }
        }
    }
    let mut succeeded: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, ours) in &stored.charges {
        if ours.deduction_id != ours.charge.deduction_id {
            report.violation(
                I,
                format!("charge {id} row and document name different deductions"),
            );
        }
        let at_bank = bank_by_id.get(id.as_str());
        let agrees = match (ours.status.as_str(), at_bank) {
            ("SUCCEEDED", Some(c)) => c.status() == bank_pb::ChargeStatus::Succeeded,
            ("DECLINED", None) => ours.decline_code.as_deref() == Some("CHARGE_NOT_FOUND"),
            ("DECLINED", Some(c)) => {
                c.status() == bank_pb::ChargeStatus::Declined
                    && ours.decline_code.as_deref() == Some(c.decline_code.as_str())
            }
            _ => false,
        };
        if !agrees {
            report.violation(
                I,
                format!(
                    "charge {id} is {} ({:?}) here and {:?} at the bank",
                    ours.status,
                    ours.decline_code,
                    at_bank.map(|c| (c.status(), c.decline_code.as_str()))
                ),
            );
        }
        if ours.status == "SUCCEEDED" {
            succeeded.entry(&ours.deduction_id).or_default().push(id);
        }
    }
    for (deduction, charges) in &succeeded {
        if charges.len() > 1 {
            report.violation(
                I,
                format!(
                    "deduction {deduction} was charged {} times: {charges:?}",
                    charges.len()
                ),
            );
        }
    }
    // A deduction and its charges tell one story; refunds too.
    let mut refunded: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, _, refund) in &stored.refunds {
        *refunded.entry(&refund.deduction_id).or_default() += refund.amount.minor();
    }
    for (id, (_, _, d)) in &stored.deductions {
        let charged = succeeded
            .get(id.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let by = paid_by(d);
        match (paid(d.status), by) {
            (true, Some(("BANK_CARD", charge))) => {
                if charged != [charge] {
                    report.violation(I, format!("deduction {id} paid by card charge {charge}; succeeded charges {charged:?}"));
                }
                let at_bank = bank_by_id.get(charge).map(|c| c.refunded_minor);
                if at_bank != Some(d.refunded_minor) {
                    report.violation(
                        I,
                        format!(
                            "deduction {id}: {} minor refunded here, {at_bank:?} at the bank",
                            d.refunded_minor
                        ),
                    );
                }
            }
            (true, Some(("WALLET", _))) => {
                if !charged.is_empty() {
                    report.violation(
                        I,
                        format!(
                            "deduction {id} paid by the wallet and by card charges {charged:?}"
                        ),
                    );
                }
            }
            (false, None) => {
                if !charged.is_empty() {
                    report.violation(
                        I,
                        format!(
                            "deduction {id} is {} but card charges {charged:?} succeeded",
                            d.status.as_str()
                        ),
                    );
                }
            }
            (paid, by) => report.violation(
                I,
                format!(
                    "deduction {id} is {} (paid: {paid}) with paying source {by:?}",
                    d.status.as_str()
                ),
            ),
        }
        let refunds = refunded.get(id.as_str()).copied().unwrap_or_default();
        let amount = d.request.amount.minor();
        let status_fits = match d.status {
            DeductionStatus::Refunded => refunds == amount,
            DeductionStatus::PartiallyRefunded => refunds > 0 && refunds < amount,
            DeductionStatus::Succeeded
            | DeductionStatus::Processing
            | DeductionStatus::PendingConfirmation
            | DeductionStatus::Declined
            | DeductionStatus::Failed => refunds == 0,
        };
        if refunds != d.refunded_minor || refunds > amount || !status_fits {
            report.violation(I, format!(
                "deduction {id} ({}, {amount} minor) records {} refunded; its refunds add up to {refunds}",
                d.status.as_str(), d.refunded_minor
            ));
        }
    }
    // Refund request ids.
    let mut refund_rows: BTreeMap<(&str, &str), Vec<&Refund>> = BTreeMap::new();
    for (merchant, request, refund) in &stored.refunds {
        refund_rows
            .entry((merchant, request))
            .or_default()
            .push(refund);
    }
    for (key, rows) in &refund_rows {
        if rows.len() > 1 {
            report.violation(
                I,
                format!("refund request {key:?} made {} refunds", rows.len()),
            );
        }
    }
    for s in &records.refunds {
        let rows = refund_rows.get(&(s.merchant, s.request_id.as_str()));
        let oks: Vec<&pb::RefundDeductionResponse> =
            s.answers.iter().filter_map(Answer::ok).collect();
        let ids: BTreeSet<&str> = oks
            .iter()
            .filter_map(|r| r.refund.as_ref())
            .map(|r| r.refund_id.as_str())
            .collect();
        let refused = s.answers.len() - oks.len();
        if ids.len() > 1 || (!oks.is_empty() && refused > 0) {
            report.violation(
                I,
                format!(
                    "refund request {} (to {}) was answered differently: {:?}",
                    s.request_id,
                    s.deduction_id,
                    s.answers
                        .iter()
                        .map(|a| match a {
                            Answer::Ok(r) =>
                                format!("OK {:?}", r.refund.as_ref().map(|r| &r.refund_id)),
                            Answer::Refused(code, message) => format!("{code:?} {message}"),
                        })
                        .collect::<Vec<_>>()
                ),
            );
        }
        if oks.is_empty() && !s.gave_up && rows.is_some() {
            report.violation(
                I,
                format!("refund request {} was refused but recorded", s.request_id),
            );
        }
        if let Some(r) = oks.iter().find_map(|r| r.refund.as_ref()) {
            let matches = rows.is_some_and(|rows| {
                rows.iter().any(|row| {
                    row.id == r.refund_id
                        && row.deduction_id == s.deduction_id
                        && row.amount.minor() == s.amount_minor
                })
            });
            if !matches {
                report.violation(
                    I,
                    format!(
                        "refund request {} was answered with {}; the database holds {:?}",
                        s.request_id, r.refund_id, rows
                    ),
                );
            }
        }
    }
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, d) in stored.deductions.values() {
        let outcome = match &d.reason_code {
            Some(reason) => format!("{} {reason}", d.status.as_str()),
            None => d.status.as_str().to_owned(),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    report
        .checked
        .push(format!("deductions by outcome: {outcomes:?}"));
    report.checked.push(format!(
        "I2 once: {} request ids ({resent} sent twice) → one deduction each; {} card charges here, {} at the bank, agreeing on outcome, amount and refunds; {} refund request ids",
        records.deductions.len(),
        stored.charges.len(),
        bank.len(),
        records.refunds.len()
    ));
}
