//! Audit events: every filter of `QueryAuditEvents`, keyset pages (a cursor, never an offset),
//! and the selection as CSV, streamed page by page like `ExportAuditEvents`.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use tokio_stream::wrappers::ReceiverStream;

use super::super::{Console, Failure, Section, Viewer, csv, layout};
use super::{given, parsed, query_string, time, when};
use crate::domain::FieldViolation;
use crate::domain::audit::{AuditEvent, AuditFilter};
use crate::service::Rpc;

/// Events per page when the form does not say, and the most it may ask.
const PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 500;
/// CSV chunks buffered between the database reads and the connection.
const CSV_BUFFER: usize = 4;

/// The form's fields, as the query string carries them.
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    merchant_id: Option<String>,
    payer_id: Option<String>,
    mandate_id: Option<String>,
    deduction_id: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
    reason_code: Option<String>,
    actor_role: Option<String>,
    actor_subject: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// `newest` for newest first; oldest first otherwise.
    order: Option<String>,
    page_size: Option<String>,
    after: Option<String>,
}

impl Params {
    fn filter(&self, console: &Console) -> Result<AuditFilter, FieldViolation> {
        let text = |v: &Option<String>| given(v).map(str::to_owned);
        Ok(AuditFilter {
            merchant_id: text(&self.merchant_id),
            payer_id: text(&self.payer_id),
            mandate_id: text(&self.mandate_id),
            deduction_id: text(&self.deduction_id),
            action: text(&self.action),
            outcome: text(&self.outcome),
            reason_code: text(&self.reason_code),
            actor_role: text(&self.actor_role),
            actor_subject: text(&self.actor_subject),
            from: parsed(&self.from, |v| time(console, "from", v))?,
            to: parsed(&self.to, |v| time(console, "to", v))?,
            ..AuditFilter::default()
        })
    }

    fn newest_first(&self) -> bool {
        given(&self.order) == Some("newest")
    }

    /// The filter fields as a query string (the cursor and page size left out).
    fn selection(&self) -> String {
        query_string(self.fields())
    }

