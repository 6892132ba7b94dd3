//! Workload annotations, prefix `freshen.dev/`.
//!
//! Values are parsed strictly: anything but the documented forms is an
//! [`AnnotationError`] naming the annotation, the value and the expected form,
//! which the controller turns into a Warning Event. A bad value never panics
//! and never silently means something else.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use freshen_core::duration::DURATION_FORM;
use freshen_core::parse_duration;
use freshen_core::plan::Preferences;
use freshen_core::policy::Limits;
use freshen_core::rollout::Strategy;
use freshen_core::window::Window;

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

/// Longest an image may have been built ago, e.g. `30d`.
pub const MAX_IMAGE_AGE: &str = "freshen.dev/max-image-age";
/// Longest a container may have been running, e.g. `7d`.
pub const MAX_CONTAINER_AGE: &str = "freshen.dev/max-container-age";
/// The name of the `RefreshPolicy` (this namespace) or `ClusterRefreshPolicy`
/// that governs the workload, whatever the selectors say.
pub const POLICY: &str = "freshen.dev/policy";
/// Until when (RFC 3339) the workload's violations are snoozed.
pub const SNOOZE_UNTIL: &str = "freshen.dev/snooze-until";
/// Roll out new digests of the tags the containers name: `true` or `false`.
pub const FOLLOW_TAG: &str = "freshen.dev/follow-tag";
/// How new digests are rolled out: `canary` or `rolling`.
pub const STRATEGY: &str = "freshen.dev/strategy";
/// Maintenance windows, `;` separated, e.g. `Mon-Fri 09:00-16:00 Europe/Berlin`.
pub const WINDOW: &str = "freshen.dev/window";
/// Which of the governing policy's pipelines rebuilds the workload's images
/// (default: the policy's `spec.rebuild.pipeline`).
pub const PIPELINE: &str = "freshen.dev/pipeline";
/// The repository and branch a GitOps-managed workload is written in, when
/// its reconciler's objects do not say (`gitops: Commit`):
/// `<url>[#<branch>]`.
pub const GIT_SOURCE: &str = "freshen.dev/git-source";
/// The file (and for Helm values the path in it) that writes the
/// workload's image: `<file>[#<dotted.values.path>]`, relative to the
/// repository's root.
pub const IMAGE_PATH: &str = "freshen.dev/image-path";
const GIT_SOURCE_FORM: &str = "<url>[#<branch>], an https://, http:// or ssh:// repository URL \
                               without credentials, e.g. https://git.example.com/team/fleet.git#main";
const IMAGE_PATH_FORM: &str = "<file>[#<dotted.values.path>] relative to the repository's root, \
                               without .., e.g. apps/web/values.yaml#image";
/// Keys freshen writes itself; accepted so that they are never reported as
/// typos.
const RESERVED: [&str; 1] = [crate::refresh::REJECTED_DIGESTS];
const PIPELINE_FORM: &str = "the name of a pipeline in the governing policy's spec.pipelines (a \
                             DNS label: lowercase letters, digits and '-', at most 63)";
const POLICY_FORM: &str = "the name of a RefreshPolicy in the workload's namespace or of a \
                           ClusterRefreshPolicy (lowercase letters, digits, '-' and '.')";
const WINDOWS_FORM: &str = "one or more windows separated by ';', each `<days> <HH:MM>-<HH:MM> \
                            [time zone]`, e.g. `Mon-Fri 09:00-16:00 Europe/Berlin` (days: Mon..Sun, \
                            ranges, lists, or *)";
const SNOOZE_FORM: &str = "an RFC 3339 time, e.g. 2026-12-01T00:00:00Z";
const KNOWN_FORM: &str = "one of freshen.dev/refresh, max-image-age, max-container-age, \
                          base-image, base-image.<container>, policy, snooze-until, \
                          follow-tag, strategy, window, pipeline, git-source, image-path";

/// One annotation as the guide documents it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnotationDoc {
    /// The key; `<container>` stands for a container's name.
    pub key: &'static str,
    /// The form of its value.
    pub value: &'static str,
    /// A valid value.
    pub example: &'static str,
    /// What it does.
    pub meaning: &'static str,
}

