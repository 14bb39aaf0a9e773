//! What a database error means for the caller, decided in one place: a unique key a concurrent
//! writer of the same request took first (read its answer and replay it), a number past what a
//! 64-bit column holds (a clear refusal), or anything else (an internal error).

use sqlx::error::DatabaseError;

use super::StoreError;

/// A unique key that two writers of the same request race for. Losing the race is not an
/// error of the request: the loser reads the winner's result and answers with it (or with
/// ALREADY_EXISTS if the key names another request). Named by PostgreSQL's constraint and by
/// the columns SQLite's message lists; a unique key not listed here is a bug, not a race.
struct RacedKey {
    postgres: &'static str,
    sqlite: &'static str,
}

const RACED_KEYS: [RacedKey; 9] = [
    RacedKey {
        postgres: "mandates_contract_unique",
        sqlite: "mandates.merchant_id, mandates.contract_id",
    },
    RacedKey {
        postgres: "mandate_versions_pkey",
        sqlite: "mandate_versions.mandate_id, mandate_versions.version",
    },
    RacedKey {
        postgres: "idempotency_keys_pkey",
        sqlite: "idempotency_keys.scope, idempotency_keys.request_id",
    },
    RacedKey {
        postgres: "deductions_request_unique",
        sqlite: "deductions.merchant_id, deductions.request_id",
    },
    RacedKey {
        postgres: "notices_request_unique",
        sqlite: "notices.merchant_id, notices.request_id",
    },
    RacedKey {
        postgres: "approvals_request_unique",
        sqlite: "approvals.merchant_id, approvals.request_id",
    },
    RacedKey {
        postgres: "refunds_request_unique",
        sqlite: "refunds.merchant_id, refunds.request_id",
    },
    // A refund's id is derived from its merchant and request id.
    RacedKey {
        postgres: "refunds_pkey",
        sqlite: "refunds.refund_id",
    },
    RacedKey {
        postgres: "ledger_movements_request_unique",
        sqlite: "ledger_movements.request_scope, ledger_movements.request_id",
    },
];

/// The message SQLite's range trigger raises (migrations `*_hardening.sql`): SQLite turns an
/// integer sum past 64 bits into a float instead of failing, so the trigger refuses it.
const SQLITE_OUT_OF_RANGE: &str = "out of range:";
/// How a hot standby (the read replica) cancels a read whose rows replay must remove (after
/// `max_standby_streaming_delay`): the same read sent again is answered.
const STANDBY_CANCELLED: &str = "canceling statement due to conflict with recovery";
/// PostgreSQL's `numeric_value_out_of_range` (a `bigint` sum past 64 bits).
const POSTGRES_OUT_OF_RANGE: &str = "22003";

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if matches!(
            error,
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
        ) {
            return Self::Unavailable(error.to_string());
        }
        let sqlx::Error::Database(db) = &error else {
            return Self::Database(error);
        };
        if db.is_unique_violation() && is_raced_key(db.as_ref()) {
            return Self::Conflict;
        }
        if db.message().starts_with(STANDBY_CANCELLED) {
            return Self::Unavailable(db.message().to_owned());
        }
        if db.code().as_deref() == Some(POSTGRES_OUT_OF_RANGE)
            || db.message().starts_with(SQLITE_OUT_OF_RANGE)
        {
            return Self::OutOfRange(db.message().to_owned());
        }
        Self::Database(error)
    }
}

fn is_raced_key(db: &dyn DatabaseError) -> bool {
    match db.constraint() {
        Some(name) => RACED_KEYS.iter().any(|key| key.postgres == name),
        // "UNIQUE constraint failed: refunds.merchant_id, refunds.request_id"
        None => db
            .message()
            .rsplit_once(": ")
            .is_some_and(|(_, columns)| RACED_KEYS.iter().any(|key| key.sqlite == columns)),
    }
}
