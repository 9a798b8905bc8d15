//! Calendar dates from Unix time, in UTC: the one place that turns seconds
//! since 1970 into year, month, day and weekday, and writes the RFC 5322
//! §3.3 date that `Received:` headers and loadgen's `Date:` carry; reads
//! the times a command line gives (`ringmx ship --reset --since`).
//!
//! Pure arithmetic: no clock reads, no allocation in [`write_rfc5322`], so the
//! sans-IO protocol engine can call it with the time it was given. The log's
//! ISO 8601 stamps and the spool CLI's columns format [`DateTime`]'s fields
//! themselves. A dependency (`time`, `jiff`) would bring time zones and
//! parsing that nothing here needs.

/// Month abbreviations, January first (RFC 5322 §3.3, asctime).
pub const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Weekday abbreviations, Sunday first (RFC 5322 §3.3, asctime).
pub const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// Days since 1970-01-01 → (year, month 1–12, day 1–31) in the proleptic
/// Gregorian calendar: Howard Hinnant's `civil_from_days`. Exact for every
/// day count an `i64` of seconds gives; within 719,468 days of `i64::MAX`
/// it saturates instead of overflowing.
pub const fn days_to_civil(days: i64) -> (i64, u8, u8) {
    // Shift the epoch to 0000-03-01, so a leap day ends its (March-based) year.
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of 400-year era, 0..=146_096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of March year, 0..=365
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

/// A moment in UTC, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    /// Proleptic Gregorian year; 0 is 1 BC.
    pub year: i64,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
    /// 0–23.
    pub hour: u8,
    /// 0–59.
    pub minute: u8,
    /// 0–59 (Unix time has no leap seconds).
    pub second: u8,
    /// 0 = Sunday … 6 = Saturday.
    pub weekday: u8,
}

impl DateTime {
    /// The UTC date and time `unix_secs` seconds after 1970-01-01 00:00:00
    /// (before it when negative).
    pub const fn from_unix(unix_secs: i64) -> Self {
        let days = unix_secs.div_euclid(86_400);
        let secs = unix_secs.rem_euclid(86_400);
        let (year, month, day) = days_to_civil(days);
        Self {
            year,
            month,
            day,
            hour: (secs / 3600) as u8,
            minute: (secs / 60 % 60) as u8,
            second: (secs % 60) as u8,
            // 1970-01-01 was a Thursday (4).
            weekday: (days.rem_euclid(7) + 4).rem_euclid(7) as u8,
        }
    }

    /// `"Jan"` … `"Dec"`.
    pub const fn month_name(&self) -> &'static str {
        MONTHS[(self.month - 1) as usize]
    }

    /// `"Sun"` … `"Sat"`.
    pub const fn weekday_name(&self) -> &'static str {
        WEEKDAYS[self.weekday as usize]
    }
}

