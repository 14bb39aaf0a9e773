//! The page shell every console page shares: the navigation the viewer's role may use, who is
//! signed in, and the sign-out form. Every value spliced into HTML goes through maud, which
//! escapes it; nothing here is marked pre-escaped.

use maud::{DOCTYPE, Markup, html};

use super::Viewer;
use crate::service::Rpc;

/// The console's sections, in navigation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Today,
    Mandates,
    Audit,
    Settlement,
    Reconciliation,
    Verify,
}

impl Section {
    const ALL: [Section; 6] = [
        Self::Today,
        Self::Mandates,
        Self::Audit,
        Self::Settlement,
        Self::Reconciliation,
        Self::Verify,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Self::Today => "Today",
            Self::Mandates => "Mandates",
            Self::Audit => "Audit events",
            Self::Settlement => "Settlement",
            Self::Reconciliation => "Reconciliation",
            Self::Verify => "Verify",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Self::Today => "/today",
            Self::Mandates => "/mandates",
            Self::Audit => "/audit",
            Self::Settlement => "/settlement",
            Self::Reconciliation => "/reconciliation",
            Self::Verify => "/verify",
        }
    }

    /// The RPC whose role rule decides who may open the section: the console grants no more
    /// than the API does.
    pub fn rpc(self) -> Rpc {
        match self {
            Self::Today | Self::Settlement => Rpc::GetSettlementSummary,
            Self::Mandates => Rpc::ListMandates,
            Self::Audit => Rpc::QueryAuditEvents,
            Self::Reconciliation => Rpc::ListDiscrepancies,
            Self::Verify => Rpc::VerifyAuditChain,
        }
    }
}

/// A whole page: head, navigation, then `body`.
pub fn page(viewer: &Viewer, current: Section, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    nav {
                        span.brand { "withholding" }
                        @for section in Section::ALL {
                            @if section.rpc().permits(&viewer.actor) {
                                a href=(section.path())
                                    aria-current=[(section == current).then_some("page")] {
                                    (section.title())
                                }
                            }
                        }
                    }
                    div.who {
                        span { (viewer.actor.role.as_str()) " " (viewer.actor.subject) }
                        @if let Some(merchant) = &viewer.actor.merchant_id {
                            span.scope { "merchant " (merchant) }
                        }
                        form method="post" action="/sign-out" {
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page for someone not signed in (sign-in, errors before a session).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                main.narrow {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · withholding console" }
            link rel="stylesheet" href="/static/console.css";
        }
    }
}
