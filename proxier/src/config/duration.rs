//! Go's `time.Duration` text form, as kube-proxy's flags (`pflag.DurationVar`) and config file
//! (`metav1.Duration`) read it: `30s`, `1m30s`, `1.5h`, `250ms`, `0`, with an optional sign.
//!
//! Written here rather than pulled in (humantime and friends use a different grammar: they
//! accept spaces and words, and reject `1.5h`), so that every value kube-proxy accepts is
//! accepted and every value it rejects is rejected.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A signed duration with nanosecond resolution, like Go's `time.Duration` (an `i64`).
/// Negative values parse (Go accepts them) so that validation can name the setting that
/// carries one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration {
    nanos: i64,
}

/// Why a duration string is not one Go would parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {0:?}")]
    Invalid(String),
    #[error("missing unit in duration {0:?} (e.g. \"30s\", \"1m30s\", \"250ms\")")]
    MissingUnit(String),
    #[error("unknown unit {unit:?} in duration {input:?} (use ns, us, ms, s, m or h)")]
    UnknownUnit { unit: String, input: String },
    #[error("duration {0:?} overflows 292 years")]
    Overflow(String),
}

const NANOS_PER_SEC: i64 = 1_000_000_000;

impl GoDuration {
    pub const ZERO: Self = Self { nanos: 0 };

    pub const fn from_nanos(nanos: i64) -> Self {
        Self { nanos }
    }

    pub const fn from_secs(secs: i64) -> Self {
        Self {
            nanos: secs.saturating_mul(NANOS_PER_SEC),
        }
    }

    pub const fn as_nanos(self) -> i64 {
        self.nanos
    }

    pub const fn is_zero(self) -> bool {
        self.nanos == 0
    }

    pub const fn is_negative(self) -> bool {
        self.nanos < 0
    }

    /// The duration as a `std::time::Duration`; `None` when negative.
    pub fn to_std(self) -> Option<Duration> {
        u64::try_from(self.nanos).ok().map(Duration::from_nanos)
    }
}

impl std::str::FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_go_duration(s)
    }
}

/// Parses Go's duration syntax (`time.ParseDuration`): an optional sign, then one or more
/// `<decimal><unit>` pairs with units ns, us (or µs), ms, s, m, h; the bare string `0` is also
/// valid. Fractions are exact to the nanosecond (Go goes through a float; the two differ only
/// below a nanosecond).
pub fn parse_go_duration(input: &str) -> Result<GoDuration, DurationError> {
    let invalid = || DurationError::Invalid(input.to_owned());
    let (negative, mut rest) = match input.as_bytes().first() {
        Some(b'-') => (true, &input[1..]),
        Some(b'+') => (false, &input[1..]),
        _ => (false, input),
    };
    if rest == "0" {
        return Ok(GoDuration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    // Accumulated magnitude; Go allows exactly 1<<63 when negative.
    let mut total: u128 = 0;
    let limit: u128 = if negative { 1 << 63 } else { (1 << 63) - 1 };
    while !rest.is_empty() {
        let bytes = rest.as_bytes();
        let int_len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
        let mut whole: u128 = 0;
        for b in &bytes[..int_len] {
            whole = whole * 10 + u128::from(b - b'0');
            if whole > limit {
                return Err(DurationError::Overflow(input.to_owned()));
            }
        }
        let mut pos = int_len;
        let mut frac_num: u128 = 0;
        let mut frac_den: u128 = 1;
        let mut frac_len = 0;
        if bytes.get(pos) == Some(&b'.') {
            pos += 1;
            frac_len = bytes[pos..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            for b in &bytes[pos..pos + frac_len] {
                // Digits past nanosecond precision of an hour cannot change the result.
                if frac_den < 10u128.pow(24) {
                    frac_num = frac_num * 10 + u128::from(b - b'0');
                    frac_den *= 10;
                }
            }
            pos += frac_len;
        }
        if int_len == 0 && frac_len == 0 {
            return Err(invalid());
        }
        let unit_len = bytes[pos..]
            .iter()
            .take_while(|b| !(b.is_ascii_digit() || **b == b'.'))
            .count();
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(input.to_owned()));
        }
        // The unit run stops at an ASCII byte, so it ends on a char boundary.
        let unit = &rest[pos..pos + unit_len];
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_owned(),
                    input: input.to_owned(),
                });
            }
        };
        total += whole * scale + frac_num * scale / frac_den;
        if total > limit {
            return Err(DurationError::Overflow(input.to_owned()));
        }
        rest = &rest[pos + unit_len..];
    }
    let magnitude = i128::try_from(total).map_err(|_| DurationError::Overflow(input.to_owned()))?;
    let signed = if negative { -magnitude } else { magnitude };
    i64::try_from(signed)
        .map(GoDuration::from_nanos)
        .map_err(|_| DurationError::Overflow(input.to_owned()))
}

