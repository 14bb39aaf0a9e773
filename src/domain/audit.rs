//! Audit events and their hash chains (DESIGN §6). An event's hash covers a canonical encoding
//! of every field and the previous event's hash, so any edit, insertion or removal inside a chain
//! shows up when the chain is recomputed.

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::actor::{Actor, Role};

/// `prev_hash` of a chain's first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation for the hash, so the encoding can evolve under a new tag.
const HASH_TAG: &[u8] = b"withholding.audit.v1";

/// An event before it is placed on its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDraft {
    pub at: Timestamp,
    pub actor_role: String,
    pub actor_subject: String,
    pub merchant_id: Option<String>,
    pub payer_id: Option<String>,
    pub mandate_id: Option<String>,
    pub deduction_id: Option<String>,
    pub action: String,
    /// `OK` for a change made, `DENIED` for a refusal.
    pub outcome: String,
    pub reason_code: Option<String>,
    pub request_id: Option<String>,
    /// A JSON object with sorted keys (serde_json's default map), stored and hashed as text.
    pub details: String,
    /// The chain, when it is not the one the ids above imply: events recorded against the
    /// caller (access refusals, on its own chain) rather than the resource they name. Not
    /// stored as such: an event read back has `None` here and its chain in `AuditEvent`.
    pub chain: Option<String>,
}

impl AuditDraft {
    pub fn new(at: Timestamp, actor: &Actor, action: &str, outcome: &str) -> Self {
        Self {
            at,
            actor_role: actor.role.as_str().to_owned(),
            actor_subject: actor.subject.clone(),
            merchant_id: None,
            payer_id: None,
            mandate_id: None,
            deduction_id: None,
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            reason_code: None,
            request_id: None,
            details: "{}".to_owned(),
            chain: None,
        }
    }

    /// What an auditor's read records (who looked at what), on the auditor's own chain and
    /// under its merchant if its token names one; `None` for any other caller, whose reads of
    /// its own data are not events.
    pub fn auditor_read(
        at: Timestamp,
        actor: &Actor,
        rpc: &str,
        what: serde_json::Value,
    ) -> Option<Self> {
        if actor.role != Role::Auditor {
            return None;
        }
        let mut draft = Self::new(at, actor, "AUDIT_READ", "OK");
        draft.chain = Some(actor.own_chain_id());
        draft.merchant_id = actor.merchant_id.as_ref().map(|m| m.to_string());
        draft.details = serde_json::json!({ "rpc": rpc, "read": what }).to_string();
        Some(draft)
    }

    /// What a person's view of a console page records (DESIGN §10): who saw which page (path
    /// and query), whatever their role, on the viewer's own chain and under its merchant if its
    /// token names one.
    pub fn console_view(at: Timestamp, actor: &Actor, page: &str) -> Self {
        let mut draft = Self::new(at, actor, CONSOLE_VIEW, "OK");
        draft.chain = Some(actor.own_chain_id());
        draft.merchant_id = actor.merchant_id.as_ref().map(|m| m.to_string());
        draft.details = serde_json::json!({ "page": page }).to_string();
        draft
    }

    /// The chain this event belongs to: the one set explicitly, else its mandate's, else its
    /// merchant's, else the service's.
    pub fn chain_id(&self) -> String {
        if let Some(chain) = &self.chain {
            return chain.clone();
        }
        match (&self.mandate_id, &self.merchant_id) {
            (Some(mandate), _) => mandate_chain_id(mandate),
            (None, Some(merchant)) => format!("merchant:{merchant}"),
            (None, None) => "system".to_owned(),
        }
    }
}

/// The chain of a mandate's events.
pub fn mandate_chain_id(mandate_id: &str) -> String {
    format!("mandate:{mandate_id}")
}

/// An event as stored: a draft placed at `chain_seq` on `chain_id`, after `prev_hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Global order of appends (assigned by the database).
    pub seq: i64,
    pub chain_id: String,
    /// 1-based position in the chain.
    pub chain_seq: i64,
    pub draft: AuditDraft,
    pub prev_hash: String,
    pub hash: String,
}

