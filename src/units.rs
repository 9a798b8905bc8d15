//! Sizes and durations as people write them, with one meaning for the server
//! (flags and TOML) and for loadgen.
//!
//! * A size is a whole number of bytes with an optional unit, case-insensitive,
//!   spaces allowed before it: `k`/`KiB` = 1024, `m`/`MiB` = 2^20,
//!   `g`/`GiB` = 2^30 (binary); `kB` = 1000, `MB` = 10^6, `GB` = 10^9
//!   (decimal, SI); `b` or none = bytes. So `10MB` is 10,000,000 bytes and
//!   `10MiB` is 10,485,760, everywhere.
//! * A duration is a number, a fraction allowed (`1.5s`), with a unit: `ns`,
//!   `us`, `ms`, `s`, `m`/`min`, `h`; a bare number is seconds. At most
//!   [`MAX_DURATION`], so that `Instant::now() + d` (which panics on
//!   overflow, as glommio's timers do) stays far from the limit.
//!
//! Numbers too large for their type are errors, never a wrap or a panic.

use std::time::Duration;

/// The longest duration accepted: 100 years (of 365 days).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// [`MAX_DURATION`] as written in messages.
const MAX_DURATION_TEXT: &str = "876000h (100 years)";

/// The forms above, for `--help` texts (the server's and loadgen's).
pub const FORMS_HELP: &str = "\
Sizes: bytes, or a number with a unit (case-insensitive): k or KiB = 1024, \
m or MiB = 2^20, g or GiB = 2^30; kB = 1000, MB = 10^6, GB = 10^9 \
(e.g. 1000, 64KiB, 50MiB, 10MB).
Durations: a number, fractions allowed, with ns, us, ms, s, m (or min) or h; \
a bare number is seconds; at most 876000h (e.g. 200us, 250ms, 1.5s, 5m, 1h).";

/// A size or duration that could not be read; the text says which forms work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// No number where a size was expected.
    #[error("{0:?} is not a size: use e.g. 1000, 64KiB, 50MiB or 10MB")]
    NotASize(String),
    /// A number with a unit that is not a size unit.
    #[error("{text:?}: unknown unit {unit:?}: use KiB, MiB, GiB (or k, m, g), kB, MB or GB")]
    SizeUnit {
        /// The whole text.
        text: String,
        /// The unit part.
        unit: String,
    },
    /// More bytes than the setting's type holds.
    #[error("{text:?} is too large: at most {max} bytes")]
    SizeTooLarge {
        /// The whole text.
        text: String,
        /// The largest value the setting holds.
        max: u64,
    },
    /// No number where a duration was expected.
    #[error("{0:?} is not a duration: use e.g. 300s, 5m, 1h, 250ms or 1.5s")]
    NotADuration(String),
    /// A number with a unit that is not a time unit.
    #[error("{text:?}: unknown unit {unit:?}: use ns, us, ms, s, m or h")]
    DurationUnit {
        /// The whole text.
        text: String,
        /// The unit part.
        unit: String,
    },
    /// Longer than [`MAX_DURATION`].
    #[error("{0:?} is too long: at most {MAX_DURATION_TEXT}")]
    DurationTooLong(String),
}

/// Splits `"50 MiB"` into `("50", "MiB")`: the leading digits (and, when
/// `fraction`, one `.` followed by digits), then the rest without spaces.
fn split_number(text: &str, fraction: bool) -> (&str, &str) {
    let t = text.trim();
    let mut end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if fraction && t[end..].starts_with('.') {
        let rest = &t[end + 1..];
        end += 1 + rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
    }
    let (num, unit) = t.split_at(end);
    (num, unit.trim_start())
}

/// Parses a size into bytes (see the module docs for the forms).
///
/// # Errors
/// [`UnitError`] naming the text: no number, an unknown unit, or more than
/// `u64::MAX` bytes.
///
/// # Example
/// ```
/// use ringmx::units::parse_size;
/// assert_eq!(parse_size("50MiB"), Ok(50 << 20));
/// assert_eq!(parse_size("10MB"), Ok(10_000_000));
/// assert_eq!(parse_size("64 k"), Ok(64 << 10));
/// assert!(parse_size("1.5k").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let (num, unit) = split_number(text, false);
    let t = text.trim();
    // Sizes are whole bytes: `1.5k` is refused rather than rounded.
    if num.is_empty() || unit.starts_with('.') {
        return Err(UnitError::NotASize(t.to_owned()));
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(UnitError::SizeUnit {
                text: t.to_owned(),
                unit: unit.to_owned(),
            })
        }
    };
    let too_large = || UnitError::SizeTooLarge {
        text: t.to_owned(),
        max: u64::MAX,
    };
    // Only digits reach here, so a failed parse is an overflow.
    let n: u64 = num.parse().map_err(|_| too_large())?;
    n.checked_mul(mult).ok_or_else(too_large)
}

