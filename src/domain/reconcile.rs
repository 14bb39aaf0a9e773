//! Bank reconciliation (DESIGN §6b): the bank's daily statement parsed, matched against our
//! card charges, and the discrepancies found — long (长款), short (短款), amount mismatch,
//! duplicate line — with the resolutions each kind allows.
//!
//! A statement is the bank's whole UTC day, as CSV with the header
//! `charge_id,amount,currency,status,time`: `amount` a decimal string in the currency's
//! units ("12.30"), `status` `SUCCEEDED`, `DECLINED` or `PROCESSING`, `time` RFC 3339.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use super::FieldViolation;
use super::deduction::ChargeStatus;
use super::ids::MerchantId;
use super::money::{Currency, Money};

/// The header every statement starts with.
pub const STATEMENT_HEADER: &str = "charge_id,amount,currency,status,time";
/// The most lines one statement may hold.
pub const MAX_STATEMENT_LINES: usize = 50_000;

/// What the bank says it did with a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BankStatus {
    /// The bank took the money.
    Succeeded,
    Declined,
    /// Not settled at the bank yet: the line says the charge exists, not that it was paid.
    Processing,
}

impl BankStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "SUCCEEDED",
            Self::Declined => "DECLINED",
            Self::Processing => "PROCESSING",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Succeeded, Self::Declined, Self::Processing]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One line of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementLine {
    /// 1 for the first line after the header.
    pub number: usize,
    pub charge_id: String,
    pub amount: Money,
    pub status: BankStatus,
    pub at: Timestamp,
}

/// A parsed statement of one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub day: Date,
    pub lines: Vec<StatementLine>,
}

fn line_error(number: usize, what: impl std::fmt::Display) -> FieldViolation {
    FieldViolation::new("csv", format!("line {number}: {what}"))
}

impl Statement {
    /// Parses the CSV; the first bad line is named.
    pub fn parse(day: Date, csv: &str) -> Result<Self, FieldViolation> {
        let mut rows = csv.lines();
        let header = rows.next().unwrap_or("").trim_end_matches('\r');
        if header != STATEMENT_HEADER {
            return Err(FieldViolation::new(
                "csv",
                format!("must start with the header {STATEMENT_HEADER}"),
            ));
        }
        let mut lines = vec![];
        for (index, row) in rows.enumerate() {
            let number = index + 1;
            let row = row.trim_end_matches('\r');
            if row.is_empty() {
                continue;
            }
            if lines.len() == MAX_STATEMENT_LINES {
                return Err(FieldViolation::new(
                    "csv",
                    format!("a statement holds at most {MAX_STATEMENT_LINES} lines"),
                ));
            }
            let fields: Vec<&str> = row.split(',').collect();
            let [charge_id, amount, currency, status, time] = fields[..] else {
                return Err(line_error(number, "must have 5 fields"));
            };
            super::text::check_identifier("charge_id", charge_id)
                .map_err(|v| line_error(number, v.description))?;
            let currency =
                Currency::parse(currency).ok_or_else(|| line_error(number, "unknown currency"))?;
            let amount = Money::parse(currency, amount)
                .map_err(|e| line_error(number, format!("amount {e}")))?;
            let status = BankStatus::parse(status).ok_or_else(|| {
                line_error(number, "status must be SUCCEEDED, DECLINED or PROCESSING")
            })?;
            let at = time
                .parse::<Timestamp>()
                .map_err(|_| line_error(number, "time must be an RFC 3339 time"))?;
            lines.push(StatementLine {
                number,
                charge_id: charge_id.to_owned(),
                amount,
                status,
                at,
            });
        }
        Ok(Self { day, lines })
    }
}

/// A card charge as we recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OurCharge {
    pub charge_id: String,
    pub deduction_id: String,
    pub merchant_id: MerchantId,
    pub amount: Money,
    pub status: ChargeStatus,
}

/// What kind of disagreement a discrepancy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DiscrepancyKind {
    /// 长款: the bank collected a charge we recorded as declined, unknown, or not at all.
    Long,
    /// 短款: we recorded success; the bank's statement of that day has no such charge.
    Short,
    /// The bank collected a different amount (or currency) than we recorded.
    AmountMismatch,
    /// The statement lists the same charge more than once.
    DuplicateLine,
}

