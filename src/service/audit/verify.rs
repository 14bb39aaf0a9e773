//! Chain verification (DESIGN §6, §9.7): every chain of a scope recomputed page by page (one
//! chain's last hash held at a time), each checked against its recorded head; and, given a kept
//! checkpoint, the heads as of its append position recomputed from the trail and compared with
//! the signed digest, which catches a chain rewritten wholesale together with its head.

use tokio::sync::mpsc;

use super::{AuditService, SignedCheckpoint};
use crate::domain::FieldViolation;
use crate::domain::actor::{Actor, Role};
use crate::domain::audit::{BrokenLink, ChainVerifier};
use crate::domain::checkpoint::{Checkpoint, HeadsDigest};
use crate::domain::ids::{MandateId, MerchantId};
use crate::service::{Error, Rpc};
use crate::storage::{AuditStore, ChainScope};

/// Events read per trip while verifying a chain.
const CHAIN_PAGE: u32 = 1000;
/// Chains listed per trip.
const CHAINS_PAGE: u32 = 500;
/// A progress report goes out after this many chains (and at the end).
const PROGRESS_EVERY: i64 = 200;

/// Which chains to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyScope {
    All,
    Merchant(MerchantId),
    Mandate(MandateId),
}

/// How far a verification has got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub chains_verified: i64,
    pub events_verified: i64,
    pub chains_total: i64,
}

/// What a finished verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOutcome {
    pub progress: Progress,
    /// The first broken link; `None` when everything verified.
    pub broken: Option<BrokenLink>,
    /// With a checkpoint: whether the trail still extends it.
    pub checkpoint_extended: Option<bool>,
}

impl AuditService {
    /// Verifies the scope's chains, reporting progress on `progress` (dropped reports are not
    /// waited for if the receiver is gone), and stops at the first broken link.
    pub async fn verify(
        &self,
        actor: &Actor,
        scope: VerifyScope,
        checkpoint: Option<SignedCheckpoint>,
        progress: mpsc::Sender<Progress>,
    ) -> Result<VerifyOutcome, Error> {
        let scope = self.verify_scope(actor, scope).await?;
        if let Some(signed) = &checkpoint {
            self.check_signature(actor, signed)?;
        }
        let details = serde_json::json!({ "scope": format!("{scope:?}"),
            "checkpoint_seq": checkpoint.as_ref().map(|c| c.checkpoint.seq) });
        self.record_read(
            actor,
            Rpc::VerifyAuditChain,
            &Default::default(),
            Some(details),
        )
        .await?;
        verify_chains(self.audit.as_ref(), &scope, checkpoint.as_ref(), &progress).await
    }

    /// A signed statement of every chain head as of the settled append position.
    pub async fn checkpoint(&self, actor: &Actor) -> Result<SignedCheckpoint, Error> {
        require_institution_wide(actor)?;
        self.record_read(actor, Rpc::GetAuditCheckpoint, &Default::default(), None)
            .await?;
        let seq = self.audit.settled_audit_seq().await?;
        let (digest, chains) = heads_digest(self.audit.as_ref(), seq).await?;
        Ok(self.key.sign(Checkpoint {
            seq,
            at: self.clock.now(),
            chains,
            digest,
        }))
    }

    /// The public half of the checkpoint key.
    pub fn public_key(&self) -> super::AuditPublicKey {
        self.key.public()
    }

    fn check_signature(&self, actor: &Actor, signed: &SignedCheckpoint) -> Result<(), Error> {
        require_institution_wide(actor)?;
        self.key
            .public()
            .verify(signed)
            .map_err(|e| FieldViolation::new("checkpoint.signature", e.to_string()).into())
    }

    async fn verify_scope(&self, actor: &Actor, scope: VerifyScope) -> Result<Scope, Error> {
        Ok(match (scope, &actor.merchant_id) {
            (VerifyScope::Mandate(id), _) => {
                // NOT_FOUND outside the caller's tenancy.
                self.mandates
                    .get(actor, Rpc::VerifyAuditChain, &id, None)
                    .await?;
                Scope::Mandate(id)
            }
            (VerifyScope::Merchant(asked), Some(own)) if asked != *own => {
                return Err(Error::NotFound { what: "merchant" });
            }
            (VerifyScope::Merchant(merchant), _) => {
                Scope::Chains(ChainScope::Merchant(merchant.to_string()))
            }
            // An auditor of one merchant verifies that merchant's chains.
            (VerifyScope::All, Some(own)) => Scope::Chains(ChainScope::Merchant(own.to_string())),
            (VerifyScope::All, None) => Scope::Chains(ChainScope::All),
        })
    }
}