/// [`parse_size`] into a narrower type (`usize` for in-memory buffers).
///
/// # Errors
/// As [`parse_size`], and [`UnitError::SizeTooLarge`] past `T`'s maximum.
pub fn parse_size_as<T: TryFrom<u64> + SizeMax>(text: &str) -> Result<T, UnitError> {
    let n = parse_size(text)?;
    T::try_from(n).map_err(|_| UnitError::SizeTooLarge {
        text: text.trim().to_owned(),
        max: T::MAX_BYTES,
    })
}

/// The largest size a type holds, for [`UnitError::SizeTooLarge`].
pub trait SizeMax {
    /// `Self::MAX` as bytes.
    const MAX_BYTES: u64;
}

impl SizeMax for u64 {
    const MAX_BYTES: u64 = u64::MAX;
}

impl SizeMax for usize {
    // usize is at most 64 bits on every target Rust supports.
    const MAX_BYTES: u64 = usize::MAX as u64;
}

impl SizeMax for u32 {
    const MAX_BYTES: u64 = u32::MAX as u64;
}

/// Formats a size the way [`parse_size`] reads it, in the largest exact
/// binary unit (`50MiB`, `16KiB`, `1000`).
///
/// # Example
/// ```
/// use ringmx::units::{format_size, parse_size};
/// assert_eq!(format_size(50 << 20), "50MiB");
/// assert_eq!(format_size(1000), "1000");
/// assert_eq!(parse_size(&format_size(16 << 10)), Ok(16 << 10));
/// ```
pub fn format_size(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n != 0 && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// Parses a duration (see the module docs for the forms). Digits past a
/// nanosecond are dropped.
///
/// # Errors
/// [`UnitError`] naming the text: no number, an unknown unit, or longer than
/// [`MAX_DURATION`].
///
/// # Example
/// ```
/// use std::time::Duration;
/// use ringmx::units::parse_duration;
/// assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
/// assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
/// assert!(parse_duration("9223372036854775807s").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let t = text.trim();
    let (num, unit) = split_number(t, true);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() || (num.contains('.') && frac.is_empty()) {
        return Err(UnitError::NotADuration(t.to_owned()));
    }
    let unit_ns: u128 = match unit {
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => {
            return Err(UnitError::DurationUnit {
                text: t.to_owned(),
                unit: unit.to_owned(),
            })
        }
    };
    let too_long = || UnitError::DurationTooLong(t.to_owned());
    // Only digits reach here, so a failed parse is an overflow. u128 holds
    // u64::MAX hours in nanoseconds (about 6.6e31 < 3.4e38).
    let whole: u128 = int.parse::<u64>().map_err(|_| too_long())?.into();
    // Eighteen fraction digits resolve well below a nanosecond of an hour.
    let frac = &frac[..frac.len().min(18)];
    let frac_ns = match frac {
        "" => 0,
        f => f.parse::<u128>().unwrap_or(0) * unit_ns / 10u128.pow(f.len() as u32),
    };
    let ns = whole * unit_ns + frac_ns;
    if ns > MAX_DURATION.as_nanos() {
        return Err(too_long());
    }
    // Below MAX_DURATION, so the seconds fit in u64.
    let secs = u64::try_from(ns / 1_000_000_000).map_err(|_| too_long())?;
    Ok(Duration::new(secs, (ns % 1_000_000_000) as u32))
}

/// A whole number of seconds (TOML's bare integers) as a duration.
///
/// # Errors
/// [`UnitError::DurationTooLong`] past [`MAX_DURATION`].
pub fn duration_from_secs(secs: u64) -> Result<Duration, UnitError> {
    let d = Duration::from_secs(secs);
    check_duration(d).map_err(|_| UnitError::DurationTooLong(secs.to_string()))?;
    Ok(d)
}

/// Whether `d` is within [`MAX_DURATION`].
///
/// # Errors
/// [`UnitError::DurationTooLong`] naming `d` as [`format_duration`] writes it.
pub fn check_duration(d: Duration) -> Result<(), UnitError> {
    if d > MAX_DURATION {
        return Err(UnitError::DurationTooLong(format_duration(d)));
    }
    Ok(())
}

