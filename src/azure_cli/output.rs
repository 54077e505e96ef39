//! Parses the JSON that `az account get-access-token --output json` prints.
//!
//! The CLI prints `accessToken`, `expiresOn` (the expiry in local time, without a zone,
//! as `YYYY-MM-DD HH:MM:SS.ffffff`), and since version 2.54.0 also `expires_on` (Unix
//! seconds). Standard output contains the token, so no error here includes any of it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::response::MAX_LIFETIME;
use crate::token::{Token, from_unix_seconds};

/// Returns the UTC offset, in seconds east of UTC, of the local time zone at an instant.
pub(crate) type LocalOffset = dyn Fn(SystemTime) -> Option<i32> + Send + Sync;

/// Parses the CLI's output, received at `now`. Errors are reasons for a message.
///
/// The expiry is `expires_on` when present, else `expiresOn` read as local time through
/// `local_offset`. When the token is a JWT whose `exp` is earlier, `exp` wins; when
/// neither field can be read, `exp` alone is used.
pub(crate) fn parse_output(
    stdout: &[u8],
    now: SystemTime,
    local_offset: Option<&LocalOffset>,
) -> Result<Token, String> {
    let json: Value =
        serde_json::from_slice(stdout).map_err(|_| "the output is not JSON".to_owned())?;
    let Value::Object(body) = json else {
        return Err("the output is not a JSON object".to_owned());
    };
    let access_token = match body.get("accessToken") {
        Some(Value::String(token)) if !token.is_empty() => token.clone(),
        Some(_) => return Err("`accessToken` is not a non-empty string".to_owned()),
        None => return Err("`accessToken` is missing".to_owned()),
    };
    let from_body = match epoch_field(&body)? {
        Some(expiry) => Some(expiry),
        None => local_field(&body, local_offset)?,
    };
    let token = Token::new(access_token, now);
    let from_claim = token.claims().and_then(|c| c.exp).map(from_unix_seconds);
    let expiry = match (from_body, from_claim) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => {
            return Err(
                "the output has no `expires_on`, its `expiresOn` is a local time and no \
                 local time zone was configured, and the token has no `exp` claim; \
                 upgrade to Azure CLI 2.54.0 or newer"
                    .to_owned(),
            );
        }
    };
    Ok(Token::new(
        token.access_token().clone(),
        expiry.min(now + MAX_LIFETIME),
    ))
}

/// Reads `expires_on`: Unix seconds as a JSON number or a string of digits.
fn epoch_field(body: &Map<String, Value>) -> Result<Option<SystemTime>, String> {
    let invalid = || "`expires_on` is not a number of Unix seconds".to_owned();
    let seconds = match body.get("expires_on") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(invalid)?,
        Some(Value::String(s)) => s.trim().parse::<u64>().map_err(|_| invalid())?,
        Some(_) => return Err(invalid()),
    };
    Ok(Some(UNIX_EPOCH + Duration::from_secs(seconds)))
}

/// Reads `expiresOn` as local time. Without a local offset it is skipped, because a
/// zone-less time read as UTC would be off by the local offset.
fn local_field(
    body: &Map<String, Value>,
    local_offset: Option<&LocalOffset>,
) -> Result<Option<SystemTime>, String> {
    let text = match body.get("expiresOn") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => text,
        Some(_) => return Err("`expiresOn` is not a string".to_owned()),
    };
    let local = parse_local_time(text).ok_or_else(|| {
        "`expiresOn` is not a time of the form YYYY-MM-DD HH:MM:SS[.ffffff]".to_owned()
    })?;
    let Some(offset) = local_offset else {
        return Ok(None);
    };
    Ok(local_to_utc(local, offset))
}

