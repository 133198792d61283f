//! The only place that reads the clock. The protocol core gets time as a
//! parameter ([`Now`]); clippy.toml bans clock reads everywhere else.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::smtp::session::Now;

/// Monotonic now.
#[allow(clippy::disallowed_methods)] // reason: this module is the clock
pub fn instant() -> Instant {
    Instant::now()
}

/// Unix time in whole seconds.
#[allow(clippy::disallowed_methods)] // reason: this module is the clock
pub fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Both clocks, for the session.
pub fn now() -> Now {
    Now { instant: instant(), unix_secs: unix_secs() }
}

/// Unix time in milliseconds (event timestamps).
#[allow(clippy::disallowed_methods)] // reason: this module is the clock
pub fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
