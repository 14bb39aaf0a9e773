//! VerifyAuditChain against someone with database access who drops the append-only guard: an
//! edited row, a deleted row, two rows swapped and a forged row appended are each found and
//! named (chain, position, expected and found hash), whichever scope is verified.

use withholding::domain::audit::event_hash;

use super::{History, drop_guards, quoted, raw, stored_chain, verify, verify_everything};
use crate::both_backends;
use crate::harness::*;

#[derive(Debug, Clone, Copy)]
enum Tampering {
    Edit,
    Delete,
    Swap,
    ForgedAppend,
}

/// What verification must name for each tampering of the chain (position 3 for the first
/// three; past the end for the forged row), and the problem it reports.
struct Expected {
    chain_seq: i64,
    problem: &'static str,
    expected_hash: String,
    found_hash: String,
}

async fn tamper(app: &TestApp, chain_id: &str, how: Tampering) -> Expected {
    let chain = stored_chain(app, chain_id).await;
    assert!(chain.len() >= 5, "{} events", chain.len());
    let third = &chain[2];
    let chain_q = quoted(chain_id);
    let at = |position: i64| format!("chain_id = {chain_q} AND chain_seq = {position}");
    let mut statements: Vec<String> = drop_guards(app.backend)
        .iter()
        .map(|s| s.to_string())
        .collect();
    let expected = match how {
        Tampering::Edit => {
            // A refusal rewritten as a success.
            let mut draft = third.draft.clone();
            draft.details = r#"{"edited":true}"#.to_owned();
            statements.push(format!(
                "UPDATE audit_events SET details = {} WHERE {}",
                quoted(&draft.details),
                at(3)
            ));
            Expected {
                chain_seq: 3,
                problem: "hash does not match the event's contents",
                expected_hash: event_hash(chain_id, 3, &draft, &third.prev_hash),
                found_hash: third.hash.clone(),
            }
        }
        Tampering::Delete => {
            statements.push(format!("DELETE FROM audit_events WHERE {}", at(3)));
            Expected {
                chain_seq: 3,
                problem: "position out of order or missing",
                expected_hash: chain[1].hash.clone(),
                found_hash: chain[3].prev_hash.clone(),
            }
        }
        Tampering::Swap => {
            statements.push(format!(
                "UPDATE audit_events SET chain_seq = -3 WHERE {}",
                at(3)
            ));
            statements.push(format!(
                "UPDATE audit_events SET chain_seq = 3 WHERE {}",
                at(4)
            ));
            statements.push(format!(
                "UPDATE audit_events SET chain_seq = 4 WHERE {}",
                at(-3)
            ));
            Expected {
                chain_seq: 3,
                problem: "prev_hash does not match the previous event",
                expected_hash: chain[1].hash.clone(),
                found_hash: chain[3].prev_hash.clone(),
            }
        }
        Tampering::ForgedAppend => {
            // A well-formed event, hashed as the service would, linked to the last one; the
            // head is left as it was.
            let last = chain.last().unwrap();
            let position = last.chain_seq + 1;
            let mut draft = last.draft.clone();
            draft.action = "MANDATE_REVOKED".into();
            draft.details = r#"{"forged":true}"#.to_owned();
            let hash = event_hash(chain_id, position, &draft, &last.hash);
            let text = |v: &Option<String>| v.as_deref().map_or("NULL".to_owned(), quoted);
            statements.push(format!(
                "INSERT INTO audit_events (chain_id, chain_seq, at_us, actor_role, actor_subject, \
                 merchant_id, payer_id, mandate_id, deduction_id, action, outcome, reason_code, \
                 request_id, details, prev_hash, hash) VALUES ({chain_q}, {position}, {}, {}, {}, \
                 {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
                draft.at.as_microsecond(),
                quoted(&draft.actor_role),
                quoted(&draft.actor_subject),
                text(&draft.merchant_id),
                text(&draft.payer_id),
                text(&draft.mandate_id),
                text(&draft.deduction_id),
                quoted(&draft.action),
                quoted(&draft.outcome),
                text(&draft.reason_code),
                text(&draft.request_id),
                quoted(&draft.details),
                quoted(&last.hash),
                quoted(&hash),
            ));
            Expected {
                chain_seq: position + 1,
                problem: "chain head does not match its last event (events removed or added)",
                expected_hash: last.hash.clone(),
                found_hash: hash,
            }
        }
    };
    let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
    raw(app, &statements).await.unwrap();
    expected
}