impl DiscrepancyKind {
    pub const ALL: [Self; 4] = [
        Self::Long,
        Self::Short,
        Self::AmountMismatch,
        Self::DuplicateLine,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Long => "LONG",
            Self::Short => "SHORT",
            Self::AmountMismatch => "AMOUNT_MISMATCH",
            Self::DuplicateLine => "DUPLICATE_LINE",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// A discrepancy as found: one per charge and kind, whichever statement finds it first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: DiscrepancyKind,
    pub charge_id: String,
    pub merchant_id: Option<MerchantId>,
    pub deduction_id: Option<String>,
    /// Our charge's status (`None`: we have no such charge).
    pub our_status: Option<String>,
    pub our_amount: Option<Money>,
    /// What the statement says (`None` for a short: it says nothing).
    pub bank_amount: Option<Money>,
    pub bank_status: Option<BankStatus>,
    /// How many lines name the charge.
    pub lines: usize,
}

/// Matches a statement against our charges: `ours` are our charges the statement names, and
/// `succeeded_that_day` every charge we recorded SUCCEEDED on the statement's day.
pub fn reconcile(
    statement: &Statement,
    ours: &BTreeMap<String, OurCharge>,
    succeeded_that_day: &[OurCharge],
) -> Vec<Finding> {
    let mut by_charge: BTreeMap<&str, Vec<&StatementLine>> = BTreeMap::new();
    for line in &statement.lines {
        by_charge.entry(&line.charge_id).or_default().push(line);
    }
    let mut findings = vec![];
    for (charge_id, lines) in &by_charge {
        let ours = ours.get(*charge_id);
        // What the bank did: collected if any line says so (the line that says so counts).
        let line = lines
            .iter()
            .find(|l| l.status == BankStatus::Succeeded)
            .unwrap_or(&lines[0]);
        let finding = |kind| Finding {
            kind,
            charge_id: (*charge_id).to_owned(),
            merchant_id: ours.map(|c| c.merchant_id.clone()),
            deduction_id: ours.map(|c| c.deduction_id.clone()),
            our_status: ours.map(|c| c.status.as_str().to_owned()),
            our_amount: ours.map(|c| c.amount),
            bank_amount: Some(line.amount),
            bank_status: Some(line.status),
            lines: lines.len(),
        };
        if lines.len() > 1 {
            findings.push(finding(DiscrepancyKind::DuplicateLine));
        }
        if line.status != BankStatus::Succeeded {
            continue;
        }
        match ours {
            Some(c) if c.status == ChargeStatus::Succeeded => {
                if c.amount != line.amount {
                    findings.push(finding(DiscrepancyKind::AmountMismatch));
                }
            }
            // Declined, unknown, in flight, or never recorded: the bank has money we do not.
            Some(_) | None => findings.push(finding(DiscrepancyKind::Long)),
        }
    }
    let named: BTreeSet<&str> = by_charge.keys().copied().collect();
    for c in succeeded_that_day {
        if !named.contains(c.charge_id.as_str()) {
            findings.push(Finding {
                kind: DiscrepancyKind::Short,
                charge_id: c.charge_id.clone(),
                merchant_id: Some(c.merchant_id.clone()),
                deduction_id: Some(c.deduction_id.clone()),
                our_status: Some(c.status.as_str().to_owned()),
                our_amount: Some(c.amount),
                bank_amount: None,
                bank_status: None,
                lines: 0,
            });
        }
    }
    findings
}

/// How an operator resolves a discrepancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResolutionAction {
    /// A long on a charge we hold as unknown: the bank's collection stands, recorded the way a
    /// late success from the bank is (the deduction SUCCEEDED, card clearing → merchant).
    AcceptCollected,
    /// A long: the bank returns the money to the payer's card; a charge we held as unknown is
    /// settled as refused (the deduction FAILED, its reservation released).
    RefundPayer,
    /// A short: the bank will not pay; what the card-clearing account expected from it is
    /// written off to the merchant's reconciliation-loss account.
    WriteOff,
    /// A short: ask the bank again. Resolved when the bank says it collected the charge;
    /// otherwise the answer is recorded and the discrepancy stays open.
    Requery,
    /// An amount mismatch or a duplicate line, looked into outside the service: recorded with
    /// the operator's note; no money moves.
    Acknowledge,
}

impl ResolutionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AcceptCollected => "ACCEPT_COLLECTED",
            Self::RefundPayer => "REFUND_PAYER",
            Self::WriteOff => "WRITE_OFF",
            Self::Requery => "REQUERY",
            Self::Acknowledge => "ACKNOWLEDGE",
        }
    }

    /// Whether this action may resolve a discrepancy of `kind`.
    pub fn applies_to(self, kind: DiscrepancyKind) -> bool {
        match self {
            Self::AcceptCollected | Self::RefundPayer => kind == DiscrepancyKind::Long,
            Self::WriteOff | Self::Requery => kind == DiscrepancyKind::Short,
            Self::Acknowledge => matches!(
                kind,
                DiscrepancyKind::AmountMismatch | DiscrepancyKind::DuplicateLine
            ),
        }
    }
}

/// A discrepancy as stored: what was found, in which statement, and how it was resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discrepancy {
    pub id: String,
    pub finding: Finding,
    pub statement_day: Date,
    pub import_id: String,
    pub created_at: Timestamp,
}

