//! What every spec validation shares: the duration rule the API server
//! checks (CEL) and the parser checks again, and the error that names the
//! field.

use freshen_core::{DurationError, parse_duration};

/// The CEL rule every duration field carries: the form `parse_duration`
/// reads, not zero, and at most 100 years
/// ([`freshen_core::duration::MAX_DURATION_SECONDS`]). Each number has at
/// most 12 digits, so the sum cannot overflow CEL's int.
pub(crate) const DURATION_RULE: &str = concat!(
    "self.matches('^([0-9]{1,12}w)?([0-9]{1,12}d)?([0-9]{1,12}h)?([0-9]{1,12}m)?([0-9]{1,12}s)?$') ",
    "&& self.matches('[1-9]') && ",
    "(self.find('[0-9]+w') == '' ? 0 : int(self.find('[0-9]+w').replace('w', '')) * 604800) + ",
    "(self.find('[0-9]+d') == '' ? 0 : int(self.find('[0-9]+d').replace('d', '')) * 86400) + ",
    "(self.find('[0-9]+h') == '' ? 0 : int(self.find('[0-9]+h').replace('h', '')) * 3600) + ",
    "(self.find('[0-9]+m') == '' ? 0 : int(self.find('[0-9]+m').replace('m', '')) * 60) + ",
    "(self.find('[0-9]+s') == '' ? 0 : int(self.find('[0-9]+s').replace('s', ''))) ",
    "<= 3155760000"
);
pub(crate) const DURATION_MESSAGE: &str = "must be a positive duration of whole w, d, h, m or s, largest \
                                unit first, at most 100 years (36525d), e.g. 90s, 36h, 7d, 2w or 1d12h";

/// A spec field that does not hold what it must.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A duration field does not parse.
    #[error("spec.{field}: {source}")]
    Duration {
        /// The field, e.g. `maxImageAge`.
        field: &'static str,
        /// Why.
        source: DurationError,
    },
    /// A label selector uses an unknown operator or lacks values.
    #[error(
        "spec.{field}: {message}; expected matchExpressions with operator In or NotIn (with \
         values) or Exists or DoesNotExist (without)"
    )]
    Selector {
        /// The field, e.g. `selector`.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// A maintenance window does not parse.
    #[error("spec.windows: {0}")]
    Window(String),
    /// The canary query reads beyond the policy's namespace, or is not
    /// PromQL.
    #[error("spec.rollout.analysis.prometheus.query {0}")]
    Query(String),
    /// A rebuild pipeline, or the rebuild settings, cannot be used.
    #[error("{field}: {message}")]
    Pipeline {
        /// The field, e.g. `spec.pipelines[0].job.template.template.spec`.
        field: String,
        /// Why, and what is expected.
        message: String,
    },
    /// `spec.git` cannot be used.
    #[error("{field}: {message}")]
    Git {
        /// The field, e.g. `spec.git.repositories[0]`.
        field: String,
        /// Why, and what is expected.
        message: String,
    },
    /// A `spec.verify` authority cannot be used. The policy still governs
    /// (its gate fails closed: digests are held as `SignatureUnchecked`).
    #[error("{field}: {message}; every new digest is held (SignatureUnchecked) until fixed")]
    Key {
        /// The field, e.g. `spec.verify.authorities[0].key.pem`.
        field: String,
        /// Why, and what is expected.
        message: String,
    },
}

/// An optional duration field of a spec, or an error naming it.
pub(crate) fn spec_duration(
    field: &'static str,
    value: Option<&str>,
) -> Result<Option<std::time::Duration>, SpecError> {
    value
        .map(parse_duration)
        .transpose()
        .map_err(|source| SpecError::Duration { field, source })
}
