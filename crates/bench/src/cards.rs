//! Card funding for `seed`: one card per payer in the bank simulator, named by an opaque token
//! made from the payer id, so all of a payer's mandates charge its one card and seeding the same
//! payers again reprograms the same cards instead of piling up new ones.

use std::sync::Arc;

use tonic::transport::Channel;

use withholding::domain::money::Money;
use withholding::domain::text::{check_identifier, contains_card_number};
use withholding::pb;
use withholding::pb::bank::SetCardRequest;
use withholding::pb::bank::bank_simulator_service_client::BankSimulatorServiceClient;
use withholding_bank_sim::MAX_CARDS;

use super::{Console, SeedPlan, for_each_index, retrying, violation};

/// Put before the payer id to make a card's vault token. The service refuses a token holding
/// 13 to 19 digits that pass the Luhn check, as a card number sent by mistake, so payer ids
/// that would make one are refused before anything is seeded.
const TOKEN_PREFIX: &str = "tok-";
/// What the payer is shown for the card; the simulator's cards have no number at all.
const BANK_NAME: &str = "BENCH-BANK";
const LAST_FOUR: &str = "0000";

/// The vault token of `payer`'s card.
fn token(payer: &str) -> String {
    format!("{TOKEN_PREFIX}{payer}")
}

/// `payer`'s card as a funding source.
pub(super) fn instrument(payer: &str) -> pb::funding_source::Instrument {
    pb::funding_source::Instrument::BankCard(pb::BankCardSource {
        vault_token: token(payer),
        bank_name: BANK_NAME.into(),
        last_four: LAST_FOUR.into(),
    })
}

/// Checks, before anything is made, that every payer's card can exist: the simulator holds at
/// most [`MAX_CARDS`], and the longest token must be an identifier.
pub(super) fn check_payers(payer_prefix: &str, payers: u64) -> Result<(), String> {
    if payers > MAX_CARDS as u64 {
        return Err(format!(
            "--funding card: {payers} payers need {payers} cards and the bank simulator holds \
             at most {MAX_CARDS}; pass fewer --payers"
        ));
    }
    let longest = token(&format!("{payer_prefix}-{}", payers.saturating_sub(1)));
    check_identifier("--payer-prefix", &longest).map_err(|v| {
        format!(
            "{} (as part of the card token {TOKEN_PREFIX}PAYER)",
            violation(v)
        )
    })?;
    if contains_card_number(payer_prefix) {
        return Err(format!(
            "--payer-prefix {payer_prefix:?} holds what looks like a card number, which the \
             service refuses in a card token"
        ));
    }
    Ok(())
}

/// Gives every payer's card `balance` in the bank simulator behind `channels`. `SetCard`
/// replaces a card, so a retry, or a second seed of the same payers, only resets the balance.
pub(super) async fn program(
    plan: &Arc<SeedPlan>,
    balance: &Money,
    concurrency: u32,
    channels: &[Channel],
    console: &Console,
) -> Result<(), String> {
    let balance_minor = balance.minor();
    let plan = plan.clone();
    for_each_index(
        "program cards",
        plan.payers,
        concurrency,
        channels,
        console,
        move |channel, j| {
            let request = SetCardRequest {
                card_token: token(&plan.payer(j)),
                balance_minor,
                ..Default::default()
            };
            async move {
                retrying("SetCard", || {
                    let mut client = BankSimulatorServiceClient::new(channel.clone());
                    let request = request.clone();
                    async move { client.set_card(request).await }
                })
                .await
                .map(|_| ())
            }
        },
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_never_card_numbers() {
        for payer in ["bench-payer-0", "bench-payer-999999", "0"] {
            assert!(!contains_card_number(&token(payer)), "{payer}");
        }
        // A payer prefix that would make one is refused before seeding.
        let refused = check_payers("4111111111111111", 1).unwrap_err();
        assert!(refused.contains("card number"), "{refused}");
    }

    #[test]
    fn payer_limits() {
        assert!(check_payers("bench-payer", 1).is_ok());
        assert!(check_payers("bench-payer", MAX_CARDS as u64).is_ok());
        let too_many = check_payers("bench-payer", MAX_CARDS as u64 + 1).unwrap_err();
        assert!(too_many.contains("--payers"), "{too_many}");
        let long = check_payers(&"p".repeat(59), 10).unwrap_err();
        assert!(long.starts_with("--payer-prefix "), "{long}");
    }
}
