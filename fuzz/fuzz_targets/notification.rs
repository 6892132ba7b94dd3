//! Bodies posted to `/notify`: a registry's notification envelope or a
//! generic push webhook. Parsed into pushes or refused, never a panic.
#![no_main]

use freshen_controller::notify::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse(data);
});
