//! Maintenance windows: when freshen may change a workload.
//!
//! A window reads `<days> <HH:MM>-<HH:MM> [<IANA time zone>]`, e.g.
//! `Mon-Fri 09:00-16:00 Europe/Berlin`, `Sat,Sun 00:00-24:00` or
//! `* 22:00-04:00 UTC`. Days are `Mon`..`Sun`, ranges (`Mon-Fri`, wrapping
//! `Fri-Mon`), lists of either, or `*`. A window whose end is not after its
//! start runs past midnight and belongs to the day it starts on. The zone
//! defaults to UTC; local times follow the zone's daylight-saving rules.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// The form a window must have, for error messages.
pub const WINDOW_FORM: &str = "`<days> <HH:MM>-<HH:MM> [time zone]`, e.g. `Mon-Fri 09:00-16:00 \
                               Europe/Berlin` (days: Mon..Sun, ranges, lists, or *)";

/// A window that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a window: {1}; expected {WINDOW_FORM}")]
pub struct WindowError(pub String, pub &'static str);

/// A recurring weekly maintenance window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The days a window starts on, Monday first.
    days: [bool; 7],
    /// Minutes after local midnight the window opens.
    start: u32,
    /// Minutes after local midnight the window closes (up to 1440); not
    /// after `start` means the next day.
    end: u32,
    zone: Tz,
    text: String,
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn weekday(s: &str) -> Option<usize> {
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let s = s.to_ascii_lowercase();
    FULL.iter().position(|full| s == *full || s == full[..3])
}

fn minutes(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) => Some(1440),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

impl FromStr for Window {
    type Err = WindowError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why| WindowError(text.to_owned(), why);
        let mut parts = text.split_whitespace();
        let days_text = parts.next().ok_or_else(|| err("it is empty"))?;
        let times = parts.next().ok_or_else(|| err("the times are missing"))?;
        let zone = match parts.next() {
            Some(z) => z.parse::<Tz>().map_err(|_| err("unknown time zone"))?,
            None => Tz::UTC,
        };
        if parts.next().is_some() {
            return Err(err("too many parts"));
        }
        let mut days = [false; 7];
        if days_text == "*" {
            days = [true; 7];
        } else {
            for item in days_text.split(',') {
                let (from, to) = item.split_once('-').unwrap_or((item, item));
                let from = weekday(from).ok_or_else(|| err("unknown day"))?;
                let to = weekday(to).ok_or_else(|| err("unknown day"))?;
                let mut d = from;
                loop {
                    days[d] = true;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
        }
        let (start, end) = times
            .split_once('-')
            .ok_or_else(|| err("times must read HH:MM-HH:MM"))?;
        let start = minutes(start).ok_or_else(|| err("the start time must read HH:MM"))?;
        let end =
            minutes(end).ok_or_else(|| err("the end time must read HH:MM (24:00 allowed)"))?;
        if start == 1440 {
            return Err(err("a window cannot start at 24:00"));
        }
        Ok(Self {
            days,
            start,
            end,
            zone,
            text: text.trim().to_owned(),
        })
    }
}

impl Window {
    /// Whether `now` falls inside the window.
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        if !representable(now) {
            return false;
        }
        let local = now.with_timezone(&self.zone);
        let minute = local.hour() * 60 + local.minute();
        let today = local.weekday().num_days_from_monday() as usize;
        let yesterday = (today + 6) % 7;
        if self.end > self.start {
            self.days[today] && (self.start..self.end).contains(&minute)
        } else {
            // Past midnight: the evening part today, the morning part belongs
            // to yesterday's window.
            (self.days[today] && minute >= self.start)
                || (self.days[yesterday] && minute < self.end)
        }
    }

    /// The next time at or after `now` the window is open, within a week
    /// and a day; `None` when it never opens (no days).
    pub fn next_open(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.contains(now) {
            return Some(now);
        }
        if !representable(now) {
            return None;
        }
        let local = now.with_timezone(&self.zone).date_naive();
        (0..=8).find_map(|offset| {
            let day = local.checked_add_signed(Duration::days(offset))?;
            if !self.days[day.weekday().num_days_from_monday() as usize] {
                return None;
            }
            let time = NaiveTime::from_hms_opt(self.start / 60, self.start % 60, 0)?;
            // A start that falls in a daylight-saving gap opens at the first
            // valid instant after it.
            let opens = (0..=120).find_map(|m| {
                let local = day
                    .and_time(time)
                    .checked_add_signed(Duration::minutes(m))?;
                self.zone.from_local_datetime(&local).earliest()
            })?;
            let opens = opens.with_timezone(&Utc);
            (opens > now).then_some(opens)
        })
    }
}

/// Whether `now` and the next nine days are local times in every zone:
/// chrono panics on a local time past its range.
fn representable(now: DateTime<Utc>) -> bool {
    now.checked_sub_signed(Duration::days(2)).is_some()
        && now.checked_add_signed(Duration::days(10)).is_some()
}

/// Whether any of `windows` is open at `now`; no windows means always.
pub fn open(windows: &[Window], now: DateTime<Utc>) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.contains(now))
}

