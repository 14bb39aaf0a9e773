//! What the workers do: set up cards, wallets and mandates, then random operations until told
//! to stop, each sent through the delivery of `World`.

use super::*;

impl World {
    // ---- setup ----

    /// Cards at the bank, money in every wallet, and a mandate per payer and merchant.
    pub async fn setup(&self, rng: &mut Rng) {
        for i in 0..PAYERS {
            let balance = if i == PAYERS - 1 {
                POOR_CARD_BALANCE_MINOR
            } else {
                CARD_BALANCE_MINOR
            };
            self.program_card(i, balance, bank_pb::SetCardRequest::default())
                .await;
            self.credit(rng, Some(i), 30_000).await;
        }
        for i in 0..PAYERS {
            for merchant in MERCHANTS {
                self.new_mandate(rng, Some((merchant, i))).await;
            }
        }
    }

    async fn program_card(
        &self,
        payer_index: usize,
        balance_minor: i64,
        behaviour: bank_pb::SetCardRequest,
    ) {
        let mut bank = self.bank.clone();
        bank.set_card(bank_pb::SetCardRequest {
            card_token: card_token(&payer(payer_index)),
            balance_minor,
            ..behaviour
        })
        .await
        .expect("program a card at the bank");
    }

    // ---- the workload ----

    /// Runs random operations until told to stop.
    pub async fn work(self: Arc<Self>, mut rng: Rng) {
        while !self.stop.load(Ordering::Relaxed) {
            match rng.below(100) {
                0..45 => self.collect(&mut rng).await,
                45..57 => self.refund(&mut rng).await,
                57..65 => self.credit(&mut rng, None, 0).await,
                65..74 => self.pause_or_resume(&mut rng).await,
                74..78 => self.new_mandate(&mut rng, None).await,
                78..81 => self.bank_trouble(&mut rng).await,
                81..91 => self.get_deduction(&mut rng).await,
                91..96 => self.get_balance(&mut rng).await,
                _ => self.check_deduction(&mut rng).await,
            }
        }
    }

    /// Half the time one of the newest mandates: every worker then races for their fresh
    /// limits, which is where a limit could be overrun.
    fn pick_mandate(&self, rng: &mut Rng) -> Option<MandatePlan> {
        const HOT: usize = 4;
        let mandates = self.mandates.lock().unwrap();
        let n = mandates.len();
        if n == 0 {
            return None;
        }
        let index = if rng.below(2) == 0 {
            n - 1 - rng.index(n.min(HOT))
        } else {
            rng.index(n)
        };
        Some(mandates[index].clone())
    }

