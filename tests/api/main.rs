//! End-to-end tests: the real server over real gRPC, on SQLite and on PostgreSQL.

mod harness;

mod audit;
mod cli;
mod lifecycle;
mod mandates;
mod smoke;
mod bad_input;
mod tokens;
