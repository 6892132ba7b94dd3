//! What freshen announces as Kubernetes Events: the kind and every reason.
//!
//! A reason is part of freshen's interface (alerts and `kubectl get events
//! --field-selector reason=...` match on it), so each is one variant here
//! and its spelling comes from the variant's name, for serde and `as_str`
//! alike. A failed reconcile's Warning is the one Event not listed: its
//! reason is the error's bounded category in PascalCase.

use serde::{Deserialize, Serialize};

/// The kind of an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum EventKind {
    /// Progress.
    Normal,
    /// Something went wrong.
    Warning,
}

/// Why freshen published an Event.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::VariantArray,
    strum::EnumMessage,
)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum EventReason {
    /// A workload's `freshen.dev/*` annotations could not all be used.
    InvalidAnnotation,
    /// An imagePullSecret (of the pod template or its ServiceAccount) could
    /// not be read or parsed; look-ups go without it.
    PullSecretUnusable,
    /// A container's image is not a valid reference; it is not measured.
    InvalidImage,
    /// A workload now exceeds an age limit of a source it did not before.
    MaxAgeExceeded,
    /// Only a rebuild can freshen a container: its image is too old or its
    /// base moved on.
    RebuildRequired,
    /// A wanted refresh is held because a GitOps tool manages the workload.
    GitOpsManaged,
    /// A wanted refresh is held because the policy says `gitops: Commit`
    /// and the workload's git source cannot be found or is not allowed;
    /// the note says what is missing.
    GitSourceNotFound,
    /// freshen opened a pull request with a proven image (or a revert);
    /// the note links it.
    PullRequestOpened,
    /// A reviewer merged freshen's pull request; the reconciler applies it.
    PullRequestMerged,
    /// freshen's pull request was closed without being merged: by a
    /// reviewer (a Warning; the digest is rejected), or by freshen itself
    /// because its Refresh ended while the pull request was open (Normal).
    PullRequestClosed,
    /// A wanted refresh is held because the workload is paused; it starts
    /// once the workload is resumed.
    WorkloadPaused,
    /// A wanted restart is held because a PodDisruptionBudget that selects
    /// the workload's pods allows no disruption now; it starts once the
    /// budget allows one.
    DisruptionBudgetExhausted,
    /// A wanted refresh is held because the Refresh for that target ended
    /// without success; deleting it asks for another try.
    RefreshNotRetried,
    /// A wanted refresh is held because another workload's Refresh holds
    /// every name it could take.
    RefreshNameTaken,
    /// A Refresh started its canary.
    CanaryStarted,
    /// A Refresh waits: a Deployment freshen did not create holds the
    /// canary's name.
    CanaryNameTaken,
    /// A Refresh rolls the new image out to the whole workload.
    Promoting,
    /// A Refresh found the new image unhealthy and restores the old one.
    RollingBack,
    /// A Refresh ended with the workload on the new image.
    RefreshSucceeded,
    /// A Refresh ended with the old image restored; the digest is rejected.
    RolledBack,
    /// A Refresh stopped without changing the workload further.
    RefreshFailed,
    /// A policy's spec is invalid; it matches nothing until fixed.
    InvalidSpec,
    /// A rebuild started a run of its pipeline.
    RebuildStarted,
    /// A rebuild's tag names the rebuilt digest; dependants refresh to it.
    RebuildSucceeded,
    /// A rebuild's run failed or timed out; the next starts after a
    /// backoff.
    RebuildFailed,
    /// A newer rebuild of the image replaced a rebuild.
    RebuildSuperseded,
    /// A rebuild a workload needs was not asked for: the governing
    /// pipeline may not build it for the workload's namespace, or not from
    /// what the workload says (see the message).
    RebuildRefused,
    /// A new digest is not rolled out: no signature was found
    /// (`spec.verify`).
    SignatureMissing,
    /// A new digest is not rolled out: a signature is malformed, signs
    /// another digest, or was altered.
    SignatureInvalid,
    /// A new digest is not rolled out: it is signed, but by none of the
    /// authorities a policy trusts.
    SignatureUntrusted,
    /// A new digest is not rolled out: its signatures could not be checked
    /// (the registry did not answer, or a policy's key is unusable).
    SignatureUnchecked,
    /// A new digest is not rolled out: an attestation a policy requires
    /// (provenance, a vulnerability scan) is missing or fails its check.
    AttestationFailed,
    /// A new digest is not rolled out: its vulnerability scan has more
    /// Critical or High findings than the running digest's.
    VulnerabilityRegression,
    /// A refresh started before `minDigestAge` or outside the maintenance
    /// windows: its digest fixes a Critical finding (`urgentWhen`).
    UrgentRefresh,
}

impl EventReason {
    /// The reason as Events carry it, e.g. `CanaryStarted`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// What the reason means, from its documentation, on one line (the
    /// guide's reference of Event reasons is generated from it).
    pub fn meaning(self) -> String {
        use strum::EnumMessage as _;
        one_line(self.get_documentation().unwrap_or_default())
    }
}

/// `text` with its line breaks and runs of spaces made single spaces.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray;

    #[test]
    fn every_reason_is_spelled_alike_by_serde_and_as_str_and_reads_back() {
        for reason in EventReason::VARIANTS {
            let json = serde_json::to_value(reason).unwrap_or_default();
            assert_eq!(json, reason.as_str());
            assert_eq!(
                serde_json::from_value::<EventReason>(json).ok(),
                Some(*reason)
            );
            assert_eq!(reason.as_str().parse::<EventReason>(), Ok(*reason));
            assert_eq!(reason.to_string(), reason.as_str());
            assert!(
                reason
                    .as_str()
                    .chars()
                    .next()
                    .is_some_and(char::is_uppercase)
            );
            // The guide's reference is generated from these.
            assert!(
                reason.meaning().ends_with('.'),
                "{reason}: {}",
                reason.meaning()
            );
        }
    }
}
