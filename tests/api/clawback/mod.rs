//! The clawback rule (DESIGN §5, §9.5): collecting back what was refunded is never silent.

mod consent;
mod forms;
