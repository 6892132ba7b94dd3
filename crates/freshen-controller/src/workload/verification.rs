//! The verification gate's I/O: the signatures and attestations of a
//! digest (from the registry, see `freshen_registry::signatures`), judged
//! by `freshen-verify` against each policy's authorities and attestation
//! checks, concluded by `freshen_core::verify`. Verdicts are kept per
//! image, digest and requirement, at most [`MAX_VERDICTS`]: a verified one
//! until evicted (a digest's signatures are read once), any other for as
//! long as the caller allows (a candidate: [`RECHECK`], as a signature is
//! often pushed just after its image; a running digest: [`RUNNING_RECHECK`]);
//! a verdict the registry could not give is not kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshen_core::verify::{
    AttestationCheck, AuthoritySet, Findings, Judged, KeySource, ObjectKey, Requirement,
    SetVerdict, Trust,
};
use freshen_core::{Digest, ImageReference};
use freshen_registry::signatures::Artifact;
use freshen_verify::{Attested, Authority, Opened, PublicKey, Verdict};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use sha2::Digest as _;

use crate::workload::assess::Lookup;

/// Verdicts kept at most; past it they are all dropped.
pub const MAX_VERDICTS: usize = 65_536;
/// How long a candidate found unsigned (or signed by others) is not asked
/// about again.
pub const RECHECK: Duration = Duration::from_secs(60);
/// How long a running digest found unverified is not asked about again:
/// the fleet's verdicts cost nothing per poll interval.
pub const RUNNING_RECHECK: Duration = Duration::from_secs(3600);

/// The statement type of a cosign image signature.
const IMAGE_SIGNATURE: &str = "https://sigstore.dev/cosign/sign/v1";

/// How long a key read from a Secret or ConfigMap is used before it is
/// read again (a rotated key takes effect within it).
pub const KEY_RECHECK: Duration = Duration::from_secs(60);
/// Keys kept from Secrets and ConfigMaps, at most, and their bytes at
/// most (a tenant's ConfigMap may hold up to 1 MiB).
const MAX_KEYS: usize = 4096;
const MAX_KEY_BYTES: usize = 32 * 1024 * 1024;

/// The PEM (or trusted root) of each key a requirement names in a Secret
/// or ConfigMap, or why it could not be read.
pub type Keys = HashMap<KeySource, Arc<KeyText>>;

/// A key object's text, or why it could not be read, with its SHA-256
/// (what verdicts are kept under, so a rotation is a new verdict).
#[derive(Debug)]
pub struct KeyText {
    /// The text, or why there is none.
    pub value: Result<String, String>,
    fingerprint: [u8; 32],
}

impl KeyText {
    fn new(value: Result<String, String>) -> Self {
        let fingerprint = match &value {
            Ok(text) => sha2::Sha256::digest(text.as_bytes()).into(),
            Err(why) => sha2::Sha256::digest(why.as_bytes()).into(),
        };
        Self { value, fingerprint }
    }

    fn len(&self) -> usize {
        self.value.as_ref().map_or_else(String::len, String::len)
    }
}

/// A key read, and when.
type KeptKey = (Arc<KeyText>, std::time::Instant);

/// Verdicts already reached, and the keys read for them.
pub struct Verdicts {
    kept: Mutex<HashMap<String, (Judged, std::time::Instant)>>,
    keys: Mutex<HashMap<KeySource, KeptKey>>,
    /// One judgement of a key at a time: workloads running the same digest
    /// wait for the first and take its verdict, so a digest's artifacts
    /// are read once however many workloads run it.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    client: Client,
    /// Where a ClusterRefreshPolicy's key objects are.
    own_namespace: String,
}

impl Verdicts {
    /// Verdicts reading key objects with `client`; a ClusterRefreshPolicy's
    /// from `own_namespace`.
    pub fn new(client: Client, own_namespace: String) -> Self {
        Self {
            kept: Mutex::default(),
            keys: Mutex::default(),
            inflight: Mutex::default(),
            client,
            own_namespace,
        }
    }