/// When the earliest of `windows` opens next (`now` when one is open).
pub fn next_open(windows: &[Window], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if open(windows, now) {
        return Some(now);
    }
    windows.iter().filter_map(|w| w.next_open(now)).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn window(s: &str) -> Window {
        match s.parse() {
            Ok(w) => w,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn office_hours_in_berlin_follow_daylight_saving() {
        let w = window("Mon-Fri 09:00-16:00 Europe/Berlin");
        // 2026-11-23 is a Monday; Berlin is UTC+1 in winter.
        assert!(!w.contains(at("2026-11-23T07:59:00Z")));
        assert!(w.contains(at("2026-11-23T08:00:00Z")));
        assert!(w.contains(at("2026-11-23T14:59:00Z")));
        assert!(!w.contains(at("2026-11-23T15:00:00Z")));
        // Summer: UTC+2.
        assert!(w.contains(at("2026-07-06T07:00:00Z")));
        assert!(!w.contains(at("2026-07-06T14:00:00Z")));
        // Saturday 2026-11-28.
        assert!(!w.contains(at("2026-11-28T10:00:00Z")));
        assert_eq!(
            w.next_open(at("2026-11-28T10:00:00Z")),
            Some(at("2026-11-30T08:00:00Z"))
        );
    }

    #[test]
    fn windows_past_midnight_belong_to_their_start_day() {
        let w = window("Fri 22:00-04:00");
        // Friday 2026-11-27 23:00 and Saturday 03:00 are in; Saturday 23:00 is not.
        assert!(w.contains(at("2026-11-27T23:00:00Z")));
        assert!(w.contains(at("2026-11-28T03:59:00Z")));
        assert!(!w.contains(at("2026-11-28T04:00:00Z")));
        assert!(!w.contains(at("2026-11-28T23:00:00Z")));
        assert!(!w.contains(at("2026-11-27T03:00:00Z")));
    }

    #[test]
    fn day_lists_ranges_and_wildcards() {
        let weekend = window("Sat,Sun 00:00-24:00");
        assert!(weekend.contains(at("2026-11-29T23:59:00Z")));
        assert!(!weekend.contains(at("2026-11-30T00:00:00Z")));
        let wrap = window("Fri-Mon 10:00-11:00");
        assert!(wrap.contains(at("2026-11-29T10:30:00Z")));
        assert!(!wrap.contains(at("2026-11-25T10:30:00Z")));
        let always = window("* 00:00-24:00 UTC");
        assert!(always.contains(at("2026-11-25T10:30:00Z")));
        assert!(open(&[], at("2026-11-25T10:30:00Z")));
        assert!(!open(
            std::slice::from_ref(&wrap),
            at("2026-11-25T10:30:00Z")
        ));
        assert_eq!(
            next_open(&[wrap, weekend], at("2026-11-25T10:30:00Z")),
            Some(at("2026-11-27T10:00:00Z"))
        );
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        for (text, why) in [
            ("", "it is empty"),
            ("Mon-Fri", "the times are missing"),
            ("Mon-Fry 09:00-16:00", "unknown day"),
            ("Mon 0900", "times must read HH:MM-HH:MM"),
            ("Mon 9-16", "the start time must read HH:MM"),
            ("Mon 25:00-26:00", "the start time must read HH:MM"),
            (
                "Mon 09:00-16:60",
                "the end time must read HH:MM (24:00 allowed)",
            ),
            ("Mon 09:00-16:00 Mars/Olympus", "unknown time zone"),
            ("Mon 09:00-16:00 UTC extra", "too many parts"),
        ] {
            let e = text.parse::<Window>().err();
            assert_eq!(e.as_ref().map(|e| e.1), Some(why), "{text}");
            assert!(e.is_some_and(|e| e.to_string().contains("expected `<days>")));
        }
    }
}
