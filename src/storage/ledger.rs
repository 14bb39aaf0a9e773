//! The wallet ledger's storage: double-entry movements (the movement, both balances, its two
//! entries), wallet credits keyed by request id, balances and the totals the conservation
//! invariant checks.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::backend::{self, Backend, StoredRow};
use super::deductions::{Keyed, KeyedRequest, LedgerTotals};
use super::plan::Plan;
use super::rows::micros;
use super::{StoreError, audit};
use crate::domain::audit::AuditDraft;
use crate::domain::ledger::{Account, AccountKind, LedgerMove};

pub const BALANCE: &str = "SELECT balance_minor FROM ledger_accounts WHERE account_id = $1";
/// Creates the account with `$4`, or adds `$4` to its balance.
const UPSERT_BALANCE: &str = "INSERT INTO ledger_accounts \
    (account_id, kind, currency, balance_minor) VALUES ($1, $2, $3, $4) \
    ON CONFLICT (account_id) DO UPDATE \
    SET balance_minor = ledger_accounts.balance_minor + excluded.balance_minor";
const MOVE_BALANCE: &str =
    "UPDATE ledger_accounts SET balance_minor = balance_minor + $1 WHERE account_id = $2";
const INSERT_MOVEMENT: &str = "INSERT INTO ledger_movements \
    (movement_id, kind, request_scope, request_id, fingerprint, created_at_us) \
    VALUES ($1, $2, $3, $4, $5, $6)";
const EXISTING_CREDIT: &str = "SELECT fingerprint, result_minor FROM ledger_movements \
    WHERE request_scope = $1 AND request_id = $2";
const SET_CREDIT_RESULT: &str =
    "UPDATE ledger_movements SET result_minor = $1 WHERE movement_id = $2";
/// A movement's two entries.
const INSERT_ENTRIES: &str = "INSERT INTO ledger_entries \
    (movement_id, account_id, amount_minor, created_at_us) \
    VALUES ($1, $2, $3, $4), ($1, $5, $6, $4)";
/// Each sum is taken in two parts (millions and the rest), each of which fits 64 bits whatever
/// the balances: SQLite's SUM fails past 64 bits, and PostgreSQL's is NUMERIC (cast back so
/// both backends answer integers).
const TOTALS: &str = "SELECT \
    CAST((SELECT COALESCE(SUM(balance_minor / 1000000), 0) FROM ledger_accounts) AS BIGINT), \
    CAST((SELECT COALESCE(SUM(balance_minor % 1000000), 0) FROM ledger_accounts) AS BIGINT), \
    CAST((SELECT COALESCE(SUM(amount_minor / 1000000), 0) FROM ledger_entries) AS BIGINT), \
    CAST((SELECT COALESCE(SUM(amount_minor % 1000000), 0) FROM ledger_entries) AS BIGINT), \
    CAST((SELECT COALESCE(MIN(balance_minor), 0) FROM ledger_accounts WHERE kind = 'WALLET') \
    AS BIGINT)";

/// The read of an account's balance, locked with the backend's row lock.
pub fn read_balance_locked<B: Backend>(reads: &mut Plan, account_id: &str) {
    reads.read(backend::locked::<B>(BALANCE), vec![account_id.into()]);
}

