//! Maintenance windows (`freshen.dev/window: Mon-Fri 02:00-04:00 UTC`):
//! parsed or refused; a parsed window answers whether it is open and when
//! it next opens at any instant chrono can represent.
#![no_main]

use chrono::{DateTime, Utc};
use freshen_core::window::Window;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (seconds, text) = data.split_at(8);
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(window) = text.parse::<Window>() else {
        return;
    };
    let seconds = i64::from_le_bytes(seconds.try_into().unwrap_or_default());
    let now = DateTime::<Utc>::from_timestamp(seconds % 253_402_300_799, 0).unwrap_or_default();
    let open = window.contains(now);
    if let Some(next) = window.next_open(now) {
        assert!(
            next >= now || open,
            "{text:?}: next open {next} before {now}"
        );
    }
});