    fn fields(&self) -> [(&'static str, Option<&str>); 12] {
        [
            ("merchant_id", given(&self.merchant_id)),
            ("payer_id", given(&self.payer_id)),
            ("mandate_id", given(&self.mandate_id)),
            ("deduction_id", given(&self.deduction_id)),
            ("action", given(&self.action)),
            ("outcome", given(&self.outcome)),
            ("reason_code", given(&self.reason_code)),
            ("actor_role", given(&self.actor_role)),
            ("actor_subject", given(&self.actor_subject)),
            ("from", given(&self.from)),
            ("to", given(&self.to)),
            ("order", given(&self.order)),
        ]
    }
}

pub async fn page(
    State(console): State<Console>,
    viewer: Viewer,
    Query(params): Query<Params>,
) -> Result<Markup, Failure> {
    viewer.may(Rpc::QueryAuditEvents)?;
    let filter = params.filter(&console)?;
    let page_size = parsed(&params.page_size, |v| {
        v.parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| {
                FieldViolation::new("page_size", format!("must be 1 to {MAX_PAGE_SIZE}"))
            })
    })?
    .unwrap_or(PAGE_SIZE);
    let after = parsed(&params.after, |v| {
        v.parse::<i64>()
            .map_err(|_| FieldViolation::new("after", "must be an event seq"))
    })?;
    let page = console
        .0
        .audit
        .query(
            &viewer.actor,
            filter,
            params.newest_first(),
            page_size,
            after,
        )
        .await?;
    let selection = params.selection();
    let next = page.next.map(|seq| {
        let mut fields = params.fields().to_vec();
        let seq = seq.to_string();
        let size = page_size.to_string();
        fields.push(("page_size", Some(&size)));
        fields.push(("after", Some(&seq)));
        format!("/audit{}", query_string(fields))
    });
    let body = html! {
        (filter_form(&params))
        p.actions {
            a.button href={ "/audit.csv" (selection) } download="audit-events.csv" { "Export this selection as CSV" }
        }
        (events_table(&console, &page.events))
        @if let Some(next) = &next {
            p { a #next-page href=(next) { "Next page" } }
        } @else {
            p.hint { "End of the selection." }
        }
    };
    Ok(layout::page(&viewer, Section::Audit, "Audit events", body))
}

/// The selection as CSV, read a page at a time: the console holds one page of it at once.
pub async fn csv(
    State(console): State<Console>,
    viewer: Viewer,
    Query(params): Query<Params>,
) -> Result<Response, Failure> {
    viewer.may(Rpc::ExportAuditEvents)?;
    let filter = params.filter(&console)?;
    let mut export = console
        .0
        .audit
        .export(&viewer.actor, filter, params.newest_first())
        .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(CSV_BUFFER);
    tokio::spawn(async move {
        if tx.send(Ok(csv::line(HEADER))).await.is_err() {
            return;
        }
        loop {
            match export.next_page().await {
                Ok(events) if events.is_empty() => return,
                Ok(events) => {
                    let chunk: String = events.iter().map(csv_line).collect();
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // The connection is cut short, so the file cannot pass for complete.
                    tracing::warn!(error = %e, "console audit export failed");
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            }
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"audit-events.csv\"",
            ),
        ],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// The export's columns, in order.
pub const HEADER: [&str; 17] = [
    "seq",
    "chain_id",
    "chain_seq",
    "at",
    "actor_role",
    "actor_subject",
    "merchant_id",
    "payer_id",
    "mandate_id",
    "deduction_id",
    "action",
    "outcome",
    "reason_code",
    "request_id",
    "details",
    "prev_hash",
    "hash",
];

fn csv_line(e: &AuditEvent) -> String {
    let d = &e.draft;
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let cells = [
        e.seq.to_string(),
        e.chain_id.clone(),
        e.chain_seq.to_string(),
        d.at.to_string(),
        d.actor_role.clone(),
        d.actor_subject.clone(),
        opt(&d.merchant_id),
        opt(&d.payer_id),
        opt(&d.mandate_id),
        opt(&d.deduction_id),
        d.action.clone(),
        d.outcome.clone(),
        opt(&d.reason_code),
        opt(&d.request_id),
        d.details.clone(),
        e.prev_hash.clone(),
        e.hash.clone(),
    ];
    csv::line(cells.iter().map(String::as_str))
}

fn filter_form(p: &Params) -> Markup {
    let field = |name: &'static str, label: &'static str, value: &Option<String>| {
        html! {
            label {
                span { (label) }
                input type="text" name=(name) value=(given(value).unwrap_or_default());
            }
        }
    };
    html! {
        form.filters method="get" action="/audit" {
            (field("merchant_id", "Merchant", &p.merchant_id))
            (field("payer_id", "Payer", &p.payer_id))
            (field("mandate_id", "Mandate", &p.mandate_id))
            (field("deduction_id", "Deduction", &p.deduction_id))
            (field("action", "Action", &p.action))
            (field("outcome", "Outcome", &p.outcome))
            (field("reason_code", "Reason code", &p.reason_code))
            (field("actor_role", "Actor role", &p.actor_role))
            (field("actor_subject", "Actor", &p.actor_subject))
            (field("from", "From (inclusive)", &p.from))
            (field("to", "To (exclusive)", &p.to))
            label {
                span { "Order" }
                select name="order" {
                    option value="oldest" selected[given(&p.order) != Some("newest")] { "Oldest first" }
                    option value="newest" selected[given(&p.order) == Some("newest")] { "Newest first" }
                }
            }
            button type="submit" { "Search" }
        }
    }
}

/// Events as a table, one row each, in the order given.
pub fn events_table(console: &Console, events: &[AuditEvent]) -> Markup {
    html! {
        @if events.is_empty() {
            p { "No events match." }
        } @else {
            table.events {
                thead {
                    tr {
                        th { "Seq" } th { "At" } th { "Chain" } th { "Actor" } th { "Merchant" }
                        th { "Payer" } th { "Mandate" } th { "Deduction" } th { "Action" }
                        th { "Outcome" } th { "Reason" } th { "Details" } th { "Hash" }
                    }
                }
                tbody {
                    @for e in events {
                        @let d = &e.draft;
                        tr.event data-seq=(e.seq) {
                            td.num { (e.seq) }
                            td { (when(console, d.at)) }
                            td.id { (e.chain_id) " #" (e.chain_seq) }
                            td { (d.actor_role) " " (d.actor_subject) }
                            td { (d.merchant_id.as_deref().unwrap_or("")) }
                            td { (d.payer_id.as_deref().unwrap_or("")) }
                            td {
                                @if let Some(m) = &d.mandate_id {
                                    a href={ "/mandates/" (m) } { (m) }
                                }
                            }
                            td.id { (d.deduction_id.as_deref().unwrap_or("")) }
                            td { (d.action) }
                            td.outcome { (d.outcome) }
                            td { (d.reason_code.as_deref().unwrap_or("")) }
                            td { code.details { (d.details) } }
                            td.hash title=(e.hash) { (e.hash.get(..12).unwrap_or(&e.hash)) "…" }
                        }
                    }
                }
            }
        }
    }
}
