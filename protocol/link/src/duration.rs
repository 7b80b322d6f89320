//! Durations as people write them (`"500ms"`, `"30s"`, `"15m"`, `"14d"`), for config
//! files and flags.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses `"30s"`, `"5m"`; the error says how to write one.
pub fn parse(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|e| {
        format!("invalid duration {raw:?} ({e}); write it like \"500ms\", \"30s\" or \"15m\"")
    })
}

/// serde: `#[serde(deserialize_with = "metalbus_link::duration::deserialize")]`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let raw = String::deserialize(d)?;
    parse(&raw).map_err(serde::de::Error::custom)
}

/// The same for an optional field.
pub mod option {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_parse_and_bad_ones_say_how() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("14d"), Ok(Duration::from_secs(14 * 24 * 3600)));
        let err = parse("often").unwrap_err();
        assert!(err.contains("\"often\"") && err.contains("30s"), "{err}");
    }
}
