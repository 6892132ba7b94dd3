//! Keyless signatures against a trusted root: bundles made by
//! `e2e/harness/keyless.py` (a CA standing in for Fulcio, a log key for
//! Rekor; fixtures/keyless, and fixtures/keyless/no-tlog without a log
//! entry and with another CA).

use std::sync::Arc;

use freshen_verify::keyless::{Keyless, Subject, TrustedRoot};
use freshen_verify::{Verdict, open_bundle_keyless};

const DIGEST: &str = "sha256:599390cf9ec803e8f603ec007806cd44ff0c2a3e940b3ebc16168843dc50b19e";
const WORKFLOW: &str = "https://github.com/acme/shop/.github/workflows/release.yml@refs/heads/main";
const GITHUB: &str = "https://token.actions.githubusercontent.com";
/// 2030: long after the leaf certificate (one day) expired.
const LATER: i64 = 1_900_000_000;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/keyless/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn root(name: &str) -> Arc<TrustedRoot> {
    Arc::new(TrustedRoot::from_json(&fixture(name)).unwrap_or_else(|e| panic!("{e}")))
}

fn authority(root: Arc<TrustedRoot>, issuer: &str, subject: Subject, tlog: bool) -> Keyless {
    Keyless {
        name: "ci".into(),
        root,
        issuer: issuer.into(),
        subject,
        require_transparency_log: tlog,
    }
}

fn verdict(bundle: &[u8], keyless: Keyless, now: i64) -> Verdict {
    match open_bundle_keyless(bundle, DIGEST, &[], &[keyless], now).outcome {
        Ok(a) => Verdict::Verified {
            authority: a.authority,
        },
        Err(v) => v,
    }
}

fn untrusted_because(v: &Verdict, why: &str) -> bool {
    matches!(v, Verdict::Untrusted { tried } if tried.iter().any(|t| t.contains(why)))
}

#[test]
fn a_certificate_for_the_identity_with_a_logged_time_verifies() {
    let bundle = fixture("bundle.json");
    let exact = authority(
        root("trusted_root.json"),
        GITHUB,
        Subject::Exact(WORKFLOW.into()),
        true,
    );
    // Long after the certificate expired: the log's time is what counts.
    assert_eq!(
        verdict(&bundle, exact, LATER),
        Verdict::Verified {
            authority: "ci".into()
        }
    );
    let pattern = Subject::pattern(r"https://github\.com/acme/[^/]+/\.github/workflows/.*")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        verdict(
            &bundle,
            authority(root("trusted_root.json"), GITHUB, pattern, true),
            LATER
        ),
        Verdict::Verified { .. }
    ));
}

#[test]
fn another_identity_issuer_or_authority_is_untrusted() {
    let bundle = fixture("bundle.json");
    let other = authority(
        root("trusted_root.json"),
        GITHUB,
        Subject::Exact(
            "https://github.com/evil/shop/.github/workflows/x.yml@refs/heads/main".into(),
        ),
        true,
    );
    let v = verdict(&bundle, other, LATER);
    assert!(untrusted_because(&v, "identity"), "{v:?}");
    // A pattern is anchored: a prefix is not a match.
    let prefix = Subject::pattern("https://github.com/acme").unwrap_or_else(|e| panic!("{e}"));
    let v = verdict(
        &bundle,
        authority(root("trusted_root.json"), GITHUB, prefix, true),
        LATER,
    );
    assert!(untrusted_because(&v, "identity"), "{v:?}");
    let v = verdict(
        &bundle,
        authority(
            root("trusted_root.json"),
            "https://accounts.google.com",
            Subject::Exact(WORKFLOW.into()),
            true,
        ),
        LATER,
    );
    assert!(untrusted_because(&v, "issuer"), "{v:?}");
    // The other fixture's root trusts another CA.
    let v = verdict(
        &bundle,
        authority(
            root("no-tlog/trusted_root.json"),
            GITHUB,
            Subject::Exact(WORKFLOW.into()),
            false,
        ),
        LATER,
    );
    assert!(untrusted_because(&v, "issued by no authority"), "{v:?}");
}

