//! Reconciliation: the discrepancies bank statements left, open or settled, each with what the
//! statement said beside what we hold for the charge, and every step taken to resolve it.

use axum::extract::{Query, State};
use maud::{Markup, html};
use serde::Deserialize;

use super::super::{Console, Failure, Section, Viewer, layout};
use super::{day, given, parsed, query_string, when};
use crate::domain::FieldViolation;
use crate::domain::ids::MerchantId;
use crate::domain::money::Money;
use crate::service::{DiscrepancyView, Rpc};
use crate::storage::settlement::DiscrepancyQuery;

const PAGE_SIZE: u32 = 50;

#[derive(Debug, Default, Deserialize)]
pub struct Params {
    /// `open` (the default), `settled` or `all`.
    status: Option<String>,
    day: Option<String>,
    merchant_id: Option<String>,
    before: Option<String>,
}

pub async fn page(
    State(console): State<Console>,
    viewer: Viewer,
    Query(p): Query<Params>,
) -> Result<Markup, Failure> {
    viewer.may(Rpc::ListDiscrepancies)?;
    let status = given(&p.status).unwrap_or("open");
    let settled = match status {
        "open" => Some(false),
        "settled" => Some(true),
        "all" => None,
        _ => return Err(FieldViolation::new("status", "must be open, settled or all").into()),
    };
    let statement_day = parsed(&p.day, |v| day("day", v))?;
    let query = DiscrepancyQuery {
        settled,
        statement_day: statement_day.map(|d| d.to_string()),
        merchant_id: parsed(&p.merchant_id, |v| MerchantId::parse("merchant_id", v))?,
        before: given(&p.before).map(str::to_owned),
        limit: PAGE_SIZE + 1,
    };
    let mut found = console
        .0
        .settlement
        .list_discrepancies(&viewer.actor, query)
        .await?;
    let next = (found.len() > PAGE_SIZE as usize).then(|| {
        found.truncate(PAGE_SIZE as usize);
        let last = found.last().map(|(d, _)| d.id.clone()).unwrap_or_default();
        format!(
            "/reconciliation{}",
            query_string([
                ("status", Some(status)),
                ("day", given(&p.day)),
                ("merchant_id", given(&p.merchant_id)),
                ("before", Some(last.as_str())),
            ])
        )
    });
    let body = html! {
        form.filters method="get" action="/reconciliation" {
            label {
                span { "Status" }
                select name="status" {
                    @for (value, label) in [("open", "Open"), ("settled", "Settled"), ("all", "All")] {
                        option value=(value) selected[status == value] { (label) }
                    }
                }
            }
            label { span { "Statement day" } input type="date" name="day" value=(given(&p.day).unwrap_or_default()); }
            label { span { "Merchant" } input type="text" name="merchant_id" value=(given(&p.merchant_id).unwrap_or_default()); }
            button type="submit" { "Show" }
        }
        @if found.is_empty() {
            p { "No discrepancies match." }
        } @else {
            @for view in &found {
                (discrepancy(&console, view))
            }
        }
        @if let Some(next) = &next {
            p { a href=(next) { "Next page" } }
        }
    };
    Ok(layout::page(
        &viewer,
        Section::Reconciliation,
        "Reconciliation",
        body,
    ))
}

fn money(m: &Option<Money>) -> String {
    m.as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| "—".into())
}

fn discrepancy(console: &Console, (d, resolutions): &DiscrepancyView) -> Markup {
    let f = &d.finding;
    let settled = resolutions.iter().any(|r| r.settles);
    html! {
        article.discrepancy data-kind=(f.kind.as_str()) {
            h2 {
                (f.kind.as_str()) " · charge " (f.charge_id)
                @if settled { span.badge.settled { "settled" } } @else { span.badge.open { "open" } }
            }
            table.compare {
                thead { tr { th {} th { "Bank statement" } th { "Our charge" } } }
                tbody {
                    tr { th { "Status" } td { (f.bank_status.map_or("—", |s| s.as_str())) } td { (f.our_status.as_deref().unwrap_or("no such charge")) } }
                    tr { th { "Amount" } td { (money(&f.bank_amount)) } td { (money(&f.our_amount)) } }
                    tr { th { "Lines naming it" } td { (f.lines) } td {} }
                }
            }
            p.hint {
                "Statement of " (d.statement_day) ", import " (d.import_id) ", found " (when(console, d.created_at))
                @if let Some(m) = &f.merchant_id { ", merchant " (m) }
                @if let Some(dd) = &f.deduction_id { ", deduction " (dd) }
            }
            @if resolutions.is_empty() {
                p { "No step taken yet." }
            } @else {
                table {
                    thead { tr { th { "When" } th { "By" } th { "Action" } th { "Outcome" } th { "Settles" } th { "Ledger movement" } th { "Note" } } }
                    tbody {
                        @for r in resolutions {
                            tr {
                                td { (when(console, r.created_at)) }
                                td { (r.actor_subject) }
                                td { (r.action.as_str()) }
                                td { (r.outcome) }
                                td { @if r.settles { "yes" } @else { "no" } }
                                td.id { (r.movement_id.as_deref().unwrap_or("—")) }
                                td { (r.note) }
                            }
                        }
                    }
                }
            }
        }
    }
}
