//! Settlement: merchant × funding source × business day over a range, a chart of the net
//! collected per day, and the same rows as CSV in the format `withholding settle` writes.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use jiff::ToSpan;
use maud::{Markup, html};
use serde::Deserialize;

use super::super::chart::{self, Bar};
use super::super::{Console, Failure, Section, Viewer, layout};
use super::today::collections_table;
use super::{day, given, parsed, query_string, today};
use crate::cli::{SETTLE_HEADER, settle_line};
use crate::domain::ids::MerchantId;
use crate::domain::settlement::{DayRange, SettlementRow};
use crate::service::Rpc;

/// Days shown when the form does not say: the week up to today.
const DEFAULT_DAYS: i64 = 7;

#[derive(Debug, Default, Deserialize)]
pub struct Params {
    from: Option<String>,
    to: Option<String>,
    merchant_id: Option<String>,
}

impl Params {
    fn range(&self, console: &Console) -> Result<DayRange, Failure> {
        let to = parsed(&self.to, |v| day("to", v))?.unwrap_or_else(|| today(console));
        let from = match parsed(&self.from, |v| day("from", v))? {
            Some(from) => from,
            None => to.checked_sub((DEFAULT_DAYS - 1).days()).unwrap_or(to),
        };
        Ok(DayRange::new(from, to)?)
    }
}

async fn rows(
    console: &Console,
    viewer: &Viewer,
    p: &Params,
) -> Result<(DayRange, Vec<SettlementRow>), Failure> {
    viewer.may(Rpc::GetSettlementSummary)?;
    let range = p.range(console)?;
    let merchant = parsed(&p.merchant_id, |v| MerchantId::parse("merchant_id", v))?;
    let rows = console
        .0
        .settlement
        .summary(&viewer.actor, range, merchant)
        .await?;
    Ok((range, rows))
}

pub async fn page(
    State(console): State<Console>,
    viewer: Viewer,
    Query(p): Query<Params>,
) -> Result<Markup, Failure> {
    let (range, rows) = rows(&console, &viewer, &p).await?;
    let selection = query_string([
        ("from", Some(range.from.to_string()).as_deref()),
        ("to", Some(range.to.to_string()).as_deref()),
        ("merchant_id", given(&p.merchant_id)),
    ]);
    let body = html! {
        form.filters method="get" action="/settlement" {
            label { span { "From" } input type="date" name="from" value=(range.from.to_string()); }
            label { span { "To" } input type="date" name="to" value=(range.to.to_string()); }
            label { span { "Merchant" } input type="text" name="merchant_id" value=(given(&p.merchant_id).unwrap_or_default()); }
            button type="submit" { "Show" }
        }
        p.actions { a.button href={ "/settlement.csv" (selection) } download="settlement.csv" { "Download as CSV" } }
        (net_by_day(range, &rows))
        (collections_table(&rows))
    };
    Ok(layout::page(
        &viewer,
        Section::Settlement,
        "Settlement",
        body,
    ))
}

pub async fn csv(
    State(console): State<Console>,
    viewer: Viewer,
    Query(p): Query<Params>,
) -> Result<Response, Failure> {
    let (_, rows) = rows(&console, &viewer, &p).await?;
    let mut out = String::from(SETTLE_HEADER);
    out.push('\n');
    for row in &rows {
        let line = settle_line(row).map_err(|e| {
            Failure::from(crate::service::Error::FailedPrecondition {
                kind: "AMOUNT_RANGE",
                subject: String::new(),
                description: e,
            })
        })?;
        out.push_str(&line);
        out.push('\n');
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"settlement.csv\"",
            ),
        ],
        out,
    )
        .into_response())
}

/// Net collected per day, one chart per currency (amounts of different currencies are never
/// added), in major units rounded down.
fn net_by_day(range: DayRange, rows: &[SettlementRow]) -> Markup {
    let mut per_currency: BTreeMap<&str, (i128, BTreeMap<String, i128>)> = BTreeMap::new();
    for row in rows {
        let net = i128::from(row.collected.amount_minor) - i128::from(row.refunded.amount_minor);
        let unit = 10i128.pow(row.currency.minor_units());
        *per_currency
            .entry(row.currency.code())
            .or_insert_with(|| (unit, BTreeMap::new()))
            .1
            .entry(row.day.to_string())
            .or_default() += net;
    }
    html! {
        @for (currency, (unit, days)) in &per_currency {
            @let bars: Vec<Bar> = range_days(range).into_iter().map(|d| Bar {
                value: i64::try_from(days.get(&d).copied().unwrap_or(0) / unit).unwrap_or(i64::MAX),
                label: d.get(5..).unwrap_or(&d).to_owned(),
            }).collect();
            (chart::columns(&format!("Net collected per day, {} to {}", range.from, range.to), &bars, currency))
        }
    }
}

fn range_days(range: DayRange) -> Vec<String> {
    let mut days = vec![];
    let mut d = range.from;
    while d <= range.to {
        days.push(d.to_string());
        match d.tomorrow() {
            Ok(next) => d = next,
            Err(_) => break,
        }
    }
    days
}
