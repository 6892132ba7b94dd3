//! Verifies that an image digest is signed by a trusted key: sigstore
//! bundles (what cosign v3 writes, `application/vnd.dev.sigstore.bundle.v0.3+json`,
//! a DSSE envelope over an in-toto statement whose subject is the digest)
//! and cosign's older simple-signing payloads (`sha256-<hex>.sig`).
//!
//! Pure and bounded: bytes in, a [`Verdict`] out; no I/O, no clock. Every
//! input is tenant- or registry-supplied, so each is capped before it is
//! parsed and nothing panics. A small verifier of our own on RustCrypto
//! rather than the `sigstore` crate: freshen needs the key and DSSE paths,
//! offline, over bytes its registry client already fetched and capped, and
//! the crate brings a TUF client, an HTTP stack and OpenSSL-shaped
//! dependencies it would not use.

pub mod key;
pub mod keyless;
pub mod predicate;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

pub use key::PublicKey;

/// A bundle or a signed payload has at most this many bytes.
pub const MAX_BUNDLE: usize = 256 * 1024;
/// Signatures in one DSSE envelope, at most.
pub const MAX_SIGNATURES: usize = 16;
/// Subjects in one statement, at most.
pub const MAX_SUBJECTS: usize = 1024;

/// The bundle media type cosign v3 writes.
pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The DSSE payload type of an in-toto statement.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

/// Why an input could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A key that is not a supported public key.
    #[error("{0}")]
    Key(String),
}

/// An authority: a name for messages and Events, and its key.
#[derive(Debug, Clone)]
pub struct Authority {
    /// E.g. `platform`.
    pub name: String,
    /// Its public key.
    pub key: PublicKey,
}

/// What one signature (or all found for a digest) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by this authority.
    Verified {
        /// The authority's name.
        authority: String,
    },
    /// Nothing signs the digest.
    Missing,
    /// A signature is malformed, signs another digest, or names one of the
    /// trusted keys and does not verify with it (tampered).
    Invalid(String),
    /// Well formed, but no trusted authority's key verifies it.
    Untrusted {
        /// The authorities tried.
        tried: Vec<String>,
    },
}

