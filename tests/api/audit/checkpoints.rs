//! Signed checkpoints: a chain rewritten wholesale together with its head verifies on its own,
//! and fails against the checkpoint an auditor kept — through VerifyAuditChain and offline with
//! `withholding audit verify --checkpoint FILE`. A checkpoint altered after signing is refused.

use std::process::{Command, Output};

use withholding::domain::audit::event_hash;

use super::{History, quoted, raw, stored_chain, verify};
use crate::both_backends;
use crate::harness::*;

/// Rewrites one event's details and re-links every later event of its chain, head included,
/// as someone who knows the hash scheme would: each chain check passes afterwards.
async fn rewrite_wholesale(app: &TestApp, chain_id: &str, position: usize) {
    let chain = stored_chain(app, chain_id).await;
    let mut statements: Vec<String> = super::drop_guards(app.backend)
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut prev = chain[position - 1].prev_hash.clone();
    for (i, event) in chain.iter().enumerate().skip(position - 1) {
        let mut draft = event.draft.clone();
        if i == position - 1 {
            draft.details = r#"{"amount":"1.00","rewritten":true}"#.to_owned();
        }
        let hash = event_hash(chain_id, event.chain_seq, &draft, &prev);
        statements.push(format!(
            "UPDATE audit_events SET details = {}, prev_hash = {}, hash = {} WHERE seq = {}",
            quoted(&draft.details),
            quoted(&prev),
            quoted(&hash),
            event.seq
        ));
        prev = hash;
    }
    statements.push(format!(
        "UPDATE audit_chain_heads SET last_hash = {} WHERE chain_id = {}",
        quoted(&prev),
        quoted(chain_id)
    ));
    let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
    raw(app, &statements).await.unwrap();
}

async fn checkpoint(auditor: &mut AuditClient) -> pb::AuditCheckpoint {
    auditor
        .get_audit_checkpoint(pb::GetAuditCheckpointRequest {})
        .await
        .unwrap()
        .into_inner()
        .checkpoint
        .expect("a checkpoint")
}

async fn verify_against(
    auditor: &mut AuditClient,
    checkpoint: &pb::AuditCheckpoint,
) -> pb::VerifyAuditChainResponse {
    let request = pb::VerifyAuditChainRequest {
        checkpoint: Some(checkpoint.clone()),
        ..Default::default()
    };
    verify(auditor, request).await.unwrap().pop().unwrap()
}

/// `withholding audit verify` against the test database with a kept checkpoint file.
fn verify_offline(app: &TestApp, file: &std::path::Path, public_key: &str) -> Output {
    Command::new(BIN)
        .args(["audit", "verify", "--database-url", &app.db.url])
        .arg("--checkpoint")
        .arg(file)
        .args(["--public-key", public_key])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

async fn a_wholesale_rewrite_fails_against_a_kept_checkpoint(backend: Backend) {
    let app = spawn_app(backend).await;
    let h = History::plant(&app).await;
    let mut auditor = app.audit_as(app.auditor_token(None)).await;
    let kept = checkpoint(&mut auditor).await;
    assert_eq!(kept.public_key.len(), 64);
    assert_eq!(kept.signature.len(), 128);
    assert!(kept.chains >= 4 && kept.seq > 0, "{kept:?}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checkpoint.json");
    std::fs::write(&file, &kept.json).unwrap();

    // The trail grows: it still extends the checkpoint, online and offline.
    app.deduct_expect(
        "m-1",
        collect("r-later", &h.a.mandate_id, "5.00", "BILL-LATER"),
        pb::DeductionStatus::Succeeded,
        "",
    )
    .await;
    let extended = verify_against(&mut auditor, &kept).await;
    assert!(
        extended.intact && extended.checkpoint_extended,
        "{extended:?}"
    );
    let out = verify_offline(&app, &file, &kept.public_key);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("extends the checkpoint"), "{stdout}");

    // The refunded debit's record rewritten with every later link and the head: each chain
    // check passes, so without the checkpoint nothing shows.
    let chain_id = format!("mandate:{}", h.a.mandate_id);
    rewrite_wholesale(&app, &chain_id, 3).await;
    let alone = verify(&mut auditor, Default::default())
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(alone.intact, "undetectable without a checkpoint: {alone:?}");

    let against = verify_against(&mut auditor, &kept).await;
    assert!(
        !against.intact && !against.checkpoint_extended,
        "{against:?}"
    );
    let broken = against.broken.unwrap();
    assert_eq!(broken.chain_id, "(checkpoint)");
    assert_eq!(broken.seq, kept.seq);
    assert_eq!(broken.expected_hash, kept.digest);
    assert_ne!(broken.found_hash, kept.digest);
    assert_eq!(broken.found_hash.len(), 64);

    let out = verify_offline(&app, &file, &kept.public_key);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr.contains("checkpoint"), "{stderr}");
    assert!(stderr.contains(&kept.digest), "{stderr}");
}

async fn an_altered_checkpoint_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    History::plant(&app).await;
    let mut auditor = app.audit_as(app.auditor_token(None)).await;
    let kept = checkpoint(&mut auditor).await;
    // The digest of a rewritten trail put in the kept checkpoint: its signature no longer fits.
    let altered = pb::AuditCheckpoint {
        digest: "0".repeat(64),
        ..kept.clone()
    };
    let err = verify(
        &mut auditor,
        pb::VerifyAuditChainRequest {
            checkpoint: Some(altered),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        violated_field(&err).as_deref(),
        Ok("checkpoint.signature"),
        "{err:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checkpoint.json");
    std::fs::write(&file, kept.json.replace(&kept.digest, &"0".repeat(64))).unwrap();
    let out = verify_offline(&app, &file, &kept.public_key);
    assert!(!out.status.success(), "{out:?}");
    // Signed by another key: refused the same way.
    std::fs::write(&file, &kept.json).unwrap();
    let other_key = "11".repeat(32);
    let out = verify_offline(&app, &file, &other_key);
    assert!(!out.status.success(), "{out:?}");

    // Only an institution-wide auditor takes or checks checkpoints.
    let mut scoped = app.audit_as(app.auditor_token(Some("m-1"))).await;
    let err = scoped
        .get_audit_checkpoint(pb::GetAuditCheckpointRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = verify(
        &mut scoped,
        pb::VerifyAuditChainRequest {
            checkpoint: Some(kept),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
}

both_backends!(
    a_wholesale_rewrite_fails_against_a_kept_checkpoint,
    an_altered_checkpoint_is_refused
);
