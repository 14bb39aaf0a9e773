//! Access refusals on real resources (DESIGN §2): another tenant's mandate, deduction or
//! approval asked for (answered NOT_FOUND), or a role refused on a named mandate. Each is
//! recorded against the *caller*, on its own chain (`caller:<scope>`), never on the chain of the
//! resource it named: probing another tenant neither grows nor slows that tenant's records
//! (DESIGN §9.6). Refusals are coalesced per caller: the first of a window is appended at once,
//! the rest are counted in memory and appended as one summary event when the window ends, so a
//! flood of probes costs one or two events per caller and window, not one per probe.
//!
//! What a crash loses is the count of the window in progress, never its first refusal.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::{Error, Rpc};
use crate::clock::Clock;
use crate::domain::actor::Actor;
use crate::domain::audit::AuditDraft;
use crate::storage::Store;

/// How long one caller's refusals are coalesced into one summary event.
pub const REFUSAL_WINDOW: SignedDuration = SignedDuration::from_secs(60);
/// Callers with a window open at once; past it, every open window is summarised at once. Each
/// needs a valid token, so this is far above what real traffic holds.
const MAX_OPEN_WINDOWS: usize = 10_000;

/// Why access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The resource belongs to another tenant (answered NOT_FOUND).
    OtherTenant,
    /// The caller's role may not call the RPC (answered PERMISSION_DENIED).
    RoleNotAllowed,
}

impl RefusalReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::OtherTenant => "OTHER_TENANT",
            Self::RoleNotAllowed => "ROLE_NOT_ALLOWED",
        }
    }
}

/// One refused call on a named resource.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub rpc: Rpc,
    pub reason: RefusalReason,
    /// `mandate`, `deduction` or `one-off approval`.
    pub resource: &'static str,
    pub resource_id: String,
}

/// A caller's open window: when it started, the refusals after the first, the last of them.
struct Window {
    actor: Actor,
    started: Timestamp,
    more: u64,
    last: Refusal,
}

/// Records refusals on the callers' own chains, coalesced (see the module docs).
pub struct RefusalLog {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    open: Mutex<HashMap<String, Window>>,
}

impl RefusalLog {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Records `refusal` by `actor`: appended now if it opens the caller's window, counted
    /// otherwise.
    pub async fn record(&self, actor: &Actor, refusal: Refusal) -> Result<(), Error> {
        let now = self.clock.now();
        let chain = actor.own_chain_id();
        let ended = {
            let mut open = self.open.lock().expect("refusal windows lock");
            let full = open.len() >= MAX_OPEN_WINDOWS;
            let ended = match open.entry(chain.clone()) {
                Entry::Occupied(mut window) if now < window_end(window.get().started) => {
                    let window = window.get_mut();
                    window.more += 1;
                    window.last = refusal;
                    return Ok(());
                }
                Entry::Occupied(window) => vec![window.remove()],
                Entry::Vacant(_) if full => open.drain().map(|(_, window)| window).collect(),
                Entry::Vacant(_) => vec![],
            };
            open.insert(
                chain,
                Window {
                    actor: actor.clone(),
                    started: now,
                    more: 0,
                    last: refusal.clone(),
                },
            );
            ended
        };
        self.summarise(ended, now).await?;
        let details = json!({
            "rpc": refusal.rpc.name(),
            "resource": refusal.resource,
            "resource_id": refusal.resource_id,
            "refusals": 1,
        });
        self.store
            .append_audit(&event(actor, refusal.reason, now, details))
            .await?;
        tracing::warn!(
            role = actor.role.as_str(),
            rpc = refusal.rpc.name(),
            resource = refusal.resource,
            reason = refusal.reason.as_str(),
            "access refused"
        );
        Ok(())
    }

    /// Appends the summary of every window that has ended (all of them with `all`, at
    /// shutdown); returns how many windows it closed.
    pub async fn flush(&self, all: bool) -> Result<usize, Error> {
        let now = self.clock.now();
        let ended: Vec<Window> = {
            let mut open = self.open.lock().expect("refusal windows lock");
            let keys: Vec<String> = open
                .iter()
                .filter(|(_, window)| all || now >= window_end(window.started))
                .map(|(key, _)| key.clone())
                .collect();
            keys.iter().filter_map(|key| open.remove(key)).collect()
        };
        let closed = ended.len();
        self.summarise(ended, now).await?;
        Ok(closed)
    }

    /// One summary event per window that counted refusals after its first.
    async fn summarise(&self, windows: Vec<Window>, now: Timestamp) -> Result<(), Error> {
        for window in windows.into_iter().filter(|w| w.more > 0) {
            let details = json!({
                "rpc": window.last.rpc.name(),
                "resource": window.last.resource,
                "resource_id": window.last.resource_id,
                "refusals": window.more,
                "coalesced": true,
                "window_start": window.started.to_string(),
                "window_end": window_end(window.started).min(now).to_string(),
            });
            let draft = event(&window.actor, window.last.reason, now, details);
            self.store.append_audit(&draft).await?;
        }
        Ok(())
    }
}

fn window_end(started: Timestamp) -> Timestamp {
    started
        .checked_add(REFUSAL_WINDOW)
        .unwrap_or(Timestamp::MAX)
}

/// An ACCESS_DENIED event on the caller's own chain.
fn event(
    actor: &Actor,
    reason: RefusalReason,
    at: Timestamp,
    details: serde_json::Value,
) -> AuditDraft {
    let mut draft = AuditDraft::new(at, actor, "ACCESS_DENIED", "DENIED");
    draft.chain = Some(actor.own_chain_id());
    draft.merchant_id = actor.merchant_id.as_ref().map(ToString::to_string);
    draft.reason_code = Some(reason.as_str().to_owned());
    draft.details = details.to_string();
    draft
}
