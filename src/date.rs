//! Parses the date strings that older managed-identity endpoints send as `expires_on`.
//!
//! App Service's 2017-09-01 API and Azure ML send forms such as
//! `06/20/2019 02:57:58 +00:00` (Linux hosts) and `1/16/2020 5:24:12 AM +00:00` (Windows
//! hosts): month first, an optional 12-hour clock and a UTC offset. RFC 3339 and
//! `2006-01-02 15:04:05` are accepted too, as MSAL for Go does. A date without an offset is
//! read as UTC.

/// Converts a date string to Unix seconds, or `None` when it has none of the forms above
/// or names an impossible date.
pub(crate) fn parse_date(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, rest) = text.split_once([' ', 'T'])?;
    let (year, month, day) = if date.contains('/') {
        let mut parts = date.split('/');
        let month = number(parts.next()?, 1, 2)?;
        let day = number(parts.next()?, 1, 2)?;
        let year = number(parts.next()?, 4, 4)?;
        (parts.next().is_none()).then_some((year, month, day))?
    } else {
        let mut parts = date.split('-');
        let year = number(parts.next()?, 4, 4)?;
        let month = number(parts.next()?, 2, 2)?;
        let day = number(parts.next()?, 2, 2)?;
        (parts.next().is_none()).then_some((year, month, day))?
    };
    let (seconds_of_day, offset) = parse_time_and_offset(rest)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + seconds_of_day - offset)
}

/// Parses `H:MM:SS[.fraction][ AM|PM][ offset]`, returning the seconds since midnight and
/// the offset from UTC in seconds.
fn parse_time_and_offset(text: &str) -> Option<(i64, i64)> {
    let text = text.trim();
    let clock_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.'))
        .unwrap_or(text.len());
    let (clock, mut rest) = text.split_at(clock_len);
    let clock = clock.split('.').next()?;
    let mut parts = clock.split(':');
    let mut hour = number(parts.next()?, 1, 2)?;
    let minute = number(parts.next()?, 2, 2)?;
    let second = number(parts.next()?, 2, 2)?;
    if parts.next().is_some() || minute > 59 || second > 60 {
        return None;
    }
    rest = rest.trim_start();
    // `get` keeps a multi-byte character after the clock from being split.
    let meridiem = ["AM", "PM"]
        .into_iter()
        .find(|m| rest.get(..2).is_some_and(|r| r.eq_ignore_ascii_case(m)));
    if let Some(meridiem) = meridiem {
        if !(1..=12).contains(&hour) {
            return None;
        }
        hour = hour % 12 + if meridiem == "PM" { 12 } else { 0 };
        rest = rest[2..].trim_start();
    } else if hour > 23 {
        return None;
    }
    let offset = parse_offset(rest)?;
    Some((hour * 3600 + minute * 60 + second, offset))
}

/// Parses `Z`, `+HH:MM`, `-HH:MM`, `+HHMM` or nothing (UTC).
fn parse_offset(text: &str) -> Option<i64> {
    if text.is_empty() || text.eq_ignore_ascii_case("z") {
        return Some(0);
    }
    let sign = match text.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = text[1..].chars().filter(|&c| c != ':').collect();
    // Checked before slicing, which would split a multi-byte character.
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours = number(&digits[..2], 2, 2)?;
    let minutes = number(&digits[2..], 2, 2)?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(sign * (hours * 3600 + minutes * 60))
}

/// Parses a run of `min..=max` ASCII digits.
fn number(text: &str, min: usize, max: usize) -> Option<i64> {
    let valid = (min..=max).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    valid.then(|| text.parse().ok())?
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Counts the days from 1970-01-01 to a date of the proleptic Gregorian calendar, with
/// Howard Hinnant's `days_from_civil` algorithm.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_service_and_azure_ml_forms() {
        let cases = [
            // The Linux form of the 2017-09-01 API.
            ("06/20/2019 02:57:58 +00:00", 1_560_999_478),
            // The Windows form, with a 12-hour clock.
            ("1/16/2020 5:24:12 AM +00:00", 1_579_152_252),
            ("1/16/2020 5:24:12 PM +00:00", 1_579_195_452),
            ("1/16/2020 12:00:00 AM +00:00", 1_579_132_800),
            ("1/16/2020 12:00:00 PM +00:00", 1_579_176_000),
            // MSAL for Go's layouts and RFC 3339.
            ("01/16/2020 05:24:12", 1_579_152_252),
            ("2020-01-16 05:24:12", 1_579_152_252),
            ("2020-01-16T05:24:12Z", 1_579_152_252),
            ("2020-01-16T05:24:12.123456Z", 1_579_152_252),
            ("2020-01-16T07:24:12+02:00", 1_579_152_252),
            ("2020-01-16 00:24:12 -0500", 1_579_152_252),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_date(text), Some(expected), "{text}");
        }
    }

    #[test]
    fn impossible_or_unknown_dates_are_rejected() {
        for text in [
            "",
            "soon",
            "1579152252",
            "13/01/2020 00:00:00 +00:00",
            "02/30/2020 00:00:00 +00:00",
            "02/29/2021 00:00:00 +00:00",
            "1/16/2020 13:00:00 PM +00:00",
            "1/16/2020 24:00:00 +00:00",
            "1/16/2020 5:60:00 +00:00",
            "1/16/2020 5:24:12 +25:00",
            "1/16/2020 5:24:12 UTC",
            "2020-1-16 05:24:12",
            "20-01-16 05:24:12",
        ] {
            assert_eq!(parse_date(text), None, "{text}");
        }
    }

    #[test]
    fn multi_byte_characters_are_rejected_without_panic() {
        for text in [
            "06/20/2019 02:57:58\u{FFFD}\u{7} +00:00",
            "06/20/2019 02:57:58 \u{20AC}",
            "2020-01-16 05:24:12 +\u{20AC}1",
            "2020-01-16 05:24:12 -1\u{E9}",
            "2020-01-16T05:24:12\u{FFFD}",
        ] {
            assert_eq!(parse_date(text), None, "{text:?}");
        }
    }

    #[test]
    fn leap_days_and_epoch() {
        assert_eq!(parse_date("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_date("02/29/2024 00:00:00 +00:00"),
            Some(1_709_164_800)
        );
        assert_eq!(parse_date("2000-02-29 00:00:00"), Some(951_782_400));
    }
}
