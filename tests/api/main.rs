//! End-to-end tests: the real server over real gRPC, on SQLite and on PostgreSQL.

mod harness;

mod audit;
mod authz;
mod bad_input;
mod bench_smoke;
mod card_faults;
mod cards;
mod cli;
mod deduction_access;
mod deduction_concurrency;
mod deduction_properties;
mod deduction_rules;
mod deductions;
mod lifecycle;
mod mandates;
mod metrics;
mod smoke;
mod storage;
mod tokens;
mod transport;