/// Parses `YYYY-MM-DD HH:MM:SS` with an optional fraction, which Python's `str` of a
/// `datetime` omits when the microseconds are zero. Returns the seconds since
/// 1970-01-01T00:00:00 on the same wall clock, ignoring the fraction.
pub(crate) fn parse_local_time(text: &str) -> Option<i64> {
    let (date, time) = text.trim().split_once([' ', 'T'])?;
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = digits(date_parts.next()?, 4)?;
    let month: u32 = digits(date_parts.next()?, 2)?;
    let day: u32 = digits(date_parts.next()?, 2)?;
    let whole = match time.split_once('.') {
        Some((whole, fraction)) => {
            digits::<u32>(fraction, fraction.len())?;
            whole
        }
        None => time,
    };
    let mut time_parts = whole.splitn(3, ':');
    let hour: i64 = digits(time_parts.next()?, 2)?;
    let minute: i64 = digits(time_parts.next()?, 2)?;
    let second: i64 = digits(time_parts.next()?, 2)?;
    let valid_time = hour < 24 && minute < 60 && second < 60;
    if !valid_time || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Parses exactly `len` ASCII digits (1 to 9 for a fraction).
fn digits<T: std::str::FromStr>(text: &str, len: usize) -> Option<T> {
    let valid =
        text.len() == len && (1..=9).contains(&len) && text.bytes().all(|b| b.is_ascii_digit());
    if valid { text.parse().ok() } else { None }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Counts the days from 1970-01-01 to a date of the proleptic Gregorian calendar. Years
/// are counted from March, so a leap day is the last day of its year, and whole 400-year
/// eras of 146,097 days are counted first.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Converts wall-clock seconds in the local zone to an instant. The offset is looked up
/// twice, the second time at the first estimate, so a time just after a daylight-saving
/// change gets the offset in effect then. A time in the repeated hour when clocks go
/// back may resolve to either instant.
fn local_to_utc(local: i64, offset: &LocalOffset) -> Option<SystemTime> {
    let as_utc = |seconds: i64| UNIX_EPOCH + Duration::from_secs(seconds.max(0) as u64);
    let first = offset(as_utc(local))?;
    let estimate = local - i64::from(first);
    let second = offset(as_utc(estimate))?;
    let utc = local - i64::from(second);
    (utc >= 0).then(|| as_utc(utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const T0: u64 = 1767225600;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn jwt(exp: Option<u64>) -> String {
        let payload = match exp {
            Some(exp) => format!(r#"{{"oid":"o","exp":{exp}}}"#),
            None => r#"{"oid":"o"}"#.to_owned(),
        };
        format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(payload))
    }

    fn parse(stdout: &str, offset: Option<&LocalOffset>) -> Result<Token, String> {
        parse_output(stdout.as_bytes(), at(T0), offset)
    }

    #[test]
    fn local_time_forms() {
        let cases = [
            ("2026-01-01 00:00:00", Some(T0 as i64)),
            ("2026-01-01 00:00:00.000000", Some(T0 as i64)),
            ("2026-01-01 01:02:03.999999", Some(T0 as i64 + 3723)),
            ("2026-01-01T01:02:03", Some(T0 as i64 + 3723)),
            ("1970-01-01 00:00:00", Some(0)),
            ("2024-02-29 00:00:00", Some(1709164800)),
            ("2000-03-01 00:00:00", Some(951868800)),
            ("2025-02-29 00:00:00", None),
            ("2026-13-01 00:00:00", None),
            ("2026-01-01 24:00:00", None),
            ("2026-01-01", None),
            ("2026-1-01 00:00:00", None),
            ("2026-01-01 00:00:00.", None),
            ("2026-01-01 00:00:00 +00:00", None),
            ("01/01/2026 00:00:00", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_local_time(text), expected, "{text}");
        }
    }

    #[test]
    fn epoch_expires_on_is_preferred() {
        let stdout = format!(
            r#"{{"accessToken":"{}","expiresOn":"2026-01-01 09:00:00.000000","expires_on":{},"subscription":"s","tenant":"t","tokenType":"Bearer"}}"#,
            jwt(Some(T0 + 7200)),
            T0 + 3600
        );
        let offset: &LocalOffset = &|_| Some(3600);
        let token = parse(&stdout, Some(offset)).unwrap();
        assert_eq!(token.expires_on(), at(T0 + 3600));
        let token = parse(&stdout, None).unwrap();
        assert_eq!(token.expires_on(), at(T0 + 3600));
    }

    #[test]
    fn epoch_expires_on_may_be_a_string() {
        let stdout = format!(
            r#"{{"accessToken":"{}","expires_on":"{}"}}"#,
            jwt(None),
            T0 + 3600
        );
        assert_eq!(parse(&stdout, None).unwrap().expires_on(), at(T0 + 3600));
    }

    #[test]
    fn zoneless_expires_on_is_local_time() {
        // 10:00 local in a zone one hour east of UTC is 09:00 UTC, and 00:00 local in
        // New York in winter is 05:00 UTC.
        let cases: [(&str, i32, u64); 3] = [
            ("2026-01-01 10:00:00.000000", 3600, T0 + 9 * 3600),
            ("2026-01-01 00:00:00", -5 * 3600, T0 + 5 * 3600),
            ("2026-01-01 05:30:00.123456", 5 * 3600 + 1800, T0),
        ];
        for (expires_on, offset_seconds, expected) in cases {
            let stdout = format!(
                r#"{{"accessToken":"{}","expiresOn":"{expires_on}","tokenType":"Bearer"}}"#,
                jwt(Some(T0 + 86_400))
            );
            let offset: &LocalOffset = &move |_| Some(offset_seconds);
            let token = parse(&stdout, Some(offset)).unwrap();
            assert_eq!(token.expires_on(), at(expected), "{expires_on}");
        }
    }

    #[test]
    fn local_time_uses_offset_at_that_instant() {
        // A zone at UTC+1 that moves to UTC+2 at 01:00 UTC. 01:30 local is before the
        // change (00:30 UTC), although 01:30 read as UTC is after it; 03:30 local is
        // after the change (01:30 UTC).
        let change = at(T0 + 3600);
        let offset: &LocalOffset =
            &move |instant| Some(if instant >= change { 7200 } else { 3600 });
        let local = parse_local_time("2026-01-01 01:30:00").unwrap();
        assert_eq!(local_to_utc(local, offset), Some(at(T0 + 1800)));
        let local = parse_local_time("2026-01-01 03:30:00").unwrap();
        assert_eq!(local_to_utc(local, offset), Some(at(T0 + 5400)));
    }

    #[test]
    fn zoneless_expires_on_without_offset_falls_back_to_exp() {
        let stdout = format!(
            r#"{{"accessToken":"{}","expiresOn":"2026-01-01 10:00:00.000000"}}"#,
            jwt(Some(T0 + 3000))
        );
        assert_eq!(parse(&stdout, None).unwrap().expires_on(), at(T0 + 3000));
        let unknown: &LocalOffset = &|_| None;
        assert_eq!(
            parse(&stdout, Some(unknown)).unwrap().expires_on(),
            at(T0 + 3000)
        );
    }

    #[test]
    fn earlier_of_output_and_exp_wins() {
        let stdout = format!(
            r#"{{"accessToken":"{}","expires_on":{}}}"#,
            jwt(Some(T0 + 600)),
            T0 + 3600
        );
        assert_eq!(parse(&stdout, None).unwrap().expires_on(), at(T0 + 600));
    }

    #[test]
    fn absurd_expiry_is_capped() {
        let stdout = format!(
            r#"{{"accessToken":"opaque","expires_on":{}}}"#,
            u64::MAX / 4
        );
        assert_eq!(
            parse(&stdout, None).unwrap().expires_on(),
            at(T0) + MAX_LIFETIME
        );
    }

    #[test]
    fn unreadable_outputs_name_the_field_not_the_token() {
        let token = jwt(Some(T0 + 3600));
        let cases = [
            (token.clone(), "the output is not JSON"),
            (format!(r#"["{token}"]"#), "the output is not a JSON object"),
            (r#"{"expires_on":1}"#.to_owned(), "`accessToken` is missing"),
            (
                r#"{"accessToken":""}"#.to_owned(),
                "`accessToken` is not a non-empty string",
            ),
            (
                format!(r#"{{"accessToken":"{token}","expires_on":-5}}"#),
                "`expires_on` is not a number of Unix seconds",
            ),
            (
                format!(r#"{{"accessToken":"{token}","expires_on":"soon"}}"#),
                "`expires_on` is not a number of Unix seconds",
            ),
            (
                format!(r#"{{"accessToken":"{token}","expiresOn":"tomorrow"}}"#),
                "`expiresOn` is not a time of the form YYYY-MM-DD HH:MM:SS[.ffffff]",
            ),
            (
                format!(r#"{{"accessToken":"{token}","expiresOn":5}}"#),
                "`expiresOn` is not a string",
            ),
        ];
        for (stdout, reason) in cases {
            let error = parse(&stdout, None).unwrap_err();
            assert_eq!(error, reason, "{stdout}");
        }
    }

    #[test]
    fn no_readable_expiry_is_an_error() {
        let stdout = format!(
            r#"{{"accessToken":"{}","expiresOn":"2026-01-01 10:00:00.000000"}}"#,
            jwt(None)
        );
        let error = parse(&stdout, None).unwrap_err();
        assert!(
            error.ends_with("upgrade to Azure CLI 2.54.0 or newer"),
            "{error}"
        );
    }
}
