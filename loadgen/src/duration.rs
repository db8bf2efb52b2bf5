//! Parsing of short human durations (`250us`, `10ms`, `2s`, `1m`) for the
//! command lines of the loadgen binaries. Owns only parsing.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseDurationError {
    #[error("duration {0:?} has no number; write it like 10ms, 2s or 1m")]
    MissingNumber(String),
    #[error("duration {0:?} has no unit; add one of us, ms, s, m")]
    MissingUnit(String),
    #[error("duration {0:?} has unknown unit {1:?}; use us, ms, s or m")]
    UnknownUnit(String, String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses `<integer><unit>` with unit `us`, `ms`, `s` or `m`; `0` alone is
/// accepted as zero.
pub fn parse_duration(text: &str) -> Result<Duration, ParseDurationError> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(ParseDurationError::MissingNumber(text.to_owned()));
    }
    if unit.is_empty() {
        return Err(ParseDurationError::MissingUnit(text.to_owned()));
    }
    let n: u64 = digits.parse().map_err(|_| ParseDurationError::Overflow(text.to_owned()))?;
    let overflow = || ParseDurationError::Overflow(text.to_owned());
    match unit {
        "us" => Ok(Duration::from_micros(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.checked_mul(60).ok_or_else(overflow)?)),
        other => Err(ParseDurationError::UnknownUnit(text.to_owned(), other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("3h").is_err());
    }
}
