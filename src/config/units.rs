//! Parsers for the config's unit-bearing strings: durations ("250ms"), sizes ("16KiB") and
//! health-check status matchers ("200-399"). Pure functions, run on the main thread while a
//! config is loaded; they own no state.

use std::fmt;
use std::time::Duration;

/// Longest unit-bearing string accepted; anything longer is a typo or an attack, not a value.
const MAX_UNIT_TEXT: usize = 64;
/// Lowest HTTP status code a health-check matcher may name.
pub const MIN_STATUS: u16 = 100;
/// Highest HTTP status code a health-check matcher may name.
pub const MAX_STATUS: u16 = 599;
/// Most comma-separated parts a matcher may have.
const MAX_MATCHER_PARTS: usize = 64;

/// Splits `s` into its leading decimal digits and the rest. Errors name the input.
fn split_number<'a>(s: &'a str, what: &str, example: &str) -> Result<(u64, &'a str), String> {
    if s.is_empty() {
        return Err(format!("empty {what}; write one like \"{example}\""));
    }
    if s.len() > MAX_UNIT_TEXT {
        return Err(format!("{what} is too long ({} characters)", s.len()));
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "invalid {what} \"{s}\": must start with a non-negative whole number, like \"{example}\""
        ));
    }
    let (num, unit) = s.split_at(digits);
    let n = num
        .parse::<u64>()
        .map_err(|_| format!("{what} \"{s}\" is too large"))?;
    Ok((n, unit))
}

/// Parses a duration: a whole number followed by a unit, one of `us`, `ms`, `s`, `m`, `h`
/// ("100us", "250ms", "5s", "1m", "1h"). Negative, fractional, unit-less, empty and
/// overflowing values are rejected with a message that says why.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = split_number(s, "duration", "5s")?;
    let too_large = || format!("duration \"{s}\" is too large");
    let d = match unit {
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_large)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_large)?),
        "" => {
            return Err(format!(
                "duration \"{s}\" has no unit; add one of us, ms, s, m, h (e.g. \"{n}s\")"
            ))
        }
        _ if unit.starts_with('.') => {
            return Err(format!(
                "duration \"{s}\" must be a whole number; use a smaller unit (e.g. \"1500ms\")"
            ))
        }
        _ => {
            return Err(format!(
                "duration \"{s}\" has unknown unit \"{unit}\"; use one of us, ms, s, m, h"
            ))
        }
    };
    Ok(d)
}

/// Parses a size in bytes: a bare whole number, or one followed by a unit: `B`, decimal `KB`
/// `MB` `GB` `TB` (powers of 1000) or binary `KiB` `MiB` `GiB` `TiB` (powers of 1024).
/// Units are case-insensitive. Overflow, fractions and unknown units are rejected.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (n, unit) = split_number(s, "size", "16KiB")?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "tb" => 1000 * 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ if unit.starts_with('.') => {
            return Err(format!(
                "size \"{s}\" must be a whole number; use a smaller unit (e.g. \"1536KiB\")"
            ))
        }
        _ => {
            return Err(format!(
                "size \"{s}\" has unknown unit \"{unit}\"; use B, KB, MB, GB, KiB, MiB or GiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size \"{s}\" is too large"))
}

/// Which HTTP status codes count as a passing health check: a union of inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    ranges: Vec<(u16, u16)>,
}

impl Default for Matcher {
    /// "200-399", the DESIGN default.
    fn default() -> Self {
        Matcher {
            ranges: vec![(200, 399)],
        }
    }
}

impl Matcher {
    /// True when `status` falls in one of the ranges.
    pub fn matches(&self, status: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| lo <= status && status <= hi)
    }

    /// Parses "200-399", "200,204" or "200-299,302" (spaces around parts allowed). Every code
    /// must lie in 100..=599 and every range must run low to high.
    pub fn parse(s: &str) -> Result<Matcher, String> {
        if s.len() > MAX_UNIT_TEXT * 4 {
            return Err(format!("matcher is too long ({} characters)", s.len()));
        }
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!(
                    "matcher \"{s}\" has an empty part; write codes like \"200-399\" or \"200,204\""
                ));
            }
            if ranges.len() == MAX_MATCHER_PARTS {
                return Err(format!(
                    "matcher \"{s}\" has more than {MAX_MATCHER_PARTS} parts"
                ));
            }
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (status_code(lo.trim(), s)?, status_code(hi.trim(), s)?),
                None => {
                    let c = status_code(part, s)?;
                    (c, c)
                }
            };
            if lo > hi {
                return Err(format!(
                    "matcher \"{s}\": range {lo}-{hi} runs backwards; write {hi}-{lo}"
                ));
            }
            ranges.push((lo, hi));
        }
        Ok(Matcher { ranges })
    }

    /// The inclusive ranges, in the order written.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

fn status_code(code: &str, whole: &str) -> Result<u16, String> {
    let n: u16 = code
        .parse()
        .map_err(|_| format!("matcher \"{whole}\": \"{code}\" is not a status code"))?;
    if !(MIN_STATUS..=MAX_STATUS).contains(&n) {
        return Err(format!(
            "matcher \"{whole}\": status {n} is outside {MIN_STATUS}..={MAX_STATUS}"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("-5s", "non-negative"),
            ("5", "no unit"),
            ("1.5s", "whole number"),
            ("5 s", "unknown unit"),
            ("5sec", "unknown unit"),
            ("s", "non-negative"),
            ("99999999999999999999s", "too large"),
            ("18446744073709551615h", "too large"),
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn sizes_decimal_and_binary() {
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2mb"), Ok(2_000_000));
    }

    #[test]
    fn bad_sizes_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("-1KiB", "non-negative"),
            ("1.5MiB", "whole number"),
            ("10 MiB", "unknown unit"),
            ("10XB", "unknown unit"),
            ("99999999999TiB", "too large"),
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn matcher_ranges_and_lists() {
        let m = Matcher::parse("200-299, 302").unwrap();
        assert!(m.matches(200) && m.matches(299) && m.matches(302));
        assert!(!m.matches(300) && !m.matches(199) && !m.matches(404));
        assert_eq!(m.to_string(), "200-299,302");
        let m = Matcher::parse("200,204").unwrap();
        assert!(m.matches(204) && !m.matches(201));
        assert!(Matcher::default().matches(399) && !Matcher::default().matches(400));
    }

    #[test]
    fn bad_matchers_say_why() {
        for (bad, why) in [
            ("", "empty part"),
            ("200,", "empty part"),
            ("abc", "not a status code"),
            ("600", "outside"),
            ("99-200", "outside"),
            ("399-200", "backwards"),
            ("200-", "not a status code"),
        ] {
            let err = Matcher::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
