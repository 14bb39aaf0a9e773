//! Blocked attempts (DESIGN §6): every refused (`DENIED`) or reported (`FLAGGED`) attempt in a
//! time range, counted by merchant × reason × day, clawbacks first. The events are read page by
//! page; what is held is one row per merchant, reason and day.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use super::AuditService;
use crate::domain::FieldViolation;
use crate::domain::actor::Actor;
use crate::domain::audit::{AuditEvent, AuditFilter, CLAWBACK_REASONS};
use crate::domain::terms::TimeZoneName;
use crate::service::{Error, Rpc};

/// The longest range one report covers.
pub const MAX_RANGE_DAYS: i64 = 93;
const DEFAULT_EXAMPLES: u32 = 3;
pub const MAX_EXAMPLES: u32 = 20;
/// Events read per trip.
const PAGE: u32 = 1000;

#[derive(Debug, Clone)]
pub struct BlockedQuery {
    pub merchant_id: Option<String>,
    pub from: Timestamp,
    pub to: Timestamp,
    pub time_zone: TimeZoneName,
    /// 0 means the default.
    pub examples_per_row: u32,
}

/// One row: a merchant's attempts refused or flagged for one reason on one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedAttempts {
    pub merchant_id: String,
    pub reason_code: String,
    /// `YYYY-MM-DD` in the query's time zone.
    pub day: String,
    pub clawback: bool,
    pub denied: i64,
    pub flagged: i64,
    pub examples: Vec<AuditEvent>,
}

impl AuditService {
    /// The rows (clawbacks first, then by day, merchant and reason) and the events counted.
    pub async fn blocked(
        &self,
        actor: &Actor,
        query: BlockedQuery,
    ) -> Result<(Vec<BlockedAttempts>, i64), Error> {
        if query.to <= query.from {
            return Err(FieldViolation::new("to", "must be after from").into());
        }
        if query.to.duration_since(query.from) > SignedDuration::from_hours(24 * MAX_RANGE_DAYS) {
            return Err(FieldViolation::new(
                "to",
                format!("at most {MAX_RANGE_DAYS} days after from"),
            )
            .into());
        }
        let examples = match query.examples_per_row {
            0 => DEFAULT_EXAMPLES,
            n if n > MAX_EXAMPLES => {
                return Err(FieldViolation::new(
                    "examples_per_row",
                    format!("must be at most {MAX_EXAMPLES}"),
                )
                .into());
            }
            n => n,
        } as usize;
        let filter = AuditFilter {
            merchant_id: query.merchant_id.clone(),
            from: Some(query.from),
            to: Some(query.to),
            blocked_only: true,
            ..AuditFilter::default()
        };
        self.record_read(actor, Rpc::GetBlockedAttempts, &filter, None)
            .await?;
        let Some(filter) = super::scoped(actor, filter) else {
            return Ok((vec![], 0));
        };
        let zone = query.time_zone.zone();
        // Key: not a clawback (false first), day, merchant, reason.
        let mut rows: BTreeMap<(bool, String, String, String), BlockedAttempts> = BTreeMap::new();
        let mut counted = 0_i64;
        let mut after = None;
        loop {
            let page = self.page(filter.clone(), false, after, PAGE).await?;
            for event in page.events {
                counted += 1;
                let reason = event.draft.reason_code.clone().unwrap_or_default();
                let merchant = event.draft.merchant_id.clone().unwrap_or_default();
                let day = zone.to_datetime(event.draft.at).date().to_string();
                let clawback = CLAWBACK_REASONS.contains(&reason.as_str());
                let row = rows
                    .entry((!clawback, day.clone(), merchant.clone(), reason.clone()))
                    .or_insert_with(|| BlockedAttempts {
                        merchant_id: merchant,
                        reason_code: reason,
                        day,
                        clawback,
                        denied: 0,
                        flagged: 0,
                        examples: vec![],
                    });
                if event.draft.outcome == "FLAGGED" {
                    row.flagged += 1;
                } else {
                    row.denied += 1;
                }
                if row.examples.len() < examples {
                    row.examples.push(event);
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        Ok((rows.into_values().collect(), counted))
    }
}
