//! The operating system's time zone, for reading the Azure CLI's zone-less `expiresOn`.

use std::time::SystemTime;

use crate::AzureCliCredential;

/// Returns the offset from UTC, in seconds east, of the operating system's time zone at
/// `instant`, or `None` when the zone cannot be determined.
///
/// The zone comes from `TZ` or the system's configuration (`/etc/localtime` on Unix, the
/// registry on Windows), as the `jiff` crate finds it.
pub fn system_utc_offset(instant: SystemTime) -> Option<i32> {
    let timestamp = jiff::Timestamp::try_from(instant).ok()?;
    let zone = jiff::tz::TimeZone::try_system().ok()?;
    Some(zone.to_offset(timestamp).seconds())
}

impl AzureCliCredential {
    /// Reads the zone-less `expiresOn` of older CLIs in the operating system's time
    /// zone, looked up at each exchange (see [`system_utc_offset`]).
    pub fn with_system_time_zone(self) -> Self {
        self.with_local_offset(system_utc_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn system_offset_is_within_real_bounds() {
        let instant = UNIX_EPOCH + Duration::from_secs(1767225600);
        let offset = system_utc_offset(instant)
            .expect("this test needs a configured time zone (TZ or /etc/localtime)");
        // Real zones lie between UTC-12 and UTC+14.
        assert!((-12 * 3600..=14 * 3600).contains(&offset), "{offset}");
    }
}
