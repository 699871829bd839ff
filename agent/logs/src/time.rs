//! RFC 3339 timestamps as the container runtimes write them (`2024-05-01T10:00:00.123456789Z`,
//! CRI-O's `...+02:00`), parsed without allocation.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn num(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0u32, |a, &c| {
        a.checked_mul(10)?.checked_add(u32::from(c - b'0'))
    })
}

/// Parses an RFC 3339 timestamp (`T` or space separator, optional fraction of up to 9
/// digits, `Z` or `±hh:mm`). None when malformed or before 1970.
pub fn parse_rfc3339(s: &[u8]) -> Option<SystemTime> {
    if s.len() < 20 {
        return None;
    }
    if s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b't' | b' ') {
        return None;
    }
    if s[13] != b':' || s[16] != b':' {
        return None;
    }
    let year = num(&s[0..4])?;
    let month = num(&s[5..7])?;
    let day = num(&s[8..10])?;
    let hour = num(&s[11..13])?;
    let min = num(&s[14..16])?;
    let sec = num(&s[17..19])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(s[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits.min(9)..9 {
            nanos *= 10;
        }
    }
    let offset: i64 = match s.get(i) {
        Some(b'Z' | b'z') if s.len() == i + 1 => 0,
        Some(c @ (b'+' | b'-')) if s.len() == i + 6 && s[i + 3] == b':' => {
            let h = i64::from(num(&s[i + 1..i + 3])?);
            let m = i64::from(num(&s[i + 4..i + 6])?);
            if h > 23 || m > 59 {
                return None;
            }
            let o = h * 3600 + m * 60;
            if *c == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs =
        days * 86_400 + i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec) - offset;
    if secs < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

/// Formats a time as RFC 3339 with nanoseconds and `Z` (used by tests and generators).
pub fn format_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        let t = parse_rfc3339(b"2016-10-06T00:17:09.669794202Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_475_713_029, 669_794_202)
        );
        let t2 = parse_rfc3339(b"2016-10-06T02:17:09.669794202+02:00").unwrap();
        assert_eq!(t, t2);
        let t3 = parse_rfc3339(b"2016-10-06T00:17:09Z").unwrap();
        assert_eq!(
            t3.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_475_713_029
        );
        assert_eq!(
            parse_rfc3339(b"2016-10-06T00:17:09.5Z")
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos(),
            500_000_000
        );
        for bad in [
            &b"2016-10-06T00:17:09"[..],
            b"2016-13-06T00:17:09Z",
            b"2016-10-06X00:17:09Z",
            b"2016-10-06T00:17:09.Z",
            b"2016-10-06T00:17:09+0200",
            b"1969-12-31T23:59:59Z",
            b"abcd-10-06T00:17:09Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    proptest! {
        #[test]
        fn round_trips(secs in 0u64..8_000_000_000, nanos in 0u32..1_000_000_000) {
            let t = UNIX_EPOCH + Duration::new(secs, nanos);
            let s = format_rfc3339(t);
            prop_assert_eq!(parse_rfc3339(s.as_bytes()), Some(t));
        }

        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = parse_rfc3339(&b);
        }
    }
}