/// What a compliance query selects: every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub merchant_id: Option<String>,
    pub payer_id: Option<String>,
    pub mandate_id: Option<String>,
    pub deduction_id: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub reason_code: Option<String>,
    pub actor_role: Option<String>,
    pub actor_subject: Option<String>,
    /// `from <= at < to`.
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    /// Actions starting with this (`MANDATE_`: the mandate's own changes).
    pub action_prefix: Option<String>,
    /// Only refusals and flags ([`BLOCKED_OUTCOMES`]).
    pub blocked_only: bool,
}

/// The outcomes of an attempt that was refused (`DENIED`) or let through but reported
/// (`FLAGGED`).
pub const BLOCKED_OUTCOMES: [&str; 2] = ["DENIED", "FLAGGED"];

/// Reason codes of clawbacks: a refund taken back, one suspected of it, or clawback authority
/// asked for in a mandate or amendment.
pub const CLAWBACK_REASONS: [&str; 3] = [
    "REFUND_CLAWBACK_FORBIDDEN",
    "SUSPECTED_REFUND_RECOVERY",
    REFUND_RECOVERY_NOT_MANDATABLE,
];

/// The action of a console page view.
pub const CONSOLE_VIEW: &str = "CONSOLE_VIEW";

/// The reason of a mandate or amendment refused for naming the `REFUND_RECOVERY` purpose.
pub const REFUND_RECOVERY_NOT_MANDATABLE: &str = "REFUND_RECOVERY_NOT_MANDATABLE";

/// SHA-256 over the canonical encoding: every field length-prefixed (absent fields marked
/// apart from empty ones), the time as microseconds since the epoch.
pub fn event_hash(chain_id: &str, chain_seq: i64, draft: &AuditDraft, prev_hash: &str) -> String {
    let mut h = Sha256::new();
    h.update(HASH_TAG);
    let mut field = |value: Option<&str>| match value {
        None => h.update(u32::MAX.to_be_bytes()),
        Some(v) => {
            let len = u32::try_from(v.len()).expect("audit fields are bounded far below 4 GiB");
            h.update(len.to_be_bytes());
            h.update(v.as_bytes());
        }
    };
    field(Some(chain_id));
    field(Some(&chain_seq.to_string()));
    field(Some(&draft.at.as_microsecond().to_string()));
    field(Some(&draft.actor_role));
    field(Some(&draft.actor_subject));
    field(draft.merchant_id.as_deref());
    field(draft.payer_id.as_deref());
    field(draft.mandate_id.as_deref());
    field(draft.deduction_id.as_deref());
    field(Some(&draft.action));
    field(Some(&draft.outcome));
    field(draft.reason_code.as_deref());
    field(draft.request_id.as_deref());
    field(Some(&draft.details));
    field(Some(prev_hash));
    hex::encode(h.finalize())
}

/// The first place a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain {chain_id} is broken at position {chain_seq} (event {seq}): {problem}")]
pub struct BrokenLink {
    pub chain_id: String,
    pub chain_seq: i64,
    /// The event's global seq (0 where the position has no event).
    pub seq: i64,
    pub problem: &'static str,
    /// The hash the chain says belongs here, and the one found.
    pub expected_hash: String,
    pub found_hash: String,
}

/// Recomputes one chain event by event, in `chain_seq` order, holding only the last hash: a
/// chain of any length verifies in constant memory.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    chain_id: String,
    /// Position and hash of the last event verified (0 and the genesis hash before any).
    last_seq: i64,
    last_hash: String,
    last_event: i64,
}

impl ChainVerifier {
    pub fn new(chain_id: &str) -> Self {
        Self {
            chain_id: chain_id.to_owned(),
            last_seq: 0,
            last_hash: GENESIS_HASH.to_owned(),
            last_event: 0,
        }
    }

    /// Position of the last event verified.
    pub fn position(&self) -> i64 {
        self.last_seq
    }

