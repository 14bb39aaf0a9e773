//! §9.1: limits, checked on the stored deductions and usage rows.

use super::*;

/// §9.1: approved debits within every limit of every mandate, and the usage rows equal to the
/// debits they count.
pub(super) fn limits(stored: &Stored, plans: &[MandatePlan], report: &mut Report) {
    const I: &str = "I1 limits";
    let mut expected: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    let mut counted = 0;
    for (id, (_, _, d)) in &stored.deductions {
        let mandate_id = d.mandate_id.to_string();
        let Some(mandate) = stored.mandates.get(&mandate_id) else {
            report.violation(
                I,
                format!("deduction {id} names mandate {mandate_id}, which is not stored"),
            );
            continue;
        };
        let exempt = d.request.approval_id.is_some();
        if counts_against_limits(d.status) && !exempt {
            counted += 1;
            let mut keys = vec!["total".to_owned()];
            keys.extend(period_key(mandate, d.created_at));
            let held: BTreeSet<&String> = d.usage_keys.iter().collect();
            if held != keys.iter().collect() {
                report.violation(I, format!(
                    "deduction {id} ({}) is counted under {:?}, its period and lifetime are {keys:?}",
                    d.status.as_str(), d.usage_keys
                ));
            }
            for key in &d.usage_keys {
                let e = expected
                    .entry((mandate_id.clone(), key.clone()))
                    .or_default();
                e.0 += d.request.amount.minor();
                e.1 += 1;
            }
        } else if !d.usage_keys.is_empty() {
            report.violation(
                I,
                format!(
                    "deduction {id} is {} and still holds usage {:?}",
                    d.status.as_str(),
                    d.usage_keys
                ),
            );
        }
    }
    let keys: BTreeSet<&(String, String)> = expected.keys().chain(stored.usage.keys()).collect();
    for key in &keys {
        let want = expected.get(*key).copied().unwrap_or_default();
        let have = stored.usage.get(*key).copied().unwrap_or_default();
        if want != have {
            report.violation(I, format!(
                "usage row {key:?} holds (amount, count) {have:?}; its deductions add up to {want:?}"
            ));
        }
    }
    for ((mandate_id, key), (amount, count)) in &expected {
        let Some(mandate) = stored.mandates.get(mandate_id) else {
            continue;
        };
        let terms = &mandate.terms;
        let (amount_limit, count_limit) = if key == "total" {
            (
                terms.total_amount_limit.map(|m| m.minor()),
                terms.total_debit_limit,
            )
        } else {
            let period = terms.period_limits.as_ref();
            (
                period.and_then(|p| p.amount_limit).map(|m| m.minor()),
                period.and_then(|p| p.debit_limit),
            )
        };
        if amount_limit.is_some_and(|limit| *amount > limit)
            || count_limit.is_some_and(|limit| *count > i64::from(limit))
        {
            report.violation(I, format!(
                "mandate {mandate_id} {key}: {amount} minor in {count} debits approved, over the limits {amount_limit:?} / {count_limit:?}"
            ));
        }
    }
    // The limits in force are the ones the merchant asked for: nothing loosened them.
    for plan in plans {
        let Some(mandate) = stored.mandates.get(&plan.mandate_id) else {
            report.violation(
                I,
                format!("confirmed mandate {} is not stored", plan.mandate_id),
            );
            continue;
        };
        let terms = &mandate.terms;
        let period = terms.period_limits.as_ref();
        let stored_limits = (
            period.and_then(|p| p.amount_limit).map(|m| m.minor()),
            period.and_then(|p| p.debit_limit),
            terms.total_amount_limit.map(|m| m.minor()),
            terms.total_debit_limit,
        );
        let asked = (
            Some(plan.period_amount_minor),
            Some(plan.period_count),
            plan.total_amount_minor,
            plan.total_count,
        );
        if stored_limits != asked {
            report.violation(
                I,
                format!(
                    "mandate {} has limits {stored_limits:?}, created with {asked:?}",
                    plan.mandate_id
                ),
            );
        }
    }
    report.checked.push(format!(
        "I1 limits: {counted} approved debits on {} mandates; {} usage rows equal their debits and within period and lifetime limits",
        stored.mandates.len(),
        keys.len()
    ));
}