/// Every annotation a workload's owner may set (and the one freshen writes
/// on the workload), in the order the guide lists them. The guide's
/// reference is generated from this table, and a test parses each example.
pub const DOCUMENTED: [AnnotationDoc; 14] = [
    AnnotationDoc {
        key: REFRESH,
        value: "`enabled` or `disabled`",
        example: "enabled",
        meaning: "Opts the workload in without a policy, or out even when a policy matches.",
    },
    AnnotationDoc {
        key: MAX_IMAGE_AGE,
        value: DURATION_FORM,
        example: "30d",
        meaning: "The longest ago its images may have been built; overrides the policies.",
    },
    AnnotationDoc {
        key: MAX_CONTAINER_AGE,
        value: DURATION_FORM,
        example: "7d",
        meaning: "The longest its containers may run; past it they are restarted on their own \
                  digest. Overrides the policies.",
    },
    AnnotationDoc {
        key: POLICY,
        value: POLICY_FORM,
        example: "storefront",
        meaning: "This RefreshPolicy (same namespace) or ClusterRefreshPolicy (whose \
                  namespaceSelector selects the namespace) governs the workload, whatever the \
                  selectors say.",
    },
    AnnotationDoc {
        key: SNOOZE_UNTIL,
        value: SNOOZE_FORM,
        example: "2026-12-01T00:00:00Z",
        meaning: "Violations are shown as snoozed and fail nothing until then; nothing is \
                  refreshed.",
    },
    AnnotationDoc {
        key: BASE_IMAGE,
        value: BASE_IMAGE_FORM,
        example: "docker.io/library/debian:12",
        meaning: "The base every container is built on, when the images' \
                  `org.opencontainers.image.base.name` does not say.",
    },
    AnnotationDoc {
        key: "freshen.dev/base-image.<container>",
        value: BASE_IMAGE_FORM,
        example: "docker.io/library/debian:12",
        meaning: "The base of one container, over `freshen.dev/base-image`.",
    },
    AnnotationDoc {
        key: FOLLOW_TAG,
        value: "`true` or `false`",
        example: "true",
        meaning: "Roll out new digests of the tags the containers name (overrides the policy's \
                  `followTag`).",
    },
    AnnotationDoc {
        key: STRATEGY,
        value: "`canary` or `rolling`",
        example: "canary",
        meaning: "How a new digest is rolled out: through a canary first, or by the workload's \
                  own rollout.",
    },
    AnnotationDoc {
        key: WINDOW,
        value: WINDOWS_FORM,
        example: "Mon-Fri 09:00-16:00 Europe/Berlin",
        meaning: "Refreshes start only inside one of these windows (over the policy's \
                  `windows`).",
    },
    AnnotationDoc {
        key: PIPELINE,
        value: PIPELINE_FORM,
        example: "kaniko",
        meaning: "Which of the governing policy's pipelines rebuilds the workload's images \
                  (default: the policy's `spec.rebuild.pipeline`).",
    },
    AnnotationDoc {
        key: GIT_SOURCE,
        value: GIT_SOURCE_FORM,
        example: "https://git.example.com/team/fleet.git#main",
        meaning: "The repository and branch that hold a GitOps-managed workload, when its Argo \
                  CD Application or Flux Kustomization does not say (`gitops: Commit` or \
                  `PullRequest`). It must be in the policy's `spec.git.repositories`.",
    },
    AnnotationDoc {
        key: IMAGE_PATH,
        value: IMAGE_PATH_FORM,
        example: "apps/web/values.yaml#image",
        meaning: "The file, and for Helm values the path in it, that writes the workload's \
                  image, when freshen cannot find it itself.",
    },
    AnnotationDoc {
        key: crate::refresh::REJECTED_DIGESTS,
        value: "written by freshen: `container@digest` entries, comma separated, newest last",
        example: "app@sha256:0f6673408548a6c5a8b4b1f5a1d0b6a0e5f1c4a9b3c2d1e0f9a8b7c6d5e4f3a2",
        meaning: "Digests rolled back for this workload (the last 10); they are never proposed \
                  again. Delete an entry to allow that digest again.",
    },
];

/// Whether freshen manages a workload, from `freshen.dev/refresh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshMode {
    /// Measured (and, later, refreshed) by freshen.
    Enabled,
    /// Left alone, even when a policy matches.
    Disabled,
}

