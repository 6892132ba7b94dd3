//! Prometheus: the answers freshen reads for canary checks, and the
//! queries a tenant's policy may run (confined to its namespace).
#![no_main]

use freshen_api::promql::confined_to;
use freshen_controller::promql::read_answer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_answer(data);
    if let Ok(query) = std::str::from_utf8(data) {
        let _ = confined_to(query, "shop");
    }
});
