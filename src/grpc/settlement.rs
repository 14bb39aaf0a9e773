//! `withholding.v1.SettlementService` handlers: daily settlement and bank reconciliation.

use tonic::{Request, Response, Status};

use super::{authorize, bad, convert, decode_page_token, detached, encode_page_token, fingerprint};
use crate::domain::FieldViolation;
use crate::domain::deduction::SourceKind;
use crate::domain::ids::MerchantId;
use crate::domain::money::{Currency, Money};
use crate::domain::reconcile::{Discrepancy, DiscrepancyKind, Resolution, ResolutionAction};
use crate::domain::settlement::{
    DayRange, SettlementRow, SettlementSchedule, Tally, TotalOutOfRange, parse_day,
};
use crate::domain::terms::TimeZoneName;
use crate::pb;
use crate::pb::settlement_service_server::SettlementService as SettlementRpc;
use crate::service::{MandateService, ResolveRequest, Rpc, SettlementService};
use crate::storage::settlement::DiscrepancyQuery;

/// Largest and default page of `ListDiscrepancies`.
const MAX_PAGE_SIZE: u32 = 500;
const DEFAULT_PAGE_SIZE: u32 = 100;

#[derive(Clone)]
pub struct SettlementApi {
    settlement: SettlementService,
    mandates: MandateService,
}

impl SettlementApi {
    pub fn new(settlement: SettlementService, mandates: MandateService) -> Self {
        Self {
            settlement,
            mandates,
        }
    }
}

fn optional_merchant(merchant_id: &str) -> Result<Option<MerchantId>, Status> {
    (!merchant_id.is_empty())
        .then(|| MerchantId::parse("merchant_id", merchant_id))
        .transpose()
        .map_err(bad)
}

fn tally(currency: Currency, t: &Tally) -> pb::SettlementTally {
    pb::SettlementTally {
        count: t.count,
        amount: Money::minor_text(currency, t.amount_minor),
    }
}

fn to_row(row: &SettlementRow) -> Result<pb::SettlementRow, TotalOutOfRange> {
    let SettlementRow {
        merchant_id,
        source,
        day,
        currency,
        collected,
        refunded,
        pending,
        failed,
    } = row;
    Ok(pb::SettlementRow {
        merchant_id: merchant_id.to_string(),
        source: match source {
            SourceKind::Wallet => pb::SettlementSource::Wallet,
            SourceKind::BankCard => pb::SettlementSource::BankCard,
        } as i32,
        business_day: day.to_string(),
        currency_code: currency.code().to_owned(),
        collected: Some(tally(*currency, collected)),
        refunded: Some(tally(*currency, refunded)),
        pending: Some(tally(*currency, pending)),
        failed: Some(tally(*currency, failed)),
        net: Money::minor_text(*currency, row.net_minor()?),
    })
}

fn to_schedule(s: &SettlementSchedule) -> pb::SettlementSchedule {
    let SettlementSchedule {
        merchant_id,
        cutoff_minute,
        timezone,
        version,
        updated_at,
        updated_by,
    } = s;
    pb::SettlementSchedule {
        merchant_id: merchant_id.to_string(),
        cutoff_minute: *cutoff_minute,
        timezone: timezone.as_str().to_owned(),
        version: *version,
        updated_at: updated_at.map(convert::to_timestamp),
        updated_by: updated_by.clone(),
    }
}

fn to_kind(kind: DiscrepancyKind) -> pb::DiscrepancyKind {
    match kind {
        DiscrepancyKind::Long => pb::DiscrepancyKind::Long,
        DiscrepancyKind::Short => pb::DiscrepancyKind::Short,
        DiscrepancyKind::AmountMismatch => pb::DiscrepancyKind::AmountMismatch,
        DiscrepancyKind::DuplicateLine => pb::DiscrepancyKind::DuplicateLine,
    }
}

fn to_action(action: ResolutionAction) -> pb::ResolutionAction {
    match action {
        ResolutionAction::AcceptCollected => pb::ResolutionAction::AcceptCollected,
        ResolutionAction::RefundPayer => pb::ResolutionAction::RefundPayer,
        ResolutionAction::WriteOff => pb::ResolutionAction::WriteOff,
        ResolutionAction::Requery => pb::ResolutionAction::Requery,
        ResolutionAction::Acknowledge => pb::ResolutionAction::Acknowledge,
    }
}

