//! Keyless signatures: a short-lived certificate (Fulcio's, or a private
//! CA's standing in for it) binds the signing key to an OIDC identity, and
//! a transparency log (Rekor) vouches for when it signed.
//!
//! Checked offline against a trusted root in sigstore's `trusted_root.json`
//! format, never by calling a public service:
//!
//! 1. the bundle's leaf certificate is issued by a certificate authority of
//!    the trusted root (its signature verifies with the issuer's key);
//! 2. its identity is the one asked for: the Subject Alternative Name (an
//!    e-mail or a URI) equals `subject` or matches `subjectRegExp`, and the
//!    Fulcio issuer extension (`1.3.6.1.4.1.57264.1.8`, or the older
//!    `.1.1`) equals `issuer`;
//! 3. it was valid when it signed: at the time a transparency log entry
//!    records, once that entry's signed entry timestamp (SET) verifies with
//!    a log key of the trusted root and the entry is about this very
//!    signature; without a verified entry (allowed unless
//!    `requireTransparencyLog`), at the time of the check, which suits a
//!    private CA's long-lived certificates and not Fulcio's ten minutes;
//! 4. the DSSE envelope verifies with the certificate's key.
//!
//! Every input is capped: the trusted root at [`MAX_TRUSTED_ROOT`] bytes,
//! its authorities and logs, a bundle's chain at [`MAX_CHAIN`]
//! certificates and its log entries at [`MAX_TLOG_ENTRIES`].

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use der::{Decode as _, Encode as _};
use serde::Deserialize;
use sha2::Digest as _;
use x509_cert::Certificate;

use crate::Error;
use crate::key::PublicKey;

/// A trusted root has at most this many bytes.
pub const MAX_TRUSTED_ROOT: usize = 1024 * 1024;
/// Certificate authorities (and logs) read from a trusted root, at most.
pub const MAX_AUTHORITIES: usize = 16;
/// Certificates in one chain (a trusted root's or a bundle's), at most.
pub const MAX_CHAIN: usize = 10;
/// Transparency log entries read from a bundle, at most.
pub const MAX_TLOG_ENTRIES: usize = 8;

/// Fulcio's OIDC issuer extension (a DER UTF8String).
const ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";
/// Fulcio's older OIDC issuer extension (the raw string).
const ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
/// The Subject Alternative Name extension.
const SUBJECT_ALT_NAME: &str = "2.5.29.17";
/// ECDSA with SHA-256 and SHA-384.
const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";

/// A trusted root: the certificate authorities and transparency logs a
/// keyless authority trusts.
#[derive(Debug, Clone)]
pub struct TrustedRoot {
    authorities: Vec<CertificateAuthority>,
    logs: Vec<TransparencyLog>,
}

#[derive(Debug, Clone)]
struct CertificateAuthority {
    /// The issuing certificate first, its root last.
    chain: Vec<Certificate>,
    valid: Window,
}

#[derive(Debug, Clone)]
struct TransparencyLog {
    key: PublicKey,
    key_id: Vec<u8>,
}

/// Seconds since the epoch a root's entry is valid for.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    start: Option<i64>,
    end: Option<i64>,
}

