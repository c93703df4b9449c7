//! How time is written, with no clock: on the wire as Unix milliseconds ([`unix_millis`]), and
//! for people ([`short`]). The time itself always comes in as an argument.

use std::time::{Duration, SystemTime};

/// Milliseconds since the Unix epoch, the unit of every timestamp on the wire.
pub fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A duration as people read it and write it in flags: `2m30s`, `1h5s`, `2d3h`, `1.5s`, `300ms`
/// (no spaces, tenths of a second below ten seconds, whole seconds above; cut, never rounded up,
/// so a time spent is never overstated). Every duration shown to a person goes through it: a
/// computed one (a timeout cut to a deadline, a jittered delay) would otherwise show as
/// `4s 958ms 344us 974ns`.
pub fn short(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    if d < Duration::from_secs(10) {
        let tenths = d.as_millis() / 100;
        return if tenths.is_multiple_of(10) {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        };
    }
    let secs = d.as_secs();
    let (days, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    [(days, "d"), (h, "h"), (m, "m"), (s, "s")]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
}