    /// The keys `requirement` names in Secrets and ConfigMaps: kept for
    /// [`KEY_RECHECK`], else read now.
    async fn keys(&self, requirement: &Requirement) -> Keys {
        let mut out = Keys::new();
        let now = std::time::Instant::now();
        let sources = requirement
            .sets
            .iter()
            .flat_map(|s| &s.authorities)
            .map(|a| &a.key)
            .filter(|k| !matches!(k, KeySource::Pem(_)));
        for source in sources {
            if out.contains_key(source) {
                continue;
            }
            let kept = self.keys.lock().ok().and_then(|k| k.get(source).cloned());
            let text = match kept {
                Some((text, at)) if now.duration_since(at) < KEY_RECHECK => text,
                _ => self.keep_key(source, self.read_key(source).await),
            };
            out.insert(source.clone(), text);
        }
        out
    }

    /// Keeps what was read for `source`, within [`MAX_KEYS`] and
    /// [`MAX_KEY_BYTES`] (past either, everything kept is dropped).
    fn keep_key(&self, source: &KeySource, value: Result<String, String>) -> Arc<KeyText> {
        let text = Arc::new(KeyText::new(value));
        if let Ok(mut keys) = self.keys.lock() {
            let bytes: usize = keys.values().map(|(t, _)| t.len()).sum();
            if keys.len() >= MAX_KEYS || bytes.saturating_add(text.len()) > MAX_KEY_BYTES {
                keys.clear();
            }
            keys.insert(
                source.clone(),
                (Arc::clone(&text), std::time::Instant::now()),
            );
        }
        text
    }

    /// Whether the key at `source` can be read and is a public key (a
    /// trusted root, for a `keyless` authority); why not (no object
    /// content in it).
    pub async fn usable(&self, source: &KeySource, keyless: bool) -> Result<(), String> {
        let text = match source {
            KeySource::Pem(pem) => pem.clone(),
            other => {
                let text = self.keep_key(other, self.read_key(other).await);
                text.value.clone()?
            }
        };
        match keyless {
            true => freshen_verify::keyless::TrustedRoot::from_json(text.as_bytes()).map(|_| ()),
            false => PublicKey::from_pem(&text).map(|_| ()),
        }
        .map_err(|e| e.to_string())
    }

    /// One key's PEM from its Secret or ConfigMap. The errors name the
    /// object and key, never what the object holds.
    async fn read_key(&self, source: &KeySource) -> Result<String, String> {
        let (kind, at) = match source {
            KeySource::Pem(pem) => return Ok(pem.clone()),
            KeySource::Secret(at) => ("Secret", at),
            KeySource::ConfigMap(at) => ("ConfigMap", at),
        };
        let ObjectKey {
            namespace,
            name,
            key,
        } = at;
        let namespace = namespace.as_deref().unwrap_or(&self.own_namespace);
        let what = format!("{kind} {namespace}/{name}");
        let bytes = match source {
            KeySource::Secret(_) => Api::<Secret>::namespaced(self.client.clone(), namespace)
                .get_opt(name)
                .await
                .map(|s| s.map(|s| s.data.and_then(|mut d| d.remove(key)).map(|b| b.0))),
            _ => Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
                .get_opt(name)
                .await
                .map(|c| {
                    c.map(|c| {
                        c.data
                            .and_then(|mut d| d.remove(key))
                            .map(String::into_bytes)
                            .or_else(|| c.binary_data.and_then(|mut d| d.remove(key)).map(|b| b.0))
                    })
                }),
        };
        match bytes {
            Ok(Some(Some(bytes))) if bytes.len() <= freshen_verify::keyless::MAX_TRUSTED_ROOT => {
                String::from_utf8(bytes).map_err(|_| format!("{what} key {key} is not text"))
            }
            Ok(Some(Some(bytes))) => Err(format!(
                "{what} key {key} has {} bytes; a key or trusted root has at most {}",
                bytes.len(),
                freshen_verify::keyless::MAX_TRUSTED_ROOT
            )),
            Ok(Some(None)) => Err(format!("{what} has no key {key}")),
            Ok(None) => Err(format!("{what} does not exist")),
            Err(e) => Err(format!("{what} could not be read: {e}")),
        }
    }

