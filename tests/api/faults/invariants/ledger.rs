//! §9.4: the wallet ledger, double entry and conserved.

use super::*;

/// §9.4: double entry, balances that sum to zero, no negative wallet, and every account equal
/// to the money the deductions, refunds and credits moved through it.
pub(super) fn ledger(stored: &Stored, records: &Records, report: &mut Report) {
    const I: &str = "I4 ledger";
    let mut movement_sums: BTreeMap<&str, (i64, usize)> = BTreeMap::new();
    let mut account_sums: BTreeMap<&str, i64> = BTreeMap::new();
    let mut credited: BTreeMap<&str, (i64, &str)> = BTreeMap::new();
    for (movement, account, amount) in &stored.entries {
        let m = movement_sums.entry(movement).or_default();
        m.0 += amount;
        m.1 += 1;
        *account_sums.entry(account).or_default() += amount;
        if let Some((kind, Some(request))) = stored.movements.get(movement)
            && kind == "WALLET_CREDIT"
            && *amount > 0
        {
            credited.insert(request, (*amount, account));
        }
    }
    for (movement, (kind, _)) in &stored.movements {
        let (sum, n) = movement_sums
            .get(movement.as_str())
            .copied()
            .unwrap_or_default();
        if sum != 0 || n != 2 {
            report.violation(
                I,
                format!("movement {movement} ({kind}) has {n} entries summing to {sum}"),
            );
        }
    }
    let mut total = 0i64;
    for (account, (kind, balance)) in &stored.accounts {
        total += balance;
        let entries = account_sums
            .get(account.as_str())
            .copied()
            .unwrap_or_default();
        if *balance != entries {
            report.violation(
                I,
                format!("account {account} holds {balance}; its entries add up to {entries}"),
            );
        }
        if kind == "WALLET" && *balance < 0 {
            report.violation(I, format!("wallet {account} is negative: {balance}"));
        }
    }
    if total != 0 {
        report.violation(I, format!("all balances add up to {total}, not zero"));
    }
    // What each account should hold, from the deductions, refunds and credits.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut add = |account: String, amount: i64| *expected.entry(account).or_default() += amount;
    let mut refunded: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, _, refund) in &stored.refunds {
        *refunded.entry(&refund.deduction_id).or_default() += refund.amount.minor();
    }
    let mut deduction_moves = 0;
    for (id, (merchant, _, d)) in &stored.deductions {
        if !paid(d.status) {
            continue;
        }
        deduction_moves += 1;
        let kept =
            d.request.amount.minor() - refunded.get(id.as_str()).copied().unwrap_or_default();
        add(format!("merchant:{merchant}"), kept);
        let source = match paid_by(d) {
            Some(("WALLET", _)) => format!("wallet:{}:CNY", d.payer_id),
            // Card money enters through the merchant's card-clearing sub-account of the
            // deduction.
            _ => Account::card_clearing(&d.merchant_id, Currency::Cny, &d.id).id,
        };
        add(source, -kept);
    }
    let sent_credits: BTreeMap<&str, &crate::faults::workload::CreditSent> = records
        .credits
        .iter()
        .map(|c| (c.request_id.as_str(), c))
        .collect();
    for (request, (amount, account)) in &credited {
        add((*account).to_owned(), *amount);
        // A payer's top-ups come from its own clearing account.
        let payer = account
            .strip_prefix("wallet:")
            .and_then(|rest| rest.strip_suffix(":CNY"))
            .and_then(|payer| PayerId::parse("payer_id", payer).ok());
        match payer {
            Some(payer) => add(Account::clearing(&payer, Currency::Cny).id, -amount),
            None => report.violation(I, format!("credit {request} went to {account}")),
        }
        match sent_credits.get(request) {
            None => report.violation(I, format!("credit {request} that no client sent")),
            Some(c)
                if c.amount_minor != *amount || format!("wallet:{}:CNY", c.payer) != *account =>
            {
                report.violation(
                    I,
                    format!(
                        "credit {request}: {amount} to {account}, sent {} to {}",
                        c.amount_minor, c.payer
                    ),
                );
            }
            Some(_) => {}
        }
    }
    for c in &records.credits {
        if c.answers.iter().any(|a| a.ok().is_some())
            && !credited.contains_key(c.request_id.as_str())
        {
            report.violation(
                I,
                format!("credit {} answered OK is not in the ledger", c.request_id),
            );
        }
    }
    let mut actual: BTreeMap<String, i64> = BTreeMap::new();
    for (account, (_, balance)) in &stored.accounts {
        // A merchant's sub-accounts are one settlement balance.
        let key = match account.strip_prefix("merchant:") {
            Some(rest) => format!("merchant:{}", rest.split(':').next().unwrap_or_default()),
            None => account.clone(),
        };
        *actual.entry(key).or_default() += balance;
    }
    for key in expected
        .keys()
        .chain(actual.keys())
        .collect::<BTreeSet<_>>()
    {
        let want = expected.get(key).copied().unwrap_or_default();
        let have = actual.get(key).copied().unwrap_or_default();
        if want != have {
            report.violation(
                I,
                format!("{key} holds {have}; the deductions, refunds and credits make {want}"),
            );
        }
    }
    let kinds = |kind: &str| stored.movements.values().filter(|(k, _)| k == kind).count();
    if kinds("DEDUCTION") != deduction_moves || kinds("REFUND") != stored.refunds.len() {
        report.violation(I, format!(
            "{} DEDUCTION and {} REFUND movements for {deduction_moves} paid deductions and {} refunds",
            kinds("DEDUCTION"), kinds("REFUND"), stored.refunds.len()
        ));
    }
    report.checked.push(format!(
        "I4 ledger: {} movements of two entries each, {} accounts summing to zero, none negative, each equal to what moved through it",
        stored.movements.len(),
        stored.accounts.len()
    ));
}
