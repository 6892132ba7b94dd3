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

use std::collections::BTreeSet;
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

/// A trusted signer, by its name and where its PEM is (for a keyless
/// one, where its trusted root is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAuthority {
    /// Its name, for Events and the report.
    pub name: String,
    /// Its public key, or a keyless one's `trusted_root.json`.
    pub key: KeySource,
    /// Keyless: the identity its certificates must carry.
    pub keyless: Option<KeylessIdentity>,
}

/// The identity a keyless signature's certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeylessIdentity {
    /// The OIDC issuer.
    pub issuer: String,
    /// The subject (SAN).
    pub subject: SubjectMatch,
    /// A verified transparency log entry is required.
    pub require_transparency_log: bool,
}

/// How a keyless subject is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectMatch {
    /// Exactly.
    Exact(String),
    /// A regular expression matching the whole subject.
    Pattern(String),
}

/// Where a public key's PEM is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// Inline.
    Pem(String),
    /// A key of a Secret's data.
    Secret(ObjectKey),
    /// A key of a ConfigMap's data.
    ConfigMap(ObjectKey),
}

/// A key of a namespaced object's data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The policy's namespace; `None` for a ClusterRefreshPolicy's, which
    /// names objects in freshen's own namespace.
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
    /// The key in its data.
    pub key: String,
}

/// One policy's `spec.verify`: any one of its authorities suffices, for
/// the signature and for each attestation it requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthoritySet {
    /// `RefreshPolicy/<namespace>/<name>` or `ClusterRefreshPolicy/<name>`.
    pub policy: String,
    /// Its mode.
    pub mode: Mode,
    /// Its authorities.
    pub authorities: Vec<KeyAuthority>,
    /// The attestations a digest must also carry, signed by one of them.
    pub attestations: Vec<AttestationCheck>,
    /// What its vulnerability attestations decide.
    pub vulnerabilities: VulnPolicy,
}

/// What a workload's new digests must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Enforce when any set enforces.
    pub mode: Mode,
    /// Every set must be satisfied.
    pub sets: Vec<AuthoritySet>,
    /// Each flag set when any set sets it.
    pub vulnerabilities: VulnPolicy,
}

/// SLSA provenance v1's predicate type.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// SLSA provenance v0.2's predicate type (still what many builders write).
pub const SLSA_PROVENANCE_V02: &str = "https://slsa.dev/provenance/v0.2";
/// cosign's vulnerability-scan predicate type (`cosign attest --type vuln`).
pub const COSIGN_VULN: &str = "https://cosign.sigstore.dev/attestation/vuln/v1";
/// in-toto's vulnerability predicate type, any version (`.../vulns/v0.1`).
pub const IN_TOTO_VULNS: &str = "https://in-toto.io/attestation/vulns";

/// An attestation a digest must carry, and what it must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttestationCheck {
    /// SLSA provenance whose builder and source match one of the patterns
    /// each (none given: any).
    Provenance {
        /// Patterns for `runDetails.builder.id` (`*` matches any run of
        /// characters).
        builder_id: Vec<String>,
        /// Patterns for the source repository.
        source: Vec<String>,
    },
    /// A vulnerability scan (cosign's `vuln` or in-toto's `vulns`).
    Vulnerabilities,
}

impl AttestationCheck {
    /// Its name in Events: `provenance` or `vulnerabilities`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Provenance { .. } => "provenance",
            Self::Vulnerabilities => "vulnerabilities",
        }
    }

    /// Whether an attestation of `predicate_type` is one this check reads.
    pub fn reads(&self, predicate_type: &str) -> bool {
        match self {
            Self::Provenance { .. } => {
                predicate_type == SLSA_PROVENANCE_V1 || predicate_type == SLSA_PROVENANCE_V02
            }
            Self::Vulnerabilities => is_vulnerability_scan(predicate_type),
        }
    }

    /// Whether `provenance` passes this check (a vulnerability check has
    /// nothing to match); the error names the field and what was found.
    pub fn check_provenance(&self, provenance: &Provenance) -> Result<(), String> {
        let Self::Provenance { builder_id, source } = self else {
            return Ok(());
        };
        if !builder_id.is_empty() {
            let found = provenance.builder_id.as_deref().unwrap_or("");
            if !builder_id.iter().any(|p| matches(p, found)) {
                return Err(format!(
                    "builder.id {found:?} matches none of {}",
                    builder_id.join(", ")
                ));
            }
        }
        if !source.is_empty()
            && !provenance
                .sources
                .iter()
                .any(|s| source.iter().any(|p| matches(p, s)))
        {
            return Err(format!(
                "source {} matches none of {}",
                match provenance.sources.first() {
                    Some(s) => format!("{s:?}"),
                    None => "(none recorded)".into(),
                },
                source.join(", ")
            ));
        }
        Ok(())
    }
}