    /// The verdict on `image` at `digest` under `requirement`: kept (a
    /// verified one always, another while younger than `recheck`), or
    /// reached now.
    pub async fn judge(
        &self,
        lookup: &Lookup<'_>,
        image: &ImageReference,
        digest: &Digest,
        requirement: &Requirement,
        recheck: Duration,
    ) -> Judged {
        let keys = self.keys(requirement).await;
        let mut fingerprints: Vec<[u8; 32]> = keys.values().map(|k| k.fingerprint).collect();
        fingerprints.sort_unstable();
        let hash = sha2::Sha256::digest(format!("{requirement:?}{fingerprints:?}").as_bytes());
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let key = format!("{}@{}#{hex}", image.name(), digest);
        let fresh = |now: std::time::Instant| {
            self.kept
                .lock()
                .ok()
                .and_then(|k| k.get(&key).cloned())
                .filter(|(kept, at)| kept.trust.verified() || now.duration_since(*at) < recheck)
                .map(|(kept, _)| kept)
        };
        if let Some(kept) = fresh(std::time::Instant::now()) {
            return kept;
        }
        let turn = match self.inflight.lock() {
            Ok(mut inflight) => {
                if inflight.len() >= MAX_VERDICTS {
                    inflight.retain(|_, m| Arc::strong_count(m) > 1);
                }
                Arc::clone(inflight.entry(key.clone()).or_default())
            }
            Err(_) => Arc::default(),
        };
        let _turn = turn.lock().await;
        let now = std::time::Instant::now();
        if let Some(kept) = fresh(now) {
            return kept;
        }
        let (mut judged, answered) = judge_now(lookup, image, digest, requirement, &keys).await;
        // Multi-arch: the index is what is signed, but a signature on the
        // platform manifest that runs counts too.
        if !judged.trust.verified()
            && let Ok(facts) = lookup.facts(image, digest).await
            && let Some(platform) = &facts.platform_digest
        {
            let (on_platform, _) = judge_now(lookup, image, platform, requirement, &keys).await;
            if on_platform.trust.verified() {
                judged = on_platform;
            }
        }
        if !answered && !judged.trust.verified() {
            // The registry could not answer: asked again on the next look.
            return judged;
        }
        if let Ok(mut kept) = self.kept.lock() {
            if kept.len() >= MAX_VERDICTS {
                kept.clear();
            }
            kept.insert(key, (judged.clone(), now));
        }
        judged
    }
}

/// The verdict from the registry's artifacts for `digest`, now, and
/// whether the registry answered (else the verdict says why not).
async fn judge_now(
    lookup: &Lookup<'_>,
    image: &ImageReference,
    digest: &Digest,
    requirement: &Requirement,
    keys: &Keys,
) -> (Judged, bool) {
    match lookup
        .registry
        .signatures(image, digest, lookup.credential(image))
        .await
    {
        Ok(artifacts) => (
            conclude(
                requirement,
                keys,
                &artifacts,
                digest,
                lookup.now.timestamp(),
            ),
            true,
        ),
        Err(e) => (
            Judged {
                trust: Trust::Failed {
                    policy: requirement
                        .sets
                        .first()
                        .map(|s| s.policy.clone())
                        .unwrap_or_default(),
                    verdict: SetVerdict::Unknown(e.to_string()),
                },
                findings: None,
            },
            false,
        ),
    }
}

/// Judges the digest each container runs under `requirement` (the fleet's
/// verdicts for metrics and the report, and the scans a candidate is
/// compared with); nothing without a requirement.
pub async fn judge_running(
    verdicts: &Verdicts,
    lookup: &Lookup<'_>,
    requirement: Option<&Requirement>,
    containers: &mut [crate::runtime::records::ContainerRecord],
) {
    let Some(requirement) = requirement else {
        return;
    };
    for c in containers {
        let (Some(running), Ok(image)) = (&c.running, c.image.parse::<ImageReference>()) else {
            continue;
        };
        c.verification = Some(
            verdicts
                .judge(lookup, &image, running, requirement, RUNNING_RECHECK)
                .await,
        );
    }
}