#[test]
fn without_a_log_entry_the_certificate_must_be_valid_now_unless_the_log_is_required() {
    let bundle = fixture("no-tlog/bundle.json");
    let meta: serde_json::Value =
        serde_json::from_slice(&fixture("no-tlog/meta.json")).unwrap_or_default();
    let made = meta["integratedTime"].as_i64().unwrap_or_default();
    let ci = |tlog| {
        authority(
            root("no-tlog/trusted_root.json"),
            "https://accounts.example",
            Subject::Exact("ci@acme.example".into()),
            tlog,
        )
    };
    assert!(matches!(
        verdict(&bundle, ci(false), made + 60),
        Verdict::Verified { .. }
    ));
    let v = verdict(&bundle, ci(false), made + 3 * 86_400);
    assert!(untrusted_because(&v, "not valid when it signed"), "{v:?}");
    assert!(
        untrusted_because(
            &v,
            "(no log entry, so the time of the check), the certificate valid from 20"
        ),
        "times read as RFC 3339: {v:?}"
    );
    let v = verdict(&bundle, ci(true), made + 60);
    assert!(untrusted_because(&v, "requireTransparencyLog"), "{v:?}");
}

#[test]
fn an_altered_log_entry_or_payload_is_caught() {
    let text = String::from_utf8(fixture("bundle.json")).unwrap_or_default();
    let mut bundle: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    // The entry claims another time: its SET no longer verifies, so there
    // is no logged time, and the log is required.
    let entry = &mut bundle["verificationMaterial"]["tlogEntries"][0];
    let time: i64 = entry["integratedTime"]
        .as_str()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    entry["integratedTime"] = (time + 1).to_string().into();
    let altered = serde_json::to_vec(&bundle).unwrap_or_default();
    let ci = || {
        authority(
            root("trusted_root.json"),
            GITHUB,
            Subject::Exact(WORKFLOW.into()),
            true,
        )
    };
    let v = verdict(&altered, ci(), LATER);
    assert!(untrusted_because(&v, "requireTransparencyLog"), "{v:?}");
    // The payload changed after signing: the certificate is trusted, the
    // signature does not verify with it.
    let mut bundle: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::STANDARD.encode(format!(
        r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"digest":{{"sha256":"{}"}}}}],"predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{{"x":1}}}}"#,
        &DIGEST[7..]
    ));
    bundle["dsseEnvelope"]["payload"] = payload.into();
    let v = verdict(
        &serde_json::to_vec(&bundle).unwrap_or_default(),
        ci(),
        LATER,
    );
    // Its log entry no longer matches either (the payload's hash changed).
    assert!(
        untrusted_because(&v, "requireTransparencyLog") || matches!(v, Verdict::Invalid(_)),
        "{v:?}"
    );
    let meta: serde_json::Value = serde_json::from_slice(&fixture("meta.json")).unwrap_or_default();
    let made = meta["integratedTime"].as_i64().unwrap_or_default();
    let v = verdict(
        &serde_json::to_vec(&bundle).unwrap_or_default(),
        authority(
            root("trusted_root.json"),
            GITHUB,
            Subject::Exact(WORKFLOW.into()),
            false,
        ),
        made + 60,
    );
    assert!(
        matches!(v, Verdict::Invalid(ref why) if why.contains("does not verify")),
        "{v:?}"
    );
}

#[test]
fn a_trusted_root_that_cannot_be_used_says_why() {
    let e = |bytes: &[u8]| {
        TrustedRoot::from_json(bytes)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(e(b"{").starts_with("not a sigstore trusted_root.json"));
    assert!(e(br#"{"certificateAuthorities": []}"#).contains("nothing to trust"));
    let text = String::from_utf8(fixture("trusted_root.json")).unwrap_or_default();
    let mut root: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let cert = root["certificateAuthorities"][0]["certChain"]["certificates"][0].clone();
    root["certificateAuthorities"][0]["certChain"]["certificates"] =
        serde_json::Value::Array(vec![cert; 11]);
    assert!(e(&serde_json::to_vec(&root).unwrap_or_default()).contains("has 11 certificates"));
    root["certificateAuthorities"][0]["certChain"]["certificates"] =
        serde_json::json!([{"rawBytes": "AAAA"}]);
    assert!(e(&serde_json::to_vec(&root).unwrap_or_default()).contains("not an X.509 certificate"));
    assert!(e(&vec![b' '; freshen_verify::keyless::MAX_TRUSTED_ROOT + 1]).contains("at most"));
    assert!(Subject::pattern("(").is_err());
}