/// Formats a duration the way [`parse_duration`] reads it, exactly, in the
/// largest of s, ms, us and ns that fits (`300s`, `250ms`, `200us`).
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns % 1_000 != 0 {
        format!("{ns}ns")
    } else if ns % 1_000_000 != 0 {
        format!("{}us", ns / 1_000)
    } else if ns % 1_000_000_000 != 0 {
        format!("{}ms", ns / 1_000_000)
    } else {
        format!("{}s", d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (text, want) in [
            ("0", 0),
            ("512", 512),
            ("1000", 1000),
            ("100b", 100),
            ("1k", 1024),
            ("1K", 1024),
            ("64KiB", 64 << 10),
            ("1m", 1 << 20),
            ("1MiB", 1 << 20),
            ("50MiB", 50 << 20),
            ("2g", 2 << 30),
            ("1GiB", 1 << 30),
            ("64kb", 64_000),
            ("1kB", 1000),
            ("10MB", 10_000_000),
            ("10mb", 10_000_000),
            ("3GB", 3_000_000_000),
            (" 50 MiB ", 50 << 20),
            ("1 k", 1024),
            ("18446744073709551615", u64::MAX),
            ("17179869183GiB", 17_179_869_183 << 30),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn bad_sizes() {
        let not_a_size = |t: &str| UnitError::NotASize(t.into());
        let unit = |t: &str, u: &str| UnitError::SizeUnit {
            text: t.into(),
            unit: u.into(),
        };
        let too_large = |t: &str| UnitError::SizeTooLarge {
            text: t.into(),
            max: u64::MAX,
        };
        for (text, want) in [
            ("", not_a_size("")),
            ("k", not_a_size("k")),
            ("lots", not_a_size("lots")),
            ("-1", not_a_size("-1")),
            ("1x", unit("1x", "x")),
            ("1.5k", not_a_size("1.5k")),
            ("5 parsecs", unit("5 parsecs", "parsecs")),
            ("1KiBs", unit("1KiBs", "KiBs")),
            ("18446744073709551616", too_large("18446744073709551616")),
            ("17179869184GiB", too_large("17179869184GiB")),
            (
                "99999999999999999999999MB",
                too_large("99999999999999999999999MB"),
            ),
        ] {
            assert_eq!(parse_size(text), Err(want), "{text:?}");
        }
    }

    #[test]
    fn sizes_into_narrower_types() {
        assert_eq!(parse_size_as::<usize>("16KiB"), Ok(16 << 10));
        assert_eq!(
            parse_size_as::<u32>("4GiB"),
            Err(UnitError::SizeTooLarge {
                text: "4GiB".into(),
                max: u32::MAX.into(),
            })
        );
        assert_eq!(parse_size_as::<u32>("4GB"), Ok(4_000_000_000));
    }

    #[test]
    fn size_formats_read_back() {
        for (n, text) in [
            (0, "0"),
            (1000, "1000"),
            (1024, "1KiB"),
            (16 << 10, "16KiB"),
            (50 << 20, "50MiB"),
            (3 << 30, "3GiB"),
            ((1 << 20) + 1024, "1025KiB"),
            (u64::MAX, "18446744073709551615"),
        ] {
            assert_eq!(format_size(n), text);
            assert_eq!(parse_size(text), Ok(n), "{text}");
        }
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("0", Duration::ZERO),
            ("7", Duration::from_secs(7)),
            ("30", Duration::from_secs(30)),
            ("30s", Duration::from_secs(30)),
            ("100ms", ms(100)),
            ("2m", Duration::from_secs(120)),
            ("1.5s", ms(1500)),
            ("0.25", ms(250)),
            ("250ms", ms(250)),
            ("200us", Duration::from_micros(200)),
            ("1500ns", Duration::from_nanos(1500)),
            ("2.5us", Duration::from_nanos(2500)),
            ("5m", Duration::from_secs(300)),
            ("1.5m", Duration::from_secs(90)),
            ("2min", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("0.001h", Duration::from_millis(3600)),
            (" 5 m ", Duration::from_secs(300)),
            ("1.0000000001s", Duration::from_secs(1)),
            ("1.123456789123456789123s", Duration::new(1, 123_456_789)),
            ("876000h", MAX_DURATION),
            ("3153600000", MAX_DURATION),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn bad_durations() {
        let not = |t: &str| UnitError::NotADuration(t.into());
        let unit = |t: &str, u: &str| UnitError::DurationUnit {
            text: t.into(),
            unit: u.into(),
        };
        let long = |t: &str| UnitError::DurationTooLong(t.into());
        for (text, want) in [
            ("", not("")),
            ("s", not("s")),
            ("-1s", not("-1s")),
            (".5s", not(".5s")),
            ("1.s", not("1.s")),
            ("5x", unit("5x", "x")),
            ("1..2s", not("1..2s")),
            ("5 parsecs", unit("5 parsecs", "parsecs")),
            ("inf", not("inf")),
            ("NaN", not("NaN")),
            ("1e3s", unit("1e3s", "e3s")),
            ("876000.001h", long("876000.001h")),
            ("3153600001", long("3153600001")),
            ("9223372036854775807s", long("9223372036854775807s")),
            ("18446744073709551615h", long("18446744073709551615h")),
            ("99999999999999999999999s", long("99999999999999999999999s")),
        ] {
            assert_eq!(parse_duration(text), Err(want), "{text:?}");
        }
    }

    #[test]
    fn whole_seconds_are_capped_too() {
        assert_eq!(duration_from_secs(300), Ok(Duration::from_secs(300)));
        assert_eq!(
            duration_from_secs(u64::MAX),
            Err(UnitError::DurationTooLong(u64::MAX.to_string()))
        );
        assert!(check_duration(MAX_DURATION).is_ok());
        assert!(check_duration(Duration::MAX).is_err());
        // The cap leaves Instant arithmetic, which panics on overflow, safe.
        assert!(std::time::Instant::now()
            .checked_add(MAX_DURATION)
            .is_some());
    }

    #[test]
    fn duration_formats_read_back() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(300), "300s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_micros(200), "200us"),
            (Duration::from_nanos(1500), "1500ns"),
            (Duration::from_millis(1500), "1500ms"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d), "{text}");
        }
    }
}
