//! One scenario played against a fresh server, step by step, the model alongside.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use tonic::Code;

use super::model::timestamp;
use super::model::{Amendment, Debit, Expected, Limits, Model, classify, cny, money_minor, month};
use super::scenario::{MAX_ELAPSED_S, Op, Scenario};
use super::verify::{Clients, verify};
use crate::harness::*;

use pb::DeductionStatus as D;
use pb::MandateStatus as S;

pub(super) fn funding(cap: Option<i64>) -> Vec<pb::FundingSource> {
    let mut sources = wallet_then_card();
    sources[0].cap_per_debit = cap.map(|c| cny(c).unwrap());
    sources
}

pub(super) async fn play(backend: Backend, scenario: Scenario) {
    let app = spawn_app(backend).await;
    let mut clients = Clients {
        mandates: app.merchant("m-1").await,
        payer: app.payer("p-1").await,
        deductions: app.deductions_as(app.merchant_token("m-1")).await,
        wallet: app.wallet_as(app.operator_token()).await,
    };
    let terms = pb::MandateTerms {
        per_debit_limit: cny(scenario.per_debit),
        period_amount_limit: cny(scenario.period_amount),
        period_debit_limit: Some(scenario.period_count),
        single_use: scenario.single_use,
        valid_until: Some(prost_types::Timestamp {
            seconds: "2031-01-01T00:00:00Z"
                .parse::<Timestamp>()
                .unwrap()
                .as_second(),
            nanos: 0,
        }),
        ..utility_terms()
    };
    let created = clients
        .mandates
        .create_mandate(pb::CreateMandateRequest {
            merchant_contract_id: "c-prop".into(),
            payer_id: "p-1".into(),
            terms: Some(terms),
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let mandate = clients
        .payer
        .confirm_mandate(pb::ConfirmMandateRequest {
            funding_sources: funding(scenario.wallet_cap),
            ..confirm_request(&created)
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let id = mandate.mandate_id.clone();
    if scenario.opening_credit > 0 {
        app.credit("p-1", &fmt_minor(scenario.opening_credit)).await;
    }
    let mut model = Model {
        now: app.clock_now(),
        elapsed_s: 0,
        status: S::Active,
        version: mandate.version,
        limits: Limits::of(mandate.terms.as_ref().unwrap()),
        pending: None,
        single_use: scenario.single_use,
        wallet_cap: scenario.wallet_cap,
        wallet: scenario.opening_credit,
        debits: vec![],
        usage: BTreeMap::new(),
    };
    assert_eq!(
        model.limits,
        Limits {
            per_debit: scenario.per_debit,
            period_amount: Some(scenario.period_amount),
            period_count: Some(scenario.period_count),
        }
    );
    let mut current = verify(&app, &mut clients, &model, &id, scenario.page_size, "start").await;

    for (n, op) in scenario.ops.iter().enumerate() {
        let step = format!("step {n} {op:?}");
        // The terms in force, as GetMandate reported them after the previous step.
        let terms_in_force = current.terms.clone().unwrap();
        match *op {
            Op::Debit {
                minor,
                bill,
                purpose,
            } => {
                let bill = format!("bill-{bill}");
                let expected = model.expect_debit(minor, &bill, purpose);
                let answer = clients
                    .deductions
                    .create_deduction(pb::CreateDeductionRequest {
                        purpose: purpose.pb() as i32,
                        ..collect(&format!("r-{n}"), &id, &fmt_minor(minor), &bill)
                    })
                    .await
                    .unwrap_or_else(|s| panic!("{step}: {s:?}"))
                    .into_inner();
                assert!(!answer.replayed, "{step}");
                let d = answer.deduction.unwrap();
                let got = Expected {
                    status: deduction_status(&d),
                    reason: d.reason_code.clone(),
                    violations: d.violations.iter().map(|v| v.reason_code.clone()).collect(),
                    attempts: d
                        .funding_attempts
                        .iter()
                        .map(|a| {
                            (
                                a.source_index,
                                a.source_kind.clone(),
                                a.outcome.clone(),
                                a.reason_code.clone(),
                            )
                        })
                        .collect(),
                    paid_by: d.paid_by_source_index,
                };
                assert_eq!(got, expected, "{step}: {d:?}");
                assert_eq!(d.mandate_version, model.version, "{step}: judged against");
                assert_eq!(timestamp(&d.created_at), model.now, "{step}");
                if expected.status == D::Succeeded {
                    model.wallet -= minor;
                    let used = model.usage.entry(month(model.now)).or_default();
                    used.0 += minor;
                    used.1 += 1;
                    if model.single_use {
                        // Consumed: terminal, so a pending amendment is dropped with it.
                        model.status = S::Consumed;
                        model.version += 1;
                        model.pending = None;
                    }
                }
                model.debits.push(Debit {
                    id: d.deduction_id.clone(),
                    minor,
                    bill,
                    status: expected.status,
                    refunded: 0,
                    created_at: model.now,
                    limits: model.limits,
                });
            }
            Op::Refund { pick, percent } => {
                let refundable: Vec<usize> = (0..model.debits.len())
                    .filter(|&i| {
                        matches!(model.debits[i].status, D::Succeeded | D::PartiallyRefunded)
                    })
                    .collect();
                let (index, amount, allowed) = if refundable.is_empty() {
                    // Nothing to refund: a deduction that was not collected cannot be refunded.
                    if model.debits.is_empty() {
                        continue;
                    }
                    let i = pick.index(model.debits.len());
                    (i, model.debits[i].minor, false)
                } else {
                    let i = refundable[pick.index(refundable.len())];
                    let left = model.debits[i].minor - model.debits[i].refunded;
                    if percent > 100 {
                        (i, left + (percent - 100), false)
                    } else {
                        (i, (left * percent / 100).max(1), true)
                    }
                };
                let answer = clients
                    .deductions
                    .refund_deduction(pb::RefundDeductionRequest {
                        request_id: format!("rf-{n}"),
                        deduction_id: model.debits[index].id.clone(),
                        amount: cny(amount),
                        reason: "overcharged".into(),
                    })
                    .await;
                if allowed {
                    let answer = answer
                        .unwrap_or_else(|s| panic!("{step}: {s:?}"))
                        .into_inner();
                    let debit = &mut model.debits[index];
                    debit.refunded += amount;
                    debit.status = if debit.refunded == debit.minor {
                        D::Refunded
                    } else {
                        D::PartiallyRefunded
                    };
                    model.wallet += amount;
                    let d = answer.deduction.unwrap();
                    assert_eq!(deduction_status(&d), debit.status, "{step}");
                    assert_eq!(money_minor(&d.refunded_amount), debit.refunded, "{step}");
                    assert_eq!(
                        money_minor(&answer.refund.unwrap().amount),
                        amount,
                        "{step}"
                    );
                } else {
                    let status = answer.expect_err(&step);
                    assert_eq!(
                        status.code(),
                        Code::FailedPrecondition,
                        "{step}: {status:?}"
                    );
                }
            }
            Op::Amend { change, confirm } => {
                let new = model.limits.with(change);
                let answer = clients
                    .mandates
                    .amend_mandate(pb::AmendMandateRequest {
                        mandate_id: id.clone(),
                        terms: Some(new.apply(&terms_in_force)),
                        reason: "repricing".into(),
                        request_id: String::new(),
                    })
                    .await;
                let kind = classify(model.limits, new);
                if model.status == S::Consumed {
                    let status = answer.expect_err(&step);
                    assert_eq!(
                        status.code(),
                        Code::FailedPrecondition,
                        "{step}: {status:?}"
                    );
                } else if kind == Amendment::Unchanged && model.pending.is_none() {
                    let status = answer.expect_err(&step);
                    assert_eq!(status.code(), Code::InvalidArgument, "{step}: {status:?}");
                } else {
                    let answer = answer
                        .unwrap_or_else(|s| panic!("{step}: {s:?}"))
                        .into_inner();
                    model.version += 1;
                    let outcome = if kind == Amendment::Loosening {
                        model.pending = Some(new);
                        pb::AmendmentOutcome::PendingPayerConfirmation
                    } else {
                        // Tightening applies at once; the same terms withdraw a pending one.
                        model.limits = new;
                        model.pending = None;
                        pb::AmendmentOutcome::Applied
                    };
                    assert_eq!(answer.outcome, outcome as i32, "{step}");
                    assert_eq!(answer.mandate.unwrap().version, model.version, "{step}");
                    if kind == Amendment::Loosening && confirm {
                        let confirmed = clients
                            .payer
                            .confirm_amendment(pb::ConfirmAmendmentRequest {
                                consent: Some(consent()),
                                mandate_id: id.clone(),
                                mandate_version: model.version,
                                request_id: String::new(),
                            })
                            .await
                            .unwrap_or_else(|s| panic!("{step}: confirm: {s:?}"))
                            .into_inner()
                            .mandate
                            .unwrap();
                        model.version += 1;
                        model.limits = new;
                        model.pending = None;
                        assert_eq!(confirmed.version, model.version, "{step}");
                    }
                }
            }
            Op::Pause | Op::Resume => {
                let (from, to) = match op {
                    Op::Pause => (S::Active, S::Paused),
                    _ => (S::Paused, S::Active),
                };
                let answer = if matches!(op, Op::Pause) {
                    clients
                        .payer
                        .pause_mandate(pb::PauseMandateRequest {
                            mandate_id: id.clone(),
                            reason: "away".into(),
                            request_id: String::new(),
                        })
                        .await
                        .map(|r| r.into_inner().mandate)
                } else {
                    clients
                        .payer
                        .resume_mandate(pb::ResumeMandateRequest {
                            mandate_id: id.clone(),
                            reason: "back".into(),
                            request_id: String::new(),
                        })
                        .await
                        .map(|r| r.into_inner().mandate)
                };
                if model.status == from {
                    let mandate = answer.unwrap_or_else(|s| panic!("{step}: {s:?}")).unwrap();
                    model.status = to;
                    model.version += 1;
                    assert_eq!(status_of(&mandate), to, "{step}");
                } else {
                    let status = answer.expect_err(&step);
                    assert_eq!(
                        status.code(),
                        Code::FailedPrecondition,
                        "{step}: {status:?}"
                    );
                }
            }
            Op::Credit { minor } => {
                let answer = clients
                    .wallet
                    .credit_wallet(pb::CreditWalletRequest {
                        request_id: format!("cr-{n}"),
                        payer_id: "p-1".into(),
                        amount: cny(minor),
                        reason: "top-up".into(),
                    })
                    .await
                    .unwrap_or_else(|s| panic!("{step}: {s:?}"))
                    .into_inner();
                model.wallet += minor;
                assert_eq!(money_minor(&answer.balance), model.wallet, "{step}");
            }
            Op::Clock { seconds } => {
                let seconds = if model.elapsed_s + seconds > MAX_ELAPSED_S {
                    600
                } else {
                    seconds
                };
                model.elapsed_s += seconds;
                app.clock.advance(SignedDuration::from_secs(seconds));
                model.now = model
                    .now
                    .checked_add(SignedDuration::from_secs(seconds))
                    .unwrap();
                assert_eq!(app.clock_now(), model.now);
            }
        }
        current = verify(&app, &mut clients, &model, &id, scenario.page_size, &step).await;
    }
    app.verify_audit().await;
}
