//! Refunds (DESIGN §4.2): full and partial, at most what was collected, idempotent on their
//! request id, back to the source that paid.

mod card;
mod wallet;
