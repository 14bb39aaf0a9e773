//! The random scenarios: a mandate's limits, the wallet's cap and opening credit, and a sequence
//! of operations against them.

use proptest::prelude::*;
use proptest::sample::Index;

use crate::harness::pb;

/// Bills are drawn from a small pool so duplicates and refunded bills come up.
const BILLS: u8 = 8;
/// Clock moves stop at this much elapsed time, well before dormancy (36 months) and validity.
pub(super) const MAX_ELAPSED_S: i64 = 800 * 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    Utility,
    /// Not on the mandate.
    Telecom,
    /// Never allowed on a standing mandate.
    RefundRecovery,
}

impl Purpose {
    pub(super) fn pb(self) -> pb::Purpose {
        match self {
            Self::Utility => pb::Purpose::Utility,
            Self::Telecom => pb::Purpose::Telecom,
            Self::RefundRecovery => pb::Purpose::RefundRecovery,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum LimitChange {
    PerDebit(i64),
    PeriodAmount(i64),
    PeriodCount(u32),
}

#[derive(Debug, Clone)]
pub(super) enum Op {
    Debit {
        minor: i64,
        bill: u8,
        purpose: Purpose,
    },
    /// Refunds `percent` of what is left of a refundable deduction (over 100: more than is
    /// left, which is refused).
    Refund {
        pick: Index,
        percent: i64,
    },
    /// The merchant replaces one limit; a loosening is confirmed by the payer when `confirm`.
    Amend {
        change: LimitChange,
        confirm: bool,
    },
    Pause,
    Resume,
    Credit {
        minor: i64,
    },
    Clock {
        seconds: i64,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Scenario {
    pub(super) single_use: bool,
    pub(super) per_debit: i64,
    pub(super) period_amount: i64,
    pub(super) period_count: u32,
    pub(super) wallet_cap: Option<i64>,
    pub(super) opening_credit: i64,
    pub(super) page_size: u32,
    pub(super) ops: Vec<Op>,
}

pub(super) fn purpose() -> impl Strategy<Value = Purpose> {
    prop_oneof![
        8 => Just(Purpose::Utility),
        1 => Just(Purpose::Telecom),
        1 => Just(Purpose::RefundRecovery),
    ]
}

fn limit_change() -> impl Strategy<Value = LimitChange> {
    prop_oneof![
        (5_000i64..=70_000).prop_map(LimitChange::PerDebit),
        (20_000i64..=300_000).prop_map(LimitChange::PeriodAmount),
        (1u32..=6).prop_map(LimitChange::PeriodCount),
    ]
}

pub(super) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (100i64..=60_000, 0..BILLS, purpose())
            .prop_map(|(minor, bill, purpose)| Op::Debit { minor, bill, purpose }),
        3 => (any::<Index>(), 1i64..=110).prop_map(|(pick, percent)| Op::Refund { pick, percent }),
        3 => (limit_change(), any::<bool>()).prop_map(|(change, confirm)| Op::Amend { change, confirm }),
        1 => Just(Op::Pause),
        2 => Just(Op::Resume),
        2 => (100i64..=100_000).prop_map(|minor| Op::Credit { minor }),
        3 => prop_oneof![2 => 60i64..=6 * 3_600, 1 => 86_400i64..=40 * 86_400]
            .prop_map(|seconds| Op::Clock { seconds }),
    ]
}

pub(super) fn scenario(ops: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Scenario> {
    (
        prop::bool::weighted(0.2),
        20_000i64..=60_000,
        50_000i64..=200_000,
        1u32..=5,
        prop::option::weighted(0.3, 5_000i64..=40_000),
        prop_oneof![1 => Just(0i64), 4 => 1_000i64..=300_000],
        2u32..=10,
        prop::collection::vec(op(), ops),
    )
        .prop_map(
            |(
                single_use,
                per_debit,
                period_amount,
                period_count,
                wallet_cap,
                opening_credit,
                page_size,
                ops,
            )| Scenario {
                single_use,
                per_debit,
                period_amount,
                period_count,
                wallet_cap,
                opening_credit,
                page_size,
                ops,
            },
        )
}
