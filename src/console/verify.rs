//! Verify: a chain verification run from the console — its progress shown while it runs (the
//! page asks to be reloaded each second; no script), the first broken link named — with or without
//! a checkpoint file the auditor uploads; and a checkpoint to download and keep. A run belongs
//! to whoever started it; the console keeps the last [`KEPT`] runs in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{Multipart, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use jiff::Timestamp;
use maud::{Markup, html};
use tokio::sync::mpsc;

use super::pages::when;
use super::{Console, Failure, Section, Viewer, layout};
use crate::domain::FieldViolation;
use crate::domain::actor::Actor;
use crate::domain::ids::{MandateId, MerchantId};
use crate::grpc::{checkpoint_from_json, checkpoint_json};
use crate::service::{Error, Progress, Rpc, SignedCheckpoint, VerifyOutcome, VerifyScope};

/// Runs kept for their owners to look at.
pub const KEPT: usize = 100;
/// Runs at once, console-wide: each reads every event of its scope.
pub const MAX_RUNNING: usize = 2;

#[derive(Debug, Clone)]
enum Run {
    Running(Progress),
    Done(VerifyOutcome),
    Failed(String),
}

struct Job {
    owner: Actor,
    scope: String,
    checkpoint_seq: Option<i64>,
    started_at: Timestamp,
    state: Mutex<(Run, Option<Timestamp>)>,
}

/// The last verification and checkpoint, for the Today page.
#[derive(Debug, Clone, Default)]
pub struct ChainStatus {
    last_run: Option<(Timestamp, String, Result<bool, String>)>,
    last_checkpoint: Option<(Timestamp, i64, String)>,
}

#[derive(Default)]
pub struct Jobs {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Arc<Job>>,
    order: VecDeque<String>,
    status: ChainStatus,
}

impl Jobs {
    pub fn status(&self) -> ChainStatus {
        self.inner.lock().expect("jobs lock").status.clone()
    }

    fn add(&self, job: Arc<Job>) -> Result<String, Failure> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id)
            .map_err(|e| Failure::from(Error::Internal(format!("random source: {e}").into())))?;
        let id = hex::encode(id);
        let mut inner = self.inner.lock().expect("jobs lock");
        let running = inner
            .jobs
            .values()
            .filter(|j| matches!(j.state.lock().expect("job lock").0, Run::Running(_)))
            .count();
        if running >= MAX_RUNNING {
            return Err(Error::ResourceExhausted(format!(
                "{MAX_RUNNING} verifications are running; wait for one to finish"
            ))
            .into());
        }
        inner.jobs.insert(id.clone(), job);
        inner.order.push_back(id.clone());
        while inner.order.len() > KEPT {
            if let Some(old) = inner.order.pop_front() {
                inner.jobs.remove(&old);
            }
        }
        Ok(id)
    }

    fn get(&self, id: &str, viewer: &Actor) -> Option<Arc<Job>> {
        let inner = self.inner.lock().expect("jobs lock");
        inner.jobs.get(id).filter(|j| j.owner == *viewer).cloned()
    }

    fn finished(&self, job: &Job, at: Timestamp) {
        let state = job.state.lock().expect("job lock").0.clone();
        let result = match state {
            Run::Done(outcome) => {
                Ok(outcome.broken.is_none() && outcome.checkpoint_extended != Some(false))
            }
            Run::Failed(message) => Err(message),
            Run::Running(_) => return,
        };
        self.inner.lock().expect("jobs lock").status.last_run =
            Some((at, job.scope.clone(), result));
    }

    fn checkpoint_taken(&self, signed: &SignedCheckpoint, by: &Actor) {
        self.inner.lock().expect("jobs lock").status.last_checkpoint = Some((
            signed.checkpoint.at,
            signed.checkpoint.seq,
            by.subject.clone(),
        ));
    }
}

