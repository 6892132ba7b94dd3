use super::*;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::EncodePublicKey as _;

const DIGEST: &str = "sha256:4bd1b6a3ee0a5c3a1b8b4b7e8f0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4";

fn signing_key(seed: u8) -> p256::ecdsa::SigningKey {
    let mut bytes = [0_u8; 32];
    bytes[31] = seed;
    bytes[0] = 1;
    match p256::ecdsa::SigningKey::from_slice(&bytes) {
        Ok(k) => k,
        Err(e) => panic!("{e}"),
    }
}

fn authority(name: &str, seed: u8) -> Authority {
    let der = match signing_key(seed).verifying_key().to_public_key_der() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    match PublicKey::from_der(der.as_bytes()) {
        Ok(key) => Authority {
            name: name.into(),
            key,
        },
        Err(e) => panic!("{e}"),
    }
}

fn statement(digest: &str) -> Vec<u8> {
    let hex = digest.trim_start_matches("sha256:");
    serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "registry.test/app", "digest": {"sha256": hex}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {}
    }))
    .unwrap_or_default()
}

/// A bundle as cosign v3 writes it, signed by key `seed`, with `hint` as
/// its key hint.
fn bundle(payload: &[u8], seed: u8, hint: Option<String>) -> Vec<u8> {
    let signature: p256::ecdsa::Signature = signing_key(seed).sign(&pae(IN_TOTO, payload));
    serde_json::to_vec(&serde_json::json!({
        "mediaType": BUNDLE_V03,
        "verificationMaterial": {"publicKey": {"hint": hint}},
        "dsseEnvelope": {
            "payload": STANDARD.encode(payload),
            "payloadType": IN_TOTO,
            "signatures": [{"sig": STANDARD.encode(signature.to_der().as_bytes())}]
        }
    }))
    .unwrap_or_default()
}

#[test]
fn a_bundle_signed_by_a_trusted_key_verifies_and_names_it() {
    let trusted = [authority("ci", 7), authority("platform", 1)];
    let b = bundle(&statement(DIGEST), 1, None);
    assert_eq!(
        verify_bundle(&b, DIGEST, None, &trusted),
        Verdict::Verified {
            authority: "platform".into()
        }
    );
    // The statement must name the digest asked about.
    let other = DIGEST.replace("4bd1", "0000");
    assert!(matches!(
        verify_bundle(&b, &other, None, &trusted),
        Verdict::Invalid(why) if why.contains("signs other digests")
    ));
    // And the predicate type asked for.
    assert!(matches!(
        verify_bundle(&b, DIGEST, Some("https://slsa.dev/provenance/v1"), &trusted),
        Verdict::Invalid(why) if why.contains("predicate type")
    ));
}

#[test]
fn another_key_is_untrusted_and_a_tampered_signature_invalid() {
    let trusted = [authority("platform", 1)];
    let by_other = bundle(&statement(DIGEST), 9, None);
    assert_eq!(
        verify_bundle(&by_other, DIGEST, None, &trusted),
        Verdict::Untrusted {
            tried: vec!["platform".into()]
        }
    );
    // Signed by the trusted key, then the payload altered: the hint names
    // the trusted key, which no longer verifies.
    let hint = Some(trusted[0].key.hint());
    let mut value: serde_json::Value =
        serde_json::from_slice(&bundle(&statement(DIGEST), 1, hint)).unwrap_or_default();
    let forged = statement(&DIGEST.replace("4bd1", "ffff"));
    value["dsseEnvelope"]["payload"] = STANDARD.encode(forged).into();
    let tampered = serde_json::to_vec(&value).unwrap_or_default();
    assert!(matches!(
        verify_bundle(&tampered, DIGEST, None, &trusted),
        Verdict::Invalid(why) if why.contains("authority platform's key")
    ));
}

