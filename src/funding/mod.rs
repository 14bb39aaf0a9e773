//! Funding sources outside the service's own ledger: the bank gateway client (DESIGN §4.1).

pub mod bank;
