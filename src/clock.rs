//! The injectable clock (DESIGN §7): production reads the system time, tests move time by hand.
//! Either way the time is whole microseconds, the one precision times are stored, compared and
//! returned at.

use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        to_microseconds(Timestamp::now())
    }
}

/// `at` without its sub-microsecond part (rounded down, towards the past).
pub fn to_microseconds(at: Timestamp) -> Timestamp {
    i64::try_from(at.as_nanosecond().div_euclid(1_000))
        .ok()
        .and_then(|micros| Timestamp::from_microsecond(micros).ok())
        .unwrap_or(at)
}

/// A clock that stands still until moved; for tests that cross period ends, validity ends and
/// consent windows without waiting.
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        Self(Mutex::new(start))
    }

    pub fn set(&self, at: Timestamp) {
        *self.0.lock().expect("clock lock") = at;
    }

    pub fn advance(&self, by: SignedDuration) {
        let mut now = self.0.lock().expect("clock lock");
        *now = now.checked_add(by).expect("test clock stays in range");
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        to_microseconds(*self.0.lock().expect("clock lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_whole_microseconds() {
        let at: Timestamp = "2026-03-01T02:00:00.123456789Z".parse().unwrap();
        assert_eq!(
            to_microseconds(at),
            "2026-03-01T02:00:00.123456Z".parse::<Timestamp>().unwrap()
        );
        let before_epoch: Timestamp = "1969-12-31T23:59:59.999999999Z".parse().unwrap();
        assert_eq!(
            to_microseconds(before_epoch),
            "1969-12-31T23:59:59.999999Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(ManualClock::new(at).now(), to_microseconds(at));
    }
}