#[test]
fn hostile_bundles_get_a_clear_verdict() {
    let trusted = [authority("platform", 1)];
    let huge = vec![b' '; MAX_BUNDLE + 1];
    // A chain of 10,000 certificates (each a few hundred bytes of DER) is
    // refused by its size before anything parses it.
    let cert = STANDARD.encode([0x30_u8; 400]);
    let chain: Vec<_> = (0..10_000)
        .map(|_| serde_json::json!({"rawBytes": cert}))
        .collect();
    let long_chain = serde_json::to_vec(&serde_json::json!({
        "mediaType": BUNDLE_V03,
        "verificationMaterial": {"x509CertificateChain": {"certificates": chain}},
        "dsseEnvelope": {"payload": "", "payloadType": IN_TOTO, "signatures": [{"sig": ""}]}
    }))
    .unwrap_or_default();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (huge, "at most"),
        (long_chain, "at most"),
        (b"{".to_vec(), "not a sigstore bundle"),
        (
            br#"{"mediaType":"text/plain","dsseEnvelope":null}"#.to_vec(),
            "media type",
        ),
        (
            br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}"#.to_vec(),
            "no DSSE",
        ),
        (
            serde_json::to_vec(&serde_json::json!({"dsseEnvelope": {
                "payload": "%%%", "payloadType": IN_TOTO, "signatures": [{"sig": "AA=="}]}}))
            .unwrap_or_default(),
            "not base64",
        ),
        (
            serde_json::to_vec(&serde_json::json!({"dsseEnvelope": {
                "payload": "", "payloadType": IN_TOTO, "signatures": []}}))
            .unwrap_or_default(),
            "signatures",
        ),
        (
            serde_json::to_vec(&serde_json::json!({"dsseEnvelope": {
                "payload": "", "payloadType": "text/plain", "signatures": [{"sig": ""}]}}))
            .unwrap_or_default(),
            "payload type",
        ),
    ];
    for (bytes, want) in cases {
        match verify_bundle(&bytes, DIGEST, None, &trusted) {
            Verdict::Invalid(why) => assert!(why.contains(want), "{want}: {why}"),
            other => panic!("{want}: {other:?}"),
        }
    }
    // A signed payload that is no statement.
    assert!(matches!(
        verify_bundle(&bundle(b"[1, 2", 1, None), DIGEST, None, &trusted),
        Verdict::Invalid(why) if why.contains("not an in-toto statement")
    ));
    // A signed statement with too many subjects.
    let many: Vec<_> = (0..MAX_SUBJECTS + 1)
        .map(|_| serde_json::json!({"digest": {"sha256": "00"}}))
        .collect();
    let payload = serde_json::to_vec(&serde_json::json!({"subject": many})).unwrap_or_default();
    assert!(matches!(
        verify_bundle(&bundle(&payload, 1, None), DIGEST, None, &trusted),
        Verdict::Invalid(why) if why.contains("subjects")
    ));
}

#[test]
fn legacy_simple_signing_is_checked_the_same_way() {
    let trusted = [authority("platform", 1)];
    let payload = serde_json::to_vec(&serde_json::json!({
        "critical": {"identity": {"docker-reference": "registry.test/app"},
                     "image": {"docker-manifest-digest": DIGEST},
                     "type": "cosign container image signature"},
        "optional": null
    }))
    .unwrap_or_default();
    let sig: p256::ecdsa::Signature = signing_key(1).sign(&payload);
    let sig = STANDARD.encode(sig.to_der().as_bytes());
    assert_eq!(
        verify_simple_signing(&payload, &sig, DIGEST, &trusted),
        Verdict::Verified {
            authority: "platform".into()
        }
    );
    let other = DIGEST.replace("4bd1", "0000");
    assert!(matches!(
        verify_simple_signing(&payload, &sig, &other, &trusted),
        Verdict::Invalid(_)
    ));
    let by_other: p256::ecdsa::Signature = signing_key(2).sign(&payload);
    assert!(matches!(
        verify_simple_signing(
            &payload,
            &STANDARD.encode(by_other.to_der().as_bytes()),
            DIGEST,
            &trusted
        ),
        Verdict::Untrusted { .. }
    ));
}

#[test]
fn one_verified_signature_wins_and_invalid_beats_untrusted() {
    let verified = Verdict::Verified {
        authority: "a".into(),
    };
    let untrusted = Verdict::Untrusted { tried: vec![] };
    let invalid = Verdict::Invalid("x".into());
    assert_eq!(Verdict::combine([]), Verdict::Missing);
    assert_eq!(
        Verdict::combine([invalid.clone(), verified.clone(), untrusted.clone()]),
        verified
    );
    assert_eq!(
        Verdict::combine([untrusted.clone(), invalid.clone()]),
        invalid
    );
    assert_eq!(
        Verdict::combine([Verdict::Missing, untrusted.clone()]),
        untrusted
    );
}
