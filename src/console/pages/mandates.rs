//! Mandates: search by merchant, payer, contract id and status; and one mandate's timeline —
//! every version with who made it, when and why, the payer's consent evidence for each step it
//! accepted (which version it was shown), then everything that happened to it in order.

use axum::extract::{Path, Query, State};
use maud::{Markup, html};
use serde::Deserialize;

use super::super::{Console, Failure, Section, Viewer, layout};
use super::audit::events_table;
use super::{given, parsed, query_string, when};
use crate::domain::FieldViolation;
use crate::domain::consent::ConsentEvidence;
use crate::domain::ids::{ContractId, MandateId, MerchantId, PayerId};
use crate::domain::mandate::{Mandate, MandateStatus};
use crate::service::{MandateFilter, MandateVersion, Rpc};

const PAGE_SIZE: u32 = 50;
/// Events of the timeline per page.
const TIMELINE_PAGE: u32 = 200;

#[derive(Debug, Default, Deserialize)]
pub struct SearchParams {
    merchant_id: Option<String>,
    payer_id: Option<String>,
    contract_id: Option<String>,
    status: Option<String>,
    after: Option<String>,
}

pub async fn search(
    State(console): State<Console>,
    viewer: Viewer,
    Query(p): Query<SearchParams>,
) -> Result<Markup, Failure> {
    viewer.may(Rpc::ListMandates)?;
    let filter = MandateFilter {
        merchant_id: parsed(&p.merchant_id, |v| MerchantId::parse("merchant_id", v))?,
        payer_id: parsed(&p.payer_id, |v| PayerId::parse("payer_id", v))?,
        contract_id: parsed(&p.contract_id, |v| ContractId::parse("contract_id", v))?,
        status: parsed(&p.status, |v| {
            MandateStatus::parse(v)
                .ok_or_else(|| FieldViolation::new("status", "is not a mandate status"))
        })?,
    };
    let after = parsed(&p.after, |v| MandateId::parse("after", v))?;
    let page = console
        .0
        .mandates
        .list(&viewer.actor, filter, PAGE_SIZE, after)
        .await?;
    let next = page.next.as_ref().map(|id| {
        format!(
            "/mandates{}",
            query_string([
                ("merchant_id", given(&p.merchant_id)),
                ("payer_id", given(&p.payer_id)),
                ("contract_id", given(&p.contract_id)),
                ("status", given(&p.status)),
                ("after", Some(id.as_str())),
            ])
        )
    });
    let text = |name: &'static str, label: &'static str, value: &Option<String>| {
        html! {
            label { span { (label) } input type="text" name=(name) value=(given(value).unwrap_or_default()); }
        }
    };
    let body = html! {
        form.filters method="get" action="/mandates" {
            (text("merchant_id", "Merchant", &p.merchant_id))
            (text("payer_id", "Payer", &p.payer_id))
            (text("contract_id", "Contract id", &p.contract_id))
            label {
                span { "Status" }
                select name="status" {
                    option value="" { "Any" }
                    @for status in MandateStatus::ALL {
                        option value=(status.as_str()) selected[given(&p.status) == Some(status.as_str())] {
                            (status.as_str())
                        }
                    }
                }
            }
            button type="submit" { "Search" }
        }
        @if page.mandates.is_empty() {
            p { "No mandates match." }
        } @else {
            table {
                thead {
                    tr { th { "Mandate" } th { "Merchant" } th { "Contract" } th { "Payer" } th { "Status" } th { "Version" } th { "Created" } }
                }
                tbody {
                    @for m in &page.mandates {
                        tr {
                            td { a href={ "/mandates/" (m.id) } { (m.id) } }
                            td { (m.merchant_id) }
                            td { (m.contract_id.as_str()) }
                            td { (m.payer_id) }
                            td { (m.status.as_str()) }
                            td.num { (m.version) }
                            td { (when(&console, m.created_at)) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &next {
            p { a href=(next) { "Next page" } }
        }
    };
    Ok(layout::page(&viewer, Section::Mandates, "Mandates", body))
}

#[derive(Debug, Default, Deserialize)]
pub struct TimelineParams {
    after: Option<String>,
}

pub async fn timeline(
    State(console): State<Console>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(p): Query<TimelineParams>,
) -> Result<Markup, Failure> {
    viewer.may(Rpc::GetMandateHistory)?;
    // An id that cannot be a mandate is one that does not exist.
    let id = MandateId::parse("mandate_id", &id)
        .map_err(|_| crate::service::Error::NotFound { what: "mandate" })?;
    let after = parsed(&p.after, |v| {
        v.parse::<i64>()
            .map_err(|_| FieldViolation::new("after", "must be an event seq"))
    })?;
    let history = console
        .0
        .audit
        .history(&viewer.actor, &id, TIMELINE_PAGE, after)
        .await?;
    let current = history.versions.last().map(|v| v.mandate.clone());
    let body = html! {
        @if let Some(m) = &current {
            (summary(&console, m))
        }
        @if !history.versions.is_empty() {
            section #versions {
                h2 { "Versions" }
                (versions(&console, &history.versions))
            }
        }
        section #events {
            h2 { "Everything that happened, in order" }
            (events_table(&console, &history.events.events))
            @if let Some(next) = history.events.next {
                p { a #next-page href={ "/mandates/" (id) "?after=" (next) } { "Next page" } }
            }
        }
    };
    Ok(layout::page(
        &viewer,
        Section::Mandates,
        &format!("Mandate {id}"),
        body,
    ))
}

fn summary(console: &Console, m: &Mandate) -> Markup {
    html! {
        dl.summary {
            dt { "Merchant" } dd { (m.merchant_id) }
            dt { "Contract" } dd { (m.contract_id.as_str()) }
            dt { "Payer" } dd { (m.payer_id) }
            dt { "Status" } dd { (m.status.as_str()) @if !m.status_reason.is_empty() { " — " (m.status_reason) } }
            dt { "Version" } dd { (m.version) }
            dt { "Created" } dd { (when(console, m.created_at)) }
        }
    }
}

fn versions(console: &Console, versions: &[MandateVersion]) -> Markup {
    html! {
        table.versions {
            thead {
                tr { th { "Version" } th { "Recorded" } th { "By" } th { "Change" } th { "Status" } th { "Consent or acceptance" } th { "Terms" } }
            }
            tbody {
                @for (i, v) in versions.iter().enumerate() {
                    @let before = i.checked_sub(1).map(|j| &versions[j].mandate);
                    tr {
                        td.num { (v.version) }
                        td { (when(console, v.recorded_at)) }
                        td {
                            @if let Some(e) = &v.event {
                                (e.draft.actor_role) " " (e.draft.actor_subject)
                            }
                        }
                        td {
                            @if let Some(e) = &v.event {
                                (e.draft.action)
                                @if let Some(reason) = &e.draft.reason_code { " (" (reason) ")" }
                            }
                        }
                        td { (v.mandate.status.as_str()) @if !v.mandate.status_reason.is_empty() { " — " (v.mandate.status_reason) } }
                        td {
                            @for evidence in new_evidence(before, &v.mandate) {
                                (consent(console, evidence))
                            }
                        }
                        td {
                            details {
                                summary { "terms" }
                                pre { (serde_json::to_string_pretty(&v.mandate.terms).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The consent evidence a version added: the payer's consent to the mandate, or to a
/// loosening amendment.
fn new_evidence<'a>(before: Option<&Mandate>, now: &'a Mandate) -> Vec<&'a ConsentEvidence> {
    let mut added = vec![];
    if let Some(c) = &now.consent
        && before.and_then(|b| b.consent.as_ref()) != Some(c)
    {
        added.push(c);
    }
    let known = before.map_or(0, |b| b.amendment_consents.len());
    added.extend(now.amendment_consents.iter().skip(known));
    added
}

fn consent(console: &Console, e: &ConsentEvidence) -> Markup {
    let name = |v: serde_json::Result<serde_json::Value>| {
        v.ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    html! {
        div.consent {
            "accepted version " (e.mandate_version) " by " (name(serde_json::to_value(e.method)))
            " in " (name(serde_json::to_value(e.channel))) " at " (when(console, e.captured_at))
            br;
            "terms " (e.terms_version) ", digest " span.hash title=(e.terms_digest) { (e.terms_digest.get(..12).unwrap_or(&e.terms_digest)) "…" }
            br;
            "device " (e.device_id) ", " (e.ip_address) ", " (e.user_agent)
        }
    }
}
