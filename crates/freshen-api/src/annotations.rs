//! Workload annotations, prefix `freshen.dev/`.
//!
//! Values are parsed strictly: anything but the documented forms is an
//! [`AnnotationError`] naming the annotation, the value and the expected form,
//! which the controller turns into a Warning Event. A bad value never panics
//! and never silently means something else.

use std::collections::BTreeMap;
use std::fmt;

/// The annotation prefix of every freshen key.
pub const PREFIX: &str = "freshen.dev/";
/// Opts a workload in or out: `enabled` or `disabled`.
pub const REFRESH: &str = "freshen.dev/refresh";

/// A workload annotation whose value is not of the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}={value:?} is invalid: expected {expected}")]
pub struct AnnotationError {
    /// The full annotation key.
    pub key: &'static str,
    /// The value found.
    pub value: String,
    /// The form the value must have.
    pub expected: &'static str,
}

/// Whether freshen manages a workload, from `freshen.dev/refresh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefreshMode {
    /// Measured (and, later, refreshed) by freshen.
    Enabled,
    /// Explicitly or implicitly left alone. The default: freshen is opt-in.
    #[default]
    Disabled,
}

impl RefreshMode {
    /// Reads `freshen.dev/refresh` from a workload's annotations. Absent means
    /// [`RefreshMode::Disabled`]; the match is exact (lowercase), so a typo is
    /// an error rather than a silent opt-out.
    pub fn from_annotations(
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Self, AnnotationError> {
        match annotations.and_then(|a| a.get(REFRESH)).map(String::as_str) {
            None => Ok(Self::Disabled),
            Some("enabled") => Ok(Self::Enabled),
            Some("disabled") => Ok(Self::Disabled),
            Some(other) => Err(AnnotationError {
                key: REFRESH,
                value: other.to_owned(),
                expected: "\"enabled\" or \"disabled\"",
            }),
        }
    }
}

impl fmt::Display for RefreshMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(REFRESH.to_owned(), value.to_owned())])
    }

    #[test]
    fn opt_in_is_explicit() {
        assert_eq!(
            RefreshMode::from_annotations(None),
            Ok(RefreshMode::Disabled)
        );
        assert_eq!(
            RefreshMode::from_annotations(Some(&BTreeMap::new())),
            Ok(RefreshMode::Disabled)
        );
        assert_eq!(
            RefreshMode::from_annotations(Some(&annotations("enabled"))),
            Ok(RefreshMode::Enabled)
        );
        assert_eq!(
            RefreshMode::from_annotations(Some(&annotations("disabled"))),
            Ok(RefreshMode::Disabled)
        );
    }

    #[test]
    fn a_typo_is_an_error_that_says_what_to_write() {
        let err = RefreshMode::from_annotations(Some(&annotations("Enabled")));
        let msg = err.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert_eq!(
            msg,
            "annotation freshen.dev/refresh=\"Enabled\" is invalid: expected \"enabled\" or \"disabled\""
        );
    }
}