async fn verify_chains(
    audit: &dyn AuditStore,
    scope: &Scope,
    checkpoint: Option<&SignedCheckpoint>,
    progress: &mpsc::Sender<Progress>,
) -> Result<VerifyOutcome, Error> {
    let mut done = Progress {
        chains_total: match scope {
            Scope::Mandate(_) => 1,
            Scope::Chains(chains) => audit.audit_chain_count(chains).await?,
        },
        ..Progress::default()
    };
    let finish = |progress: Progress, broken, checkpoint_extended| VerifyOutcome {
        progress,
        broken,
        checkpoint_extended,
    };
    let mut after = String::new();
    loop {
        let chains = match scope {
            Scope::Mandate(id) if after.is_empty() => {
                vec![crate::domain::audit::mandate_chain_id(id.as_str())]
            }
            Scope::Mandate(_) => vec![],
            Scope::Chains(chains) => audit.audit_chains(chains, &after, CHAINS_PAGE).await?,
        };
        let Some(last) = chains.last() else { break };
        after.clone_from(last);
        for chain_id in &chains {
            match verify_one(audit, chain_id).await? {
                Ok(events) => done.events_verified += events,
                Err(broken) => return Ok(finish(done, Some(broken), None)),
            }
            done.chains_verified += 1;
            if done.chains_verified % PROGRESS_EVERY == 0 {
                // Progress is best effort: a full or closed channel never stops the work.
                let _ = progress.try_send(done.clone());
            }
        }
    }
    if matches!(scope, Scope::Chains(ChainScope::All))
        && let Some(chain_id) = audit.headless_audit_chain().await?
    {
        let broken = BrokenLink {
            chain_id,
            chain_seq: 1,
            seq: 0,
            problem: "events on a chain that has no head (written around the service)",
            expected_hash: "(no chain)".into(),
            found_hash: String::new(),
        };
        return Ok(finish(done, Some(broken), None));
    }
    let Some(signed) = checkpoint else {
        return Ok(finish(done, None, None));
    };
    let kept = &signed.checkpoint;
    let (digest, chains) = heads_digest(audit, kept.seq).await?;
    if digest == kept.digest && chains == kept.chains {
        return Ok(finish(done, None, Some(true)));
    }
    let broken = BrokenLink {
        chain_id: "(checkpoint)".into(),
        chain_seq: 0,
        seq: kept.seq,
        problem: "the trail does not extend the checkpoint: the chain heads as of its \
            append position differ from those it signed (a chain rewritten, removed or \
            added before it)",
        expected_hash: kept.digest.clone(),
        found_hash: digest,
    };
    Ok(finish(done, Some(broken), Some(false)))
}

/// One chain recomputed page by page; the events verified, or the first broken link. An event
/// and its chain's head are written in one transaction and the head is read after the events,
/// so a head ahead of the last event read means appends committed meanwhile (a live chain, the
/// caller's own among them): reading on finds them. A head still ahead when reading on finds
/// nothing means events were removed from the end; one behind, events added around the service.
async fn verify_one(
    audit: &dyn AuditStore,
    chain_id: &str,
) -> Result<Result<i64, BrokenLink>, Error> {
    let mut verifier = ChainVerifier::new(chain_id);
    let mut events = 0;
    loop {
        let mut read = 0;
        loop {
            let page = audit
                .audit_chain_page(chain_id, verifier.position(), CHAIN_PAGE)
                .await?;
            for event in &page {
                if let Err(broken) = verifier.push(event) {
                    return Ok(Err(broken));
                }
            }
            read += i64::try_from(page.len()).unwrap_or(i64::MAX);
            if page.len() < CHAIN_PAGE as usize {
                break;
            }
        }
        events += read;
        let head = audit.audit_chain_head(chain_id).await?;
        let appended_meanwhile = head
            .as_ref()
            .is_some_and(|(seq, _)| *seq > verifier.position());
        if appended_meanwhile && read > 0 {
            continue;
        }
        return Ok(verifier
            .finish(head.as_ref().map(|(seq, hash)| (*seq, hash.as_str())))
            .map(|()| events));
    }
}

async fn heads_digest(audit: &dyn AuditStore, seq: i64) -> Result<(String, i64), Error> {
    let mut digest = HeadsDigest::new(seq);
    let mut after = String::new();
    loop {
        let heads = audit.audit_heads_as_of(seq, &after, CHAINS_PAGE).await?;
        let Some((last, _, _)) = heads.last() else {
            break;
        };
        after.clone_from(last);
        for (chain_id, position, hash) in &heads {
            digest
                .push(chain_id, *position, hash)
                .map_err(|e| Error::Internal(e.into()))?;
        }
    }
    Ok(digest.finish())
}

/// The chains a verification reads.
#[derive(Debug)]
enum Scope {
    Mandate(MandateId),
    Chains(ChainScope),
}

/// Checkpoints cover every merchant's chains: an auditor of one merchant may not see them.
fn require_institution_wide(actor: &Actor) -> Result<(), Error> {
    if actor.role == Role::System || actor.merchant_id.is_none() {
        Ok(())
    } else {
        Err(Error::PermissionDenied(
            "checkpoints cover every merchant: an institution-wide auditor token (without \
             merchant_id) is needed"
                .into(),
        ))
    }
}

