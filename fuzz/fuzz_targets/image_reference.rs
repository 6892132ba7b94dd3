//! Image references and digests, as tenants write them in pod specs and
//! annotations: any text parses or is refused, and what parses prints back
//! to a reference that parses to the same thing.
#![no_main]

use freshen_core::{Digest, ImageReference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = text.parse::<Digest>();
    if let Ok(reference) = ImageReference::parse(text) {
        let printed = reference.to_string();
        let again = ImageReference::parse(&printed);
        assert_eq!(
            again.as_ref().ok(),
            Some(&reference),
            "{text:?} -> {printed:?}"
        );
    }
});