/// Whether `predicate_type` is a vulnerability scan freshen reads.
pub fn is_vulnerability_scan(predicate_type: &str) -> bool {
    predicate_type == COSIGN_VULN || predicate_type.starts_with(IN_TOTO_VULNS)
}

/// Whether `text` matches `pattern`, where `*` matches any run of
/// characters and everything else itself. Linear in both lengths (no
/// backtracking blow-up on a tenant's pattern).
pub fn matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == text;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// What a provenance attestation says, as far as freshen checks it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// `runDetails.builder.id` (v1) or `builder.id` (v0.2).
    pub builder_id: Option<String>,
    /// The source repositories it names (external parameters, the first
    /// resolved dependency, v0.2's config source), without `git+` or ref.
    pub sources: Vec<String>,
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// CVSS 9.0 and up.
    Critical,
    /// CVSS 7.0 to 8.9.
    High,
    /// CVSS 4.0 to 6.9.
    Medium,
    /// Below 4.0.
    Low,
    /// No severity given, or one not understood.
    Unknown,
}

impl Severity {
    /// Every severity, worst first.
    pub const ALL: [Severity; 5] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Unknown,
    ];

    /// Its label value: `critical`, `high`, `medium`, `low`, `unknown`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::High => "high",
            Self::Medium => "medium",
            Self::Low => "low",
            Self::Unknown => "unknown",
        }
    }

    /// A scanner's word (Trivy's `CRITICAL`, Grype's `Critical`, OSV's
    /// `MODERATE`, ...) or a CVSS score as text.
    pub fn parse(text: &str) -> Severity {
        let word = text.trim().to_ascii_lowercase();
        match word.as_str() {
            "critical" => Self::Critical,
            "high" | "important" => Self::High,
            "medium" | "moderate" => Self::Medium,
            "low" | "negligible" | "minor" => Self::Low,
            _ => word
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite())
                .map_or(Self::Unknown, Self::of_score),
        }
    }

    /// The CVSS v3 band of `score`.
    pub fn of_score(score: f64) -> Severity {
        if score >= 9.0 {
            Self::Critical
        } else if score >= 7.0 {
            Self::High
        } else if score >= 4.0 {
            Self::Medium
        } else if score > 0.0 {
            Self::Low
        } else {
            Self::Unknown
        }
    }
}

/// Critical findings remembered by id, at most (counts go on past it).
pub const MAX_CRITICAL_IDS: usize = 4096;

/// What a vulnerability scan found: counts by severity, and the ids of the
/// Critical ones (to tell which a new digest fixes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    counts: [u32; 5],
    critical: BTreeSet<String>,
}

impl Findings {
    /// Counts one finding (an id seen twice counts once when Critical).
    pub fn add(&mut self, id: &str, severity: Severity) {
        if severity == Severity::Critical {
            if self.critical.contains(id) {
                return;
            }
            if self.critical.len() < MAX_CRITICAL_IDS {
                self.critical.insert(id.chars().take(128).collect());
            }
        }
        let at = Severity::ALL
            .iter()
            .position(|s| *s == severity)
            .unwrap_or(4);
        self.counts[at] = self.counts[at].saturating_add(1);
    }

    /// Findings of `severity`.
    pub fn count(&self, severity: Severity) -> u32 {
        Severity::ALL
            .iter()
            .position(|s| *s == severity)
            .map_or(0, |at| self.counts[at])
    }