impl ChainStatus {
    pub fn render(&self, console: &Console) -> Markup {
        html! {
            dl.summary {
                dt { "Last verification" }
                dd #last-verification {
                    @match &self.last_run {
                        None => "none run from this console since it started",
                        Some((at, scope, Ok(true))) => {
                            span.ok { "intact" } " (" (scope) ", " (when(console, *at)) ")"
                        }
                        Some((at, scope, Ok(false))) => {
                            span.broken { "BROKEN" } " (" (scope) ", " (when(console, *at)) ")"
                        }
                        Some((at, scope, Err(message))) => {
                            "could not run: " (message) " (" (scope) ", " (when(console, *at)) ")"
                        }
                    }
                }
                dt { "Last checkpoint" }
                dd {
                    @match &self.last_checkpoint {
                        None => "none taken from this console since it started",
                        Some((at, seq, by)) => {
                            "up to event " (seq) ", " (when(console, *at)) ", by " (by)
                        }
                    }
                }
            }
        }
    }
}

pub async fn form(State(console): State<Console>, viewer: Viewer) -> Result<Markup, Failure> {
    viewer.may(Rpc::VerifyAuditChain)?;
    let body = html! {
        form.verify method="post" action="/verify" enctype="multipart/form-data" {
            fieldset {
                legend { "What to verify" }
                label { input type="radio" name="scope" value="all" checked; " Everything I may see" }
                label { input type="radio" name="scope" value="merchant"; " One merchant" }
                label { input type="radio" name="scope" value="mandate"; " One mandate" }
                label { span { "Merchant or mandate id" } input type="text" name="target"; }
            }
            label {
                span { "A checkpoint kept earlier (optional)" }
                input type="file" name="checkpoint" accept=".json,application/json";
            }
            button type="submit" { "Verify" }
        }
        section {
            h2 { "Keep a checkpoint" }
            p { "A signed statement of every chain head now. Keep the file outside the service; verifying against it later proves the trail still extends it, even if a chain was rewritten together with its head." }
            form method="post" action="/verify/checkpoint" {
                button type="submit" { "Download a checkpoint" }
            }
        }
        section {
            h2 { "Status" }
            (console.0.verifications.status().render(&console))
        }
    };
    Ok(layout::page(
        &viewer,
        Section::Verify,
        "Verify the audit trail",
        body,
    ))
}

pub async fn start(
    State(console): State<Console>,
    viewer: Viewer,
    mut form: Multipart,
) -> Result<Response, Failure> {
    viewer.may(Rpc::VerifyAuditChain)?;
    let mut scope_kind = String::from("all");
    let mut target = String::new();
    let mut checkpoint: Option<SignedCheckpoint> = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| FieldViolation::new("form", e.body_text()))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        let text = field
            .text()
            .await
            .map_err(|e| FieldViolation::new("form", e.body_text()))?;
        match name.as_str() {
            "scope" => scope_kind = text,
            "target" => target = text.trim().to_owned(),
            "checkpoint" if !text.trim().is_empty() => {
                checkpoint = Some(
                    checkpoint_from_json(&text)
                        .map_err(|e| FieldViolation::new("checkpoint", e))?,
                );
            }
            _ => {}
        }
    }
    let scope = match scope_kind.as_str() {
        "all" => VerifyScope::All,
        "merchant" => VerifyScope::Merchant(MerchantId::parse("target", &target)?),
        "mandate" => VerifyScope::Mandate(MandateId::parse("target", &target)?),
        _ => return Err(FieldViolation::new("scope", "must be all, merchant or mandate").into()),
    };
    let scope_text = match &scope {
        VerifyScope::All => "everything".to_owned(),
        VerifyScope::Merchant(m) => format!("merchant {m}"),
        VerifyScope::Mandate(m) => format!("mandate {m}"),
    };
    let job = Arc::new(Job {
        owner: viewer.actor.clone(),
        scope: scope_text,
        checkpoint_seq: checkpoint.as_ref().map(|c| c.checkpoint.seq),
        started_at: console.now(),
        state: Mutex::new((Run::Running(Progress::default()), None)),
    });
    let id = console.0.verifications.add(job.clone())?;
    tokio::spawn(run(console, viewer.actor, scope, checkpoint, job));
    Ok(Redirect::to(&format!("/verify/{id}")).into_response())
}

