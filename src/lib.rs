//! Withholding (代扣) mandate manager: payers' standing authorisations for merchants to collect
//! from them, checked and audited, served over gRPC.
//!
//! Layers, outermost first: [`grpc`] (wire format, auth, status codes) → [`service`] (use cases,
//! idempotency, authorisation) → [`storage`] (one trait, SQLite and PostgreSQL) with
//! [`domain`] (pure rules) underneath all of them. [`pb`] is the code generated from `proto/`,
//! which the gRPC layer and the bank gateway client both use.

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod demo;
pub mod domain;
pub mod funding;
pub mod grpc;
pub mod metrics;
pub mod pb;
pub mod process;
pub mod service;
pub mod storage;
