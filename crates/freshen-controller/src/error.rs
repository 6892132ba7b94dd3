//! Errors of the controllers: one variant per step, each with a bounded
//! category used as metric label and, in CamelCase, as the reason of the
//! Warning Event the failed object gets.

use std::sync::Arc;

use freshen_registry::RegistryError;

/// A reconcile that failed at one of its steps.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object lacks a field every object of its kind has (name, namespace).
    #[error("object is missing {0}")]
    MissingField(&'static str),
    /// Looking up an image in its registry failed; retried later. Shared
    /// (`Arc`) because one failed request answers every workload that asked.
    #[error(transparent)]
    Registry(#[from] Arc<RegistryError>),
    /// A registry refused the credentials shown (or their absence); the
    /// note says which pull secret was tried. Retried later.
    #[error("{source}; {credentials}")]
    RegistryRefused {
        /// The refusal.
        source: Arc<RegistryError>,
        /// Which pull secret's credentials were shown, or that none were.
        credentials: String,
    },
    /// Writing a policy's status failed; retried later.
    #[error("writing policy status failed: {0}")]
    PolicyStatus(#[source] kube::Error),
    /// Storing a Refresh's progress (before acting) failed; retried.
    #[error("storing the Refresh's progress failed: {0}")]
    StoreProgress(#[source] kube::Error),
    /// Clearing a Refresh's published Events failed; retried.
    #[error("clearing the Refresh's published events failed: {0}")]
    ClearEvents(#[source] kube::Error),
    /// Adding or removing a Refresh's finalizer failed; retried.
    #[error("updating the Refresh's finalizer failed: {0}")]
    Finalizer(#[source] kube::Error),
    /// Reading the whole workload (to copy its template into the canary)
    /// failed; retried.
    #[error("reading the workload failed: {0}")]
    ReadWorkload(#[source] kube::Error),
    /// Creating the canary Deployment failed; retried.
    #[error("creating the canary failed: {0}")]
    CreateCanary(#[source] kube::Error),
    /// Deleting the canary Deployment failed; retried.
    #[error("deleting the canary failed: {0}")]
    DeleteCanary(#[source] kube::Error),
    /// Patching the workload's container image failed; retried.
    #[error("patching the workload's image failed: {0}")]
    PatchImage(#[source] kube::Error),
    /// Recording the rejected digest on the workload failed; retried.
    #[error("recording the rejected digest failed: {0}")]
    RecordRejected(#[source] kube::Error),
    /// Creating a Refresh failed; retried.
    #[error("creating the Refresh failed: {0}")]
    CreateRefresh(#[source] kube::Error),
    /// Reading the PodDisruptionBudgets before a restart failed; retried.
    #[error("reading the PodDisruptionBudgets failed: {0}")]
    ReadBudgets(#[source] kube::Error),
    /// Recording a Rebuild failed; retried.
    #[error("recording the Rebuild failed: {0}")]
    CreateRebuild(#[source] kube::Error),
    /// Storing a Rebuild's progress failed; retried.
    #[error("storing the Rebuild's progress failed: {0}")]
    StoreRebuild(#[source] kube::Error),
    /// Starting a pipeline run failed; retried.
    #[error("starting the pipeline run failed: {0}")]
    TriggerRun(#[source] kube::Error),
    /// Stopping a pipeline run failed; retried.
    #[error("stopping the pipeline run failed: {0}")]
    CancelRun(#[source] kube::Error),
    /// A pipeline's template could not be made into a run (the policy's
    /// validation should have refused it); waits for a change.
    #[error("the pipeline cannot be run: {0}")]
    Pipeline(String),
    /// Finding the workload's git source, or pushing to it, failed
    /// (`gitops: Commit`); retried. The message says what is missing.
    #[error("promoting through git: {0}")]
    Git(String),
    /// A guarded write lost to a concurrent change; the next step sees it.
    #[error("{0}")]
    Stale(&'static str),
    /// The reconcile panicked (a bug); contained to this object and retried.
    #[error("reconcile panicked: {0}")]
    Panicked(String),
    /// An object could not be serialized (a programming error).
    #[error("serializing failed: {0}")]
    Serialize(#[source] serde_json::Error),
}

impl Error {
    /// A bounded label for metrics and Event reasons: never object names,
    /// digests or error text.
    pub fn category(&self) -> &'static str {
        match self {
            Self::MissingField(_) => "missing_field",
            Self::Registry(e) | Self::RegistryRefused { source: e, .. } => e.category(),
            Self::PolicyStatus(_) => "policy_status",
            Self::StoreProgress(_) => "refresh_store_progress",
            Self::ClearEvents(_) => "refresh_clear_events",
            Self::Finalizer(_) => "refresh_finalizer",
            Self::ReadWorkload(_) => "refresh_read_workload",
            Self::CreateCanary(_) => "refresh_create_canary",
            Self::DeleteCanary(_) => "refresh_delete_canary",
            Self::PatchImage(_) => "refresh_patch_image",
            Self::RecordRejected(_) => "refresh_record_rejected",
            Self::CreateRefresh(_) => "refresh_create",
            Self::ReadBudgets(_) => "refresh_read_budgets",
            Self::CreateRebuild(_) => "rebuild_create",
            Self::StoreRebuild(_) => "rebuild_store_progress",
            Self::TriggerRun(_) => "rebuild_trigger",
            Self::CancelRun(_) => "rebuild_cancel",
            Self::Pipeline(_) => "rebuild_pipeline",
            Self::Git(_) => "refresh_git",
            Self::Stale(_) => "conflict",
            Self::Panicked(_) => "panic",
            Self::Serialize(_) => "serialize",
        }
    }

    /// The Event reason: the category in CamelCase, e.g.
    /// `RegistryUnavailable`.
    pub fn reason(&self) -> String {
        camel_case(self.category())
    }

    /// Whether retrying can help. A malformed object waits for a change
    /// instead of retrying every interval. (A refused registry is retried:
    /// the workload's other containers must still be measured.)
    pub fn heals(&self) -> bool {
        !matches!(
            self,
            Self::MissingField(_) | Self::Serialize(_) | Self::Pipeline(_)
        )
    }

    /// Whether a failed reconcile deserves a Warning Event on its object: a
    /// lost write race does not, the next look sees the winner.
    pub fn worth_an_event(&self) -> bool {
        !matches!(self, Self::Stale(_))
    }

    /// The error and its causes, `: `-joined, for an Event note.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            // thiserror's `{0}` already shows the direct cause.
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        text
    }
}

/// `registry_not_found` -> `RegistryNotFound`.
fn camel_case(snake: &str) -> String {
    snake
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_the_categories_in_camel_case() {
        assert_eq!(camel_case("registry_not_found"), "RegistryNotFound");
        assert_eq!(Error::Stale("x").reason(), "Conflict");
        assert_eq!(Error::Panicked("x".into()).reason(), "Panic");
        assert_eq!(
            Error::MissingField("metadata.name").reason(),
            "MissingField"
        );
    }

    #[test]
    fn only_errors_that_can_heal_are_retried() {
        assert!(!Error::MissingField("metadata.name").heals());
        assert!(Error::Stale("x").heals());
        assert!(!Error::Stale("x").worth_an_event());
        let backing_off = Arc::new(RegistryError::BackingOff {
            image: "i".into(),
            registry: "r".into(),
            retry_in: std::time::Duration::from_secs(3),
        });
        assert!(Error::Registry(backing_off).heals());
    }
}