async fn run(
    console: Console,
    actor: Actor,
    scope: VerifyScope,
    checkpoint: Option<SignedCheckpoint>,
    job: Arc<Job>,
) {
    let (tx, mut rx) = mpsc::channel::<Progress>(16);
    let progress_job = job.clone();
    let forward = tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            progress_job.state.lock().expect("job lock").0 = Run::Running(p);
        }
    });
    let result = console.0.audit.verify(&actor, scope, checkpoint, tx).await;
    let _ = forward.await;
    let now = console.now();
    *job.state.lock().expect("job lock") = (
        match result {
            Ok(outcome) => Run::Done(outcome),
            Err(e) => Run::Failed(e.to_string()),
        },
        Some(now),
    );
    console.0.verifications.finished(&job, now);
}

pub async fn progress(
    State(console): State<Console>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    viewer.may(Rpc::VerifyAuditChain)?;
    let job = console
        .0
        .verifications
        .get(&id, &viewer.actor)
        .ok_or(Error::NotFound {
            what: "verification",
        })?;
    let (state, finished_at) = job.state.lock().expect("job lock").clone();
    let running = matches!(state, Run::Running(_));
    let body = html! {
        p {
            "Scope: " (job.scope) ". Started " (when(&console, job.started_at)) "."
            @if let Some(seq) = job.checkpoint_seq { " Against the checkpoint up to event " (seq) "." }
        }
        @match &state {
            Run::Running(p) => {
                p #status.running { "Verifying… " (p.chains_verified) " of " (p.chains_total) " chains, " (p.events_verified) " events." }
                progress value=(p.chains_verified) max=(p.chains_total.max(1)) {}
            }
            Run::Done(outcome) => (outcome_view(&console, outcome, finished_at)),
            Run::Failed(message) => {
                p #status.broken { "The verification could not run: " (message) }
            }
        }
        p { a href=(Section::Verify.path()) { "Verify again" } }
    };
    let page = layout::page(&viewer, Section::Verify, "Verification", body);
    if running {
        // The browser reloads the page each second while the run goes on.
        return Ok((StatusCode::ACCEPTED, [(header::REFRESH, "1")], page).into_response());
    }
    Ok(page.into_response())
}

fn outcome_view(console: &Console, o: &VerifyOutcome, finished_at: Option<Timestamp>) -> Markup {
    let p = &o.progress;
    html! {
        @match &o.broken {
            None => p #status.ok { "Intact: " (p.chains_verified) " chains, " (p.events_verified) " events verified." }
            Some(b) => {
                p #status.broken { "BROKEN: " (b.problem) " on chain " (b.chain_id) " at position " (b.chain_seq) "." }
                dl.summary {
                    dt { "Event" } dd { (b.seq) }
                    dt { "Expected hash" } dd.hash { (b.expected_hash) }
                    dt { "Found hash" } dd.hash { (b.found_hash) }
                }
            }
        }
        @match o.checkpoint_extended {
            Some(true) => p #checkpoint.ok { "The trail extends the checkpoint." }
            Some(false) => p #checkpoint.broken { "The trail does NOT extend the checkpoint: a chain was rewritten since it was taken." }
            None => {}
        }
        @if let Some(at) = finished_at { p.hint { "Finished " (when(console, at)) "." } }
    }
}

/// A checkpoint as the file `withholding audit verify --checkpoint` reads.
pub async fn checkpoint(
    State(console): State<Console>,
    viewer: Viewer,
) -> Result<Response, Failure> {
    viewer.may(Rpc::GetAuditCheckpoint)?;
    let signed = console.0.audit.checkpoint(&viewer.actor).await?;
    console
        .0
        .verifications
        .checkpoint_taken(&signed, &viewer.actor);
    let name = format!("checkpoint-{}.json", signed.checkpoint.seq);
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        checkpoint_json(&signed),
    )
        .into_response())
}