impl RefreshMode {
    /// Reads `freshen.dev/refresh` from a workload's annotations: `None` when
    /// absent (a matching policy then opts the workload in). The match is
    /// exact (lowercase), so a typo is an error rather than a silent opt-out.
    pub fn from_annotations(
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Option<Self>, AnnotationError> {
        match annotations.and_then(|a| a.get(REFRESH)).map(String::as_str) {
            None => Ok(None),
            Some("enabled") => Ok(Some(Self::Enabled)),
            Some("disabled") => Ok(Some(Self::Disabled)),
            Some(other) => Err(AnnotationError {
                key: REFRESH.to_owned(),
                value: other.to_owned(),
                expected: "\"enabled\" or \"disabled\"",
            }),
        }
    }
}

/// Everything a workload's `freshen.dev/*` annotations configure. A value
/// that does not parse is left out (the rest still applies) and reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkloadSettings {
    /// `freshen.dev/refresh`, when set to a valid value.
    pub refresh: Option<RefreshMode>,
    /// `freshen.dev/refresh` is set but invalid.
    pub refresh_invalid: bool,
    /// `max-image-age` and `max-container-age`.
    pub limits: Limits,
    /// `freshen.dev/policy`.
    pub policy: Option<String>,
    /// `freshen.dev/snooze-until`.
    pub snooze_until: Option<DateTime<Utc>>,
    /// `follow-tag`, `strategy` and `window`.
    pub refresh_prefs: Preferences,
    /// `freshen.dev/pipeline`.
    pub pipeline: Option<String>,
    /// `freshen.dev/git-source`, checked.
    pub git_source: Option<String>,
    /// `freshen.dev/image-path`, checked.
    pub image_path: Option<String>,
}

impl WorkloadSettings {
    /// Parses every `freshen.dev/*` annotation, collecting one error per bad
    /// value (and per unknown key, which is most likely a typo).
    pub fn from_annotations(
        annotations: Option<&BTreeMap<String, String>>,
    ) -> (Self, Vec<AnnotationError>) {
        let mut settings = Self::default();
        let mut errors = Vec::new();
        match RefreshMode::from_annotations(annotations) {
            Ok(mode) => settings.refresh = mode,
            Err(e) => {
                settings.refresh_invalid = true;
                errors.push(e);
            }
        }
        let Some(annotations) = annotations else {
            return (settings, errors);
        };
        for (key, value) in annotations.range(PREFIX.to_owned()..) {
            if !key.starts_with(PREFIX) {
                break;
            }
            if let Err(e) = settings.apply(key, value) {
                errors.push(e);
            }
        }
        (settings, errors)
    }

    /// Applies one `freshen.dev/*` annotation, or says what it should be.
    fn apply(&mut self, key: &str, value: &str) -> Result<(), AnnotationError> {
        let invalid = |expected| AnnotationError {
            key: key.to_owned(),
            value: value.to_owned(),
            expected,
        };
        let duration = || {
            parse_duration(value)
                .map(Some)
                .map_err(|_| invalid(DURATION_FORM))
        };
        let name = |valid: fn(&str) -> bool, form| {
            valid(value)
                .then(|| value.to_owned())
                .ok_or_else(|| invalid(form))
        };
        match key {
            REFRESH => Ok(()),
            MAX_IMAGE_AGE => duration().map(|d| self.limits.max_image_age = d),
            MAX_CONTAINER_AGE => duration().map(|d| self.limits.max_container_age = d),
            PIPELINE => name(is_dns_label, PIPELINE_FORM).map(|p| self.pipeline = Some(p)),
            GIT_SOURCE => freshen_core::gitops::source::parse_git_source(value, "main")
                .map(|_| self.git_source = Some(value.trim().to_owned()))
                .map_err(|_| invalid(GIT_SOURCE_FORM)),
            IMAGE_PATH => freshen_core::gitops::source::parse_image_path(value)
                .map(|_| self.image_path = Some(value.trim().to_owned()))
                .map_err(|_| invalid(IMAGE_PATH_FORM)),
            POLICY => name(is_object_name, POLICY_FORM).map(|p| self.policy = Some(p)),
            FOLLOW_TAG => match value {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(invalid("\"true\" or \"false\"")),
            }
            .map(|follow| self.refresh_prefs.follow_tag = Some(follow)),
            STRATEGY => match value {
                "canary" | "Canary" => Ok(Strategy::Canary),
                "rolling" | "Rolling" => Ok(Strategy::Rolling),
                _ => Err(invalid("\"canary\" or \"rolling\"")),
            }
            .map(|strategy| self.refresh_prefs.strategy = Some(strategy)),
            WINDOW => value
                .split(';')
                .map(|w| w.parse::<Window>())
                .collect::<Result<Vec<_>, _>>()
                .map(|ws| self.refresh_prefs.windows = Some(ws))
                .map_err(|_| invalid(WINDOWS_FORM)),
            SNOOZE_UNTIL => DateTime::parse_from_rfc3339(value)
                .map(|t| self.snooze_until = Some(t.with_timezone(&Utc)))
                .map_err(|_| invalid(SNOOZE_FORM)),
            k if k == BASE_IMAGE || k.starts_with(&format!("{BASE_IMAGE}.")) => {
                let container = k.strip_prefix(&format!("{BASE_IMAGE}.")).unwrap_or("");
                base_image(
                    Some(&BTreeMap::from([(key.to_owned(), value.to_owned())])),
                    container,
                )
                .map(|_| ())
            }
            k if RESERVED.contains(&k) => Ok(()),
            _ => Err(invalid(KNOWN_FORM)),
        }
    }

