//! Units in the plan file and on the command line: transfer rates with rsync's
//! `--bwlimit` semantics, and human-readable sizes and durations for reports.

use std::fmt;
use std::str::FromStr;

use bytesize::ByteSize;

/// A transfer rate in bytes per second, parsed like rsync's `--bwlimit`:
/// a bare number is KiB/s; `K`, `M`, `G`, `T` (and `KiB`…) are powers of 1024;
/// `KB`, `MB`… are powers of 1000. `0` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    bytes_per_sec: u64,
}

impl Rate {
    /// A rate of `n` bytes per second (`0` = unlimited).
    pub fn from_bytes_per_sec(n: u64) -> Self {
        Rate { bytes_per_sec: n }
    }
    /// Bytes per second; `None` when unlimited.
    pub fn limit(self) -> Option<u64> {
        (self.bytes_per_sec > 0).then_some(self.bytes_per_sec)
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let rate = parse_rate(s)?;
        // The limiter works in KiB; a smaller non-zero limit would silently run faster, and
        // one that rounds to 0 would silently mean "no limit".
        let nonzero_input = s.chars().any(|c| c.is_ascii_digit() && c != '0');
        if rate.bytes_per_sec < 1024 && (rate.bytes_per_sec > 0 || nonzero_input) {
            return Err(format!(
                "rate `{s}` is below 1 KiB/s, the smallest limit: use at least `1K`, or `0` for no limit"
            ));
        }
        Ok(rate)
    }
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "invalid rate `{s}`: use rsync units, e.g. `200M` (MiB/s), `50000` (KiB/s), `1G`, or `0` for no limit"
        )
    };
    if t.is_empty() || t.starts_with('-') {
        return Err(bad());
    }
    let positive = |n: f64| n.is_finite() && n >= 0.0;
    // rsync: a bare number means KiB/s.
    if t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let n: f64 = t.parse().map_err(|_| bad())?;
        if !positive(n) {
            return Err(bad());
        }
        return Ok(Rate {
            bytes_per_sec: (n * 1024.0).round() as u64,
        });
    }
    // rsync: a single-letter suffix is binary (M = MiB); bytesize reads `M` as MB.
    let normalized = match t.char_indices().last() {
        Some((i, c)) if "kKmMgGtT".contains(c) && t[..i].trim().parse::<f64>().is_ok() => {
            format!("{}{}iB", &t[..i].trim(), c.to_ascii_uppercase())
        }
        _ => t.to_string(),
    };
    let size: ByteSize = normalized.parse().map_err(|_| bad())?;
    Ok(Rate {
        bytes_per_sec: size.as_u64(),
    })
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit() {
            None => write!(f, "unlimited"),
            Some(b) => write!(f, "{}/s", bytes(b)),
        }
    }
}

/// In a plan file a rate is a string (`200M`) or a bare number (KiB/s, like rsync).
impl<'de> serde::Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(u64),
            Fraction(f64),
            Text(String),
        }
        let text = match Repr::deserialize(d)? {
            Repr::Number(n) => n.to_string(),
            Repr::Fraction(f) => f.to_string(),
            Repr::Text(s) => s,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `n` and the noun, in the plural unless `n` is 1: `count(3, "file")` is `3 files`,
/// `count(1, "entry")` `1 entry`, `count(2, "fix")` `2 fixes`.
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    format!("{n} {}", noun_for(n, noun))
}

/// `noun` as it reads after the number `n` ("pod", "pods"; "entry", "entries"), for lists
/// and counts written apart.
pub fn noun_for(n: impl Into<u64>, noun: &str) -> String {
    if n.into() == 1 {
        return noun.to_string();
    }
    if let Some(stem) = noun
        .strip_suffix('y')
        .filter(|s| !s.ends_with(['a', 'e', 'o', 'u']))
    {
        format!("{stem}ies")
    } else if ["s", "x", "ch", "sh"].iter().any(|e| noun.ends_with(e)) {
        format!("{noun}es")
    } else {
        format!("{noun}s")
    }
}

/// The verb for `n` subjects: `one` for 1, `many` otherwise ("is"/"are").
pub fn verb_for(n: impl Into<u64>, one: &'static str, many: &'static str) -> &'static str {
    if n.into() == 1 { one } else { many }
}

/// Formats a byte count for people, in binary units ("1.5 GiB").
pub fn bytes(n: u64) -> String {
    ByteSize(n).display().iec().to_string()
}

/// Formats a duration in seconds for people ("1h 2m 3s").
pub fn duration(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let d = jiff::SignedDuration::from_secs_f64(secs.round());
    format!("{d:#}")
}

/// Formats a Prometheus millisecond timestamp as RFC 3339 UTC.
pub fn ms_utc(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => format!("{ms}ms (out of range)"),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn counts_say_one_or_the_plural() {
        assert_eq!(count(1u64, "file"), "1 file");
        assert_eq!(count(0u64, "file"), "0 files");
        assert_eq!(count(3u64, "entry"), "3 entries");
        assert_eq!(count(2u64, "owner/mode fix"), "2 owner/mode fixes");
        assert_eq!(count(2u64, "key"), "2 keys");
        assert_eq!(count(2u64, "process"), "2 processes");
        assert_eq!(noun_for(1u64, "pod"), "pod");
        assert_eq!(noun_for(2u64, "block entry"), "block entries");
        assert_eq!(verb_for(1u64, "is", "are"), "is");
        assert_eq!(verb_for(0u64, "is", "are"), "are");
    }
    use super::*;

    #[test]
    fn rsync_rate_units() {
        let r = |s: &str| s.parse::<Rate>().unwrap().limit();
        assert_eq!(r("200M"), Some(200 * 1024 * 1024));
        assert_eq!(r("200m"), Some(200 * 1024 * 1024));
        assert_eq!(r("1G"), Some(1 << 30));
        assert_eq!(r("512K"), Some(512 * 1024));
        assert_eq!(
            r("100"),
            Some(100 * 1024),
            "bare number is KiB/s like rsync"
        );
        assert_eq!(r("1.5M"), Some(1_572_864));
        assert_eq!(r("10MB"), Some(10_000_000));
        assert_eq!(r("10MiB"), Some(10 * 1024 * 1024));
        assert_eq!(r("0"), None, "0 means unlimited");
    }

    #[test]
    fn bad_rates_are_rejected_with_hint() {
        for s in ["", "fast", "-5M", "200X", "M", "0.0001", "100B"] {
            let err = s.parse::<Rate>().unwrap_err();
            assert!(
                err.contains("rsync units") || err.contains("below 1 KiB/s"),
                "{s}: {err}"
            );
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(ms_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(duration(3723.0), "1h 2m 3s");
        assert_eq!(duration(0.04), "0.0s");
        assert_eq!(duration(12.34), "12.3s");
        assert!(bytes(1536).contains("KiB"));
    }
}
