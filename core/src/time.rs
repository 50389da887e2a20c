//! Time as the engine sees it: a millisecond timestamp handed in by a [`Clock`].
//!
//! The engine never reads the system clock. Services pass a clock that does (the adapters
//! provide one); tests pass a [`ManualClock`] and move it by hand.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write.
const LAST_RFC3339_MILLIS: u64 = 253_402_300_799_999;

/// Milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Self = Self(0);

    /// A timestamp `millis` milliseconds after the Unix epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Converts a [`SystemTime`]; times before the epoch clamp to the epoch.
    pub fn from_system_time(time: SystemTime) -> Self {
        let millis = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self(millis)
    }

    /// The same instant as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// This instant moved forward by `duration`, saturating at the far future.
    pub fn saturating_add(self, duration: Duration) -> Self {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(millis))
    }

    /// Time from `earlier` to `self`, zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// RFC 3339 form with millisecond precision, in UTC (`2026-12-03T19:05:09.123Z`).
    /// RFC 3339 has four-digit years: instants after the year 9999 are written as its last
    /// millisecond.
    pub fn to_rfc3339(self) -> String {
        let shown = Self(self.0.min(LAST_RFC3339_MILLIS));
        humantime::format_rfc3339_millis(shown.to_system_time()).to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// The source of "now" for the engine.
///
/// Implementations must be cheap to call: the engine asks once per request. Time may stand
/// still or jump forward; the engine only compares it against leases and retention deadlines.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;
}

impl<F> Clock for F
where
    F: Fn() -> Timestamp + Send + Sync,
{
    fn now(&self) -> Timestamp {
        self()
    }
}

/// A clock that only moves when told to; for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock {
    millis: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self {
            millis: AtomicU64::new(start.as_millis()),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let millis = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        // The closure always returns `Some`, so the update cannot fail.
        let _ = self
            .millis
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(millis))
            });
    }

    /// Sets the clock to `to`, forward or back.
    pub fn set(&self, to: Timestamp) {
        self.millis.store(to.as_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.millis.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_with_millis() {
        let ts = Timestamp::from_millis(1_764_788_709_123);
        assert_eq!(ts.to_rfc3339(), "2025-12-03T19:05:09.123Z");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(Timestamp::from_millis(1_000));
        assert_eq!(clock.now(), Timestamp::from_millis(1_000));
        clock.advance(Duration::from_secs(2));
        assert_eq!(clock.now(), Timestamp::from_millis(3_000));
    }

    #[test]
    fn the_far_future_neither_wraps_nor_fails_to_format() {
        let clock = ManualClock::new(Timestamp::from_millis(1_000));
        clock.advance(Duration::MAX);
        assert_eq!(clock.now(), Timestamp::from_millis(u64::MAX));
        assert_eq!(clock.now().to_rfc3339(), "9999-12-31T23:59:59.999Z");
        assert_eq!(
            Timestamp::from_millis(LAST_RFC3339_MILLIS).to_string(),
            "9999-12-31T23:59:59.999Z"
        );
    }
}