/// The gate's conclusion over every artifact found for `digest` at `now`
/// (seconds since the epoch): each set's verdict, and the scan of the
/// first set that reads scans.
pub fn conclude(
    requirement: &Requirement,
    keys: &Keys,
    artifacts: &[Artifact],
    digest: &Digest,
    now: i64,
) -> Judged {
    let mut findings = None;
    let verdicts = requirement
        .sets
        .iter()
        .map(|set| {
            let (verdict, scan) = judge_set(set, keys, artifacts, digest, now);
            if findings.is_none() {
                findings = scan;
            }
            verdict
        })
        .collect();
    Judged {
        trust: Trust::of(requirement, verdicts),
        findings,
    }
}

/// One policy's verdict over every artifact found, and the scan it
/// accepted when it reads scans.
fn judge_set(
    set: &AuthoritySet,
    keys: &Keys,
    artifacts: &[Artifact],
    digest: &Digest,
    now: i64,
) -> (SetVerdict, Option<Findings>) {
    let (authorities, keyless) = match authorities(set, keys) {
        Ok(a) => a,
        Err(verdict) => return (verdict, None),
    };
    // Each bundle opened once; what it claims to be only says which check
    // it is meant for, never whether it passes.
    let opened: Vec<Opened> = artifacts
        .iter()
        .filter_map(|a| match a {
            Artifact::Bundle(bytes) => Some(freshen_verify::open_bundle_keyless(
                bytes,
                digest.as_str(),
                &authorities,
                &keyless,
                now,
            )),
            Artifact::Envelope(bytes) => Some(freshen_verify::open_envelope_json(
                bytes,
                digest.as_str(),
                &authorities,
            )),
            Artifact::SimpleSigning { .. } => None,
        })
        .collect();
    let signature = Verdict::combine(
        artifacts
            .iter()
            .filter_map(|a| match a {
                Artifact::SimpleSigning { payload, signature } => {
                    Some(freshen_verify::verify_simple_signing(
                        payload,
                        signature,
                        digest.as_str(),
                        &authorities,
                    ))
                }
                Artifact::Bundle(_) | Artifact::Envelope(_) => None,
            })
            .chain(
                opened
                    .iter()
                    .filter(|o| {
                        o.claimed_type
                            .as_deref()
                            .is_none_or(|t| t == IMAGE_SIGNATURE)
                    })
                    .map(|o| signature_verdict(o, IMAGE_SIGNATURE)),
            ),
    );
    let verdict = match signature {
        Verdict::Verified { authority } => authority,
        Verdict::Missing => return (SetVerdict::Missing, None),
        Verdict::Invalid(why) => return (SetVerdict::Invalid(why), None),
        Verdict::Untrusted { tried } => return (SetVerdict::Untrusted(tried), None),
    };
    let mut scan = None;
    for check in &set.attestations {
        match attestation(check, &opened) {
            Ok(found) => scan = scan.or(found),
            Err(why) => {
                return (
                    SetVerdict::Attestation {
                        check: check.name().into(),
                        why,
                    },
                    None,
                );
            }
        }
    }
    (SetVerdict::Verified(verdict), scan)
}

