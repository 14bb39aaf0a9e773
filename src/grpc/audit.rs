//! `withholding.v1.AuditService` handlers: requests converted by destructuring every field,
//! streams fed from a task that reads one page at a time (a slow reader holds the task at its
//! channel, so the server never holds more than a page and the channel's few messages).

use std::pin::Pin;

use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{self, optional_identifier, to_mandate, to_timestamp};
use super::{authorize, bad, decode_page_token, encode_page_token};
use crate::domain::FieldViolation;
use crate::domain::audit::{AuditEvent, AuditFilter, BrokenLink};
use crate::domain::checkpoint::Checkpoint;
use crate::domain::ids::{MandateId, MerchantId};
use crate::domain::terms::TimeZoneName;
use crate::pb;
use crate::pb::audit_service_server::AuditService as AuditRpc;
use crate::service::{
    AuditService, BlockedQuery, MandateService, Progress, Rpc, SignedCheckpoint, VerifyOutcome,
    VerifyScope,
};

/// Messages a stream buffers ahead of a slow reader.
const STREAM_BUFFER: usize = 64;

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Clone)]
pub struct AuditApi {
    audit: AuditService,
    mandates: MandateService,
}

impl AuditApi {
    pub fn new(audit: AuditService, mandates: MandateService) -> Self {
        Self { audit, mandates }
    }
}

fn filter(value: Option<pb::AuditEventFilter>) -> Result<AuditFilter, FieldViolation> {
    let pb::AuditEventFilter {
        merchant_id,
        payer_id,
        mandate_id,
        deduction_id,
        action,
        outcome,
        reason_code,
        actor_role,
        actor_subject,
        from,
        to,
    } = value.unwrap_or_default();
    let from = convert::timestamp("filter.from", from)?;
    let to = convert::timestamp("filter.to", to)?;
    if let (Some(from), Some(to)) = (from, to)
        && to <= from
    {
        return Err(FieldViolation::new(
            "filter.to",
            "must be after filter.from",
        ));
    }
    Ok(AuditFilter {
        merchant_id: optional_identifier("filter.merchant_id", &merchant_id)?,
        payer_id: optional_identifier("filter.payer_id", &payer_id)?,
        mandate_id: optional_identifier("filter.mandate_id", &mandate_id)?,
        deduction_id: optional_identifier("filter.deduction_id", &deduction_id)?,
        action: optional_identifier("filter.action", &action)?,
        outcome: optional_identifier("filter.outcome", &outcome)?,
        reason_code: optional_identifier("filter.reason_code", &reason_code)?,
        actor_role: optional_identifier("filter.actor_role", &actor_role)?,
        actor_subject: optional_identifier("filter.actor_subject", &actor_subject)?,
        from,
        to,
        action_prefix: None,
        blocked_only: false,
    })
}

fn page_token(token: &str) -> Result<Option<i64>, FieldViolation> {
    let invalid = || FieldViolation::new("page_token", "is not a token this service issued");
    decode_page_token(token)?
        .map(|text| text.parse::<i64>().map_err(|_| invalid()))
        .transpose()
}

fn next_token(next: Option<i64>) -> String {
    next.map(|seq| encode_page_token(&seq.to_string()))
        .unwrap_or_default()
}

pub fn to_event(event: &AuditEvent) -> pb::AuditEvent {
    let AuditEvent {
        seq,
        chain_id,
        chain_seq,
        draft,
        prev_hash,
        hash,
    } = event;
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    pb::AuditEvent {
        seq: *seq,
        chain_id: chain_id.clone(),
        chain_seq: *chain_seq,
        at: Some(to_timestamp(draft.at)),
        actor_role: draft.actor_role.clone(),
        actor_subject: draft.actor_subject.clone(),
        merchant_id: text(&draft.merchant_id),
        payer_id: text(&draft.payer_id),
        mandate_id: text(&draft.mandate_id),
        deduction_id: text(&draft.deduction_id),
        action: draft.action.clone(),
        outcome: draft.outcome.clone(),
        reason_code: text(&draft.reason_code),
        request_id: text(&draft.request_id),
        details: draft.details.clone(),
        prev_hash: prev_hash.clone(),
        hash: hash.clone(),
    }
}

pub fn to_checkpoint(signed: &SignedCheckpoint) -> pb::AuditCheckpoint {
    let SignedCheckpoint {
        checkpoint,
        public_key,
        key_id,
        signature,
    } = signed;
    pb::AuditCheckpoint {
        seq: checkpoint.seq,
        at: Some(to_timestamp(checkpoint.at)),
        chains: checkpoint.chains,
        digest: checkpoint.digest.clone(),
        public_key: public_key.clone(),
        key_id: key_id.clone(),
        signature: signature.clone(),
        json: checkpoint_json(signed),
    }
}

/// The file form of a checkpoint (what `withholding audit verify --checkpoint` reads).
pub fn checkpoint_json(signed: &SignedCheckpoint) -> String {
    serde_json::json!({
        "seq": signed.checkpoint.seq,
        "at": signed.checkpoint.at.to_string(),
        "chains": signed.checkpoint.chains,
        "digest": signed.checkpoint.digest,
        "public_key": signed.public_key,
        "key_id": signed.key_id,
        "signature": signed.signature,
    })
    .to_string()
}

