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
/// The base image every container is built on, overriding the image's own
/// `org.opencontainers.image.base.name`; `base-image.<container>` for one.
pub const BASE_IMAGE: &str = "freshen.dev/base-image";
const BASE_IMAGE_FORM: &str =
    "an image reference with a tag to follow, e.g. docker.io/library/debian:12";

/// A workload annotation whose value is not of the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}={value:?} is invalid: expected {expected}")]
pub struct AnnotationError {
    /// The full annotation key.
    pub key: String,
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
                key: REFRESH.to_owned(),
                value: other.to_owned(),
                expected: "\"enabled\" or \"disabled\"",
            }),
        }
    }
}

/// The base image of `container`: `freshen.dev/base-image.<container>`, else
/// `freshen.dev/base-image`, else `None` (the image's own annotation counts).
/// A value that is not an image reference, or pins a digest without a tag,
/// is an error: a base pinned to a digest can never move.
pub fn base_image(
    annotations: Option<&BTreeMap<String, String>>,
    container: &str,
) -> Result<Option<freshen_core::ImageReference>, AnnotationError> {
    let Some(annotations) = annotations else {
        return Ok(None);
    };
    let specific = format!("{BASE_IMAGE}.{container}");
    let (key, value) = match (annotations.get(&specific), annotations.get(BASE_IMAGE)) {
        (Some(v), _) => (specific, v),
        (None, Some(v)) => (BASE_IMAGE.to_owned(), v),
        (None, None) => return Ok(None),
    };
    let invalid = || AnnotationError {
        key: key.clone(),
        value: value.clone(),
        expected: BASE_IMAGE_FORM,
    };
    let reference = freshen_core::ImageReference::parse(value).map_err(|_| invalid())?;
    if reference.effective_tag().is_none() {
        return Err(invalid());
    }
    Ok(Some(reference))
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
    fn base_image_per_container_wins_and_must_name_a_tag() {
        let a = BTreeMap::from([
            (BASE_IMAGE.to_owned(), "debian:12".to_owned()),
            (format!("{BASE_IMAGE}.sidecar"), "alpine:3.20".to_owned()),
        ]);
        let base = |c| base_image(Some(&a), c).map(|r| r.map(|r| r.to_string()));
        assert_eq!(base("app"), Ok(Some("docker.io/library/debian:12".into())));
        assert_eq!(
            base("sidecar"),
            Ok(Some("docker.io/library/alpine:3.20".into()))
        );
        assert_eq!(base_image(None, "app"), Ok(None));

        let pinned = BTreeMap::from([(
            format!("{BASE_IMAGE}.app"),
            format!("debian@sha256:{}", "a".repeat(64)),
        )]);
        let err = base_image(Some(&pinned), "app")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("freshen.dev/base-image.app") && err.contains("a tag to follow"),
            "{err}"
        );
        let junk = BTreeMap::from([(BASE_IMAGE.to_owned(), "Not An Image".to_owned())]);
        assert!(base_image(Some(&junk), "app").is_err());
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