/// The set's keys and keyless authorities; one that cannot be read is a
/// verdict on its own, naming the field.
fn authorities(
    set: &AuthoritySet,
    keys: &Keys,
) -> Result<(Vec<Authority>, Vec<freshen_verify::keyless::Keyless>), SetVerdict> {
    let mut with_keys = Vec::new();
    let mut keyless = Vec::new();
    for (i, a) in set.authorities.iter().enumerate() {
        let field = match (&a.key, &a.keyless) {
            (_, Some(_)) => "keyless.trustedRoot",
            (KeySource::Pem(_), None) => "key.pem",
            (KeySource::Secret(_), None) => "key.secretRef",
            (KeySource::ConfigMap(_), None) => "key.configMapRef",
        };
        let unusable = |why: String| {
            SetVerdict::Unknown(format!(
                "{}: spec.verify.authorities[{i}].{field}: {why}",
                set.policy
            ))
        };
        let text = match &a.key {
            KeySource::Pem(pem) => pem.clone(),
            other => match keys.get(other).map(|k| &k.value) {
                Some(Ok(text)) => text.clone(),
                Some(Err(why)) => return Err(unusable(why.clone())),
                None => return Err(unusable("not read".into())),
            },
        };
        match &a.keyless {
            None => with_keys.push(Authority {
                name: a.name.clone(),
                key: PublicKey::from_pem(&text).map_err(|e| unusable(e.to_string()))?,
            }),
            Some(identity) => {
                use freshen_core::verify::SubjectMatch;
                use freshen_verify::keyless::{Keyless, Subject, TrustedRoot};
                let root =
                    TrustedRoot::from_json(text.as_bytes()).map_err(|e| unusable(e.to_string()))?;
                let subject = match &identity.subject {
                    SubjectMatch::Exact(s) => Subject::Exact(s.clone()),
                    SubjectMatch::Pattern(p) => {
                        Subject::pattern(p).map_err(|e| unusable(e.to_string()))?
                    }
                };
                keyless.push(Keyless {
                    name: a.name.clone(),
                    root: Arc::new(root),
                    issuer: identity.issuer.clone(),
                    subject,
                    require_transparency_log: identity.require_transparency_log,
                });
            }
        }
    }
    Ok((with_keys, keyless))
}

/// A bundle as a signature of `predicate_type`.
fn signature_verdict(opened: &Opened, predicate_type: &str) -> Verdict {
    match &opened.outcome {
        Ok(a) if a.predicate_type == predicate_type => Verdict::Verified {
            authority: a.authority.clone(),
        },
        Ok(a) => Verdict::Invalid(format!(
            "predicate type {:?}; expected {predicate_type:?}",
            a.predicate_type
        )),
        Err(v) => v.clone(),
    }
}

/// Whether one of the bundles passes `check`: a verified attestation of
/// its kind that says what the check asks. Its scan, for a scan check
/// (the latest finished when several pass). Else why none passes.
fn attestation(check: &AttestationCheck, opened: &[Opened]) -> Result<Option<Findings>, String> {
    let mut failures = Vec::new();
    let mut scans: Vec<(String, Findings)> = Vec::new();
    for o in opened {
        if !o.claimed_type.as_deref().is_some_and(|t| check.reads(t)) {
            continue;
        }
        let attested: &Attested = match &o.outcome {
            Ok(a) if check.reads(&a.predicate_type) => a,
            Ok(a) => {
                failures.push(format!("predicate type {:?}", a.predicate_type));
                continue;
            }
            Err(v) => {
                failures.push(verdict_text(v));
                continue;
            }
        };
        let passed = match check {
            AttestationCheck::Provenance { .. } => {
                freshen_verify::predicate::provenance(&attested.predicate_type, &attested.predicate)
                    .and_then(|p| check.check_provenance(&p))
            }
            AttestationCheck::Vulnerabilities => {
                freshen_verify::predicate::findings(&attested.predicate_type, &attested.predicate)
                    .map(|f| {
                        let finished = attested.predicate["metadata"]["scanFinishedOn"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned();
                        scans.push((finished, f));
                    })
            }
        };
        match passed {
            Ok(()) if scans.is_empty() => return Ok(None),
            Ok(()) => {}
            Err(why) => failures.push(format!("signed by {}: {why}", attested.authority)),
        }
    }
    if let Some((_, latest)) = scans.into_iter().max_by(|a, b| a.0.cmp(&b.0)) {
        return Ok(Some(latest));
    }
    match failures.first() {
        Some(first) => Err(first.clone()),
        None => Err(format!("no {} attestation found", check.name())),
    }
}

fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Verified { authority } => format!("signed by {authority}"),
        Verdict::Missing => "missing".into(),
        Verdict::Invalid(why) => format!("invalid: {why}"),
        Verdict::Untrusted { tried } => {
            format!("signed by none of the authorities ({})", tried.join(", "))
        }
    }
}
