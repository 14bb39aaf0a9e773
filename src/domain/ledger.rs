//! The wallet ledger's model (DESIGN §8): accounts, and double-entry movements between them.
//! Money enters through clearing accounts, sits in payers' wallets, and is owed to merchants
//! on settlement sub-accounts; every movement's two entries sum to zero.

use super::deduction::{Deduction, SourceKind};
use super::ids::{MerchantId, PayerId};
use super::money::Currency;

/// What an account is; only wallets are kept from going negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountKind {
    Wallet,
    Merchant,
    Clearing,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        ["WALLET", "MERCHANT", "CLEARING"][self as usize]
    }
}

/// Why money moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MovementKind {
    Deduction,
    Refund,
    WalletCredit,
    /// A reconciliation correction (a short written off).
    Reconciliation,
}

impl MovementKind {
    pub fn as_str(self) -> &'static str {
        ["DEDUCTION", "REFUND", "WALLET_CREDIT", "RECONCILIATION"][self as usize]
    }
}

/// How many settlement sub-accounts each merchant has per currency. On PostgreSQL a deduction
/// holds its sub-account's row lock until it commits, so two concurrent deductions of one
/// merchant that pick the same sub-account run one after the other. With the pool's 16
/// connections busy, a deduction meets one of the other 15 on its sub-account with probability
/// 1 − (1 − 1/N)¹⁵: 62 % at N = 16, 6 % at 256 (docs/PERFORMANCE.md). At most 256:
/// the sub-account is one byte of a hash.
const MERCHANT_SUB_ACCOUNTS: u16 = 256;

/// A ledger account: a payer's wallet, a merchant's settlement account, or a clearing account
/// money enters through. No account is shared by every payer or every merchant, so no single
/// balance bounds what the ledger as a whole can hold (DESIGN §7): wallet top-ups enter through
/// each payer's own clearing account, card money through its merchant's card-clearing
/// sub-accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub kind: AccountKind,
    pub currency: Currency,
}

impl Account {
    pub fn wallet(payer: &PayerId, currency: Currency) -> Self {
        Self {
            id: format!("wallet:{payer}:{}", currency.code()),
            kind: AccountKind::Wallet,
            currency,
        }
    }

    /// One of a merchant's settlement sub-accounts, chosen by `deduction_id`: every deduction
    /// credits its merchant in its own transaction, and a single row would make all of one
    /// merchant's deductions wait for each other's commit (on PostgreSQL's row lock). The
    /// merchant's settlement balance is the sum of its sub-accounts; a refund debits the
    /// sub-account its deduction credited, found again from the deduction's id — so the
    /// choice must not change for stored deductions: a different count or hash would send
    /// their refunds to other sub-accounts (the merchant's sum would still be right, its
    /// sub-accounts not).
    pub fn merchant(merchant: &MerchantId, currency: Currency, deduction_id: &str) -> Self {
        let shard = merchant_shard(deduction_id);
        Self {
            id: format!("merchant:{merchant}:{}:{shard:03}", currency.code()),
            kind: AccountKind::Merchant,
            currency,
        }
    }

    /// Where a payer's wallet top-ups come from (the outside world, as seen by the ledger).
    pub fn clearing(payer: &PayerId, currency: Currency) -> Self {
        Self {
            id: format!("clearing:{payer}:{}", currency.code()),
            kind: AccountKind::Clearing,
            currency,
        }
    }

    /// Where card money enters the ledger (what the bank owes us for a merchant's card
    /// charges): the sub-account beside the merchant's settlement sub-account of the same
    /// deduction, so a card refund finds it again the same way.
    pub fn card_clearing(merchant: &MerchantId, currency: Currency, deduction_id: &str) -> Self {
        let shard = merchant_shard(deduction_id);
        Self {
            id: format!("card-clearing:{merchant}:{}:{shard:03}", currency.code()),
            kind: AccountKind::Clearing,
            currency,
        }
    }
}

impl Account {
    /// Where what the bank will never pay (a short written off in reconciliation) is booked:
    /// the institution's loss on the merchant's card business, one account per merchant and
    /// currency (written off rarely, so one row does not make anyone wait).
    pub fn reconciliation_loss(merchant: &MerchantId, currency: Currency) -> Self {
        Self {
            id: format!("recon-loss:{merchant}:{}", currency.code()),
            kind: AccountKind::Clearing,
            currency,
        }
    }
}

/// The sub-account (0–255) a deduction's money lands in: one byte of SHA-256 of its id.
fn merchant_shard(deduction_id: &str) -> u16 {
    use sha2::{Digest, Sha256};
    const _: () = assert!(MERCHANT_SUB_ACCOUNTS >= 1 && MERCHANT_SUB_ACCOUNTS <= 256);
    let byte = Sha256::digest(deduction_id.as_bytes())[0];
    u16::from(byte) % MERCHANT_SUB_ACCOUNTS
}

/// Where a refund of a deduction paid from a source of `kind` moves money: from the merchant's
/// sub-account the deduction credited, back to the payer's wallet, or to the card-clearing
/// sub-account the card money came through (the bank returns it to the card).
pub fn refund_route(deduction: &Deduction, kind: SourceKind) -> (Account, Account) {
    let currency = deduction.request.amount.currency();
    let (merchant, id) = (&deduction.merchant_id, deduction.id.as_str());
    let back_to = match kind {
        SourceKind::Wallet => Account::wallet(&deduction.payer_id, currency),
        SourceKind::BankCard => Account::card_clearing(merchant, currency, id),
    };
    (Account::merchant(merchant, currency, id), back_to)
}

/// One double-entry movement of `amount_minor` from one account to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerMove {
    pub movement_id: String,
    pub kind: MovementKind,
    pub from: Account,
    pub to: Account,
    pub amount_minor: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub_account(deduction_id: &str) -> String {
        let merchant = MerchantId::parse("merchant_id", "m1").expect("a valid merchant id");
        Account::merchant(&merchant, Currency::Cny, deduction_id).id
    }

    /// A refund finds its deduction's sub-account again from the deduction's id: the choice
    /// must stay the same for stored deductions.
    #[test]
    fn a_deductions_settlement_sub_account_is_fixed_by_its_id() {
        assert_eq!(sub_account("ded_0001"), "merchant:m1:CNY:114");
        assert_eq!(sub_account("ded_0002"), "merchant:m1:CNY:032");
    }

    #[test]
    fn deductions_spread_over_all_sub_accounts() {
        let used: std::collections::HashSet<String> = (0..5_000)
            .map(|i| sub_account(&format!("ded_{i}")))
            .collect();
        assert_eq!(used.len(), usize::from(MERCHANT_SUB_ACCOUNTS));
    }
}