/// Verifies every chain of the database at `url` and, given a checkpoint signed with `public`,
/// that the trail still extends it (the `audit verify` command: no server, no caller).
pub async fn verify_database(
    url: &str,
    public: super::AuditPublicKey,
    checkpoint: Option<&SignedCheckpoint>,
) -> Result<VerifyOutcome, Error> {
    if let Some(signed) = checkpoint {
        public
            .verify(signed)
            .map_err(|e| FieldViolation::new("checkpoint", e.to_string()))?;
    }
    let db = crate::storage::open(url).await?;
    verify_store(db.audit.as_ref(), checkpoint).await
}

/// Verifies every chain in `audit` and, given a checkpoint whose signature was checked, that
/// the trail still extends it.
pub async fn verify_store(
    audit: &dyn AuditStore,
    checkpoint: Option<&SignedCheckpoint>,
) -> Result<VerifyOutcome, Error> {
    let (progress, _) = mpsc::channel(1);
    verify_chains(
        audit,
        &Scope::Chains(ChainScope::All),
        checkpoint,
        &progress,
    )
    .await
}

#[cfg(test)]
mod tests {
    //! A chain appended to while it is verified, on a real SQLite store: the append lands
    //! between the last page read and the head read.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use jiff::Timestamp;

    use super::*;
    use crate::domain::audit::AuditDraft;
    use crate::domain::mandate::Mandate;
    use crate::storage::{HeadAt, Store, StoreError};

    /// The real store, appending one event to the chain just before its head is first read.
    struct AppendsBeforeTheHead {
        store: Arc<dyn Store>,
        audit: Arc<dyn AuditStore>,
        appended: AtomicBool,
    }

    fn draft(chain: &str, n: u32) -> AuditDraft {
        let mut draft = AuditDraft::new(Timestamp::UNIX_EPOCH, &Actor::system(), "TEST", "OK");
        draft.chain = Some(chain.to_owned());
        draft.details = format!("{{\"n\":{n}}}");
        draft
    }

    #[async_trait::async_trait]
    impl AuditStore for AppendsBeforeTheHead {
        async fn audit_events(
            &self,
            query: &crate::storage::AuditQuery,
        ) -> Result<Vec<crate::domain::audit::AuditEvent>, StoreError> {
            self.audit.audit_events(query).await
        }

        async fn audit_chain_page(
            &self,
            chain_id: &str,
            after: i64,
            limit: u32,
        ) -> Result<Vec<crate::domain::audit::AuditEvent>, StoreError> {
            self.audit.audit_chain_page(chain_id, after, limit).await
        }

        async fn audit_chain_head(
            &self,
            chain_id: &str,
        ) -> Result<Option<(i64, String)>, StoreError> {
            if !self.appended.swap(true, Ordering::SeqCst) {
                self.store.append_audit(&draft(chain_id, 99)).await?;
            }
            self.audit.audit_chain_head(chain_id).await
        }

        async fn audit_chains(
            &self,
            scope: &ChainScope,
            after: &str,
            limit: u32,
        ) -> Result<Vec<String>, StoreError> {
            self.audit.audit_chains(scope, after, limit).await
        }

        async fn audit_chain_count(&self, scope: &ChainScope) -> Result<i64, StoreError> {
            self.audit.audit_chain_count(scope).await
        }

        async fn headless_audit_chain(&self) -> Result<Option<String>, StoreError> {
            self.audit.headless_audit_chain().await
        }

        async fn settled_audit_seq(&self) -> Result<i64, StoreError> {
            self.audit.settled_audit_seq().await
        }

        async fn audit_heads_as_of(
            &self,
            seq: i64,
            after: &str,
            limit: u32,
        ) -> Result<Vec<HeadAt>, StoreError> {
            self.audit.audit_heads_as_of(seq, after, limit).await
        }

        async fn mandate_versions(
            &self,
            id: &MandateId,
            limit: u32,
        ) -> Result<Vec<(i64, Timestamp, Mandate)>, StoreError> {
            self.audit.mandate_versions(id, limit).await
        }
    }

    #[tokio::test]
    async fn an_append_during_verification_is_read_on_not_reported_broken() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = crate::storage::open(&url).await.unwrap();
        let chain = "caller:auditor:live";
        for n in 0..3 {
            db.mandates.append_audit(&draft(chain, n)).await.unwrap();
        }
        let live = AppendsBeforeTheHead {
            store: db.mandates.clone(),
            audit: db.audit.clone(),
            appended: AtomicBool::new(false),
        };
        let verified = verify_one(&live, chain).await.unwrap();
        assert_eq!(verified, Ok(4), "the append is verified with the rest");
    }
}
