//! Durations (`freshen.dev/max-image-age: 30d`, analysis intervals):
//! parsed or refused, never a panic or an overflow, and never zero.
#![no_main]

use freshen_core::duration::parse_duration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(d) = parse_duration(text)
    {
        assert!(!d.is_zero(), "{text:?} parsed to zero");
    }
});