    /// Whether freshen measures the workload: `refresh: enabled` always,
    /// `refresh: disabled` never, and otherwise when a policy governs it
    /// (or it names one). An invalid `refresh` value is measured, read-only,
    /// so that the error shows up where its owner looks.
    pub fn measured(&self, governed: bool) -> bool {
        match self.refresh {
            Some(RefreshMode::Enabled) => true,
            Some(RefreshMode::Disabled) => false,
            None => governed || self.refresh_invalid || self.policy.is_some(),
        }
    }
}

/// A Kubernetes object name (DNS-1123 subdomain).
fn is_object_name(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 253
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || c == '-' || c == '.')
}

/// A DNS label (RFC 1123): what pipeline names are.
fn is_dns_label(s: &str) -> bool {
    is_object_name(s) && s.len() <= 63 && !s.contains('.')
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
        assert_eq!(RefreshMode::from_annotations(None), Ok(None));
        assert_eq!(
            RefreshMode::from_annotations(Some(&BTreeMap::new())),
            Ok(None)
        );
        assert_eq!(
            RefreshMode::from_annotations(Some(&annotations("enabled"))),
            Ok(Some(RefreshMode::Enabled))
        );
        assert_eq!(
            RefreshMode::from_annotations(Some(&annotations("disabled"))),
            Ok(Some(RefreshMode::Disabled))
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

    fn settings(pairs: &[(&str, &str)]) -> (WorkloadSettings, Vec<AnnotationError>) {
        let a: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        WorkloadSettings::from_annotations(Some(&a))
    }

    #[test]
    fn every_setting_parses() {
        let (s, errors) = settings(&[
            (REFRESH, "enabled"),
            (MAX_IMAGE_AGE, "30d"),
            (MAX_CONTAINER_AGE, "1d12h"),
            (POLICY, "team-default"),
            (SNOOZE_UNTIL, "2026-12-01T10:00:00+01:00"),
            (BASE_IMAGE, "debian:12"),
            (STRATEGY, "rolling"),
            (FOLLOW_TAG, "true"),
            (WINDOW, "Mon-Fri 09:00-16:00 Europe/Berlin;Sat 10:00-11:00"),
            (crate::refresh::REJECTED_DIGESTS, "app@sha256:00"),
            ("app.kubernetes.io/name", "web"),
        ]);
        assert_eq!(errors, []);
        assert_eq!(s.refresh_prefs.strategy, Some(Strategy::Rolling));
        assert_eq!(s.refresh_prefs.follow_tag, Some(true));
        assert_eq!(s.refresh_prefs.windows.map(|w| w.len()), Some(2));
        assert_eq!(s.refresh, Some(RefreshMode::Enabled));
        assert_eq!(
            s.limits.max_image_age.map(|d| d.as_secs()),
            Some(30 * 86_400)
        );
        assert_eq!(
            s.limits.max_container_age.map(|d| d.as_secs()),
            Some(129_600)
        );
        assert_eq!(s.policy.as_deref(), Some("team-default"));
        assert_eq!(
            s.snooze_until.map(|t| t.to_rfc3339()),
            Some("2026-12-01T09:00:00+00:00".to_owned())
        );
    }

    #[test]
    fn every_bad_value_is_reported_and_the_rest_still_applies() {
        let (s, errors) = settings(&[
            (MAX_IMAGE_AGE, "30 days"),
            (MAX_CONTAINER_AGE, "7d"),
            (POLICY, "Team_Default"),
            (SNOOZE_UNTIL, "tomorrow"),
            ("freshen.dev/max-image-ag", "30d"),
            (&format!("{BASE_IMAGE}.app"), "Not An Image"),
            (FOLLOW_TAG, "yes"),
            (STRATEGY, "bluegreen"),
            (WINDOW, "weekdays 9-5"),
        ]);
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "freshen.dev/base-image.app",
                FOLLOW_TAG,
                "freshen.dev/max-image-ag",
                MAX_IMAGE_AGE,
                POLICY,
                SNOOZE_UNTIL,
                STRATEGY,
                WINDOW,
            ]
        );
        let errors: Vec<AnnotationError> = errors
            .into_iter()
            .filter(|e| ![FOLLOW_TAG, STRATEGY, WINDOW].contains(&e.key.as_str()))
            .collect();
        assert!(s.refresh_prefs == Preferences::default());
        assert!(
            errors[1]
                .to_string()
                .contains("expected one of freshen.dev/refresh")
        );
        assert!(errors[2].to_string().contains("\"30 days\""));
        assert!(errors[2].to_string().contains("e.g. 90s"));
        assert!(errors[4].to_string().contains("RFC 3339"));
        assert_eq!(s.limits.max_image_age, None);
        assert_eq!(
            s.limits.max_container_age.map(|d| d.as_secs()),
            Some(7 * 86_400)
        );
        assert_eq!((s.policy, s.snooze_until), (None, None));
    }

    #[test]
    fn git_annotations_are_checked_and_say_their_form() {
        let (s, errors) = settings(&[
            (GIT_SOURCE, "https://git.example.com/team/fleet.git#prod"),
            (IMAGE_PATH, "apps/web/values.yaml#image"),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            s.git_source.as_deref(),
            Some("https://git.example.com/team/fleet.git#prod")
        );
        assert_eq!(s.image_path.as_deref(), Some("apps/web/values.yaml#image"));
        let (s, errors) = settings(&[
            (GIT_SOURCE, "https://token:x@git.example.com/team/fleet.git"),
            (IMAGE_PATH, "../../etc/passwd"),
        ]);
        assert_eq!((s.git_source, s.image_path), (None, None));
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(messages[0].contains("<url>[#<branch>]"), "{messages:?}");
        assert!(messages[1].contains("without .."), "{messages:?}");
    }

    #[test]
    fn a_policy_opts_in_unless_the_workload_opts_out() {
        let (unset, _) = settings(&[]);
        assert!(!unset.measured(false));
        assert!(unset.measured(true));
        let (disabled, _) = settings(&[(REFRESH, "disabled")]);
        assert!(!disabled.measured(true));
        let (enabled, _) = settings(&[(REFRESH, "enabled")]);
        assert!(enabled.measured(false));
        let (typo, errors) = settings(&[(REFRESH, "yes")]);
        assert_eq!(errors.len(), 1);
        assert!(
            typo.measured(false),
            "an invalid value is shown, not hidden"
        );
        let (pinned, _) = settings(&[(POLICY, "strict")]);
        assert!(pinned.measured(false));
    }

    proptest::proptest! {
        /// Whatever the annotations hold, parsing never panics, every error
        /// names a key that is there with its value, and a key that parsed
        /// is not also reported.
        #[test]
        fn any_annotations_parse_without_panic(
            pairs in proptest::collection::btree_map(
                proptest::prop_oneof![
                    proptest::sample::select(vec![
                        REFRESH.to_owned(),
                        MAX_IMAGE_AGE.to_owned(),
                        MAX_CONTAINER_AGE.to_owned(),
                        POLICY.to_owned(),
                        SNOOZE_UNTIL.to_owned(),
                        BASE_IMAGE.to_owned(),
                    ]),
                    "freshen\\.dev/[a-z.-]{0,20}",
                    "[a-z./-]{0,20}",
                ],
                "\\PC{0,30}",
                0..6,
            )
        ) {
            let (settings, errors) = WorkloadSettings::from_annotations(Some(&pairs));
            for e in &errors {
                proptest::prop_assert_eq!(pairs.get(&e.key), Some(&e.value));
                proptest::prop_assert!(e.key.starts_with(PREFIX));
            }
            if settings.limits.max_image_age.is_some() {
                proptest::prop_assert!(!errors.iter().any(|e| e.key == MAX_IMAGE_AGE));
            }
            if settings.policy.is_some() {
                proptest::prop_assert!(!errors.iter().any(|e| e.key == POLICY));
            }
        }
    }

    #[test]
    fn every_documented_annotation_is_known_and_its_example_parses() {
        for doc in DOCUMENTED {
            let key = doc.key.replace("<container>", "app");
            let annotations = BTreeMap::from([(key.clone(), doc.example.to_owned())]);
            let (_, errors) = WorkloadSettings::from_annotations(Some(&annotations));
            assert!(errors.is_empty(), "{key}={}: {errors:?}", doc.example);
            assert!(doc.meaning.ends_with('.'), "{key}");
        }
        // Every key the unknown-key error lists is documented.
        let known = KNOWN_FORM.trim_start_matches("one of ");
        for short in known.split(", ") {
            let key = if short.starts_with(PREFIX) {
                short.to_owned()
            } else {
                format!("{PREFIX}{short}")
            };
            assert!(
                DOCUMENTED.iter().any(|d| d.key == key),
                "{key} is not in DOCUMENTED"
            );
        }
    }
}
