//! RefreshPolicy specs as a tenant writes them (JSON), their label
//! selectors, limits, rollout settings and PromQL checks: validated or
//! refused with a reason naming the field, never a panic.
//!
//! `matches` judges the selector alone (freshen matches only policies that
//! are candidates); an invalid selector matches nothing. A first version
//! of this target asserted that any invalid policy matches nothing, which
//! is not the contract: its one "crash" (an invalid analysis interval under
//! an empty selector) is kept as a seed.
#![no_main]

use std::collections::BTreeMap;

use freshen_api::{RefreshPolicy, RefreshPolicySpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<RefreshPolicySpec>(data) else {
        return;
    };
    let mut policy = RefreshPolicy::new("fuzz", spec);
    policy.metadata.namespace = Some("shop".into());
    let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    let matched = policy.matches("shop", &labels);
    if let Err(e) = policy.candidate() {
        let why = e.to_string();
        assert!(!why.is_empty());
        if why.starts_with("spec.selector") {
            assert!(!matched, "a policy with an invalid selector matched: {why}");
        }
    }
    let _ = policy.spec.limits.parse();
});