fn action(value: i32) -> Result<ResolutionAction, FieldViolation> {
    use pb::ResolutionAction as A;
    match A::try_from(value) {
        Ok(A::AcceptCollected) => Ok(ResolutionAction::AcceptCollected),
        Ok(A::RefundPayer) => Ok(ResolutionAction::RefundPayer),
        Ok(A::WriteOff) => Ok(ResolutionAction::WriteOff),
        Ok(A::Requery) => Ok(ResolutionAction::Requery),
        Ok(A::Acknowledge) => Ok(ResolutionAction::Acknowledge),
        Ok(A::Unspecified) => Err(FieldViolation::new(
            "action",
            "is required (UNSPECIFIED is not a value)",
        )),
        Err(_) => Err(FieldViolation::new(
            "action",
            format!("unknown value {value}"),
        )),
    }
}

fn to_resolution(r: &Resolution) -> pb::Resolution {
    pb::Resolution {
        resolution_id: r.id.clone(),
        action: to_action(r.action) as i32,
        settles: r.settles,
        outcome: r.outcome.clone(),
        movement_id: r.movement_id.clone().unwrap_or_default(),
        note: r.note.clone(),
        resolved_by: r.actor_subject.clone(),
        created_at: Some(convert::to_timestamp(r.created_at)),
    }
}

