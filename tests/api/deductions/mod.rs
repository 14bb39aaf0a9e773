//! Collecting (DESIGN §3.1, §4, §9.5): the deduction rules of §4 through gRPC — every decline
//! reason, the full violation list of `CheckDeduction`, calendar periods and collection windows
//! in Asia/Shanghai, pre-debit notices, single-use and lifetime-limited mandates — the rule that a
//! declined or failed deduction charges nothing and consumes no limit, and the limits under
//! concurrency.

mod basics;
mod batches;
mod calendar;
mod check;
mod concurrency;
mod consumption;
mod notices;
mod reasons;
