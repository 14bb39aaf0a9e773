//! Bank-card funding (DESIGN §4.1, §9.2, §9.3) through the bank simulator: the waterfall over
//! the wallet and several cards, bank timeouts that did and did not take the money, charges the
//! bank keeps PROCESSING, the resolver's backoff and horizon, a client that gives up during the
//! bank call, retries of a pending deduction, and a `kill -9` of the real binary between the
//! bank's answer and its record. Card refunds are in `refunds/card.rs`.

mod resolver;
mod restarts;
mod retries;
mod timeouts;
mod waterfall;