fn to_discrepancy(d: &Discrepancy, resolutions: &[Resolution]) -> pb::Discrepancy {
    let f = &d.finding;
    let settled = resolutions.iter().any(|r| r.settles);
    let currency = f.our_amount.or(f.bank_amount).map(|m| m.currency());
    pb::Discrepancy {
        discrepancy_id: d.id.clone(),
        kind: to_kind(f.kind) as i32,
        status: if settled {
            pb::DiscrepancyStatus::Resolved
        } else {
            pb::DiscrepancyStatus::Open
        } as i32,
        charge_id: f.charge_id.clone(),
        statement_day: d.statement_day.to_string(),
        merchant_id: f
            .merchant_id
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
        deduction_id: f.deduction_id.clone().unwrap_or_default(),
        our_status: f.our_status.clone().unwrap_or_default(),
        our_amount: f.our_amount.map(|m| m.amount_text()).unwrap_or_default(),
        bank_amount: f.bank_amount.map(|m| m.amount_text()).unwrap_or_default(),
        bank_status: f
            .bank_status
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        currency_code: currency.map(|c| c.code().to_owned()).unwrap_or_default(),
        lines: i64::try_from(f.lines).unwrap_or(i64::MAX),
        import_id: d.import_id.clone(),
        created_at: Some(convert::to_timestamp(d.created_at)),
        resolutions: resolutions.iter().map(to_resolution).collect(),
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[tonic::async_trait]
impl SettlementRpc for SettlementApi {
    #[tracing::instrument(skip_all, fields(rpc = "GetSettlementSummary"))]
    async fn get_settlement_summary(
        &self,
        request: Request<pb::GetSettlementSummaryRequest>,
    ) -> Result<Response<pb::GetSettlementSummaryResponse>, Status> {
        let actor = authorize(&self.mandates, &request, Rpc::GetSettlementSummary, None).await?;
        let pb::GetSettlementSummaryRequest {
            from_day,
            to_day,
            merchant_id,
        } = request.into_inner();
        let from = parse_day("from_day", &from_day).map_err(bad)?;
        let to = parse_day("to_day", &to_day).map_err(bad)?;
        let range = DayRange::new(from, to).map_err(bad)?;
        let merchant = optional_merchant(&merchant_id)?;
        let rows = self.settlement.summary(&actor, range, merchant).await?;
        let rows = rows
            .iter()
            .map(to_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(pb::GetSettlementSummaryResponse { rows }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetSettlementSchedule"))]
    async fn get_settlement_schedule(
        &self,
        request: Request<pb::GetSettlementScheduleRequest>,
    ) -> Result<Response<pb::GetSettlementScheduleResponse>, Status> {
        let actor = authorize(&self.mandates, &request, Rpc::GetSettlementSchedule, None).await?;
        let pb::GetSettlementScheduleRequest { merchant_id } = request.into_inner();
        let merchant = optional_merchant(&merchant_id)?;
        let schedule = self.settlement.schedule(&actor, merchant).await?;
        Ok(Response::new(pb::GetSettlementScheduleResponse {
            schedule: Some(to_schedule(&schedule)),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "SetSettlementSchedule"))]
    async fn set_settlement_schedule(
        &self,
        request: Request<pb::SetSettlementScheduleRequest>,
    ) -> Result<Response<pb::SetSettlementScheduleResponse>, Status> {
        let actor = authorize(&self.mandates, &request, Rpc::SetSettlementSchedule, None).await?;
        let pb::SetSettlementScheduleRequest {
            merchant_id,
            cutoff_minute,
            timezone,
            reason,
        } = request.into_inner();
        let merchant = MerchantId::parse("merchant_id", &merchant_id).map_err(bad)?;
        let cutoff =
            SettlementSchedule::parse_cutoff("cutoff_minute", cutoff_minute).map_err(bad)?;
        let zone = TimeZoneName::parse("timezone", &timezone).map_err(bad)?;
        crate::domain::text::check_required_text("reason", &reason).map_err(bad)?;
        let service = self.settlement.clone();
        let (schedule, changed) = detached(async move {
            service
                .set_schedule(&actor, merchant, cutoff, zone, &reason)
                .await
        })
        .await?;
        Ok(Response::new(pb::SetSettlementScheduleResponse {
            schedule: Some(to_schedule(&schedule)),
            changed,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ImportStatement"))]
    async fn import_statement(
        &self,
        request: Request<pb::ImportStatementRequest>,
    ) -> Result<Response<pb::ImportStatementResponse>, Status> {
        let actor = authorize(&self.mandates, &request, Rpc::ImportStatement, None).await?;
        let pb::ImportStatementRequest { statement_day, csv } = request.into_inner();
        let day = parse_day("statement_day", &statement_day).map_err(bad)?;
        let service = self.settlement.clone();
        let imported =
            detached(async move { service.import_statement(&actor, day, &csv).await }).await?;
        let import = &imported.import;
        Ok(Response::new(pb::ImportStatementResponse {
            import_id: import.id.clone(),
            lines: count(import.lines),
            found: count(import.found),
            new_discrepancies: if imported.replayed {
                0
            } else {
                count(import.new)
            },
            replayed: imported.replayed,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListDiscrepancies"))]
    async fn list_discrepancies(
        &self,
        request: Request<pb::ListDiscrepanciesRequest>,
    ) -> Result<Response<pb::ListDiscrepanciesResponse>, Status> {
        let actor = authorize(&self.mandates, &request, Rpc::ListDiscrepancies, None).await?;
        let pb::ListDiscrepanciesRequest {
            status,
            statement_day,
            merchant_id,
            page_size,
            page_token,
        } = request.into_inner();
        let settled = match pb::DiscrepancyStatus::try_from(status) {
            Ok(pb::DiscrepancyStatus::Unspecified) => None,
            Ok(pb::DiscrepancyStatus::Open) => Some(false),
            Ok(pb::DiscrepancyStatus::Resolved) => Some(true),
            Err(_) => {
                return Err(bad(FieldViolation::new(
                    "status",
                    format!("unknown value {status}"),
                )));
            }
        };
        let statement_day = (!statement_day.is_empty())
            .then(|| parse_day("statement_day", &statement_day).map(|d| d.to_string()))
            .transpose()
            .map_err(bad)?;
        let limit = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(bad(FieldViolation::new(
                    "page_size",
                    format!("must be at most {MAX_PAGE_SIZE}"),
                )));
            }
            n => n,
        };
        let query = DiscrepancyQuery {
            settled,
            statement_day,
            merchant_id: optional_merchant(&merchant_id)?,
            before: decode_page_token(&page_token).map_err(bad)?,
            limit: limit + 1,
        };
        let mut found = self.settlement.list_discrepancies(&actor, query).await?;
        let next_page_token = if found.len() > limit as usize {
            found.truncate(limit as usize);
            found
                .last()
                .map(|(d, _)| encode_page_token(&d.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListDiscrepanciesResponse {
            discrepancies: found.iter().map(|(d, r)| to_discrepancy(d, r)).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ResolveDiscrepancy"))]
    async fn resolve_discrepancy(
        &self,
        request: Request<pb::ResolveDiscrepancyRequest>,
    ) -> Result<Response<pb::ResolveDiscrepancyResponse>, Status> {
        let actor = authorize(&self.mandates, &request, Rpc::ResolveDiscrepancy, None).await?;
        let message = request.into_inner();
        let fingerprint = fingerprint(Rpc::ResolveDiscrepancy, &message);
        let pb::ResolveDiscrepancyRequest {
            request_id,
            discrepancy_id,
            action: action_value,
            note,
        } = message;
        crate::domain::text::check_identifier("request_id", &request_id).map_err(bad)?;
        crate::domain::text::check_identifier("discrepancy_id", &discrepancy_id).map_err(bad)?;
        let action = action(action_value).map_err(bad)?;
        crate::domain::text::check_required_text("note", &note).map_err(bad)?;
        let req = ResolveRequest {
            request_id,
            fingerprint,
            discrepancy_id,
            action,
            note,
        };
        let service = self.settlement.clone();
        let ((discrepancy, resolutions), resolution, replayed) =
            detached(async move { service.resolve(&actor, req).await }).await?;
        Ok(Response::new(pb::ResolveDiscrepancyResponse {
            discrepancy: Some(to_discrepancy(&discrepancy, &resolutions)),
            resolution: Some(to_resolution(&resolution)),
            replayed,
        }))
    }
}
