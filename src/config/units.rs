//! Human-friendly units used throughout the YAML file: durations (`30s`,
//! `15m`, `1h30m`, `250ms`) and byte sizes (`512MiB`, `10MB`, `4096`).
//!
//! They exist so that an operator never has to guess whether a bare number
//! means seconds or milliseconds: durations always carry a unit.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A duration read from the config file. Always written with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

/// A byte size read from the config file (`512MiB`, `1GB`, `4096`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// Parses `500ms`, `30s`, `15m`, `1h`, `1d`, and compounds such as `1h30m`.
/// Fractions are allowed per component (`1.5s`). A bare number is refused
/// because it is ambiguous.
///
/// ```
/// use std::time::Duration;
/// use tollgate::config::units::parse_duration;
/// assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
/// assert!(parse_duration("30").is_err());
/// ```
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let invalid = || {
        format!("invalid duration {input:?} (write a number and a unit: 250ms, 30s, 15m, 1h, 1d)")
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        if num_len == 0 {
            return Err(invalid());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| invalid())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        total += value * seconds_per_unit;
    }
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

/// Parses `4096`, `64KB`, `10MB`, `1GB` (powers of 1000) and `64KiB`,
/// `512MiB`, `1GiB`, `1TiB` (powers of 1024). Units are case-sensitive on the
/// `i` so that `MB` and `MiB` never get confused.
///
/// ```
/// use tollgate::config::units::parse_byte_size;
/// assert_eq!(parse_byte_size("512MiB"), Ok(512 * 1024 * 1024));
/// assert_eq!(parse_byte_size("10MB"), Ok(10_000_000));
/// ```
pub fn parse_byte_size(input: &str) -> Result<u64, String> {
    let invalid = || {
        format!("invalid size {input:?} (write bytes or a number and a unit: 64KiB, 512MiB, 1GiB, 10MB)")
    };
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    if split == 0 {
        return Err(invalid());
    }
    let value: f64 = s[..split].parse().map_err(|_| invalid())?;
    let multiplier: u64 = match s[split..].trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err(invalid()),
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 || bytes.fract() != 0.0 {
        return Err(invalid());
    }
    Ok(bytes as u64)
}

/// Formats a duration the way error messages quote route timeouts: seconds
/// with one decimal (`30.0s`, `0.5s`).
pub fn seconds_one_decimal(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

struct StrVisitor(&'static str);

impl Visitor<'_> for StrVisitor {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = d.deserialize_any(StrVisitor("a duration such as 30s, 15m or 1h"))?;
        parse_duration(&raw)
            .map(HumanDuration)
            .map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = d.deserialize_any(StrVisitor("a size such as 512MiB or 10MB"))?;
        parse_byte_size(&raw)
            .map(ByteSize)
            .map_err(de::Error::custom)
    }
}

// The schema says what the parsers above accept, so an editor flags a
// unitless duration or an unknown size unit before `check` does.
impl schemars::JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration with its unit: 250ms, 30s, 15m, 1h, 1d, or compounds such as 1h30m.",
            "type": "string",
            "pattern": "^\\s*(([0-9]+\\.?[0-9]*|\\.[0-9]+)(ms|s|m|h|d))+\\s*$",
            "examples": ["250ms", "30s", "1h30m"]
        })
    }
}

impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size in bytes: 4096, or a number and a unit (64KiB, 512MiB, 1GiB, 10MB).",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                {
                    "type": "string",
                    "pattern": "^\\s*([0-9]+\\.?[0-9]*|\\.[0-9]+)\\s*(B|KB|kB|MB|GB|KiB|MiB|GiB|TiB)?\\s*$"
                }
            ],
            "examples": ["64KiB", "512MiB", 4096]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn durations_without_unit_or_with_words_are_refused() {
        for bad in ["30", "", "5 minutes", "s", "10x", "1h 30m", "-1s", "ms"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn sizes_parse_in_both_unit_families() {
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert_eq!(parse_byte_size("64KiB"), Ok(65536));
        assert_eq!(parse_byte_size("512MiB"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_byte_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_byte_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_byte_size("1.5KiB"), Ok(1536));
    }

    #[test]
    fn sizes_with_unknown_units_are_refused() {
        for bad in ["", "MiB", "12 parsecs", "1mib", "0.5B"] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timeout_numbers_print_with_one_decimal() {
        assert_eq!(seconds_one_decimal(Duration::from_secs(30)), "30.0s");
        assert_eq!(seconds_one_decimal(Duration::from_millis(1500)), "1.5s");
    }
}
