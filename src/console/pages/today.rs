//! Today: the day's collections per merchant and funding source; declines by reason and
//! blocked and suspected clawbacks, yesterday and today (what an officer asks first is what
//! was blocked yesterday); card outcomes still unknown; and the state of the audit chains.

use std::collections::BTreeMap;

use axum::extract::State;
use jiff::civil::Time;
use maud::{Markup, html};

use super::super::chart::{self, Bar};
use super::super::{Console, Failure, Section, Viewer, layout};
use super::{amount, today, when};
use crate::domain::deduction::DeductionStatus;
use crate::domain::settlement::{DayRange, SettlementRow};
use crate::service::{BlockedAttempts, BlockedQuery, Rpc};
use crate::storage::DeductionQuery;

/// Card outcomes still unknown listed on the page (the oldest first are what matter; the
/// count says when there are more).
const UNKNOWN_LISTED: u32 = 20;

pub async fn page(State(console): State<Console>, viewer: Viewer) -> Result<Markup, Failure> {
    viewer.may(Section::Today.rpc())?;
    let actor = &viewer.actor;
    let day = today(&console);
    let zone = console.0.settings.time_zone.clone();
    let collections = console
        .0
        .settlement
        .summary(actor, DayRange::new(day, day)?, None)
        .await?;
    let blocked = if Rpc::GetBlockedAttempts.permits(actor) {
        let from = day
            .yesterday()
            .unwrap_or(day)
            .to_datetime(Time::midnight())
            .to_zoned_datetime(zone.zone())
            .map_err(|_| {
                Failure::bad_input(crate::domain::FieldViolation::new("day", "out of range"))
            })?
            .timestamp();
        let to = day
            .tomorrow()
            .ok()
            .and_then(|d| {
                d.to_datetime(Time::midnight())
                    .to_zoned_datetime(zone.zone())
                    .ok()
            })
            .map_or(console.now(), |z| z.timestamp());
        let (rows, _) = console
            .0
            .audit
            .blocked(
                actor,
                BlockedQuery {
                    merchant_id: None,
                    from,
                    to,
                    time_zone: zone.clone(),
                    examples_per_row: 3,
                },
            )
            .await?;
        Some(rows)
    } else {
        None
    };
    let (unknown, more_unknown) = console
        .0
        .deductions
        .list(
            actor,
            DeductionQuery {
                status: Some(DeductionStatus::PendingConfirmation),
                ..DeductionQuery::default()
            },
            UNKNOWN_LISTED,
        )
        .await?;
    let chains = Rpc::VerifyAuditChain
        .permits(actor)
        .then(|| console.0.verifications.status());

    let body = html! {
        p.hint { "Business day " (day) " in " (zone.as_str()) "." }
        section #collections {
            h2 { "Collections" }
            (collections_table(&collections))
        }
        @if let Some(rows) = &blocked {
            section #declines {
                h2 { "Declines by reason, yesterday and today" }
                (declines_chart(rows))
            }
            section #clawbacks {
                h2 { "Blocked and suspected clawbacks, yesterday and today" }
                (clawbacks(&console, rows))
            }
        }
        section #unknown {
            h2 { "Card outcomes waiting for the bank" }
            @if unknown.is_empty() {
                p { "None: every card charge has a definite outcome." }
            } @else {
                table {
                    thead { tr { th { "Deduction" } th { "Merchant" } th { "Mandate" } th { "Amount" } th { "Since" } } }
                    tbody {
                        @for d in &unknown {
                            tr {
                                td.id { (d.id) }
                                td { (d.merchant_id) }
                                td { a href={ "/mandates/" (d.mandate_id) } { (d.mandate_id) } }
                                td.num { (d.request.amount) }
                                td { (when(&console, d.created_at)) }
                            }
                        }
                    }
                }
                @if more_unknown.is_some() {
                    p.hint { "More than " (UNKNOWN_LISTED) " are waiting; the oldest are resolved first by the resolver, the rest by reconciliation." }
                }
            }
        }
        @if let Some(status) = &chains {
            section #chains {
                h2 { "Audit chains" }
                (status.render(&console))
                p { a href=(Section::Verify.path()) { "Verify the trail" } }
            }
        }
    };
    Ok(layout::page(&viewer, Section::Today, "Today", body))
}

pub fn collections_table(rows: &[SettlementRow]) -> Markup {
    html! {
        @if rows.is_empty() {
            p { "Nothing collected, refunded, pending or failed on this day." }
        } @else {
            table {
                thead {
                    tr {
                        th { "Merchant" } th { "Day" } th { "Source" }
                        th { "Collected" } th { "Refunded" } th { "Pending" } th { "Failed" } th { "Net" }
                    }
                }
                tbody {
                    @for row in rows {
                        tr {
                            td { (row.merchant_id) }
                            td { (row.day) }
                            td { (row.source.as_str()) }
                            td.num { (row.collected.count) " · " (amount(row.currency, row.collected.amount_minor)) }
                            td.num { (row.refunded.count) " · " (amount(row.currency, row.refunded.amount_minor)) }
                            td.num { (row.pending.count) " · " (amount(row.currency, row.pending.amount_minor)) }
                            td.num { (row.failed.count) " · " (amount(row.currency, row.failed.amount_minor)) }
                            td.num {
                                @match row.net_minor() {
                                    Ok(net) => (amount(row.currency, net)),
                                    Err(_) => "out of range",
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn declines_chart(rows: &[BlockedAttempts]) -> Markup {
    let mut by_reason: BTreeMap<String, i64> = BTreeMap::new();
    for row in rows {
        *by_reason
            .entry(format!("{} {}", row.day, row.reason_code))
            .or_default() += row.denied + row.flagged;
    }
    let mut bars: Vec<Bar> = by_reason
        .into_iter()
        .map(|(reason, count)| Bar {
            label: reason,
            value: count,
        })
        .collect();
    bars.sort_by(|a, b| b.value.cmp(&a.value).then(a.label.cmp(&b.label)));
    html! {
        @if bars.is_empty() {
            p { "No declines yesterday or today." }
        } @else {
            (chart::horizontal_bars("Declined and flagged attempts by day and reason", &bars))
        }
    }
}

fn clawbacks(console: &Console, rows: &[BlockedAttempts]) -> Markup {
    let clawbacks: Vec<&BlockedAttempts> = rows.iter().filter(|r| r.clawback).collect();
    html! {
        @if clawbacks.is_empty() {
            p { "None yesterday or today." }
        } @else {
            table {
                thead {
                    tr { th { "Day" } th { "Merchant" } th { "Reason" } th { "Denied" } th { "Flagged" } th { "Examples" } }
                }
                tbody {
                    @for row in clawbacks {
                        tr.clawback {
                            td { (row.day) }
                            td { (row.merchant_id) }
                            td { (row.reason_code) }
                            td.num { (row.denied) }
                            td.num { (row.flagged) }
                            td {
                                ul.examples {
                                    @for e in &row.examples {
                                        li {
                                            (when(console, e.draft.at)) " "
                                            (e.draft.outcome) " "
                                            @if let Some(mandate) = &e.draft.mandate_id {
                                                a href={ "/mandates/" (mandate) } { "mandate " (mandate) }
                                            } @else {
                                                "no mandate (" (e.draft.action) ")"
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