async fn each_tampering_is_found_and_named(backend: Backend) {
    for how in [
        Tampering::Edit,
        Tampering::Delete,
        Tampering::Swap,
        Tampering::ForgedAppend,
    ] {
        let app = spawn_app(backend).await;
        let h = History::plant(&app).await;
        assert!(
            verify_everything(&app).await.intact,
            "{how:?}: intact first"
        );
        let chain_id = format!("mandate:{}", h.a.mandate_id);
        let expected = tamper(&app, &chain_id, how).await;

        let mut auditor = app.audit_as(app.auditor_token(None)).await;
        for request in [
            pb::VerifyAuditChainRequest::default(),
            pb::VerifyAuditChainRequest {
                merchant_id: "m-1".into(),
                ..Default::default()
            },
            pb::VerifyAuditChainRequest {
                mandate_id: h.a.mandate_id.clone(),
                ..Default::default()
            },
        ] {
            let scope = format!("{how:?} {request:?}");
            let result = verify(&mut auditor, request).await.unwrap().pop().unwrap();
            assert!(!result.intact, "{scope}");
            let broken = result.broken.unwrap();
            assert_eq!(broken.chain_id, chain_id, "{scope}");
            assert_eq!(broken.chain_seq, expected.chain_seq, "{scope}");
            assert_eq!(broken.problem, expected.problem, "{scope}");
            assert_eq!(broken.expected_hash, expected.expected_hash, "{scope}");
            assert_eq!(broken.found_hash, expected.found_hash, "{scope}");
            assert!(broken.seq > 0, "{scope}: names the event");
        }
        // Another merchant's chains are still intact.
        let other = verify(
            &mut auditor,
            pb::VerifyAuditChainRequest {
                merchant_id: "m-2".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .pop()
        .unwrap();
        assert!(other.intact, "{how:?}: {other:?}");
        assert!(other.broken.is_none());
    }
}

async fn an_intact_trail_reports_what_it_verified(backend: Backend) {
    let app = spawn_app(backend).await;
    let h = History::plant(&app).await;
    let mut auditor = app.audit_as(app.auditor_token(None)).await;
    let everything = verify(&mut auditor, Default::default())
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(everything.intact && everything.broken.is_none());
    assert_eq!(everything.chains_verified, everything.chains_total);
    // Both mandates, both merchants' caller chains, the wallet's, the auditor's own.
    assert!(everything.chains_total >= 4, "{everything:?}");
    let one = verify(
        &mut auditor,
        pb::VerifyAuditChainRequest {
            mandate_id: h.b.mandate_id.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .pop()
    .unwrap();
    assert!(one.intact);
    assert_eq!((one.chains_total, one.chains_verified), (1, 1));
    let stored = stored_chain(&app, &format!("mandate:{}", h.b.mandate_id)).await;
    assert_eq!(one.events_verified, stored.len() as i64);
    assert!(!one.checkpoint_extended, "no checkpoint was given");

    let both = pb::VerifyAuditChainRequest {
        mandate_id: h.b.mandate_id.clone(),
        merchant_id: "m-2".into(),
        ..Default::default()
    };
    let err = verify(&mut auditor, both).await.unwrap_err();
    assert_eq!(
        violated_field(&err).as_deref(),
        Ok("merchant_id"),
        "{err:?}"
    );
}

both_backends!(
    each_tampering_is_found_and_named,
    an_intact_trail_reports_what_it_verified
);
