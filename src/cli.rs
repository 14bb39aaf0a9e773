//! The offline commands an operator runs against a database URL: `settle` (a business day's
//! settlement as CSV) and `reconcile` (import a bank statement, print its discrepancies). Both
//! go through the same service code as the RPCs, acting as an operator named `cli`.

use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::config::{ReconcileArgs, SettleArgs};
use crate::domain::actor::{Actor, Role};
use crate::domain::ids::MerchantId;
use crate::domain::money::Money;
use crate::domain::settlement::{DayRange, SettlementRow, Tally, parse_day};
use crate::service::{
    DeductionService, DeductionSettings, MandateService, Settings, SettlementService,
};
use crate::storage::settlement::DiscrepancyQuery;
use crate::storage::{self};

/// The columns `withholding settle` writes.
pub const SETTLE_HEADER: &str = "merchant_id,business_day,source,currency,collected_count,\
collected_amount,refunded_count,refunded_amount,pending_count,pending_amount,failed_count,\
failed_amount,net_amount";
/// The columns of the discrepancies `withholding reconcile` writes after its summary line.
pub const DISCREPANCY_HEADER: &str = "discrepancy_id,kind,charge_id,merchant_id,deduction_id,our_status,our_amount,bank_status,\
bank_amount,lines,status";
/// The most discrepancies `reconcile` prints (the rest are listed over gRPC).
const MAX_PRINTED: u32 = 10_000;

async fn service(url: &str) -> Result<SettlementService, String> {
    let db = storage::open(url).await.map_err(|e| e.to_string())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mandates = MandateService::new(db.mandates.clone(), clock.clone(), Settings::default());
    let deductions = DeductionService::new(
        db.clone(),
        mandates.clone(),
        clock.clone(),
        DeductionSettings::default(),
        None,
    );
    Ok(SettlementService::new(db, mandates, deductions, clock))
}

fn operator() -> Actor {
    Actor {
        role: Role::Operator,
        subject: "cli".to_owned(),
        merchant_id: None,
    }
}

fn tally(row: &SettlementRow, t: &Tally) -> String {
    format!(
        "{},{}",
        t.count,
        Money::minor_text(row.currency, t.amount_minor)
    )
}

/// One CSV line of a settlement row.
pub fn settle_line(row: &SettlementRow) -> Result<String, String> {
    let net = row.net_minor().map_err(|e| e.to_string())?;
    Ok(format!(
        "{},{},{},{},{},{},{},{},{}",
        row.merchant_id,
        row.day,
        row.source.as_str(),
        row.currency.code(),
        tally(row, &row.collected),
        tally(row, &row.refunded),
        tally(row, &row.pending),
        tally(row, &row.failed),
        Money::minor_text(row.currency, net),
    ))
}

/// `withholding settle`: the business day's rows as CSV on stdout.
pub async fn settle(args: &SettleArgs) -> Result<(), String> {
    let day = parse_day("--date", &args.date).map_err(|e| e.to_string())?;
    let merchant = args
        .merchant
        .as_deref()
        .map(|m| MerchantId::parse("--merchant", m))
        .transpose()
        .map_err(|e| e.to_string())?;
    let range = DayRange::new(day, day).map_err(|e| e.to_string())?;
    let rows = service(&args.database.database_url)
        .await?
        .rows(range, merchant)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::from(SETTLE_HEADER);
    out.push('\n');
    for row in &rows {
        out.push_str(&settle_line(row)?);
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

/// `withholding reconcile`: imports the statement, then prints `import_id,lines,found,new,
/// replayed` and the day's discrepancies as CSV.
pub async fn reconcile(args: &ReconcileArgs) -> Result<(), String> {
    let day = parse_day("--date", &args.date).map_err(|e| e.to_string())?;
    let csv = std::fs::read_to_string(&args.statement)
        .map_err(|e| format!("reading {}: {e}", args.statement.display()))?;
    if csv.len() > crate::app::MAX_STATEMENT_BYTES {
        return Err(format!(
            "a statement is at most {} bytes",
            crate::app::MAX_STATEMENT_BYTES
        ));
    }
    let service = service(&args.database.database_url).await?;
    let actor = operator();
    let imported = service
        .import_statement(&actor, day, &csv)
        .await
        .map_err(|e| e.to_string())?;
    let query = DiscrepancyQuery {
        statement_day: Some(day.to_string()),
        limit: MAX_PRINTED,
        ..DiscrepancyQuery::default()
    };
    let found = service
        .list_discrepancies(&actor, query)
        .await
        .map_err(|e| e.to_string())?;
    let i = &imported.import;
    let mut out = format!(
        "import_id,lines,found,new,replayed\n{},{},{},{},{}\n{DISCREPANCY_HEADER}\n",
        i.id,
        i.lines,
        i.found,
        if imported.replayed { 0 } else { i.new },
        imported.replayed
    );
    for (d, resolutions) in found.iter().rev() {
        let f = &d.finding;
        let amount = |m: Option<Money>| m.map(|m| m.amount_text()).unwrap_or_default();
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            d.id,
            f.kind.as_str(),
            f.charge_id,
            f.merchant_id.as_ref().map(|m| m.as_str()).unwrap_or(""),
            f.deduction_id.as_deref().unwrap_or(""),
            f.our_status.as_deref().unwrap_or(""),
            amount(f.our_amount),
            f.bank_status.map(|s| s.as_str()).unwrap_or(""),
            amount(f.bank_amount),
            f.lines,
            if resolutions.iter().any(|r| r.settles) {
                "RESOLVED"
            } else {
                "OPEN"
            },
        ));
    }
    print!("{out}");
    Ok(())
}
