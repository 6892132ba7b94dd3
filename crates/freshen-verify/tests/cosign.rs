//! What the real cosign CLI wrote (fixtures/README.md says how) verifies
//! with its public key, and with no other; a changed byte is caught.

use freshen_verify::{Authority, PublicKey, Verdict, verify_bundle, verify_simple_signing};

const SIGNED: &str = "sha256:ba439b43488518651e0f8095342f6c7fc1a892568c7056e44e823fd96942d82a";
const LEGACY: &str = "sha256:267be4ba3a8f7b4a92b297939bbf1d38a88929ea2034be21b4d3583378e3e390";
const IMAGE_SIGNATURE: &str = "https://sigstore.dev/cosign/sign/v1";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn platform() -> Vec<Authority> {
    let pem = String::from_utf8(fixture("cosign-v3.1.3.pub")).unwrap_or_default();
    match PublicKey::from_pem(&pem) {
        Ok(key) => {
            assert_eq!(key.algorithm(), "ecdsa-p256");
            vec![Authority {
                name: "platform".into(),
                key,
            }]
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_cosign_v3_bundle_verifies_with_its_key() {
    let bundle = fixture("cosign-v3.1.3-bundle.json");
    let trusted = platform();
    assert_eq!(
        verify_bundle(&bundle, SIGNED, Some(IMAGE_SIGNATURE), &trusted),
        Verdict::Verified {
            authority: "platform".into()
        }
    );
    // cosign's hint is the base64 SHA-256 of the key's DER.
    let text = String::from_utf8_lossy(&bundle).into_owned();
    assert!(text.contains(&trusted[0].key.hint()));
    // For another digest it proves nothing.
    assert!(matches!(
        verify_bundle(&bundle, LEGACY, Some(IMAGE_SIGNATURE), &trusted),
        Verdict::Invalid(_)
    ));
    // One signature character changed: the hint still names the key.
    let tampered = text.replacen("MEYCIQDK", "MEYCIQDL", 1);
    assert_ne!(tampered, text);
    assert!(matches!(
        verify_bundle(tampered.as_bytes(), SIGNED, Some(IMAGE_SIGNATURE), &trusted),
        Verdict::Invalid(why) if why.contains("platform")
    ));
}

#[test]
fn a_cosign_legacy_signature_verifies_with_its_key() {
    let payload = fixture("cosign-v3.1.3-legacy-payload.json");
    let signature =
        String::from_utf8(fixture("cosign-v3.1.3-legacy-signature.txt")).unwrap_or_default();
    let trusted = platform();
    assert_eq!(
        verify_simple_signing(&payload, &signature, LEGACY, &trusted),
        Verdict::Verified {
            authority: "platform".into()
        }
    );
    let mut changed = payload.clone();
    if let Some(b) = changed.iter_mut().find(|b| **b == b'2') {
        *b = b'3';
    }
    assert!(matches!(
        verify_simple_signing(&changed, &signature, LEGACY, &trusted),
        Verdict::Untrusted { .. }
    ));
}

const SCRATCH: &str = "sha256:599390cf9ec803e8f603ec007806cd44ff0c2a3e940b3ebc16168843dc50b19e";

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

#[test]
fn a_cosign_rsa_signature_verifies_with_its_key() {
    let rsa = authority("rsa", "cosign-v3.1.3-rsa.pub");
    assert_eq!(rsa.key.algorithm(), "rsa");
    let bundle = fixture("cosign-v3.1.3-rsa-bundle.json");
    assert_eq!(
        verify_bundle(&bundle, SCRATCH, Some(IMAGE_SIGNATURE), &[rsa]),
        Verdict::Verified {
            authority: "rsa".into()
        }
    );
    assert!(matches!(
        verify_bundle(&bundle, SCRATCH, Some(IMAGE_SIGNATURE), &platform()),
        Verdict::Untrusted { .. }
    ));
}

#[test]
fn a_cosign_provenance_attestation_opens_to_its_builder_and_source() {
    let ci = authority("ci", "cosign-v3.1.3-attest.pub");
    let bundle = fixture("cosign-v3.1.3-provenance-bundle.json");
    let opened = freshen_verify::open_bundle(&bundle, SCRATCH, &[ci]);
    assert_eq!(
        opened.claimed_type.as_deref(),
        Some("https://slsa.dev/provenance/v1")
    );
    let attested = opened.outcome.unwrap_or_else(|v| panic!("{v:?}"));
    assert_eq!(attested.authority, "ci");
    let provenance =
        freshen_verify::predicate::provenance(&attested.predicate_type, &attested.predicate);
    assert_eq!(
        provenance,
        Ok(freshen_core::verify::Provenance {
            builder_id: Some("https://github.com/acme/builder@v1".into()),
            sources: vec!["https://github.com/acme/shop".into()],
        })
    );
    // As a signature of the image it is not one.
    assert!(matches!(
        verify_bundle(&bundle, SCRATCH, Some(IMAGE_SIGNATURE), &[authority("ci", "cosign-v3.1.3-attest.pub")]),
        Verdict::Invalid(why) if why.contains("provenance")
    ));
}

#[test]
fn a_cosign_legacy_attestation_envelope_opens_the_same_way() {
    let ci = authority("ci", "cosign-v3.1.3-attest.pub");
    let envelope = fixture("cosign-v3.1.3-legacy-provenance-envelope.json");
    let opened = freshen_verify::open_envelope_json(&envelope, SCRATCH, &[ci]);
    let attested = opened.outcome.unwrap_or_else(|v| panic!("{v:?}"));
    assert_eq!(attested.predicate_type, "https://slsa.dev/provenance/v1");
    assert!(matches!(
        freshen_verify::open_envelope_json(&envelope, SCRATCH, &platform()).outcome,
        Err(Verdict::Untrusted { .. })
    ));
    assert!(matches!(
        freshen_verify::open_envelope_json(b"{", SCRATCH, &platform()).outcome,
        Err(Verdict::Invalid(why)) if why.starts_with("not a DSSE envelope")
    ));
}