impl Verdict {
    /// The verdict over several signatures of one digest: one verified
    /// wins; else an invalid one is reported (it may be an attack); else
    /// untrusted; none at all is missing.
    pub fn combine(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        let mut out = Verdict::Missing;
        for v in verdicts {
            out = match (out, v) {
                (done @ Verdict::Verified { .. }, _) | (_, done @ Verdict::Verified { .. }) => done,
                (invalid @ Verdict::Invalid(_), _) | (_, invalid @ Verdict::Invalid(_)) => invalid,
                (untrusted @ Verdict::Untrusted { .. }, _)
                | (_, untrusted @ Verdict::Untrusted { .. }) => untrusted,
                (Verdict::Missing, Verdict::Missing) => Verdict::Missing,
            };
        }
        out
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: Option<String>,
    #[serde(default)]
    verification_material: Option<Material>,
    dsse_envelope: Option<Envelope>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Material {
    public_key: Option<Hint>,
    #[serde(flatten)]
    keyless: keyless::Material,
}

#[derive(Deserialize)]
struct Hint {
    hint: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

#[derive(Deserialize)]
struct Statement {
    #[serde(rename = "_type")]
    kind: Option<String>,
    subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    predicate_type: Option<String>,
    #[serde(default)]
    predicate: serde_json::Value,
}

/// Only the predicate type of a payload not yet verified.
#[derive(Deserialize)]
struct Claimed {
    #[serde(rename = "predicateType")]
    predicate_type: Option<String>,
}

/// A statement whose signature verified, about the digest asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Attested {
    /// The authority whose key verified it.
    pub authority: String,
    /// Its predicate type.
    pub predicate_type: String,
    /// Its predicate.
    pub predicate: serde_json::Value,
}

/// What one bundle says about a digest.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    /// The predicate type its payload claims, read before its signature is
    /// checked: only to tell which check it is meant for, never trusted.
    pub claimed_type: Option<String>,
    /// The verified statement, or why there is none.
    pub outcome: Result<Attested, Verdict>,
}

#[derive(Deserialize)]
struct Subject {
    digest: std::collections::BTreeMap<String, String>,
}

/// DSSE's pre-authentication encoding: what the signature covers.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// What a sigstore bundle `bytes` says about `digest` (`sha256:<hex>`)
/// under `authorities`. `predicate_type`: the statement's predicate type
/// to accept (an image signature's, or an attestation's); `None` accepts
/// any.
pub fn verify_bundle(
    bytes: &[u8],
    digest: &str,
    predicate_type: Option<&str>,
    authorities: &[Authority],
) -> Verdict {
    match open_bundle(bytes, digest, authorities).outcome {
        Ok(attested) => match predicate_type {
            Some(want) if attested.predicate_type != want => Verdict::Invalid(format!(
                "predicate type {:?}; expected {want:?}",
                attested.predicate_type
            )),
            _ => Verdict::Verified {
                authority: attested.authority,
            },
        },
        Err(verdict) => verdict,
    }
}

/// Opens a sigstore bundle `bytes` about `digest` under `authorities`: the
/// statement it signs once a trusted key verifies it, else the verdict.
pub fn open_bundle(bytes: &[u8], digest: &str, authorities: &[Authority]) -> Opened {
    open_bundle_keyless(bytes, digest, authorities, &[], 0)
}

/// [`open_bundle`], also trying the `keyless` authorities on a bundle
/// signed with a certificate, at `now` (seconds since the epoch) when no
/// transparency log entry says when it signed.
pub fn open_bundle_keyless(
    bytes: &[u8],
    digest: &str,
    authorities: &[Authority],
    keyless: &[keyless::Keyless],
    now: i64,
) -> Opened {
    let failed = |verdict| Opened {
        claimed_type: None,
        outcome: Err(verdict),
    };
    if bytes.len() > MAX_BUNDLE {
        return failed(Verdict::Invalid(format!(
            "a bundle of {} bytes; at most {MAX_BUNDLE} are read",
            bytes.len()
        )));
    }
    let bundle: Bundle = match serde_json::from_slice(bytes) {
        Ok(b) => b,
        Err(e) => return failed(Verdict::Invalid(format!("not a sigstore bundle: {e}"))),
    };
    if let Some(media) = &bundle.media_type
        && !media.starts_with("application/vnd.dev.sigstore.bundle")
    {
        return failed(Verdict::Invalid(format!("bundle media type {media:?}")));
    }
    let Some(envelope) = bundle.dsse_envelope else {
        return failed(Verdict::Invalid(
            "the bundle has no DSSE envelope (an image is signed in one)".into(),
        ));
    };
    let material = bundle.verification_material.unwrap_or(Material {
        public_key: None,
        keyless: keyless::Material::default(),
    });
    let signers = Signers {
        keys: authorities,
        keyless,
        material: &material.keyless,
        now,
    };
    let hint = material.public_key.and_then(|k| k.hint);
    open_envelope(&envelope, hint.as_deref(), digest, &signers)
}

/// Opens a bare DSSE envelope `bytes` about `digest` under `authorities`:
/// what cosign's older `sha256-<hex>.att` tag holds (an attestation
/// without a bundle around it).
pub fn open_envelope_json(bytes: &[u8], digest: &str, authorities: &[Authority]) -> Opened {
    let failed = |verdict| Opened {
        claimed_type: None,
        outcome: Err(verdict),
    };
    if bytes.len() > MAX_BUNDLE {
        return failed(Verdict::Invalid(format!(
            "an envelope of {} bytes; at most {MAX_BUNDLE} are read",
            bytes.len()
        )));
    }
    let envelope: Envelope = match serde_json::from_slice(bytes) {
        Ok(e) => e,
        Err(e) => return failed(Verdict::Invalid(format!("not a DSSE envelope: {e}"))),
    };
    let material = keyless::Material::default();
    let signers = Signers {
        keys: authorities,
        keyless: &[],
        material: &material,
        now: 0,
    };
    open_envelope(&envelope, None, digest, &signers)
}

/// Whom a signature may come from: keys, and keyless authorities with the
/// bundle's certificate material.
struct Signers<'a> {
    keys: &'a [Authority],
    keyless: &'a [keyless::Keyless],
    material: &'a keyless::Material,
    now: i64,
}

fn open_envelope(
    envelope: &Envelope,
    hint: Option<&str>,
    digest: &str,
    signers: &Signers,
) -> Opened {
    let Ok(payload) = STANDARD.decode(&envelope.payload) else {
        return Opened {
            claimed_type: None,
            outcome: Err(Verdict::Invalid("the DSSE payload is not base64".into())),
        };
    };
    let claimed_type = serde_json::from_slice::<Claimed>(&payload)
        .ok()
        .and_then(|c| c.predicate_type)
        .map(|t| t.chars().take(256).collect());
    Opened {
        claimed_type,
        outcome: verify_envelope(envelope, &payload, hint, digest, signers),
    }
}

fn verify_envelope(
    envelope: &Envelope,
    payload: &[u8],
    hint: Option<&str>,
    digest: &str,
    signers: &Signers,
) -> Result<Attested, Verdict> {
    let authorities = signers.keys;
    if envelope.payload_type != IN_TOTO {
        return Err(Verdict::Invalid(format!(
            "DSSE payload type {:?}; expected {IN_TOTO}",
            envelope.payload_type
        )));
    }
    if envelope.signatures.is_empty() || envelope.signatures.len() > MAX_SIGNATURES {
        return Err(Verdict::Invalid(format!(
            "{} signatures in the envelope; expected 1 to {MAX_SIGNATURES}",
            envelope.signatures.len()
        )));
    }
    let message = pae(&envelope.payload_type, payload);
    let signatures: Vec<(String, Vec<u8>)> = envelope
        .signatures
        .iter()
        .map(|s| STANDARD.decode(&s.sig).map(|raw| (s.sig.clone(), raw)))
        .collect::<Result<_, _>>()
        .map_err(|_| Verdict::Invalid("a DSSE signature is not base64".into()))?;
    let signer = authorities
        .iter()
        .find(|a| {
            signatures
                .iter()
                .any(|(_, sig)| a.key.verifies(&message, sig))
        })
        .map(|a| a.name.clone());
    let signer = match signer {
        Some(name) => Some(name),
        None => keyless_signer(signers, (&message, payload), &signatures)?,
    };
    let Some(signer) = signer else {
        // Nothing verifies. A hint naming a trusted key means its signature
        // was altered; otherwise another key signed.
        if let Some(a) = hint.and_then(|h| authorities.iter().find(|a| a.key.hint() == h)) {
            return Err(Verdict::Invalid(format!(
                "the signature names authority {}'s key but does not verify with it",
                a.name
            )));
        }
        return Err(Verdict::Untrusted {
            tried: authorities
                .iter()
                .map(|a| a.name.clone())
                .chain(signers.keyless.iter().map(|k| k.name.clone()))
                .collect(),
        });
    };
    // Only a verified payload is read further.
    let statement = statement_about(payload, digest).map_err(Verdict::Invalid)?;
    Ok(Attested {
        authority: signer,
        predicate_type: statement.predicate_type.unwrap_or_default(),
        predicate: statement.predicate,
    })
}

