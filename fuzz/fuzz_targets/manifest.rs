//! Registry answers: manifest and index bodies, and image configs (with a
//! manifest's annotations). Read or refused as a format error, never a
//! panic, whatever the registry sends.
#![no_main]

use std::collections::BTreeMap;

use freshen_core::Digest;
use freshen_registry::facts::{Manifest, image_facts};
use libfuzzer_sys::fuzz_target;

const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fuzz_target!(|data: &[u8]| {
    let _ = Manifest::parse(data);
    let Ok(digest) = DIGEST.parse::<Digest>() else {
        return;
    };
    let annotations = BTreeMap::from([(
        "org.opencontainers.image.base.digest".to_owned(),
        String::from_utf8_lossy(&data[..data.len().min(80)]).into_owned(),
    )]);
    let _ = image_facts(digest, None, &annotations, data);
});
