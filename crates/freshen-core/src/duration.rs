//! Human durations as freshen's users write them: `90s`, `15m`, `36h`, `7d`,
//! `2w`, and combinations such as `1d12h`, largest unit first.

use std::fmt;
use std::time::Duration;

const UNITS: [(char, u64); 5] = [
    ('w', 7 * 86_400),
    ('d', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];

/// The longest duration freshen accepts anywhere: 100 years (of 365.25
/// days). Every max age, interval and timeout a tenant writes is at most
/// this, so date arithmetic on it stays far inside chrono's range.
pub const MAX_DURATION: Duration = Duration::from_secs(MAX_DURATION_SECONDS);
/// [`MAX_DURATION`] in seconds (the CRDs' CEL rules name the same figure).
pub const MAX_DURATION_SECONDS: u64 = 36_525 * 86_400;

/// The form every duration error names, so a user can fix the value.
pub const DURATION_FORM: &str = "a positive whole number of s, m, h, d or w, largest unit first, \
                                 at most 100 years (36525d), e.g. 90s, 36h, 7d, 1d12h";

/// A duration that does not parse; it carries the input for the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {problem}; expected {DURATION_FORM}")]
pub struct DurationError {
    /// The text that was given.
    pub input: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

/// Parses a duration such as `7d` or `1d12h`. Zero is rejected: every
/// duration freshen takes (a max age, an interval) must be positive.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |problem| DurationError {
        input: input.to_owned(),
        problem,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let mut total: u64 = 0;
    let mut rest = s;
    // Index into UNITS of the last unit seen: units must strictly shrink.
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("a unit must follow a number"));
        }
        let (number, tail) = rest.split_at(digits);
        let unit = tail
            .chars()
            .next()
            .ok_or_else(|| err("the last number has no unit"))?;
        let index = UNITS
            .iter()
            .position(|(u, _)| *u == unit)
            .ok_or_else(|| err("units are s, m, h, d and w"))?;
        if last_unit.is_some_and(|last| index <= last) {
            return Err(err("each unit may appear once, largest first"));
        }
        last_unit = Some(index);
        let value: u64 = number.parse().map_err(|_| err("the number is too large"))?;
        let seconds = value
            .checked_mul(UNITS[index].1)
            .ok_or_else(|| err("it is too large"))?;
        total = total
            .checked_add(seconds)
            .ok_or_else(|| err("it is too large"))?;
        rest = &tail[unit.len_utf8()..];
    }
    if total == 0 {
        return Err(err("it must be greater than zero"));
    }
    if total > MAX_DURATION_SECONDS {
        return Err(err("it is longer than 100 years"));
    }
    Ok(Duration::from_secs(total))
}

/// A duration printed in the same form [`parse_duration`] reads, e.g.
/// `1d12h` or `30d` (weeks only for whole weeks: `2w`); whole seconds only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut left = self.0.as_secs();
        if left == 0 {
            return f.write_str("0s");
        }
        // Weeks only for whole weeks: people write 30d, not 4w2d.
        let units = if left.is_multiple_of(UNITS[0].1) {
            &UNITS[..]
        } else {
            &UNITS[1..]
        };
        for &(unit, size) in units {
            if left >= size {
                write!(f, "{}{unit}", left / size)?;
                left %= size;
            }
        }
        Ok(())
    }
}

/// An age as a report shows it: the largest whole unit of days, hours,
/// minutes or seconds, e.g. `45d`, `3h`, `12m`, `40s`. Weeks are not used:
/// people compare ages in days.
pub fn short_age(age: Duration) -> String {
    let secs = age.as_secs();
    for (unit, size) in UNITS.iter().skip(1) {
        if secs >= *size {
            return format!("{}{unit}", secs / size);
        }
    }
    "0s".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: &str) -> u64 {
        match parse_duration(s) {
            Ok(d) => d.as_secs(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn single_units() {
        assert_eq!(secs("90s"), 90);
        assert_eq!(secs("15m"), 900);
        assert_eq!(secs("36h"), 129_600);
        assert_eq!(secs("7d"), 604_800);
        assert_eq!(secs("2w"), 1_209_600);
    }

    #[test]
    fn combinations_largest_first() {
        assert_eq!(secs("1d12h"), 129_600);
        assert_eq!(
            secs("1w2d3h4m5s"),
            604_800 + 2 * 86_400 + 3 * 3_600 + 4 * 60 + 5
        );
        assert_eq!(secs(" 5m "), 300);
    }

    #[test]
    fn errors_name_the_input_and_the_form() {
        for bad in [
            "",
            "7",
            "d",
            "7x",
            "1h1d",
            "1h1h",
            "-5m",
            "0s",
            "1.5h",
            "7 d",
            "99999999999999999999w",
            "5218w",
            "36526d",
            "3155760001s",
        ] {
            let e = parse_duration(bad).err();
            assert!(e.is_some(), "{bad:?} should not parse");
            let msg = e.map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(msg.contains("e.g. 90s"), "{msg}");
        }
    }

    #[test]
    fn the_maximum_is_accepted_and_one_second_more_is_not() {
        assert_eq!(secs("36525d"), MAX_DURATION_SECONDS);
        assert_eq!(secs("5217w6d"), 5217 * 604_800 + 6 * 86_400);
        let e = parse_duration("36525d1s").err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|m| m.contains("longer than 100 years")),
            "{e:?}"
        );
    }

    #[test]
    fn human_duration_prints_compactly() {
        assert_eq!(
            HumanDuration(Duration::from_secs(129_600)).to_string(),
            "1d12h"
        );
        assert_eq!(HumanDuration(Duration::from_secs(0)).to_string(), "0s");
        assert_eq!(
            HumanDuration(Duration::from_secs(30 * 86_400)).to_string(),
            "30d"
        );
        assert_eq!(
            HumanDuration(Duration::from_secs(1_209_600)).to_string(),
            "2w"
        );
    }

    #[test]
    fn short_ages_use_the_largest_unit() {
        assert_eq!(short_age(Duration::from_secs(45 * 86_400 + 3_600)), "45d");
        assert_eq!(short_age(Duration::from_secs(3 * 3_600 + 59)), "3h");
        assert_eq!(short_age(Duration::from_secs(754)), "12m");
        assert_eq!(short_age(Duration::from_secs(40)), "40s");
        assert_eq!(short_age(Duration::ZERO), "0s");
    }

    proptest! {
        #[test]
        fn printed_durations_parse_back(seconds in 1u64..=MAX_DURATION_SECONDS) {
            let d = Duration::from_secs(seconds);
            prop_assert_eq!(parse_duration(&HumanDuration(d).to_string()), Ok(d));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = parse_duration(&s);
        }
    }
}