    /// Creates (as the merchant) and confirms (as the payer) a mandate with random limits and
    /// funding sources; `who` fixes the merchant and payer.
    async fn new_mandate(&self, rng: &mut Rng, who: Option<(&'static str, usize)>) {
        let (merchant, payer_index) =
            who.unwrap_or_else(|| (MERCHANTS[rng.index(MERCHANTS.len())], rng.index(PAYERS)));
        let payer_id = payer(payer_index);
        let n = self.next_id();
        let period_amount_minor = [15_000, 30_000, 60_000][rng.index(3)];
        let period_count = [3, 6, 10][rng.index(3)];
        let (total_amount_minor, total_count) = match rng.below(3) {
            0 => (Some([40_000, 90_000][rng.index(2)]), None),
            1 => (None, Some([5, 12][rng.index(2)])),
            _ => (Some(120_000), Some(15)),
        };
        let valid_until = jiff::Timestamp::now().as_second() + 365 * 86_400;
        let terms = pb::MandateTerms {
            display_account: format!("ACCT-{n}"),
            purposes: vec![pb::Purpose::Utility as i32],
            currency_code: "CNY".into(),
            amount_type: pb::AmountType::Maximum as i32,
            per_debit_limit: cny(10_000),
            period: Some(pb::Period {
                unit: pb::PeriodUnit::Month as i32,
                count: 1,
            }),
            period_amount_limit: cny(period_amount_minor),
            period_debit_limit: Some(period_count),
            total_amount_limit: total_amount_minor.and_then(cny),
            total_debit_limit: total_count,
            valid_from: None,
            valid_until: Some(prost_types::Timestamp {
                seconds: valid_until,
                nanos: 0,
            }),
            collection_window: None,
            pre_notification: None,
            timezone: String::new(),
            single_use: false,
        };
        let create = pb::CreateMandateRequest {
            merchant_contract_id: format!("c-{n}"),
            payer_id: payer_id.clone(),
            terms: Some(terms),
        };
        let token = &self.merchant_tokens[merchant];
        let (answers, gave_up) = self
            .deliver("CreateMandate", rng, |replica| {
                let mut client = self.mandates_client(replica, token);
                let request = timed(create.clone());
                async move { client.create_mandate(request).await }
            })
            .await;
        let created = answers
            .iter()
            .find_map(|a| a.ok().and_then(|r| r.mandate.clone()));
        self.records.lock().unwrap().mandates.push(MandateSent {
            merchant,
            contract_id: create.merchant_contract_id.clone(),
            answers,
            gave_up,
        });
        let Some(created) = created else { return };

        let wallet = |cap: Option<i64>| pb::FundingSource {
            instrument: Some(pb::funding_source::Instrument::Wallet(pb::WalletSource {})),
            cap_per_debit: cap.and_then(cny),
        };
        let card = pb::FundingSource {
            instrument: Some(pb::funding_source::Instrument::BankCard(
                pb::BankCardSource {
                    vault_token: card_token(&payer_id),
                    bank_name: "ICBC".into(),
                    last_four: "4242".into(),
                },
            )),
            cap_per_debit: None,
        };
        let funding_sources = match rng.below(4) {
            0 => vec![wallet(None)],
            1 => vec![wallet(Some(3_000)), card.clone()],
            2 => vec![card.clone()],
            _ => vec![card.clone(), wallet(None)],
        };
        let confirm = pb::ConfirmMandateRequest {
            mandate_id: created.mandate_id.clone(),
            mandate_version: created.version,
            consent: Some(consent()),
            funding_sources,
            request_id: format!("cfm-{n}"),
        };
        let token = &self.payer_tokens[payer_index];
        let (answers, gave_up) = self
            .deliver("ConfirmMandate", rng, |replica| {
                let mut client = self.mandates_client(replica, token);
                let request = timed(confirm.clone());
                async move {
                    client
                        .confirm_mandate(request)
                        .await
                        .map(|r| r.map(|r| r.mandate.unwrap_or_default()))
                }
            })
            .await;
        let active = answers.iter().any(|a| {
            a.ok()
                .is_some_and(|m| m.status == pb::MandateStatus::Active as i32)
        });
        self.records.lock().unwrap().changes.push(ChangeSent {
            request_id: confirm.request_id.clone(),
            mandate_id: created.mandate_id.clone(),
            action: "MANDATE_CONFIRMED",
            answers,
            gave_up,
        });
        if active {
            self.mandates.lock().unwrap().push(MandatePlan {
                mandate_id: created.mandate_id,
                merchant,
                payer: payer_id,
                period_amount_minor,
                period_count,
                total_amount_minor,
                total_count,
            });
        }
    }

    async fn collect(&self, rng: &mut Rng) {
        let Some(mandate) = self.pick_mandate(rng) else {
            return;
        };
        let n = self.next_id();
        let amount_minor = 500 + i64::try_from(rng.below(7_501)).expect("small");
        // Now and then a bill collected before on the mandate, spelt differently: a duplicate,
        // or (once refunded) a clawback.
        let bill_reference = if rng.below(100) < 5 {
            let k = rng.below(3);
            [format!("dup-{k}"), format!("DUP_{k}"), format!("Dup.{k}")][rng.index(3)].clone()
        } else {
            format!("bill-{n}")
        };
        let body = pb::CreateDeductionRequest {
            request_id: format!("ddn-{n}"),
            mandate_id: mandate.mandate_id.clone(),
            amount: cny(amount_minor),
            purpose: pb::Purpose::Utility as i32,
            bill_reference,
            description: "fault run".into(),
            notice_id: String::new(),
            one_off_approval_id: String::new(),
        };
        let token = &self.merchant_tokens[mandate.merchant];
        let (answers, gave_up) = self
            .deliver("CreateDeduction", rng, |replica| {
                let mut client = self.deductions_client(replica, token);
                let request = timed(body.clone());
                async move { client.create_deduction(request).await }
            })
            .await;
        let succeeded = answers.iter().find_map(|a| {
            a.ok()
                .and_then(|r| r.deduction.as_ref())
                .filter(|d| d.status == pb::DeductionStatus::Succeeded as i32)
                .map(|d| d.deduction_id.clone())
        });
        if let Some(id) = succeeded {
            self.paid
                .lock()
                .unwrap()
                .push((mandate.merchant, id, amount_minor));
        }
        self.records.lock().unwrap().deductions.push(DeductionSent {
            merchant: mandate.merchant,
            request_id: body.request_id,
            mandate_id: mandate.mandate_id,
            amount_minor,
            answers,
            gave_up,
        });
    }

    async fn refund(&self, rng: &mut Rng) {
        let picked = {
            let paid = self.paid.lock().unwrap();
            (!paid.is_empty()).then(|| paid[rng.index(paid.len())].clone())
        };
        let Some((merchant, deduction_id, collected_minor)) = picked else {
            return;
        };
        // Half the time all of it (refused once something was refunded already).
        let amount_minor = if rng.below(2) == 0 {
            collected_minor
        } else {
            1 + i64::try_from(rng.below(u64::try_from(collected_minor).expect("positive")))
                .expect("small")
        };
        let body = pb::RefundDeductionRequest {
            request_id: format!("rfd-{}", self.next_id()),
            deduction_id: deduction_id.clone(),
            amount: cny(amount_minor),
            reason: "fault run".into(),
        };
        let token = &self.merchant_tokens[merchant];
        let (answers, gave_up) = self
            .deliver("RefundDeduction", rng, |replica| {
                let mut client = self.deductions_client(replica, token);
                let request = timed(body.clone());
                async move { client.refund_deduction(request).await }
            })
            .await;
        self.records.lock().unwrap().refunds.push(RefundSent {
            merchant,
            request_id: body.request_id,
            deduction_id,
            amount_minor,
            answers,
            gave_up,
        });
    }

    /// Credits a wallet (a random payer's and amount unless given).
    async fn credit(&self, rng: &mut Rng, payer_index: Option<usize>, amount_minor: i64) {
        let payer_index = payer_index.unwrap_or_else(|| rng.index(PAYERS));
        let amount_minor = if amount_minor > 0 {
            amount_minor
        } else {
            1_000 + i64::try_from(rng.below(19_001)).expect("small")
        };
        let body = pb::CreditWalletRequest {
            request_id: format!("crd-{}", self.next_id()),
            payer_id: payer(payer_index),
            amount: cny(amount_minor),
            reason: "top-up".into(),
        };
        let token = &self.operator_token;
        let (answers, gave_up) = self
            .deliver("CreditWallet", rng, |replica| {
                let mut client = self.wallet_client(replica, token);
                let request = timed(body.clone());
                async move { client.credit_wallet(request).await }
            })
            .await;
        self.records.lock().unwrap().credits.push(CreditSent {
            request_id: body.request_id,
            payer: body.payer_id,
            amount_minor,
            answers,
            gave_up,
        });
    }

    async fn pause_or_resume(&self, rng: &mut Rng) {
        let Some(mandate) = self.pick_mandate(rng) else {
            return;
        };
        let payer_index = (0..PAYERS)
            .find(|&i| payer(i) == mandate.payer)
            .expect("a known payer");
        let token = &self.payer_tokens[payer_index];
        let request_id = format!("chg-{}", self.next_id());
        let mandate_id = mandate.mandate_id.clone();
        // Resumes more often than pauses, so most mandates collect most of the time.
        let (action, answers, gave_up) = if rng.below(3) == 0 {
            let body = pb::PauseMandateRequest {
                mandate_id: mandate_id.clone(),
                reason: "holiday".into(),
                request_id: request_id.clone(),
            };
            let (answers, gave_up) = self
                .deliver("PauseMandate", rng, |replica| {
                    let mut client = self.mandates_client(replica, token);
                    let request = timed(body.clone());
                    async move {
                        client
                            .pause_mandate(request)
                            .await
                            .map(|r| r.map(|r| r.mandate.unwrap_or_default()))
                    }
                })
                .await;
            ("MANDATE_PAUSED", answers, gave_up)
        } else {
            let body = pb::ResumeMandateRequest {
                mandate_id: mandate_id.clone(),
                reason: "back".into(),
                request_id: request_id.clone(),
            };
            let (answers, gave_up) = self
                .deliver("ResumeMandate", rng, |replica| {
                    let mut client = self.mandates_client(replica, token);
                    let request = timed(body.clone());
                    async move {
                        client
                            .resume_mandate(request)
                            .await
                            .map(|r| r.map(|r| r.mandate.unwrap_or_default()))
                    }
                })
                .await;
            ("MANDATE_RESUMED", answers, gave_up)
        };
        self.records.lock().unwrap().changes.push(ChangeSent {
            request_id,
            mandate_id,
            action,
            answers,
            gave_up,
        });
    }

    /// Programs a payer's card to time out after taking the money, to time out without taking
    /// it, or to answer slowly (which widens the window a kill can hit between the bank's
    /// answer and its record).
    async fn bank_trouble(&self, rng: &mut Rng) {
        let payer_index = rng.index(PAYERS - 1);
        let behaviour = match rng.below(10) {
            0..4 => bank_pb::SetCardRequest {
                timeout_after_apply_next: 1 + u32::try_from(rng.below(2)).expect("small"),
                hang_ms: BANK_HANG_MS,
                ..Default::default()
            },
            4..7 => bank_pb::SetCardRequest {
                timeout_without_apply_next: 1,
                hang_ms: BANK_HANG_MS,
                ..Default::default()
            },
            _ => bank_pb::SetCardRequest {
                latency_ms: 20 + u32::try_from(rng.below(200)).expect("small"),
                ..Default::default()
            },
        };
        self.program_card(payer_index, CARD_BALANCE_MINOR, behaviour)
            .await;
        self.count("bank SetCard", "OK".into());
    }

    async fn get_deduction(&self, rng: &mut Rng) {
        let picked = {
            let records = self.records.lock().unwrap();
            let answered: Vec<(&'static str, String)> = records
                .deductions
                .iter()
                .rev()
                .take(200)
                .filter_map(|d| {
                    let id = d.answers.iter().find_map(|a| {
                        a.ok()
                            .and_then(|r| r.deduction.as_ref())
                            .map(|d| d.deduction_id.clone())
                    })?;
                    Some((d.merchant, id))
                })
                .collect();
            (!answered.is_empty()).then(|| answered[rng.index(answered.len())].clone())
        };
        let Some((merchant, deduction_id)) = picked else {
            return;
        };
        let token = &self.merchant_tokens[merchant];
        self.read("GetDeduction", rng, |replica| {
            let mut client = self.deductions_client(replica, token);
            let request = timed(pb::GetDeductionRequest {
                deduction_id: deduction_id.clone(),
            });
            async move { client.get_deduction(request).await }
        })
        .await;
    }

    async fn get_balance(&self, rng: &mut Rng) {
        let payer_id = payer(rng.index(PAYERS));
        let token = &self.operator_token;
        self.read("GetWalletBalance", rng, |replica| {
            let mut client = self.wallet_client(replica, token);
            let request = timed(pb::GetWalletBalanceRequest {
                payer_id: payer_id.clone(),
                currency_code: "CNY".into(),
            });
            async move { client.get_wallet_balance(request).await }
        })
        .await;
    }

    async fn check_deduction(&self, rng: &mut Rng) {
        let Some(mandate) = self.pick_mandate(rng) else {
            return;
        };
        let token = &self.merchant_tokens[mandate.merchant];
        let body = pb::CheckDeductionRequest {
            mandate_id: mandate.mandate_id.clone(),
            amount: cny(5_000),
            purpose: pb::Purpose::Utility as i32,
            bill_reference: format!("check-{}", self.next_id()),
            notice_id: String::new(),
        };
        self.read("CheckDeduction", rng, |replica| {
            let mut client = self.deductions_client(replica, token);
            let request = timed(body.clone());
            async move { client.check_deduction(request).await }
        })
        .await;
    }
}

/// A request with the client's deadline.
fn timed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(REQUEST_TIMEOUT);
    request
}