/// One step an operator took on a discrepancy; never changed once written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub id: String,
    pub discrepancy_id: String,
    pub action: ResolutionAction,
    /// Whether this step settles the discrepancy (a re-query the bank did not confirm does
    /// not).
    pub settles: bool,
    /// What happened: `COLLECTED`, `REFUNDED`, `WRITTEN_OFF`, `CONFIRMED_BY_BANK`,
    /// `BANK_DECLINED`, `BANK_NOT_FOUND`, `BANK_UNKNOWN`, `ACKNOWLEDGED`.
    pub outcome: String,
    /// The ledger movement it made, if any.
    pub movement_id: Option<String>,
    pub note: String,
    pub actor_subject: String,
    pub request_id: String,
    pub created_at: Timestamp,
}

/// An imported statement: what it held and found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementImport {
    pub id: String,
    pub day: Date,
    /// SHA-256 of the statement's text: the same file imports once.
    pub digest: String,
    pub lines: usize,
    /// Discrepancies the statement shows (new or found before).
    pub found: usize,
    /// Of those, the ones no earlier statement had found.
    pub new: usize,
    pub actor_subject: String,
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cny(minor: i64) -> Money {
        Money::from_minor(Currency::Cny, minor).unwrap()
    }

    fn ours(id: &str, minor: i64, status: ChargeStatus) -> OurCharge {
        OurCharge {
            charge_id: id.into(),
            deduction_id: format!("d-{id}"),
            merchant_id: MerchantId::parse("m", "m-1").unwrap(),
            amount: cny(minor),
            status,
        }
    }

    fn statement(csv_lines: &[&str]) -> Statement {
        let csv = format!("{STATEMENT_HEADER}\n{}\n", csv_lines.join("\n"));
        Statement::parse("2026-03-01".parse().unwrap(), &csv).unwrap()
    }

    #[test]
    fn each_kind_is_found_once_and_agreement_is_not_a_finding() {
        let t = "2026-03-01T10:00:00Z";
        let s = statement(&[
            &format!("ok,1.00,CNY,SUCCEEDED,{t}"),
            &format!("declined,2.00,CNY,DECLINED,{t}"),
            &format!("long,3.00,CNY,SUCCEEDED,{t}"),
            &format!("stranger,4.00,CNY,SUCCEEDED,{t}"),
            &format!("off,5.01,CNY,SUCCEEDED,{t}"),
            &format!("dup,6.00,CNY,SUCCEEDED,{t}"),
            &format!("dup,6.00,CNY,SUCCEEDED,{t}"),
        ]);
        let mine = [
            ours("ok", 100, ChargeStatus::Succeeded),
            ours("declined", 200, ChargeStatus::Declined),
            ours("long", 300, ChargeStatus::Unknown),
            ours("off", 500, ChargeStatus::Succeeded),
            ours("dup", 600, ChargeStatus::Succeeded),
        ];
        let by_id = mine
            .iter()
            .map(|c| (c.charge_id.clone(), c.clone()))
            .collect();
        let succeeded = [
            mine[0].clone(),
            mine[3].clone(),
            mine[4].clone(),
            ours("missing", 700, ChargeStatus::Succeeded),
        ];
        let findings = reconcile(&s, &by_id, &succeeded);
        let mut found: Vec<(DiscrepancyKind, &str)> = findings
            .iter()
            .map(|f| (f.kind, f.charge_id.as_str()))
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                (DiscrepancyKind::Long, "long"),
                (DiscrepancyKind::Long, "stranger"),
                (DiscrepancyKind::Short, "missing"),
                (DiscrepancyKind::AmountMismatch, "off"),
                (DiscrepancyKind::DuplicateLine, "dup"),
            ]
        );
    }

    #[test]
    fn malformed_statements_name_the_line() {
        let day = "2026-03-01".parse().unwrap();
        assert!(Statement::parse(day, "charge_id,amount\n").is_err());
        let bad = format!("{STATEMENT_HEADER}\nc1,1.001,CNY,SUCCEEDED,2026-03-01T00:00:00Z\n");
        let err = Statement::parse(day, &bad).unwrap_err();
        assert!(err.description.starts_with("line 1:"), "{err:?}");
        let bad = format!("{STATEMENT_HEADER}\nc1,1.00,CNY,PAID,2026-03-01T00:00:00Z\n");
        assert!(Statement::parse(day, &bad).is_err());
    }

    #[test]
    fn actions_fit_their_kinds() {
        use DiscrepancyKind as K;
        use ResolutionAction as A;
        assert!(A::AcceptCollected.applies_to(K::Long));
        assert!(!A::AcceptCollected.applies_to(K::Short));
        assert!(A::WriteOff.applies_to(K::Short));
        assert!(!A::WriteOff.applies_to(K::Long));
        assert!(A::Acknowledge.applies_to(K::DuplicateLine));
        assert!(!A::Acknowledge.applies_to(K::Long));
    }
}
