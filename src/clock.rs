//! The injectable clock (DESIGN §7): production reads the system time, tests move time by hand.

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
        Timestamp::now()
    }
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
        *self.0.lock().expect("clock lock")
    }
}