/// The keyless authority a certificate-signed envelope verifies under:
/// none (untrusted, with why in the error when every authority refused
/// the certificate), or an error when the certificate is trusted but the
/// signature does not verify with it.
fn keyless_signer(
    signers: &Signers,
    (message, payload): (&[u8], &[u8]),
    signatures: &[(String, Vec<u8>)],
) -> Result<Option<String>, Verdict> {
    if signers.keyless.is_empty() {
        return Ok(None);
    }
    let Some(leaf) = signers.material.leaf().map_err(Verdict::Invalid)? else {
        return Ok(None);
    };
    let mut refused = Vec::new();
    for authority in signers.keyless {
        match keyless::check(
            authority,
            &leaf,
            signers.material,
            (message, payload),
            signatures,
            signers.now,
        ) {
            keyless::Outcome::Verified => return Ok(Some(authority.name.clone())),
            keyless::Outcome::Invalid(why) => return Err(Verdict::Invalid(why)),
            keyless::Outcome::Untrusted(why) => refused.push(format!("{} ({why})", authority.name)),
        }
    }
    let keys = signers.keys.iter().map(|a| a.name.clone());
    Err(Verdict::Untrusted {
        tried: keys.chain(refused).collect(),
    })
}

/// The in-toto statement `payload`, when `digest` is among its subjects.
fn statement_about(payload: &[u8], digest: &str) -> Result<Statement, String> {
    let statement: Statement = serde_json::from_slice(payload)
        .map_err(|e| format!("the signed payload is not an in-toto statement: {e}"))?;
    if let Some(kind) = &statement.kind
        && !kind.starts_with("https://in-toto.io/Statement/")
    {
        return Err(format!("statement type {kind:?}"));
    }
    if statement.subject.len() > MAX_SUBJECTS {
        return Err(format!(
            "{} subjects; at most {MAX_SUBJECTS} are read",
            statement.subject.len()
        ));
    }
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("", digest));
    if statement.subject.iter().any(|s| {
        s.digest
            .get(algorithm)
            .is_some_and(|d| d.eq_ignore_ascii_case(hex))
    }) {
        Ok(statement)
    } else {
        Err(format!("signs other digests than {digest}"))
    }
}

#[derive(Deserialize)]
struct SimpleSigning {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    image: CriticalImage,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct CriticalImage {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// What one legacy cosign signature says about `digest`: `payload` is the
/// simple-signing JSON (a layer of the `sha256-<hex>.sig` manifest),
/// `signature` the base64 of its `dev.cosignproject.cosign/signature`
/// annotation, over the payload's bytes.
pub fn verify_simple_signing(
    payload: &[u8],
    signature: &str,
    digest: &str,
    authorities: &[Authority],
) -> Verdict {
    if payload.len() > MAX_BUNDLE || signature.len() > MAX_BUNDLE {
        return Verdict::Invalid(format!("a signature payload over {MAX_BUNDLE} bytes"));
    }
    let Ok(sig) = STANDARD.decode(signature.trim()) else {
        return Verdict::Invalid("the signature annotation is not base64".into());
    };
    let Some(signer) = authorities.iter().find(|a| a.key.verifies(payload, &sig)) else {
        return Verdict::Untrusted {
            tried: authorities.iter().map(|a| a.name.clone()).collect(),
        };
    };
    let parsed: SimpleSigning = match serde_json::from_slice(payload) {
        Ok(p) => p,
        Err(e) => return Verdict::Invalid(format!("not a simple-signing payload: {e}")),
    };
    if parsed.critical.kind != "cosign container image signature" {
        return Verdict::Invalid(format!("payload type {:?}", parsed.critical.kind));
    }
    if !parsed.critical.image.digest.eq_ignore_ascii_case(digest) {
        return Verdict::Invalid(format!(
            "signs {}, not {digest}",
            parsed.critical.image.digest
        ));
    }
    Verdict::Verified {
        authority: signer.name.clone(),
    }
}

#[cfg(test)]
mod tests;