impl Window {
    fn contains(self, t: i64) -> bool {
        self.start.is_none_or(|s| s <= t) && self.end.is_none_or(|e| t <= e)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RootJson {
    #[serde(default)]
    certificate_authorities: Vec<AuthorityJson>,
    #[serde(default)]
    tlogs: Vec<LogJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorityJson {
    cert_chain: ChainJson,
    #[serde(default)]
    valid_for: Option<ValidForJson>,
}

#[derive(Deserialize)]
struct ChainJson {
    certificates: Vec<RawJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawJson {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct ValidForJson {
    start: Option<String>,
    end: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogJson {
    public_key: LogKeyJson,
    log_id: KeyIdJson,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogKeyJson {
    raw_bytes: String,
    #[serde(default)]
    valid_for: Option<ValidForJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyIdJson {
    key_id: String,
}

fn seconds(text: &Option<String>) -> Result<Option<i64>, Error> {
    text.as_deref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|d| d.timestamp())
                .map_err(|e| Error::Key(format!("validFor {t:?} is not an RFC 3339 time: {e}")))
        })
        .transpose()
}

fn window(v: &Option<ValidForJson>) -> Result<Window, Error> {
    Ok(match v {
        Some(v) => Window {
            start: seconds(&v.start)?,
            end: seconds(&v.end)?,
        },
        None => Window::default(),
    })
}

fn certificate(raw: &str, what: &str) -> Result<Certificate, String> {
    let der = STANDARD
        .decode(raw)
        .map_err(|e| format!("{what} is not base64: {e}"))?;
    Certificate::from_der(&der).map_err(|e| format!("{what} is not an X.509 certificate: {e}"))
}

impl TrustedRoot {
    /// Reads sigstore's `trusted_root.json`
    /// (`application/vnd.dev.sigstore.trustedroot+json`): its certificate
    /// authorities and transparency logs. The error names the field.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_TRUSTED_ROOT {
            return Err(Error::Key(format!(
                "a trusted root of {} bytes; at most {MAX_TRUSTED_ROOT} are read",
                bytes.len()
            )));
        }
        let json: RootJson = serde_json::from_slice(bytes)
            .map_err(|e| Error::Key(format!("not a sigstore trusted_root.json: {e}")))?;
        if json.certificate_authorities.is_empty() {
            return Err(Error::Key(
                "certificateAuthorities is empty: nothing to trust".into(),
            ));
        }
        if json.certificate_authorities.len() > MAX_AUTHORITIES
            || json.tlogs.len() > MAX_AUTHORITIES
        {
            return Err(Error::Key(format!(
                "more than {MAX_AUTHORITIES} certificate authorities or transparency logs"
            )));
        }
        let mut authorities = Vec::new();
        for (i, a) in json.certificate_authorities.iter().enumerate() {
            let certs = &a.cert_chain.certificates;
            if certs.is_empty() || certs.len() > MAX_CHAIN {
                return Err(Error::Key(format!(
                    "certificateAuthorities[{i}].certChain has {} certificates; expected 1 to \
                     {MAX_CHAIN}",
                    certs.len()
                )));
            }
            let chain = certs
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    certificate(
                        &c.raw_bytes,
                        &format!("certificateAuthorities[{i}].certChain.certificates[{j}]"),
                    )
                })
                .collect::<Result<_, _>>()
                .map_err(Error::Key)?;
            authorities.push(CertificateAuthority {
                chain,
                valid: window(&a.valid_for)?,
            });
        }
        let mut logs = Vec::new();
        for (i, l) in json.tlogs.iter().enumerate() {
            let der = STANDARD.decode(&l.public_key.raw_bytes).map_err(|e| {
                Error::Key(format!("tlogs[{i}].publicKey.rawBytes is not base64: {e}"))
            })?;
            let key = PublicKey::from_der(&der)
                .map_err(|e| Error::Key(format!("tlogs[{i}].publicKey: {e}")))?;
            let key_id = STANDARD
                .decode(&l.log_id.key_id)
                .map_err(|e| Error::Key(format!("tlogs[{i}].logId.keyId is not base64: {e}")))?;
            window(&l.public_key.valid_for)?;
            logs.push(TransparencyLog { key, key_id });
        }
        Ok(Self { authorities, logs })
    }
}

/// Who a keyless signature must come from.
#[derive(Debug, Clone)]
pub enum Subject {
    /// Exactly this e-mail or URI.
    Exact(String),
    /// A full match of this pattern.
    Pattern(regex::Regex),
}

impl Subject {
    /// A `subjectRegExp`, anchored to match the whole identity, within a
    /// bounded program size (the `regex` crate is linear in the input).
    pub fn pattern(text: &str) -> Result<Self, Error> {
        regex::RegexBuilder::new(&format!("^(?:{text})$"))
            .size_limit(1 << 20)
            .build()
            .map(Self::Pattern)
            .map_err(|e| Error::Key(format!("subjectRegExp {text:?}: {e}")))
    }

    fn matches(&self, identity: &str) -> bool {
        match self {
            Self::Exact(s) => s == identity,
            Self::Pattern(p) => p.is_match(identity),
        }
    }
}

/// A keyless authority: a trusted root and the identity it must certify.
#[derive(Debug, Clone)]
pub struct Keyless {
    /// Its name, for Events and the report.
    pub name: String,
    /// The certificate authorities and logs it trusts.
    pub root: std::sync::Arc<TrustedRoot>,
    /// The OIDC issuer the certificate must name.
    pub issuer: String,
    /// The identity it must name.
    pub subject: Subject,
    /// Refuse a signature no verified transparency log entry vouches for.
    pub require_transparency_log: bool,
}

/// The parts of a bundle keyless verification reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Material {
    #[serde(default)]
    certificate: Option<RawJson>,
    #[serde(default)]
    x509_certificate_chain: Option<ChainJson>,
    #[serde(default)]
    tlog_entries: Vec<EntryJson>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntryJson {
    log_index: Number,
    log_id: KeyIdJson,
    integrated_time: Number,
    #[serde(default)]
    inclusion_promise: Option<PromiseJson>,
    canonicalized_body: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromiseJson {
    signed_entry_timestamp: String,
}

/// An int64 as protobuf's JSON writes it (a string) or as a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Number {
    Text(String),
    Int(i64),
}

impl Number {
    fn value(&self) -> Option<i64> {
        match self {
            Self::Text(t) => t.parse().ok(),
            Self::Int(i) => Some(*i),
        }
    }
}

impl std::fmt::Debug for RawJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawJson({} bytes)", self.raw_bytes.len())
    }
}