/// Reads the file form back.
pub fn checkpoint_from_json(text: &str) -> Result<SignedCheckpoint, String> {
    #[derive(serde::Deserialize)]
    struct File {
        seq: i64,
        at: Timestamp,
        chains: i64,
        digest: String,
        public_key: String,
        key_id: String,
        signature: String,
    }
    let file: File =
        serde_json::from_str(text).map_err(|e| format!("not a checkpoint file: {e}"))?;
    Ok(SignedCheckpoint {
        checkpoint: Checkpoint {
            seq: file.seq,
            at: file.at,
            chains: file.chains,
            digest: file.digest,
        },
        public_key: file.public_key,
        key_id: file.key_id,
        signature: file.signature,
    })
}

fn checkpoint_from(value: pb::AuditCheckpoint) -> Result<SignedCheckpoint, FieldViolation> {
    let pb::AuditCheckpoint {
        seq,
        at,
        chains,
        digest,
        public_key,
        key_id,
        signature,
        // The same fields again, for keeping in a file; the fields above are what is checked.
        json: _,
    } = value;
    let at = convert::timestamp("checkpoint.at", at)?
        .ok_or_else(|| FieldViolation::new("checkpoint.at", "is required"))?;
    Ok(SignedCheckpoint {
        checkpoint: Checkpoint {
            seq,
            at,
            chains,
            digest,
        },
        public_key,
        key_id,
        signature,
    })
}

fn to_broken(link: &BrokenLink) -> pb::BrokenLink {
    pb::BrokenLink {
        chain_id: link.chain_id.clone(),
        chain_seq: link.chain_seq,
        seq: link.seq,
        problem: link.problem.to_owned(),
        expected_hash: link.expected_hash.clone(),
        found_hash: link.found_hash.clone(),
    }
}

fn to_progress(progress: &Progress) -> pb::VerifyAuditChainResponse {
    pb::VerifyAuditChainResponse {
        chains_verified: progress.chains_verified,
        events_verified: progress.events_verified,
        chains_total: progress.chains_total,
        ..Default::default()
    }
}

fn to_outcome(outcome: &VerifyOutcome) -> pb::VerifyAuditChainResponse {
    pb::VerifyAuditChainResponse {
        done: true,
        intact: outcome.broken.is_none(),
        broken: outcome.broken.as_ref().map(to_broken),
        checkpoint_extended: outcome.checkpoint_extended.unwrap_or(false),
        ..to_progress(&outcome.progress)
    }
}

#[tonic::async_trait]
impl AuditRpc for AuditApi {
    type ExportAuditEventsStream = Streamed<pb::ExportAuditEventsResponse>;
    type VerifyAuditChainStream = Streamed<pb::VerifyAuditChainResponse>;

