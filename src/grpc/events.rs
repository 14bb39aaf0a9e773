//! `withholding.v1.EventService` handlers: `WatchEvents`, the caller's events as a stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tonic::{Request, Response, Status};

use super::{authorize, convert};
use crate::domain::deduction::DeductionStatus;
use crate::domain::event::{Event, EventKind};
use crate::domain::mandate::MandateStatus;
use crate::pb;
use crate::pb::event_service_server::EventService as EventRpc;
use crate::service::{Delivered, EventService, EventStream, MandateService, Rpc};

#[derive(Clone)]
pub struct EventApi {
    events: EventService,
    mandates: MandateService,
}

impl EventApi {
    pub fn new(events: EventService, mandates: MandateService) -> Self {
        Self { events, mandates }
    }
}

fn to_kind(kind: EventKind) -> pb::EventKind {
    use pb::EventKind as P;
    match kind {
        EventKind::MandateCreated => P::MandateCreated,
        EventKind::MandateConfirmed => P::MandateConfirmed,
        EventKind::MandateFundingSourcesSet => P::MandateFundingSourcesSet,
        EventKind::MandatePaused => P::MandatePaused,
        EventKind::MandateResumed => P::MandateResumed,
        EventKind::MandateSuspended => P::MandateSuspended,
        EventKind::MandateReinstated => P::MandateReinstated,
        EventKind::MandateRevoked => P::MandateRevoked,
        EventKind::MandateTerminated => P::MandateTerminated,
        EventKind::MandateExpired => P::MandateExpired,
        EventKind::MandateConsumed => P::MandateConsumed,
        EventKind::MandateAmended => P::MandateAmended,
        EventKind::MandateAmendmentPending => P::MandateAmendmentPending,
        EventKind::MandateAmendmentConfirmed => P::MandateAmendmentConfirmed,
        EventKind::MandateUpdated => P::MandateUpdated,
        EventKind::DeductionDeclined => P::DeductionDeclined,
        EventKind::DeductionProcessing => P::DeductionProcessing,
        EventKind::DeductionSucceeded => P::DeductionSucceeded,
        EventKind::DeductionFailed => P::DeductionFailed,
        EventKind::DeductionPending => P::DeductionPending,
        EventKind::DeductionRefunded => P::DeductionRefunded,
        EventKind::DeductionPartiallyRefunded => P::DeductionPartiallyRefunded,
    }
}

fn to_event(event: Event) -> pb::Event {
    let Event {
        cursor,
        at,
        merchant_id,
        payer_id,
        mandate_id,
        deduction_id,
        kind,
        status,
        mandate_version,
    } = event;
    let (mandate_status, deduction_status) = if kind.is_mandate() {
        let status = MandateStatus::parse(&status)
            .map_or(pb::MandateStatus::Unspecified, convert::to_status);
        (status, pb::DeductionStatus::Unspecified)
    } else {
        let status = DeductionStatus::parse(&status).map_or(
            pb::DeductionStatus::Unspecified,
            convert::to_deduction_status,
        );
        (pb::MandateStatus::Unspecified, status)
    };
    pb::Event {
        cursor: cursor.token(),
        kind: to_kind(kind) as i32,
        merchant_id,
        payer_id,
        mandate_id,
        deduction_id: deduction_id.unwrap_or_default(),
        mandate_status: mandate_status as i32,
        deduction_status: deduction_status as i32,
        mandate_version,
        occurred_at: Some(convert::to_timestamp(at)),
    }
}

fn to_response(delivered: Delivered) -> pb::WatchEventsResponse {
    match delivered {
        Delivered::Event(event) => pb::WatchEventsResponse {
            cursor: event.cursor.token(),
            event: Some(to_event(event)),
        },
        Delivered::Progress(cursor) => pb::WatchEventsResponse {
            cursor: cursor.token(),
            event: None,
        },
    }
}

/// The service's stream as messages and statuses.
pub struct WatchStream(EventStream);

impl Stream for WatchStream {
    type Item = Result<pb::WatchEventsResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|item| item.map(|item| item.map(to_response).map_err(Status::from)))
    }
}

#[tonic::async_trait]
impl EventRpc for EventApi {
    type WatchEventsStream = WatchStream;

    #[tracing::instrument(skip_all, fields(rpc = "WatchEvents"))]
    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let actor = authorize(&self.mandates, &request, Rpc::WatchEvents, None).await?;
        let pb::WatchEventsRequest { cursor } = request.into_inner();
        let stream = self.events.watch(&actor, &cursor).await?;
        Ok(Response::new(WatchStream(stream)))
    }
}