    /// The Critical findings by id.
    pub fn critical(&self) -> &BTreeSet<String> {
        &self.critical
    }
}

impl fmt::Display for Findings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} critical, {} high",
            self.count(Severity::Critical),
            self.count(Severity::High)
        )
    }
}

/// `spec.verify.vulnerabilities`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VulnPolicy {
    /// Never roll out a digest with more Critical or High findings than
    /// the running one.
    pub no_regression: bool,
    /// A digest that fixes a Critical finding of the running one skips
    /// `minDigestAge` and the maintenance windows.
    pub urgent_when_critical: bool,
}

impl VulnPolicy {
    /// Whether anything reads vulnerability attestations.
    pub fn any(self) -> bool {
        self.no_regression || self.urgent_when_critical
    }
}

/// What a candidate's scan says against the running digest's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    /// More Critical or High findings than the running digest.
    Regression {
        /// The running digest's findings.
        running: Findings,
        /// The candidate's.
        candidate: Findings,
    },
    /// It fixes these Critical findings of the running digest.
    Fixes(Vec<String>),
    /// Neither.
    Same,
}

/// Compares a candidate's findings with the running digest's. Nothing to
/// compare (either unscanned) is [`Comparison::Same`]: a fleet that starts
/// attesting must still be able to move.
pub fn compare(running: Option<&Findings>, candidate: Option<&Findings>) -> Comparison {
    let (Some(running), Some(candidate)) = (running, candidate) else {
        return Comparison::Same;
    };
    if candidate.count(Severity::Critical) > running.count(Severity::Critical)
        || candidate.count(Severity::High) > running.count(Severity::High)
    {
        return Comparison::Regression {
            running: running.clone(),
            candidate: candidate.clone(),
        };
    }
    let fixed: Vec<String> = running
        .critical
        .difference(&candidate.critical)
        .take(8)
        .cloned()
        .collect();
    match fixed.is_empty() {
        true => Comparison::Same,
        false => Comparison::Fixes(fixed),
    }
}

