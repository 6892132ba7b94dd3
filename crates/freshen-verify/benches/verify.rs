//! Verification time per digest (`cargo bench -p freshen-verify`): the
//! bundles the real cosign CLI wrote (tests/fixtures) verified over and
//! over, as the gate does once per new digest. Prints (to stderr) microseconds per
//! verification; asserts nothing about speed.

use std::time::Instant;

use freshen_verify::{Authority, PublicKey, Verdict, open_bundle, verify_bundle};

const SIGNED: &str = "sha256:ba439b43488518651e0f8095342f6c7fc1a892568c7056e44e823fd96942d82a";
const SCRATCH: &str = "sha256:599390cf9ec803e8f603ec007806cd44ff0c2a3e940b3ebc16168843dc50b19e";
const IMAGE_SIGNATURE: &str = "https://sigstore.dev/cosign/sign/v1";
const ROUNDS: u32 = 2_000;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn authority(name: &str, pub_fixture: &str) -> Authority {
    let pem = String::from_utf8(fixture(pub_fixture)).unwrap_or_default();
    match PublicKey::from_pem(&pem) {
        Ok(key) => Authority {
            name: name.into(),
            key,
        },
        Err(e) => panic!("{pub_fixture}: {e}"),
    }
}

fn time(what: &str, mut verify: impl FnMut() -> bool) {
    assert!(verify(), "{what} does not verify");
    let started = Instant::now();
    for _ in 0..ROUNDS {
        std::hint::black_box(verify());
    }
    let each = started.elapsed() / ROUNDS;
    eprintln!(
        "{what}: {:.1} µs per verification",
        each.as_secs_f64() * 1e6
    );
}

fn main() {
    let ecdsa = [authority("platform", "cosign-v3.1.3.pub")];
    let rsa = [authority("rsa", "cosign-v3.1.3-rsa.pub")];
    let attest = [authority("ci", "cosign-v3.1.3-attest.pub")];
    let bundle = fixture("cosign-v3.1.3-bundle.json");
    let rsa_bundle = fixture("cosign-v3.1.3-rsa-bundle.json");
    let provenance = fixture("cosign-v3.1.3-provenance-bundle.json");
    time("cosign v3 bundle, ECDSA P-256 key", || {
        matches!(
            verify_bundle(&bundle, SIGNED, Some(IMAGE_SIGNATURE), &ecdsa),
            Verdict::Verified { .. }
        )
    });
    time("cosign v3 bundle, RSA 2048 key", || {
        matches!(
            verify_bundle(&rsa_bundle, SCRATCH, Some(IMAGE_SIGNATURE), &rsa),
            Verdict::Verified { .. }
        )
    });
    time("SLSA provenance attestation, opened and read", || {
        open_bundle(&provenance, SCRATCH, &attest)
            .outcome
            .ok()
            .and_then(|a| {
                freshen_verify::predicate::provenance(&a.predicate_type, &a.predicate).ok()
            })
            .is_some()
    });
}
