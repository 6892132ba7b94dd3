//! The verification gate's decisions: which signatures a workload's new
//! digests need, and what the verdicts mean for a refresh. The checks of
//! bytes and keys are `freshen-verify`'s; this is policy.
//!
//! Each policy level that sets `spec.verify` adds one requirement: a set
//! of authorities, any one of which suffices for that set. Every set must
//! be satisfied, so a namespace's RefreshPolicy can add a requirement to a
//! ClusterRefreshPolicy's but never remove or loosen it; the mode is
//! `Enforce` when any level says so (a tenant cannot turn the cluster's
//! gate into `Audit`). No annotation touches verification.

use std::fmt;

/// What a failed verification does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Hold the refresh (default).
    #[default]
    Enforce,
    /// Report and export, roll out anyway.
    Audit,
}

/// A trusted key, by its name and PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAuthority {
    /// Its name, for Events and the report.
    pub name: String,
    /// Its public key, PEM.
    pub pem: String,
}

/// One policy's `spec.verify`: any one of its authorities suffices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthoritySet {
    /// `RefreshPolicy/<namespace>/<name>` or `ClusterRefreshPolicy/<name>`.
    pub policy: String,
    /// Its mode.
    pub mode: Mode,
    /// Its authorities.
    pub authorities: Vec<KeyAuthority>,
}

/// What a workload's new digests must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Enforce when any set enforces.
    pub mode: Mode,
    /// Every set must be satisfied.
    pub sets: Vec<AuthoritySet>,
}

/// The requirement of the policy levels that set one (the governing
/// ClusterRefreshPolicy's, the governing RefreshPolicy's); none when no
/// level does.
pub fn requirement(levels: impl IntoIterator<Item = AuthoritySet>) -> Option<Requirement> {
    let sets: Vec<AuthoritySet> = levels.into_iter().collect();
    if sets.is_empty() {
        return None;
    }
    let mode = match sets.iter().any(|s| s.mode == Mode::Enforce) {
        true => Mode::Enforce,
        false => Mode::Audit,
    };
    Some(Requirement { mode, sets })
}

/// What one set's signatures say about a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetVerdict {
    /// Signed by this authority of the set.
    Verified(String),
    /// No signature found.
    Missing,
    /// A signature is malformed, signs another digest, or was altered.
    Invalid(String),
    /// Signatures exist, none by the set's authorities (named).
    Untrusted(Vec<String>),
    /// Could not be judged: the registry did not answer, or a key of the
    /// set is unusable (why).
    Unknown(String),
}

/// What the gate concludes about a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Every set is satisfied, by these authorities.
    Verified(Vec<String>),
    /// A set failed: the first failure, with its policy.
    Failed {
        /// The policy whose set failed.
        policy: String,
        /// How.
        verdict: SetVerdict,
    },
}

impl Trust {
    /// The gate's conclusion from each set's verdict (in the order of
    /// `requirement.sets`).
    pub fn of(requirement: &Requirement, verdicts: Vec<SetVerdict>) -> Trust {
        let mut by = Vec::new();
        for (set, verdict) in requirement.sets.iter().zip(verdicts) {
            match verdict {
                SetVerdict::Verified(name) => by.push(name),
                verdict => {
                    return Trust::Failed {
                        policy: set.policy.clone(),
                        verdict,
                    };
                }
            }
        }
        Trust::Verified(by)
    }

    /// Verified.
    pub fn verified(&self) -> bool {
        matches!(self, Trust::Verified(_))
    }
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::Verified(by) => write!(f, "signed by {}", by.join(", ")),
            Trust::Failed { policy, verdict } => match verdict {
                SetVerdict::Verified(_) => write!(f, "verified ({policy})"),
                SetVerdict::Missing => write!(f, "not signed ({policy} requires a signature)"),
                SetVerdict::Invalid(why) => write!(f, "its signature is invalid: {why}"),
                SetVerdict::Untrusted(tried) => write!(
                    f,
                    "signed, but by none of {policy}'s authorities ({})",
                    tried.join(", ")
                ),
                SetVerdict::Unknown(why) => {
                    write!(f, "its signatures could not be checked: {why}")
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(policy: &str, mode: Mode, names: &[&str]) -> AuthoritySet {
        AuthoritySet {
            policy: policy.into(),
            mode,
            authorities: names
                .iter()
                .map(|n| KeyAuthority {
                    name: (*n).into(),
                    pem: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_namespace_adds_a_requirement_and_cannot_loosen_the_clusters() {
        assert_eq!(requirement([]), None);
        let cluster = set(
            "ClusterRefreshPolicy/platform",
            Mode::Enforce,
            &["platform"],
        );
        let tenant = set("RefreshPolicy/shop/team", Mode::Audit, &["team"]);
        let r = requirement([cluster, tenant]).unwrap_or_else(|| panic!("a requirement"));
        assert_eq!(r.mode, Mode::Enforce, "Audit in a namespace does not win");
        // The tenant's own signature does not satisfy the cluster's set.
        let trust = Trust::of(
            &r,
            vec![
                SetVerdict::Untrusted(vec!["platform".into()]),
                SetVerdict::Verified("team".into()),
            ],
        );
        assert_eq!(
            trust,
            Trust::Failed {
                policy: "ClusterRefreshPolicy/platform".into(),
                verdict: SetVerdict::Untrusted(vec!["platform".into()])
            }
        );
        assert!(
            trust
                .to_string()
                .contains("by none of ClusterRefreshPolicy/platform's")
        );
        let both = Trust::of(
            &r,
            vec![
                SetVerdict::Verified("platform".into()),
                SetVerdict::Verified("team".into()),
            ],
        );
        assert_eq!(
            both,
            Trust::Verified(vec!["platform".into(), "team".into()])
        );
        assert_eq!(both.to_string(), "signed by platform, team");
        let audit = requirement([set("RefreshPolicy/shop/team", Mode::Audit, &["team"])]);
        assert_eq!(audit.map(|r| r.mode), Some(Mode::Audit));
    }
}
