//! Formatting of times and durations for the terminal.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Returns `time` as Unix seconds; times before 1970 count as 0.
pub fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Formats Unix seconds as an RFC 3339 UTC time, such as `2026-01-01T00:00:00Z`.
pub fn utc(seconds: i64) -> String {
    match jiff::Timestamp::from_second(seconds) {
        Ok(timestamp) => timestamp.to_string(),
        Err(_) => format!("{seconds} (Unix seconds, out of range)"),
    }
}

/// Formats a duration for people: `850 ms`, `42 s`, `59 min 58 s` or `23 h 59 min`.
pub fn duration(d: Duration) -> String {
    let seconds = d.as_secs();
    if seconds == 0 {
        return format!("{} ms", d.as_millis());
    }
    if seconds < 60 {
        return format!("{seconds} s");
    }
    if seconds < 3600 {
        return format!("{} min {} s", seconds / 60, seconds % 60);
    }
    format!("{} h {} min", seconds / 3600, seconds % 3600 / 60)
}

/// Describes `time` relative to `now`: `in 59 min 58 s` or `12 s ago`.
pub fn relative(time: SystemTime, now: SystemTime) -> String {
    match time.duration_since(now) {
        Ok(ahead) => format!("in {}", duration(ahead)),
        Err(past) => format!("{} ago", duration(past.duration())),
    }
}

/// Formats a step's time as milliseconds with one decimal, such as `12.3 ms`.
pub fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_two_units_at_most() {
        assert_eq!(duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(duration(Duration::from_secs(42)), "42 s");
        assert_eq!(duration(Duration::from_secs(3598)), "59 min 58 s");
        assert_eq!(duration(Duration::from_secs(86399)), "23 h 59 min");
    }

    #[test]
    fn utc_is_rfc3339() {
        assert_eq!(utc(1767225600), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn relative_reads_both_directions() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            relative(now + Duration::from_secs(90), now),
            "in 1 min 30 s"
        );
        assert_eq!(relative(now - Duration::from_secs(5), now), "5 s ago");
    }
}
