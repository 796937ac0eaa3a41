//! Time as a value: the switch protocol's clock.
//!
//! The state machine ([`crate::machine`]) never reads a clock: every event
//! comes with the time it happened, as a [`Time`] (microseconds since an
//! epoch the caller chose). The switch task maps `Instant`s to [`Time`]s
//! with a [`Clock`]; tests and the simulator pass virtual time directly.

use std::fmt;
use std::ops::Add;
use std::time::{Duration, Instant};

/// A point in time: microseconds since the epoch of its [`Clock`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    /// The epoch.
    pub const ZERO: Time = Time(0);

    /// The time `micros` µs after the epoch.
    pub const fn from_micros(micros: u64) -> Time {
        Time(micros)
    }

    /// The time `secs` seconds after the epoch (tests, simulations).
    pub fn from_secs_f64(secs: f64) -> Time {
        Time((secs.max(0.0) * 1e6) as u64)
    }

    /// Microseconds since the epoch.
    pub const fn micros(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this is; zero if it is not later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    /// Saturating: a "forever" duration gives a time that never comes.
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)))
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.0 as f64 / 1e6)
    }
}

/// Maps `Instant`s to [`Time`]s and back, from a fixed epoch.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Clock {
        Clock { epoch: Instant::now() }
    }

    /// Now.
    pub fn now(&self) -> Time {
        self.at(Instant::now())
    }

    /// The [`Time`] of `instant` (the epoch for anything before it).
    pub fn at(&self, instant: Instant) -> Time {
        Time(0) + instant.saturating_duration_since(self.epoch)
    }

    /// The `Instant` of `time`, or `None` if it is too far off to be one.
    pub fn instant(&self, time: Time) -> Option<Instant> {
        self.epoch.checked_add(Duration::from_micros(time.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Time::from_micros(5);
        assert_eq!(t + Duration::from_micros(3), Time::from_micros(8));
        assert_eq!(Time::ZERO.since(t), Duration::ZERO);
        assert_eq!((t + Duration::MAX).micros(), u64::MAX);
    }

    #[test]
    fn a_clock_round_trips_instants() {
        let clock = Clock::new();
        let later = Instant::now() + Duration::from_millis(1500);
        let t = clock.at(later);
        let back = clock.instant(t).expect("in range");
        assert!(back <= later && later - back < Duration::from_micros(2));
    }
}