    /// Checks the next event: in its place, linked to the one before, and hashing to its hash.
    pub fn push(&mut self, event: &AuditEvent) -> Result<(), BrokenLink> {
        let expected_seq = self.last_seq + 1;
        let broken = |problem, expected_hash: &str, found_hash: &str| BrokenLink {
            chain_id: self.chain_id.clone(),
            chain_seq: expected_seq,
            seq: event.seq,
            problem,
            expected_hash: expected_hash.to_owned(),
            found_hash: found_hash.to_owned(),
        };
        if event.chain_id != self.chain_id || event.chain_seq != expected_seq {
            return Err(broken(
                "position out of order or missing",
                &self.last_hash,
                &event.prev_hash,
            ));
        }
        if event.prev_hash != self.last_hash {
            return Err(broken(
                "prev_hash does not match the previous event",
                &self.last_hash,
                &event.prev_hash,
            ));
        }
        let hash = event_hash(
            &self.chain_id,
            event.chain_seq,
            &event.draft,
            &event.prev_hash,
        );
        if hash != event.hash {
            return Err(broken(
                "hash does not match the event's contents",
                &hash,
                &event.hash,
            ));
        }
        self.last_seq = expected_seq;
        self.last_hash = hash;
        self.last_event = event.seq;
        Ok(())
    }

    /// Checks the chain ended at its recorded head (`None`: no head row), so events removed
    /// from the end, or added after it, are caught too.
    pub fn finish(self, head: Option<(i64, &str)>) -> Result<(), BrokenLink> {
        match head {
            Some((seq, hash)) if seq == self.last_seq && hash == self.last_hash => Ok(()),
            None if self.last_seq == 0 => Ok(()),
            _ => Err(BrokenLink {
                chain_id: self.chain_id,
                chain_seq: self.last_seq + 1,
                seq: self.last_event,
                problem: "chain head does not match its last event (events removed or added)",
                expected_hash: head.map_or_else(|| "(no head)".to_owned(), |(_, h)| h.to_owned()),
                found_hash: self.last_hash,
            }),
        }
    }
}

/// Recomputes a whole chain given in `chain_seq` order and checks it ends at the recorded head
/// (`head` = last position and hash).
pub fn verify_chain(
    chain_id: &str,
    events: &[AuditEvent],
    head: Option<(i64, &str)>,
) -> Result<(), BrokenLink> {
    let mut verifier = ChainVerifier::new(chain_id);
    for event in events {
        verifier.push(event)?;
    }
    verifier.finish(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEvent> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|i| {
                let mut draft = AuditDraft::new(Timestamp::UNIX_EPOCH, &Actor::system(), "A", "OK");
                draft.mandate_id = Some("m".into());
                draft.details = format!("{{\"i\":{i}}}");
                let hash = event_hash("mandate:m", i, &draft, &prev);
                let event = AuditEvent {
                    seq: i,
                    chain_id: "mandate:m".into(),
                    chain_seq: i,
                    draft,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                event
            })
            .collect()
    }

    fn head(events: &[AuditEvent]) -> Option<(i64, &str)> {
        events.last().map(|e| (e.chain_seq, e.hash.as_str()))
    }

    #[test]
    fn intact_chain_verifies() {
        let events = chain(5);
        assert_eq!(verify_chain("mandate:m", &events, head(&events)), Ok(()));
    }

    #[test]
    fn any_edit_is_found_at_its_event() {
        let edits: [fn(&mut AuditEvent); 5] = [
            |e| e.draft.action = "B".into(),
            |e| e.draft.reason_code = Some(String::new()),
            |e| e.draft.details = "{\"i\":99}".into(),
            |e| e.draft.at = Timestamp::from_second(1).unwrap(),
            |e| e.draft.actor_subject = "someone".into(),
        ];
        for edit in edits {
            let mut events = chain(5);
            let head_before = (5, events[4].hash.clone());
            edit(&mut events[2]);
            let err = verify_chain("mandate:m", &events, Some((head_before.0, &head_before.1)))
                .unwrap_err();
            assert_eq!(err.chain_seq, 3);
        }
    }

    #[test]
    fn removal_is_found() {
        let mut events = chain(5);
        let recorded_head = (5, events[4].hash.clone());
        events.remove(1);
        assert_eq!(
            verify_chain("mandate:m", &events, Some((5, &recorded_head.1)))
                .unwrap_err()
                .chain_seq,
            2
        );
        let mut truncated = chain(5);
        truncated.pop();
        assert!(verify_chain("mandate:m", &truncated, Some((5, &recorded_head.1))).is_err());
    }
}