/// Plans one double-entry movement: the movement, both balances, and its two entries, which
/// sum to zero. A wallet that would go negative fails the balance `CHECK` and aborts the whole
/// transaction. Rows are taken wallet first, the order a deduction takes them in (it reads the
/// wallet `FOR UPDATE` before deciding), then by account id, so two movements between the same
/// accounts in opposite directions (a card settlement and a card refund) take their row locks
/// in the same order and never deadlock.
pub fn plan_move(
    plan: &mut Plan,
    movement: &LedgerMove,
    request: Option<KeyedRequest<'_>>,
    at: Timestamp,
) {
    let at = micros(at);
    let (scope, request_id, fingerprint) = match request {
        Some(r) => (Some(r.scope), Some(r.request_id), Some(r.fingerprint)),
        None => (None, None, None),
    };
    plan.push(
        INSERT_MOVEMENT,
        vec![
            movement.movement_id.clone().into(),
            movement.kind.as_str().into(),
            scope.into(),
            request_id.into(),
            fingerprint.into(),
            at.into(),
        ],
        1,
    );
    let mut sides = [
        (&movement.from, -movement.amount_minor),
        (&movement.to, movement.amount_minor),
    ];
    sides.sort_by(|(a, _), (b, _)| {
        (a.kind != AccountKind::Wallet, a.id.as_str())
            .cmp(&(b.kind != AccountKind::Wallet, b.id.as_str()))
    });
    for (account, amount) in sides {
        if amount < 0 && account.kind == AccountKind::Wallet {
            // Debiting a wallet: it exists (its balance covered the amount), so exactly one
            // row changes. An upsert would check the CHECK against its negative insert values
            // first.
            plan.push(
                MOVE_BALANCE,
                vec![amount.into(), account.id.clone().into()],
                1,
            );
        } else {
            plan.push(
                UPSERT_BALANCE,
                vec![
                    account.id.clone().into(),
                    account.kind.as_str().into(),
                    account.currency.code().into(),
                    amount.into(),
                ],
                1,
            );
        }
    }
    plan.push(
        INSERT_ENTRIES,
        vec![
            movement.movement_id.clone().into(),
            movement.from.id.clone().into(),
            (-movement.amount_minor).into(),
            at.into(),
            movement.to.id.clone().into(),
            movement.amount_minor.into(),
        ],
        2,
    );
}

/// Followed by `VALUES`, one row per movement of a deduction (no request key).
const INSERT_MOVEMENTS: &str = "INSERT INTO ledger_movements (movement_id, kind, created_at_us) ";
/// Followed by `VALUES`, one row per entry.
const INSERT_ENTRY_ROWS: &str =
    "INSERT INTO ledger_entries (movement_id, account_id, amount_minor, created_at_us) ";
/// Followed by `VALUES` of (account, delta), one row per account, which must all exist.
const MOVE_BALANCES: &str = "UPDATE ledger_accounts SET \
    balance_minor = ledger_accounts.balance_minor + v.delta FROM (";
const MOVE_BALANCES_TAIL: &str = ") AS v (account_id, delta) \
    WHERE ledger_accounts.account_id = v.account_id";
/// Followed by `VALUES` of (account, kind, currency, delta): creates or moves each account.
const UPSERT_BALANCES: &str =
    "INSERT INTO ledger_accounts (account_id, kind, currency, balance_minor) ";
const UPSERT_BALANCES_TAIL: &str = " ON CONFLICT (account_id) DO UPDATE \
    SET balance_minor = ledger_accounts.balance_minor + excluded.balance_minor";

/// Plans the movements of many deductions (each at its time) as one statement per table, each
/// account's balance moved once by the sum of its entries. Into `held`: the movements and the
/// debited wallets, whose rows a deduction's batch has locked already. Into `last`: the other
/// accounts (merchant sub-accounts, created or moved by one upsert whose rows lock in id order)
/// and the entries after them — for the end of the transaction, so that the sub-accounts, which
/// concurrent batches of one merchant share, are held as briefly as can be. A sum that leaves
/// 64 bits is [`StoreError::OutOfRange`] before anything is written.
pub fn plan_moves(
    held: &mut Plan,
    last: &mut Plan,
    moves: &[(&LedgerMove, Timestamp)],
) -> Result<(), StoreError> {
    let mut movements = Vec::with_capacity(moves.len());
    let mut entries = Vec::with_capacity(moves.len() * 2);
    let mut deltas: BTreeMap<(bool, &str), (&Account, i64)> = BTreeMap::new();
    for &(movement, at) in moves {
        let at = micros(at);
        movements.push(vec![
            movement.movement_id.clone().into(),
            movement.kind.as_str().into(),
            at.into(),
        ]);
        for (account, amount) in [
            (&movement.from, -movement.amount_minor),
            (&movement.to, movement.amount_minor),
        ] {
            entries.push(vec![
                movement.movement_id.clone().into(),
                account.id.clone().into(),
                amount.into(),
                at.into(),
            ]);
            let key = (account.kind != AccountKind::Wallet, account.id.as_str());
            let delta = &mut deltas.entry(key).or_insert((account, 0)).1;
            *delta = delta.checked_add(amount).ok_or_else(|| {
                StoreError::OutOfRange(format!("the movements of account {}", account.id))
            })?;
        }
    }
    held.push_rows(INSERT_MOVEMENTS, movements, "");
    let (mut moved, mut upserted) = (vec![], vec![]);
    for ((_, id), (account, delta)) in deltas {
        if delta < 0 && account.kind == AccountKind::Wallet {
            // A debited wallet exists (its balance covered the debits): see `plan_move`.
            moved.push(vec![id.into(), delta.into()]);
        } else {
            upserted.push(vec![
                id.into(),
                account.kind.as_str().into(),
                account.currency.code().into(),
                delta.into(),
            ]);
        }
    }
    held.push_rows(MOVE_BALANCES, moved, MOVE_BALANCES_TAIL);
    last.push_rows(UPSERT_BALANCES, upserted, UPSERT_BALANCES_TAIL);
    last.push_rows(INSERT_ENTRY_ROWS, entries, "");
    Ok(())
}