impl std::fmt::Debug for ChainJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainJson({} certificates)", self.certificates.len())
    }
}

impl std::fmt::Debug for KeyIdJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key_id)
    }
}

impl Material {
    /// The leaf certificate, when the bundle has one.
    pub(crate) fn leaf(&self) -> Result<Option<Certificate>, String> {
        if let Some(chain) = &self.x509_certificate_chain
            && chain.certificates.len() > MAX_CHAIN
        {
            return Err(format!(
                "a chain of {} certificates; at most {MAX_CHAIN} are read",
                chain.certificates.len()
            ));
        }
        let raw = self.certificate.as_ref().or_else(|| {
            self.x509_certificate_chain
                .as_ref()
                .and_then(|c| c.certificates.first())
        });
        raw.map(|r| certificate(&r.raw_bytes, "the bundle's certificate"))
            .transpose()
    }
}

/// What a keyless check concluded.
pub(crate) enum Outcome {
    /// Signed by this authority.
    Verified,
    /// The certificate or its signature cannot be trusted by this
    /// authority (why).
    Untrusted(String),
    /// The certificate is trusted but the envelope's signature does not
    /// verify with its key: altered.
    Invalid(String),
}

/// Checks `leaf` (from `material`) against `authority` for an envelope
/// whose `message` (its PAE) is signed by `signatures` (as base64 and
/// raw), over `payload`, at `now` (seconds since the epoch).
pub(crate) fn check(
    authority: &Keyless,
    leaf: &Certificate,
    material: &Material,
    (message, payload): (&[u8], &[u8]),
    signatures: &[(String, Vec<u8>)],
    now: i64,
) -> Outcome {
    let Some(ca) = issuer_of(&authority.root, leaf) else {
        return Outcome::Untrusted(
            "its certificate is issued by no authority of the trusted root".into(),
        );
    };
    if let Err(why) = identity(authority, leaf) {
        return Outcome::Untrusted(why);
    }
    let logged = material
        .tlog_entries
        .iter()
        .take(MAX_TLOG_ENTRIES)
        .find_map(|e| logged_at(&authority.root, e, payload, signatures));
    let at = match logged {
        Some(t) => t,
        None if authority.require_transparency_log => {
            return Outcome::Untrusted(
                "no transparency log entry of the trusted root vouches for it \
                 (requireTransparencyLog)"
                    .into(),
            );
        }
        None => now,
    };
    let validity = leaf.tbs_certificate().validity();
    let (from, to) = (
        unix(validity.not_before.to_unix_duration()),
        unix(validity.not_after.to_unix_duration()),
    );
    if at < from || at > to || !ca.valid.contains(at) {
        let time = |t: i64| {
            chrono::DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |d| d.to_rfc3339())
        };
        return Outcome::Untrusted(format!(
            "its certificate was not valid when it signed: signed at {} ({}), the certificate \
             valid from {} to {}",
            time(at),
            match logged {
                Some(_) => "the transparency log's time",
                None => "no log entry, so the time of the check",
            },
            time(from),
            time(to)
        ));
    }
    let Ok(key) = leaf
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| e.to_string())
        .and_then(|der| PublicKey::from_der(&der).map_err(|e| e.to_string()))
    else {
        return Outcome::Untrusted("its certificate's key is not one freshen checks".into());
    };
    match signatures.iter().any(|(_, sig)| key.verifies(message, sig)) {
        true => Outcome::Verified,
        false => Outcome::Invalid(format!(
            "the signature does not verify with the certificate authority {} certified",
            authority.name
        )),
    }
}

fn unix(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The authority of `root` whose issuing certificate signed `leaf`.
fn issuer_of<'r>(root: &'r TrustedRoot, leaf: &Certificate) -> Option<&'r CertificateAuthority> {
    root.authorities.iter().find(|ca| {
        ca.chain
            .first()
            .is_some_and(|issuer| signed_by(leaf, issuer) && chain_holds(&ca.chain))
    })
}

/// Each certificate of a root's chain is signed by the next.
fn chain_holds(chain: &[Certificate]) -> bool {
    chain.windows(2).all(|pair| signed_by(&pair[0], &pair[1]))
}