/// (year, month 1–12, day 1–31) → days since 1970-01-01: the inverse of
/// [`days_to_civil`] (Howard Hinnant's `days_from_civil`), for years an
/// RFC 3339 time can hold.
pub const fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = month as i64;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads a moment given on a command line: unix seconds (`1795959882`) or
/// an RFC 3339 date-time (`2026-11-29T13:44:42Z`, `2026-11-29 14:44:42+01:00`,
/// fractions of a second ignored), as unix seconds.
///
/// # Errors
/// Anything else, with the forms it takes.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "{text:?} is not a time: give unix seconds (1795959882) or RFC 3339 \
             (2026-11-29T13:44:42Z, 2026-11-29T14:44:42+01:00)"
        )
    };
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| bad());
    }
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let s = t.get(r).ok_or_else(bad)?;
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    // YYYY-MM-DDTHH:MM:SS, then fraction, then Z or ±HH:MM.
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    let offset = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            let o = h * 3600 + m * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return Err(bad()),
    };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    // Second 60: a leap second, which unix time folds into the next.
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let days = days_from_civil(year, month as u8, day as u8);
    Ok(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// Appends an RFC 5322 §3.3 date-time in UTC, e.g.
/// `Sun, 29 Nov 2026 13:44:42 +0000` (day without a leading zero, year at
/// least four digits).
pub fn write_rfc5322(out: &mut Vec<u8>, unix_secs: i64) {
    let t = DateTime::from_unix(unix_secs);
    out.extend_from_slice(t.weekday_name().as_bytes());
    out.extend_from_slice(b", ");
    if t.day >= 10 {
        out.push(b'0' + t.day / 10);
    }
    out.push(b'0' + t.day % 10);
    out.push(b' ');
    out.extend_from_slice(t.month_name().as_bytes());
    out.push(b' ');
    write_year(out, t.year);
    for (sep, v) in [(b' ', t.hour), (b':', t.minute), (b':', t.second)] {
        out.push(sep);
        out.push(b'0' + v / 10);
        out.push(b'0' + v % 10);
    }
    out.extend_from_slice(b" +0000");
}

/// [`write_rfc5322`] as a `String`.
pub fn rfc5322(unix_secs: i64) -> String {
    let mut v = Vec::with_capacity(31);
    write_rfc5322(&mut v, unix_secs);
    // Only ASCII digits, names and punctuation were written.
    String::from_utf8(v).unwrap_or_default()
}

/// At least four digits, a `-` before years before 1 BC.
fn write_year(out: &mut Vec<u8>, year: i64) {
    if year < 0 {
        out.push(b'-');
    }
    let mut digits = [0u8; 20];
    let mut n = year.unsigned_abs();
    let mut i = digits.len();
    while n > 0 || digits.len() - i < 4 {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (unix seconds, y, m, d, H, M, S, weekday): checked against Python's
    /// `datetime` (proleptic Gregorian, UTC).
    type Row = (i64, i64, u8, u8, u8, u8, u8, &'static str);
    const KNOWN: [Row; 16] = [
        (0, 1970, 1, 1, 0, 0, 0, "Thu"),
        (-1, 1969, 12, 31, 23, 59, 59, "Wed"),
        (-86_400, 1969, 12, 31, 0, 0, 0, "Wed"),
        (951_782_400, 2000, 2, 29, 0, 0, 0, "Tue"), // leap: divisible by 400
        (951_868_799, 2000, 2, 29, 23, 59, 59, "Tue"),
        (1_709_164_800, 2024, 2, 29, 0, 0, 0, "Thu"),
        (4_107_456_000, 2100, 2, 28, 0, 0, 0, "Sun"),
        (4_107_542_400, 2100, 3, 1, 0, 0, 0, "Mon"), // 2100 is no leap year
        (-2_203_891_200, 1900, 3, 1, 0, 0, 0, "Thu"), // nor was 1900
        (-11_670_998_400, 1600, 2, 29, 0, 0, 0, "Tue"),
        (2_147_483_647, 2038, 1, 19, 3, 14, 7, "Tue"), // i32 rollover
        (1_795_959_882, 2026, 11, 29, 13, 44, 42, "Sun"),
        (-62_135_596_800, 1, 1, 1, 0, 0, 0, "Mon"),
        (253_402_300_799, 9999, 12, 31, 23, 59, 59, "Fri"),
        (i64::MAX, 292_277_026_596, 12, 4, 15, 30, 7, "Sun"),
        (i64::MIN, -292_277_022_657, 1, 27, 8, 29, 52, "Sun"),
    ];

    #[test]
    fn times_from_the_command_line() {
        for (text, want) in [
            ("1795959882", 1_795_959_882),
            ("2026-11-29T13:44:42Z", 1_795_959_882),
            ("2026-11-29t13:44:42z", 1_795_959_882),
            ("2026-11-29 14:44:42+01:00", 1_795_959_882),
            ("2026-11-29T13:44:42.999Z", 1_795_959_882),
            ("2026-11-29T08:44:42-05:00", 1_795_959_882),
            ("1970-01-01T00:00:00Z", 0),
            ("2000-02-29T23:59:59Z", 951_868_799),
        ] {
            assert_eq!(parse_time(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "yesterday",
            "2026-11-29",
            "2026-11-29T13:44:42",
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-29T24:00:00Z",
            "2026-11-29T13:44:42+1:00",
            "-5",
            "2026-11-29T13:44:42Zjunk",
        ] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (1600, 3, 1), (9999, 12, 31)] {
            assert_eq!(days_to_civil(days_from_civil(y, m, d)), (y, m, d));
        }
    }

    #[test]
    fn known_dates() {
        for (secs, y, m, d, hh, mm, ss, wd) in KNOWN {
            let t = DateTime::from_unix(secs);
            assert_eq!(
                (t.year, t.month, t.day, t.hour, t.minute, t.second),
                (y, m, d, hh, mm, ss),
                "{secs}"
            );
            assert_eq!(t.weekday_name(), wd, "{secs}");
        }
    }

    #[test]
    fn rfc5322_3_3_dates() {
        let cases = [
            (0, "Thu, 1 Jan 1970 00:00:00 +0000"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"),
            (4_107_542_400, "Mon, 1 Mar 2100 00:00:00 +0000"),
            (1_795_959_882, "Sun, 29 Nov 2026 13:44:42 +0000"),
            (-62_135_596_800, "Mon, 1 Jan 0001 00:00:00 +0000"),
            (253_402_300_800, "Sat, 1 Jan 10000 00:00:00 +0000"),
        ];
        for (secs, want) in cases {
            assert_eq!(rfc5322(secs), want, "{secs}");
        }
    }

    /// Day by day from 1170 to 2770 (two 400-year eras either side of the
    /// epoch): each day follows the one before by the calendar's rules.
    #[test]
    fn consecutive_days_follow_the_calendar() {
        let leap = |y: i64| y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let len = |y: i64, m: u8| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let start = -146_097 * 2;
        let mut prev = days_to_civil(start);
        for days in start + 1..=146_097 * 2 {
            let (y, m, d) = days_to_civil(days);
            let want = if prev.2 < len(prev.0, prev.1) {
                (prev.0, prev.1, prev.2 + 1)
            } else if prev.1 < 12 {
                (prev.0, prev.1 + 1, 1)
            } else {
                (prev.0 + 1, 1, 1)
            };
            assert_eq!((y, m, d), want, "day {days}");
            prev = (y, m, d);
        }
    }

    /// The extremes of the arguments neither panic nor leave the calendar.
    #[test]
    fn far_dates() {
        assert_eq!(
            rfc5322(i64::MIN),
            "Sun, 27 Jan -292277022657 08:29:52 +0000"
        );
        assert_eq!(rfc5322(i64::MAX), "Sun, 4 Dec 292277026596 15:30:07 +0000");
        for days in [i64::MIN, i64::MIN + 1, i64::MAX - 719_468, i64::MAX] {
            let (_, m, d) = days_to_civil(days);
            assert!((1..=12).contains(&m) && (1..=31).contains(&d), "{days}");
        }
    }
}