    #[tracing::instrument(skip_all, fields(rpc = "QueryAuditEvents"))]
    async fn query_audit_events(
        &self,
        request: Request<pb::QueryAuditEventsRequest>,
    ) -> Result<Response<pb::QueryAuditEventsResponse>, Status> {
        let actor = authorize(&self.mandates, &request, Rpc::QueryAuditEvents, None).await?;
        let pb::QueryAuditEventsRequest {
            filter: wanted,
            newest_first,
            page_size,
            page_token: token,
        } = request.into_inner();
        let wanted = filter(wanted).map_err(bad)?;
        let after = page_token(&token).map_err(bad)?;
        let page = self
            .audit
            .query(&actor, wanted, newest_first, page_size, after)
            .await?;
        Ok(Response::new(pb::QueryAuditEventsResponse {
            events: page.events.iter().map(to_event).collect(),
            next_page_token: next_token(page.next),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ExportAuditEvents"))]
    async fn export_audit_events(
        &self,
        request: Request<pb::ExportAuditEventsRequest>,
    ) -> Result<Response<Self::ExportAuditEventsStream>, Status> {
        let actor = authorize(&self.mandates, &request, Rpc::ExportAuditEvents, None).await?;
        let pb::ExportAuditEventsRequest {
            filter: wanted,
            newest_first,
        } = request.into_inner();
        let wanted = filter(wanted).map_err(bad)?;
        let mut export = self.audit.export(&actor, wanted, newest_first).await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            loop {
                match export.next_page().await {
                    Ok(page) if page.is_empty() => break,
                    Ok(page) => {
                        for event in &page {
                            // The caller went away: stop reading.
                            let message = pb::ExportAuditEventsResponse {
                                event: Some(to_event(event)),
                            };
                            if tx.send(Ok(message)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetMandateHistory"))]
    async fn get_mandate_history(
        &self,
        request: Request<pb::GetMandateHistoryRequest>,
    ) -> Result<Response<pb::GetMandateHistoryResponse>, Status> {
        let pb::GetMandateHistoryRequest {
            mandate_id,
            page_size,
            page_token: token,
        } = request.get_ref().clone();
        let actor = authorize(
            &self.mandates,
            &request,
            Rpc::GetMandateHistory,
            Some(&mandate_id),
        )
        .await?;
        let id = MandateId::parse("mandate_id", &mandate_id).map_err(bad)?;
        let after = page_token(&token).map_err(bad)?;
        let history = self.audit.history(&actor, &id, page_size, after).await?;
        Ok(Response::new(pb::GetMandateHistoryResponse {
            versions: history
                .versions
                .iter()
                .map(|v| pb::MandateVersion {
                    version: v.version,
                    recorded_at: Some(to_timestamp(v.recorded_at)),
                    mandate: Some(to_mandate(&v.mandate)),
                    event: v.event.as_ref().map(to_event),
                })
                .collect(),
            events: history.events.events.iter().map(to_event).collect(),
            next_page_token: next_token(history.events.next),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetBlockedAttempts"))]
    async fn get_blocked_attempts(
        &self,
        request: Request<pb::GetBlockedAttemptsRequest>,
    ) -> Result<Response<pb::GetBlockedAttemptsResponse>, Status> {
        let actor = authorize(&self.mandates, &request, Rpc::GetBlockedAttempts, None).await?;
        let pb::GetBlockedAttemptsRequest {
            merchant_id,
            from,
            to,
            time_zone,
            examples_per_row,
        } = request.into_inner();
        let required = |field: &str, value| {
            convert::timestamp(field, value)?
                .ok_or_else(|| FieldViolation::new(field, "is required"))
        };
        let query = BlockedQuery {
            merchant_id: optional_identifier("merchant_id", &merchant_id).map_err(bad)?,
            from: required("from", from).map_err(bad)?,
            to: required("to", to).map_err(bad)?,
            time_zone: if time_zone.is_empty() {
                TimeZoneName::default()
            } else {
                TimeZoneName::parse("time_zone", &time_zone).map_err(bad)?
            },
            examples_per_row,
        };
        let (rows, events) = self.audit.blocked(&actor, query).await?;
        Ok(Response::new(pb::GetBlockedAttemptsResponse {
            rows: rows
                .iter()
                .map(|row| pb::BlockedAttempts {
                    merchant_id: row.merchant_id.clone(),
                    reason_code: row.reason_code.clone(),
                    day: row.day.clone(),
                    clawback: row.clawback,
                    denied: row.denied,
                    flagged: row.flagged,
                    examples: row.examples.iter().map(to_event).collect(),
                })
                .collect(),
            events,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "VerifyAuditChain"))]
    async fn verify_audit_chain(
        &self,
        request: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<Self::VerifyAuditChainStream>, Status> {
        let actor = authorize(&self.mandates, &request, Rpc::VerifyAuditChain, None).await?;
        let pb::VerifyAuditChainRequest {
            mandate_id,
            merchant_id,
            checkpoint,
        } = request.into_inner();
        let scope = match (mandate_id.is_empty(), merchant_id.is_empty()) {
            (true, true) => VerifyScope::All,
            (false, true) => {
                VerifyScope::Mandate(MandateId::parse("mandate_id", &mandate_id).map_err(bad)?)
            }
            (true, false) => {
                VerifyScope::Merchant(MerchantId::parse("merchant_id", &merchant_id).map_err(bad)?)
            }
            (false, false) => {
                return Err(bad(FieldViolation::new(
                    "merchant_id",
                    "give mandate_id or merchant_id, not both",
                )));
            }
        };
        let checkpoint = checkpoint.map(checkpoint_from).transpose().map_err(bad)?;
        let (progress_tx, mut progress_rx) = mpsc::channel::<Progress>(STREAM_BUFFER);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let audit = self.audit.clone();
        let work =
            tokio::spawn(async move { audit.verify(&actor, scope, checkpoint, progress_tx).await });
        let forward = tx.clone();
        let forwarder = tokio::spawn(async move {
            while let Some(progress) = progress_rx.recv().await {
                if forward.send(Ok(to_progress(&progress))).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let last = match work.await {
                Ok(Ok(outcome)) => Ok(to_outcome(&outcome)),
                Ok(Err(e)) => Err(Status::from(e)),
                Err(e) => {
                    tracing::error!(error = %e, "verification task failed");
                    Err(Status::internal("internal error"))
                }
            };
            // The verification dropped its progress sender: the reports end, then the result.
            let _ = forwarder.await;
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetAuditCheckpoint"))]
    async fn get_audit_checkpoint(
        &self,
        request: Request<pb::GetAuditCheckpointRequest>,
    ) -> Result<Response<pb::GetAuditCheckpointResponse>, Status> {
        let actor = authorize(&self.mandates, &request, Rpc::GetAuditCheckpoint, None).await?;
        let pb::GetAuditCheckpointRequest {} = request.into_inner();
        let signed = self.audit.checkpoint(&actor).await?;
        Ok(Response::new(pb::GetAuditCheckpointResponse {
            checkpoint: Some(to_checkpoint(&signed)),
        }))
    }
}
