//! End-to-end tests: the real server over real gRPC, on SQLite and on PostgreSQL. One folder or
//! file per feature; `harness` is the one fixture layer they all share (`TestApp` and its calls).

mod harness;

// Mandates, and who may see or change them.
mod mandates; // lifecycle, creation and changes (DESIGN §3)
mod policies; // merchant policies
mod roles; // the role × RPC matrix (§2)
mod tenancy; // another tenant's resources (§2)

// Collecting, funding and giving back (§4, §5).
mod approvals; // one-off approvals
mod cards; // bank-card funding under faults
mod clawback; // the clawback rule
mod deductions; // the deduction rules, calendar, notices, consumption, concurrency
mod refunds; // wallet and card refunds
mod settlement; // daily settlement and bank reconciliation (§6b)
mod wallet; // the wallet and its ledger

// Requests, tokens and transport (§2, §7).
mod bad_input; // malformed requests, card numbers
mod inputs; // inputs taken exactly
mod tokens; // bearer tokens
mod transport; // transport bounds, reflection

// The audit trail and the storage contract (§6, §8).
mod audit; // the audit trail: recording, queries, history, verification, checkpoints
mod console; // the compliance console over HTTP and in headless Chromium (§10)
mod events; // events for callers: WatchEvents (§6a)
mod refusals; // access refusals, recorded against the caller
mod replica; // compliance reads from a streaming replica (--read-database-url)
mod storage; // the `Store` trait on both backends

// The whole system at once (§9).
mod faults; // replicas killed at random on PostgreSQL
mod properties; // random operations against a model
mod races; // identical writes racing
mod smoke;

// The binary as an operator runs it.
mod bench_smoke;
mod cli;
mod metrics;
mod walkthrough; // the README walkthrough
