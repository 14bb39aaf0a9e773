//! End-to-end tests: the real server over real gRPC, on SQLite and on PostgreSQL.

mod harness;

mod approvals;
mod audit;
mod bad_input;
mod bench_smoke;
mod cards;
mod clawback;
mod cli;
mod deductions;
mod faults;
mod inputs;
mod mandates;
mod metrics;
mod policies;
mod properties;
mod races;
mod refunds;
mod refusals;
mod roles;
mod smoke;
mod storage;
mod tenancy;
mod tokens;
mod transport;
mod walkthrough;
mod wallet;
