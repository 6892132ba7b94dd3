//! The verification gate's I/O: the signatures of a candidate digest
//! (from the registry, see `freshen_registry::signatures`), judged by
//! `freshen-verify` against each policy's authorities, concluded by
//! `freshen_core::verify`. Verdicts are kept per image, digest and
//! requirement, at most [`MAX_VERDICTS`]: a verified one until evicted (a
//! digest's signatures are read once), any other for [`RECHECK`] (a
//! signature is often pushed just after its image); a verdict the registry
//! could not give is not kept.

use std::collections::HashMap;
use std::sync::Mutex;

use freshen_core::verify::{Requirement, SetVerdict, Trust};
use freshen_core::{Digest, ImageReference};
use freshen_registry::signatures::Artifact;
use freshen_verify::{Authority, PublicKey, Verdict};
use sha2::Digest as _;

use crate::assess::Lookup;

/// Verdicts kept at most; past it they are all dropped.
pub const MAX_VERDICTS: usize = 10_000;
/// How long a digest found unsigned (or signed by others) is not asked
/// about again.
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// The statement type of a cosign image signature.
const IMAGE_SIGNATURE: &str = "https://sigstore.dev/cosign/sign/v1";

/// Verdicts already reached.
#[derive(Default)]
pub struct Verdicts {
    kept: Mutex<HashMap<String, (Trust, std::time::Instant)>>,
}

impl Verdicts {
    /// The verdict on `image` at `digest` under `requirement`: kept, or
    /// reached now.
    pub async fn judge(
        &self,
        lookup: &Lookup<'_>,
        image: &ImageReference,
        digest: &Digest,
        requirement: &Requirement,
    ) -> Trust {
        let hash = sha2::Sha256::digest(format!("{requirement:?}").as_bytes());
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let key = format!("{}@{}#{hex}", image.name(), digest);
        let now = std::time::Instant::now();
        if let Some((kept, at)) = self.kept.lock().ok().and_then(|k| k.get(&key).cloned())
            && (kept.verified() || now.duration_since(at) < RECHECK)
        {
            return kept;
        }
        let found = lookup
            .registry
            .signatures(image, digest, lookup.credential(image))
            .await;
        let artifacts = match found {
            Ok(a) => a,
            Err(e) => {
                let set = requirement.sets.first();
                return Trust::Failed {
                    policy: set.map(|s| s.policy.clone()).unwrap_or_default(),
                    verdict: SetVerdict::Unknown(e.to_string()),
                };
            }
        };
        let verdicts = requirement
            .sets
            .iter()
            .map(|set| judge_set(set, &artifacts, digest))
            .collect();
        let trust = Trust::of(requirement, verdicts);
        if let Ok(mut kept) = self.kept.lock() {
            if kept.len() >= MAX_VERDICTS {
                kept.clear();
            }
            kept.insert(key, (trust.clone(), now));
        }
        trust
    }
}

/// One policy's verdict over every artifact found.
fn judge_set(
    set: &freshen_core::verify::AuthoritySet,
    artifacts: &[Artifact],
    digest: &Digest,
) -> SetVerdict {
    let mut authorities = Vec::new();
    for (i, a) in set.authorities.iter().enumerate() {
        match PublicKey::from_pem(&a.pem) {
            Ok(key) => authorities.push(Authority {
                name: a.name.clone(),
                key,
            }),
            Err(e) => {
                return SetVerdict::Unknown(format!(
                    "{}: spec.verify.authorities[{i}].key.pem: {e}",
                    set.policy
                ));
            }
        }
    }
    let verdict = Verdict::combine(artifacts.iter().map(|artifact| match artifact {
        Artifact::Bundle(bytes) => freshen_verify::verify_bundle(
            bytes,
            digest.as_str(),
            Some(IMAGE_SIGNATURE),
            &authorities,
        ),
        Artifact::SimpleSigning { payload, signature } => {
            freshen_verify::verify_simple_signing(payload, signature, digest.as_str(), &authorities)
        }
    }));
    match verdict {
        Verdict::Verified { authority } => SetVerdict::Verified(authority),
        Verdict::Missing => SetVerdict::Missing,
        Verdict::Invalid(why) => SetVerdict::Invalid(why),
        Verdict::Untrusted { tried } => SetVerdict::Untrusted(tried),
    }
}