/// `cert` names `issuer` as its issuer and carries its signature.
fn signed_by(cert: &Certificate, issuer: &Certificate) -> bool {
    let tbs = cert.tbs_certificate();
    if tbs.issuer() != issuer.tbs_certificate().subject() {
        return false;
    }
    let algorithm = cert.signature_algorithm().oid.to_string();
    if algorithm != ECDSA_SHA256 && algorithm != ECDSA_SHA384 {
        return false;
    }
    let (Ok(message), Some(signature), Ok(spki)) = (
        tbs.to_der(),
        cert.signature().as_bytes(),
        issuer.tbs_certificate().subject_public_key_info().to_der(),
    ) else {
        return false;
    };
    PublicKey::from_der(&spki).is_ok_and(|key| {
        // The curve's own hash, as PublicKey::verifies uses it.
        let hash_matches = match key.algorithm() {
            "ecdsa-p256" => algorithm == ECDSA_SHA256,
            "ecdsa-p384" => algorithm == ECDSA_SHA384,
            _ => false,
        };
        hash_matches && key.verifies(&message, signature)
    })
}

/// The certificate's identity is the one asked for.
fn identity(authority: &Keyless, leaf: &Certificate) -> Result<(), String> {
    let tbs = leaf.tbs_certificate();
    let extensions = tbs.extensions().map(|e| e.as_slice()).unwrap_or_default();
    let mut names = Vec::new();
    let mut issuer = None;
    for ext in extensions {
        let value = ext.extn_value.as_bytes();
        match ext.extn_id.to_string().as_str() {
            SUBJECT_ALT_NAME => {
                let Ok(san) = x509_cert::ext::pkix::SubjectAltName::from_der(value) else {
                    return Err("its Subject Alternative Name cannot be read".into());
                };
                for name in san.0.iter().take(16) {
                    use x509_cert::ext::pkix::name::GeneralName;
                    match name {
                        GeneralName::Rfc822Name(s) => names.push(s.to_string()),
                        GeneralName::UniformResourceIdentifier(s) => names.push(s.to_string()),
                        _ => {}
                    }
                }
            }
            ISSUER_V2 => {
                issuer = der::asn1::Utf8StringRef::from_der(value)
                    .ok()
                    .map(|s| s.as_str().to_owned());
            }
            ISSUER_V1 if issuer.is_none() => {
                issuer = std::str::from_utf8(value).ok().map(str::to_owned);
            }
            _ => {}
        }
    }
    match issuer {
        Some(i) if i == authority.issuer => {}
        Some(i) => {
            return Err(format!(
                "its certificate's issuer is {:?}, not {:?}",
                i.chars().take(256).collect::<String>(),
                authority.issuer
            ));
        }
        None => return Err("its certificate names no OIDC issuer".into()),
    }
    if names.iter().any(|n| authority.subject.matches(n)) {
        return Ok(());
    }
    Err(format!(
        "its certificate's identity {} is not the one {} trusts",
        names.first().map_or("(none)".into(), |n| format!(
            "{:?}",
            n.chars().take(256).collect::<String>()
        )),
        authority.name
    ))
}

/// The time `entry` records, when its SET verifies with a log of `root`
/// and it is about this very signature and payload.
fn logged_at(
    root: &TrustedRoot,
    entry: &EntryJson,
    payload: &[u8],
    signatures: &[(String, Vec<u8>)],
) -> Option<i64> {
    let key_id = STANDARD.decode(&entry.log_id.key_id).ok()?;
    let log = root.logs.iter().find(|l| l.key_id == key_id)?;
    let (index, time) = (entry.log_index.value()?, entry.integrated_time.value()?);
    let set = STANDARD
        .decode(&entry.inclusion_promise.as_ref()?.signed_entry_timestamp)
        .ok()?;
    // The SET signs the canonical JSON (keys sorted, no spaces) of these.
    let hex: String = key_id.iter().map(|b| format!("{b:02x}")).collect();
    let promise = BTreeMap::from([
        (
            "body",
            serde_json::Value::from(entry.canonicalized_body.clone()),
        ),
        ("integratedTime", time.into()),
        ("logID", hex.into()),
        ("logIndex", index.into()),
    ]);
    let signed = serde_json::to_vec(&promise).ok()?;
    if !log.key.verifies(&signed, &set) {
        return None;
    }
    bound(&entry.canonicalized_body, payload, signatures).then_some(time)
}

/// The log entry's body is about this envelope: a `dsse` entry naming the
/// payload's hash and one of its signatures.
fn bound(body: &str, payload: &[u8], signatures: &[(String, Vec<u8>)]) -> bool {
    let Ok(bytes) = STANDARD.decode(body) else {
        return false;
    };
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return false;
    };
    if body["kind"] != "dsse" {
        return false;
    }
    let hash: String = sha2::Sha256::digest(payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let spec = &body["spec"];
    spec["payloadHash"]["value"].as_str() == Some(hash.as_str())
        && spec["signatures"].as_array().is_some_and(|logged| {
            logged.iter().take(16).any(|l| {
                l["signature"]
                    .as_str()
                    .is_some_and(|s| signatures.iter().any(|(b64, _)| b64 == s))
            })
        })
}
