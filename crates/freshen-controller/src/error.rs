//! Errors of the controllers: one variant per step, each with a bounded
//! category used as metric label and Event reason.

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
    /// Writing a policy's status failed; retried later.
    #[error("writing policy status failed: {0}")]
    PolicyStatus(#[source] kube::Error),
    /// A Refresh step's request to the API server failed; retried (every
    /// action is idempotent).
    #[error("{0} failed: {1}")]
    Refresh(&'static str, #[source] kube::Error),
    /// Creating a Refresh failed; retried.
    #[error("{0} failed: {1}")]
    Plan(&'static str, #[source] kube::Error),
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
            Self::Registry(e) => e.category(),
            Self::PolicyStatus(_) => "policy_status",
            Self::Refresh(..) => "refresh_action",
            Self::Stale(_) => "conflict",
            Self::Serialize(_) => "serialize",
            Self::Plan(..) => "refresh_create",
            Self::Panicked(_) => "panic",
        }
    }
}
