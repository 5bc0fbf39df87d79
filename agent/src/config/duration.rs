//! Durations as admins write them: `30s`, `500ms`, `5m`, `1h`, `90` (seconds), `HH:MM:SS`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

const EXPECTED: &str =
    "expected a number with a unit (500ms, 30s, 5m, 1h), plain seconds (90) or HH:MM:SS";

/// Parses a duration: a non-negative number with a unit `ms`, `s`, `m` or `h` (none means
/// seconds), or `HH:MM:SS` as batch schedulers write walltimes.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = || format!("invalid duration `{text}`: {EXPECTED}");
    if text.contains(':') {
        return parse_hh_mm_ss(text).ok_or_else(invalid);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim_start());
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(invalid());
    }
    let scale_to_ms: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(invalid()),
    };
    if let Ok(whole) = number.parse::<u64>() {
        // Exact for whole numbers, which is what almost everyone writes.
        return whole
            .checked_mul(scale_to_ms)
            .map(Duration::from_millis)
            .ok_or_else(invalid);
    }
    let value: f64 = number.parse().map_err(|_| invalid())?;
    Duration::try_from_secs_f64(value * scale_to_ms as f64 / 1_000.0).map_err(|_| invalid())
}

fn parse_hh_mm_ss(text: &str) -> Option<Duration> {
    let mut parts = text.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || [h, m, s]
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let (h, m, s): (u64, u64, u64) = (h.parse().ok()?, m.parse().ok()?, s.parse().ok()?);
    if m >= 60 || s >= 60 {
        return None;
    }
    Some(Duration::from_secs(
        h.checked_mul(3600)?.checked_add(m * 60 + s)?,
    ))
}

/// A duration the way an admin would write it back: `500ms`, `30s`, `5m`, `2h`, `90s`.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms == 0 {
        "0s".to_owned()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

/// A duration in a YAML document: a string as [`parse_duration`] reads it, or a plain
/// number of seconds.
struct YamlDuration(Duration);

impl<'de> Deserialize<'de> for YamlDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = YamlDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration (500ms, 30s, 5m, 1h, 90 or HH:MM:SS)")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                parse_duration(text).map(YamlDuration).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Self::Value, E> {
                Ok(YamlDuration(Duration::from_secs(secs)))
            }

            fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Self::Value, E> {
                u64::try_from(secs)
                    .map_err(|_| E::custom(format!("invalid duration `{secs}`: it is negative")))
                    .and_then(|secs| self.visit_u64(secs))
            }

            fn visit_f64<E: de::Error>(self, secs: f64) -> Result<Self::Value, E> {
                Duration::try_from_secs_f64(secs)
                    .map(YamlDuration)
                    .map_err(|_| E::custom(format!("invalid duration `{secs}`: {EXPECTED}")))
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

/// For `#[serde(deserialize_with = "duration::required")]`.
pub(super) fn required<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    YamlDuration::deserialize(deserializer).map(|d| d.0)
}

/// For `#[serde(deserialize_with = "duration::optional")]`: `null` is no duration.
pub(super) fn optional<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    Option::<YamlDuration>::deserialize(deserializer).map(|d| d.map(|d| d.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_form_parses() {
        let cases = [
            ("30s", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("90", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.25h", Duration::from_secs(900)),
            (" 10 s ", Duration::from_secs(10)),
            ("00:30:00", Duration::from_secs(1800)),
            ("01:02:03", Duration::from_secs(3723)),
            ("100:00:00", Duration::from_secs(360_000)),
            ("0", Duration::ZERO),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn malformed_durations_are_refused_with_the_forms_that_work() {
        for text in [
            "", "s", "ten", "10x", "10 sec", "-5s", "1.s", ".5s", "1:2", "00:60:00", "00:00:60",
            "1:2:3:4", "a:b:c", "1e3", "1.2.3s",
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid duration `{}`", text.trim())),
                "{err}"
            );
            assert!(err.contains("HH:MM:SS"), "{err}");
        }
    }

    #[test]
    fn durations_print_in_the_largest_whole_unit() {
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn yaml_numbers_are_seconds() {
        let d: YamlDuration = serde_yaml_ng::from_str("90").unwrap();
        assert_eq!(d.0, Duration::from_secs(90));
        let d: YamlDuration = serde_yaml_ng::from_str("0.5").unwrap();
        assert_eq!(d.0, Duration::from_millis(500));
        assert!(serde_yaml_ng::from_str::<YamlDuration>("-3").is_err());
        assert!(serde_yaml_ng::from_str::<YamlDuration>("[1]").is_err());
    }
}