/// What the gate found for one digest: its trust, and the findings of
/// the vulnerability attestation the first set that reads them accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// The signatures' and attestations' conclusion.
    pub trust: Trust,
    /// Its scan, when a set reads scans and one was accepted.
    pub findings: Option<Findings>,
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
    let vulnerabilities = VulnPolicy {
        no_regression: sets.iter().any(|s| s.vulnerabilities.no_regression),
        urgent_when_critical: sets.iter().any(|s| s.vulnerabilities.urgent_when_critical),
    };
    Some(Requirement {
        mode,
        sets,
        vulnerabilities,
    })
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
    /// Signed, but an attestation the set requires is missing, signed by
    /// none of its authorities, or says what the check refuses.
    Attestation {
        /// The check, e.g. `provenance`.
        check: String,
        /// Why.
        why: String,
    },
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

    /// Its metric label: `verified`, `missing`, `invalid`, `untrusted`,
    /// `attestation_failed` or `unknown` (six values, bounded).
    pub fn label(&self) -> &'static str {
        match self {
            Trust::Verified(_) => "verified",
            Trust::Failed { verdict, .. } => match verdict {
                SetVerdict::Verified(_) => "verified",
                SetVerdict::Missing => "missing",
                SetVerdict::Invalid(_) => "invalid",
                SetVerdict::Untrusted(_) => "untrusted",
                SetVerdict::Attestation { .. } => "attestation_failed",
                SetVerdict::Unknown(_) => "unknown",
            },
        }
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
                SetVerdict::Attestation { check, why } => {
                    write!(
                        f,
                        "signed, but its {check} attestation fails {policy}: {why}"
                    )
                }
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
                    key: KeySource::Pem(String::new()),
                    keyless: None,
                })
                .collect(),
            attestations: Vec::new(),
            vulnerabilities: VulnPolicy::default(),
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

    #[test]
    fn a_pattern_matches_with_stars_and_nothing_else() {
        assert!(matches(
            "https://github.com/acme/*",
            "https://github.com/acme/shop"
        ));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "aXbYc"));
        assert!(!matches("a*a", "a"), "prefix and suffix do not overlap");
        assert!(!matches(
            "https://github.com/acme/*",
            "https://github.com/acmex/shop"
        ));
        assert!(matches("exact", "exact") && !matches("exact", "exactly"));
        assert!(!matches("a.c", "abc"), "a dot is a dot");
        // A tenant's pathological pattern stays linear.
        let long = "a".repeat(100_000);
        assert!(!matches(&"*a".repeat(1000).replace("*a*a", "*a*b"), &long));
    }

    #[test]
    fn provenance_must_name_a_matching_builder_and_source() {
        let check = AttestationCheck::Provenance {
            builder_id: vec!["https://ci.example/builder@*".into()],
            source: vec!["https://git.example/acme/*".into()],
        };
        let good = Provenance {
            builder_id: Some("https://ci.example/builder@v2".into()),
            sources: vec!["https://git.example/acme/shop".into()],
        };
        assert_eq!(check.check_provenance(&good), Ok(()));
        let other = Provenance {
            builder_id: Some("https://evil.example/builder".into()),
            ..good.clone()
        };
        let e = check.check_provenance(&other).unwrap_err();
        assert!(
            e.starts_with("builder.id \"https://evil.example/builder\" matches none"),
            "{e}"
        );
        let nowhere = Provenance {
            sources: Vec::new(),
            ..good
        };
        let e = check.check_provenance(&nowhere).unwrap_err();
        assert!(e.contains("(none recorded)"), "{e}");
        assert!(check.reads(SLSA_PROVENANCE_V1) && check.reads(SLSA_PROVENANCE_V02));
        assert!(!check.reads(COSIGN_VULN));
        assert!(
            AttestationCheck::Vulnerabilities.reads("https://in-toto.io/attestation/vulns/v0.1")
        );
    }

    #[test]
    fn severities_are_read_from_words_and_scores() {
        assert_eq!(Severity::parse("CRITICAL"), Severity::Critical);
        assert_eq!(Severity::parse("Moderate"), Severity::Medium);
        assert_eq!(Severity::parse("9.8"), Severity::Critical);
        assert_eq!(Severity::parse("7.0"), Severity::High);
        assert_eq!(Severity::parse("NaN"), Severity::Unknown);
        assert_eq!(Severity::parse("whatever"), Severity::Unknown);
    }

    fn scan(critical: &[&str], high: u32) -> Findings {
        let mut f = Findings::default();
        for id in critical {
            f.add(id, Severity::Critical);
        }
        for i in 0..high {
            f.add(&format!("H-{i}"), Severity::High);
        }
        f
    }

    #[test]
    fn a_candidate_regresses_with_more_critical_or_high_and_fixes_what_it_drops() {
        let running = scan(&["CVE-1"], 2);
        assert_eq!(compare(Some(&running), None), Comparison::Same);
        assert_eq!(compare(None, Some(&running)), Comparison::Same);
        assert!(matches!(
            compare(Some(&running), Some(&scan(&["CVE-1", "CVE-2"], 0))),
            Comparison::Regression { .. }
        ));
        assert!(matches!(
            compare(Some(&running), Some(&scan(&["CVE-1"], 3))),
            Comparison::Regression { .. }
        ));
        assert_eq!(
            compare(Some(&running), Some(&scan(&[], 2))),
            Comparison::Fixes(vec!["CVE-1".into()])
        );
        // One Critical swapped for another fixes the old one.
        assert_eq!(
            compare(Some(&running), Some(&scan(&["CVE-9"], 1))),
            Comparison::Fixes(vec!["CVE-1".into()])
        );
        assert_eq!(compare(Some(&running), Some(&running)), Comparison::Same);
        let mut twice = Findings::default();
        twice.add("CVE-1", Severity::Critical);
        twice.add("CVE-1", Severity::Critical);
        assert_eq!(twice.count(Severity::Critical), 1);
        assert_eq!(running.to_string(), "1 critical, 2 high");
    }
}