/// Runs one movement inside the transaction on `conn`, statement by statement in the plan's
/// lock order.
pub async fn apply_move<B: Backend>(
    conn: &mut B::Conn,
    movement: &LedgerMove,
    request: Option<KeyedRequest<'_>>,
    at: Timestamp,
) -> Result<(), StoreError> {
    let mut plan = Plan::default();
    plan_move(&mut plan, movement, request, at);
    B::run_plan(conn, plan).await
}

pub async fn credit_wallet<B: Backend>(
    backend: &B,
    credit: &LedgerMove,
    request: KeyedRequest<'_>,
    audit: &AuditDraft,
) -> Result<Keyed<i64>, StoreError> {
    let (scope, request_id) = (request.scope, request.request_id);
    let mut tx = backend.begin_write().await?;
    let binds = vec![scope.into(), request_id.into()];
    if let Some(row) = backend::fetch_optional::<B>(&mut tx, EXISTING_CREDIT, binds).await? {
        let (stored, result) = (row.opt_text(0)?, row.opt_int(1)?);
        let value = match result {
            Some(balance) => balance,
            // A credit recorded before its answer was kept: the balance now. The key may
            // belong to a credit of another wallet (a reused key), so this wallet need not
            // exist yet.
            None => {
                let binds = vec![credit.to.id.clone().into()];
                let now = backend::fetch_optional::<B>(&mut tx, BALANCE, binds).await?;
                now.map(|row| row.int(0)).transpose()?.unwrap_or(0)
            }
        };
        B::rollback(tx).await?;
        return Ok(Keyed::Existing {
            value,
            fingerprint: stored.unwrap_or_default(),
        });
    }
    apply_move::<B>(&mut tx, credit, Some(request), audit.at).await?;
    // The wallet's row is locked by the credit until commit: this is its balance right after
    // it, the answer a retry of the request gets too.
    let binds = vec![credit.to.id.clone().into()];
    let value = backend::fetch_one::<B>(&mut tx, BALANCE, binds)
        .await?
        .int(0)?;
    let binds = vec![value.into(), credit.movement_id.clone().into()];
    B::execute(&mut tx, SET_CREDIT_RESULT.into(), binds).await?;
    audit::append::<B>(&mut tx, std::slice::from_ref(audit)).await?;
    B::commit(tx).await?;
    Ok(Keyed::New(value))
}

pub async fn balance<B: Backend>(backend: &B, account: &Account) -> Result<i64, StoreError> {
    let row = backend::read_optional(backend, BALANCE, vec![account.id.clone().into()]).await?;
    Ok(row.map(|row| row.int(0)).transpose()?.unwrap_or(0))
}

pub async fn totals<B: Backend>(backend: &B) -> Result<LedgerTotals, StoreError> {
    let row = backend::read_optional(backend, TOTALS, vec![])
        .await?
        .ok_or_else(|| StoreError::Corrupt("the ledger totals came back empty".into()))?;
    let whole = |hi: i64, lo: i64| i128::from(hi) * 1_000_000 + i128::from(lo);
    Ok(LedgerTotals {
        sum_minor: whole(row.int(0)?, row.int(1)?),
        entries_sum_minor: whole(row.int(2)?, row.int(3)?),
        min_wallet_minor: row.int(4)?,
    })
}
