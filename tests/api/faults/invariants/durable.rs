//! §9.3: what a client was told is what the database holds after the kills, audited.

use super::*;

/// §9.3: everything a client was told succeeded is stored after the kills, with its audit
/// event; every stored deduction's events match its outcome.
pub(super) fn durable(stored: &Stored, records: &Records, report: &mut Report) {
    const I: &str = "I3 durable";
    let mut by_deduction: BTreeMap<&str, Vec<&AuditRow>> = BTreeMap::new();
    let mut by_request: BTreeMap<(&str, &str), Vec<&AuditRow>> = BTreeMap::new();
    for e in &stored.audit {
        if let Some(d) = &e.deduction_id {
            by_deduction.entry(d).or_default().push(e);
        }
        if let Some(r) = &e.request_id {
            by_request
                .entry((r, e.action.as_str()))
                .or_default()
                .push(e);
        }
    }
    let count = |events: Option<&Vec<&AuditRow>>, action: &str| {
        events.map_or(0, |events| {
            events.iter().filter(|e| e.action == action).count()
        })
    };
    let mut charge_counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in stored.charges.values() {
        *charge_counts.entry(&c.deduction_id).or_default() += 1;
    }
    let mut refund_counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, r) in &stored.refunds {
        *refund_counts.entry(&r.deduction_id).or_default() += 1;
    }
    let charges_of = |deduction: &str| charge_counts.get(deduction).copied().unwrap_or_default();
    let refunds_of = |deduction: &str| refund_counts.get(deduction).copied().unwrap_or_default();
    let created: BTreeSet<&str> = stored
        .audit
        .iter()
        .filter(|e| e.action == "MANDATE_CREATED")
        .filter_map(|e| e.mandate_id.as_deref())
        .collect();
    for (id, (_, _, d)) in &stored.deductions {
        let events = by_deduction.get(id.as_str());
        let chain = format!("mandate:{}", d.mandate_id);
        if events.is_some_and(|events| events.iter().any(|e| e.chain_id != chain)) {
            report.violation(
                I,
                format!("deduction {id} has events outside its mandate's chain"),
            );
        }
        let decided = (
            count(events, "DEDUCTION_APPROVED"),
            count(events, "DEDUCTION_DECLINED"),
        );
        let ended = (
            count(events, "DEDUCTION_SUCCEEDED"),
            count(events, "DEDUCTION_FAILED"),
        );
        let fits = match d.status {
            DeductionStatus::Declined => decided == (0, 1) && ended == (0, 0),
            DeductionStatus::Succeeded
            | DeductionStatus::Refunded
            | DeductionStatus::PartiallyRefunded => decided == (1, 0) && ended == (1, 0),
            DeductionStatus::Failed => decided == (1, 0) && ended == (0, 1),
            DeductionStatus::Processing | DeductionStatus::PendingConfirmation => {
                decided == (1, 0) && ended == (0, 0)
            }
        };
        let started = count(events, "CARD_CHARGE_STARTED");
        let refunds = count(events, "REFUND_RECORDED");
        if !fits || started != charges_of(id) || refunds != refunds_of(id) {
            report.violation(
                I,
                format!(
                    "deduction {id} is {} with {} card charges and {} refunds; its events: {:?}",
                    d.status.as_str(),
                    charges_of(id),
                    refunds_of(id),
                    events
                        .map(|events| events.iter().map(|e| e.action.as_str()).collect::<Vec<_>>())
                ),
            );
        }
    }
    let mut acknowledged = 0;
    for s in &records.deductions {
        for r in s.answers.iter().filter_map(Answer::ok) {
            let Some(answered) = &r.deduction else {
                continue;
            };
            acknowledged += 1;
            let Some((_, _, d)) = stored.deductions.get(&answered.deduction_id) else {
                report.violation(
                    I,
                    format!(
                        "deduction {} answered to {} is not stored",
                        answered.deduction_id, s.request_id
                    ),
                );
                continue;
            };
            let answered_status = pb::DeductionStatus::try_from(answered.status)
                .unwrap_or(pb::DeductionStatus::Unspecified);
            let now = d.status;
            let still_true = match answered_status {
                pb::DeductionStatus::Succeeded => paid(now),
                pb::DeductionStatus::Refunded | pb::DeductionStatus::PartiallyRefunded => {
                    matches!(
                        now,
                        DeductionStatus::Refunded | DeductionStatus::PartiallyRefunded
                    )
                }
                pb::DeductionStatus::Declined => now == DeductionStatus::Declined,
                pb::DeductionStatus::Failed => now == DeductionStatus::Failed,
                pb::DeductionStatus::Processing | pb::DeductionStatus::PendingConfirmation => {
                    paid(now) || now == DeductionStatus::Failed
                }
                pb::DeductionStatus::Unspecified => false,
            };
            if !still_true {
                report.violation(
                    I,
                    format!(
                        "deduction {} was answered {answered_status:?} and is now {}",
                        answered.deduction_id,
                        now.as_str()
                    ),
                );
            }
        }
    }
    for s in &records.refunds {
        if let Some(r) = s
            .answers
            .iter()
            .find_map(|a| a.ok().and_then(|r| r.refund.as_ref()))
        {
            acknowledged += 1;
            let events = by_request.get(&(s.request_id.as_str(), "REFUND_RECORDED"));
            let here = events.is_some_and(|events| {
                events.len() == 1
                    && events[0].deduction_id.as_deref() == Some(s.deduction_id.as_str())
            });
            if !here {
                report.violation(
                    I,
                    format!(
                        "refund {} (request {}) answered OK has {} REFUND_RECORDED events",
                        r.refund_id,
                        s.request_id,
                        events.map_or(0, Vec::len)
                    ),
                );
            }
        }
    }
    for s in &records.changes {
        let ok = s.answers.iter().filter_map(Answer::ok).count();
        let events = by_request.get(&(s.request_id.as_str(), s.action));
        let on_chain = events.map_or(0, |events| {
            events
                .iter()
                .filter(|e| e.mandate_id.as_deref() == Some(s.mandate_id.as_str()))
                .count()
        });
        if ok > 0 {
            acknowledged += 1;
        }
        // A refused change writes nothing; an answered one wrote its event once.
        let expected = usize::from(ok > 0);
        if (ok > 0 || !s.gave_up) && on_chain != expected {
            report.violation(
                I,
                format!(
                    "{} request {} on {}: {ok} OK answers, {on_chain} events",
                    s.action, s.request_id, s.mandate_id
                ),
            );
        }
    }
    for s in &records.mandates {
        let ids: BTreeSet<&str> = s
            .answers
            .iter()
            .filter_map(|a| a.ok().and_then(|r| r.mandate.as_ref()))
            .map(|m| m.mandate_id.as_str())
            .collect();
        if ids.len() > 1 {
            report.violation(
                I,
                format!("contract {} answered with mandates {ids:?}", s.contract_id),
            );
        }
        for id in ids {
            acknowledged += 1;
            let created = created.contains(id);
            let ours = stored
                .mandates
                .get(id)
                .is_some_and(|m| m.merchant_id.as_str() == s.merchant);
            if !ours || !created {
                report.violation(
                    I,
                    format!(
                        "mandate {id} answered to contract {} is not stored with its event",
                        s.contract_id
                    ),
                );
            }
        }
    }
    for s in &records.credits {
        if s.answers.iter().any(|a| a.ok().is_some()) {
            acknowledged += 1;
            let events = by_request
                .get(&(s.request_id.as_str(), "WALLET_CREDITED"))
                .map_or(0, Vec::len);
            if events != 1 {
                report.violation(
                    I,
                    format!(
                        "credit {} answered OK has {events} WALLET_CREDITED events",
                        s.request_id
                    ),
                );
            }
        }
    }
    report.checked.push(format!(
        "I3 durable: {acknowledged} acknowledged writes stored with their audit events; {} deductions' events match their outcome",
        stored.deductions.len()
    ));
}
