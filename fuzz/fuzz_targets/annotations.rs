//! A workload's annotations (`key=value` per line): every `freshen.dev/*`
//! value is parsed or reported, one error per bad key, never a panic.
#![no_main]

use std::collections::BTreeMap;

use freshen_api::annotations::WorkloadSettings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let annotations: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let (_, errors) = WorkloadSettings::from_annotations(Some(&annotations));
    assert!(errors.len() <= annotations.len() + 1, "{errors:?}");
});