/// Go's `Duration.String()`: `0s`, `250ms`, `1.5µs`, `1m30s`, `2h0m0s`.
impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let negative = self.nanos < 0;
        let abs = self.nanos.unsigned_abs();
        if abs == 0 {
            return f.write_str("0s");
        }
        let sign = if negative { "-" } else { "" };
        if abs < 1_000_000_000 {
            let (unit, per) = if abs < 1_000 {
                ("ns", 1)
            } else if abs < 1_000_000 {
                ("\u{b5}s", 1_000)
            } else {
                ("ms", 1_000_000)
            };
            return write!(f, "{sign}{}{unit}", decimal(abs, per));
        }
        let hours = abs / 3_600_000_000_000;
        let minutes = (abs / 60_000_000_000) % 60;
        let secs = decimal(abs % 60_000_000_000, 1_000_000_000);
        if hours > 0 {
            write!(f, "{sign}{hours}h{minutes}m{secs}s")
        } else if minutes > 0 {
            write!(f, "{sign}{minutes}m{secs}s")
        } else {
            write!(f, "{sign}{secs}s")
        }
    }
}

/// `value / per` as a decimal without trailing zeros.
fn decimal(value: u64, per: u64) -> String {
    let whole = value / per;
    let frac = value % per;
    if frac == 0 {
        return whole.to_string();
    }
    let width = per.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// `metav1.Duration` is a JSON string; a number is refused, as Go refuses it. `null` is read as
/// zero: kubeadm never writes it for a non-pointer duration, and zero is what every such field
/// defaults from.
impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Parsing inside the visitor (not after it returns) lets serde_yaml prefix the error
        // with the full path of the field.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = GoDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"30s\" or \"1m30s\"")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<GoDuration, E> {
                parse_go_duration(v).map_err(E::custom)
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<GoDuration, E> {
                Ok(GoDuration::ZERO)
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<GoDuration, E> {
                Ok(GoDuration::ZERO)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> i64 {
        parse_go_duration(s).map(GoDuration::as_nanos).unwrap()
    }

    #[test]
    fn parses_what_go_parses() {
        assert_eq!(ns("0"), 0);
        assert_eq!(ns("-0"), 0);
        assert_eq!(ns("0s"), 0);
        assert_eq!(ns("30s"), 30 * NANOS_PER_SEC);
        assert_eq!(ns("1m30s"), 90 * NANOS_PER_SEC);
        assert_eq!(ns("2h22m"), (2 * 3600 + 22 * 60) * NANOS_PER_SEC);
        assert_eq!(ns("1.5h"), 5400 * NANOS_PER_SEC);
        assert_eq!(ns(".5s"), 500_000_000);
        assert_eq!(ns("5.s"), 5 * NANOS_PER_SEC);
        assert_eq!(ns("250ms"), 250_000_000);
        assert_eq!(ns("3us"), 3_000);
        assert_eq!(ns("3\u{b5}s"), 3_000);
        assert_eq!(ns("3\u{3bc}s"), 3_000);
        assert_eq!(ns("7ns"), 7);
        assert_eq!(ns("+5s"), 5 * NANOS_PER_SEC);
        assert_eq!(ns("-5s"), -5 * NANOS_PER_SEC);
        assert_eq!(ns("1h1m1s1ms1us1ns"), 3_661_001_001_001);
        assert_eq!(ns("0.000000001s"), 1);
        assert_eq!(ns("2562047h47m16.854775807s"), i64::MAX);
        assert_eq!(ns("-2562047h47m16.854775808s"), i64::MIN);
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "", "+", "-", "s", ".s", "30", "1m30", "1.", "1d", "3 s", " 3s", "1e3s",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(
            parse_go_duration("30"),
            Err(DurationError::MissingUnit("30".into()))
        );
        assert_eq!(
            parse_go_duration("1d"),
            Err(DurationError::UnknownUnit {
                unit: "d".into(),
                input: "1d".into()
            })
        );
        assert_eq!(
            parse_go_duration("2562047h47m16.854775808s"),
            Err(DurationError::Overflow("2562047h47m16.854775808s".into()))
        );
        assert!(parse_go_duration("99999999999999999999999h").is_err());
    }

    #[test]
    fn formats_like_go() {
        for (text, shown) in [
            ("0", "0s"),
            ("30s", "30s"),
            ("90s", "1m30s"),
            ("2h", "2h0m0s"),
            ("1.5s", "1.5s"),
            ("250ms", "250ms"),
            ("1500ns", "1.5\u{b5}s"),
            ("-5s", "-5s"),
            ("15m", "15m0s"),
        ] {
            assert_eq!(parse_go_duration(text).unwrap().to_string(), shown);
        }
    }

    #[test]
    fn std_conversion_refuses_negative() {
        assert_eq!(
            GoDuration::from_secs(3).to_std(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(GoDuration::from_secs(-3).to_std(), None);
    }
}
