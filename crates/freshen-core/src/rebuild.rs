//! Rebuild pipelines, decided without I/O: which rebuild an image needs and
//! its deterministic name, the template language pipelines are written in,
//! and the state machine of one rebuild (trigger, watch, retry with backoff,
//! succeed when the tag names a new digest).
//!
//! One rebuild serves every workload that runs the image: its name is a hash
//! of the pipeline, the image and what made it stale (the new base digest, or
//! the digest grown too old), so every dependant computes the same name and
//! a second create finds the first.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::age::{elapsed, later};
use crate::event::{EventKind, EventReason};
use crate::image::{Digest, ImageReference};
use crate::policy::Source;
use crate::rollout::Reason;

/// The variables a pipeline template may name, as `$(name)`.
pub const VARIABLES: [&str; 12] = [
    "image",
    "image.repository",
    "image.tag",
    "image.digest",
    "base.name",
    "base.oldDigest",
    "base.newDigest",
    "reason",
    "workload",
    "namespace",
    "rebuild.name",
    "rebuild.id",
];

/// Why a template cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `$(...)` names a variable that does not exist.
    #[error(
        "unknown variable $({0}); expected one of $(image), $(image.repository), $(image.tag), \
         $(image.digest), $(base.name), $(base.oldDigest), $(base.newDigest), $(reason), \
         $(workload), $(namespace), $(rebuild.name), $(rebuild.id) (write $$( for a literal $()"
    )]
    Unknown(String),
    /// `$(` without its `)`.
    #[error("unclosed $( in {0:?}")]
    Unclosed(String),
}

/// Every `$(name)` of `text` (`$$(` is a literal `$(`), or the first
/// malformed or unknown one.
pub fn check(text: &str) -> Result<(), TemplateError> {
    render_with(text, |name| {
        VARIABLES
            .contains(&name)
            .then(String::new)
            .ok_or_else(|| TemplateError::Unknown(name.to_owned()))
    })
    .map(|_| ())
}

/// `text` with every `$(name)` replaced by its value in `values`; an
/// unknown name is an error, a known one without a value is empty.
pub fn render(
    text: &str,
    values: &BTreeMap<&'static str, String>,
) -> Result<String, TemplateError> {
    render_with(text, |name| {
        if !VARIABLES.contains(&name) {
            return Err(TemplateError::Unknown(name.to_owned()));
        }
        Ok(values.get(name).cloned().unwrap_or_default())
    })
}

fn render_with(
    text: &str,
    mut value: impl FnMut(&str) -> Result<String, TemplateError>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(literal) = after.strip_prefix("$(") {
            out.push_str("$(");
            rest = literal;
        } else if let Some(open) = after.strip_prefix('(') {
            let close = open
                .find(')')
                .ok_or_else(|| TemplateError::Unclosed(text.chars().take(80).collect()))?;
            out.push_str(&value(&open[..close])?);
            rest = &open[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A moved base: what an image was built on and what the tag names now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct BaseMove {
    /// The base image followed, e.g. `docker.io/library/debian:12`.
    pub name: String,
    /// The base digest the image was built on, when it records one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_digest: Option<String>,
    /// The digest the base's tag names now.
    pub new_digest: String,
}

/// What one image needs rebuilt, as a workload's measurement found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// The image as the workload names it (repository and tag).
    pub image: ImageReference,
    /// The digest the workload runs.
    pub digest: Digest,
    /// Why: [`Reason::BaseMoved`] or [`Reason::ImageTooOld`].
    pub reason: Reason,
    /// The moved base, for [`Reason::BaseMoved`].
    pub base: Option<BaseMove>,
    /// The base was named by the workload's `freshen.dev/base-image`
    /// annotation, not recorded by the image itself (a tenant's word, not
    /// the image's).
    pub base_annotated: bool,
    /// For [`Reason::ImageTooOld`]: who set the `maxImageAge` the image is
    /// past.
    pub limit_source: Option<Source>,
}

impl Need {
    /// What made the image stale: the new base digest (every image on the
    /// old base needs the same rebuild), or the digest that grew too old.
    fn cause(&self) -> String {
        match (&self.reason, &self.base) {
            (Reason::BaseMoved, Some(base)) => format!("base {}@{}", base.name, base.new_digest),
            _ => format!("{} {}", self.reason, self.digest),
        }
    }

    /// The rebuild's name: `rebuild-` and 20 hex digits of SHA-256 over
    /// the pipeline (`pipeline` names its policy too, and for a shared
    /// pipeline the requesting namespace), the image without digest and the
    /// cause. Stable across versions: it is how a second create finds the
    /// first. A cryptographic hash, so nobody can choose inputs whose name
    /// is another team's rebuild.
    pub fn rebuild_name(&self, pipeline: &str) -> String {
        let image = self.image.without_digest();
        format!(
            "rebuild-{}",
            crate::plan::strong_fingerprint(&format!("{pipeline}\n{image}\n{}", self.cause()))
        )
    }

    /// The template values of this need (the rebuild's own name and the
    /// workload that asked are added by the caller).
    pub fn values(&self) -> BTreeMap<&'static str, String> {
        let image = self.image.without_digest();
        let mut values = BTreeMap::from([
            ("image", image.to_string()),
            ("image.repository", image.name()),
            (
                "image.tag",
                image
                    .effective_tag()
                    .unwrap_or(crate::image::DEFAULT_TAG)
                    .to_owned(),
            ),
            ("image.digest", self.digest.to_string()),
            ("reason", self.reason.to_string()),
        ]);
        if let Some(base) = &self.base {
            values.insert("base.name", base.name.clone());
            values.insert(
                "base.oldDigest",
                base.old_digest.clone().unwrap_or_default(),
            );
            values.insert("base.newDigest", base.new_digest.clone());
        }
        values
    }
}

/// The most image patterns a pipeline declares.
pub const MAX_IMAGE_PATTERNS: usize = 32;
/// The longest image pattern.
pub const MAX_IMAGE_PATTERN: usize = 512;
/// The placeholder an image pattern names the requesting namespace with.
pub const NAMESPACE_PLACEHOLDER: &str = "{namespace}";

/// Why an image pattern is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Too long.
    #[error("longer than {MAX_IMAGE_PATTERN} characters")]
    TooLong,
    /// Empty, or a character that no repository has.
    #[error(
        "{0:?} is not an image pattern; expected a registry and repository path whose segments \
         may be *, ** or contain {{namespace}}, e.g. registry.corp/{{namespace}}/**"
    )]
    Malformed(String),
}

/// Checks an image pattern of a pipeline's `images`: `registry/path`
/// segments of lower-case letters, digits, `.`, `_`, `-` and `:` (a port),
/// where a segment may be `**` (any number of segments), contain `*` (any
/// characters within the segment) or `{namespace}` (the namespace that
/// asks for the rebuild). The registry is the first segment and is never a
/// wildcard: a pattern names where the images are pushed.
pub fn check_image_pattern(pattern: &str) -> Result<(), PatternError> {
    if pattern.len() > MAX_IMAGE_PATTERN {
        return Err(PatternError::TooLong);
    }
    let bad = || PatternError::Malformed(pattern.chars().take(80).collect());
    let segments: Vec<&str> = pattern.split('/').collect();
    if segments.len() < 2 || segments.iter().any(|s| s.is_empty()) {
        return Err(bad());
    }
    if segments[0].contains('*') || segments[0].contains(NAMESPACE_PLACEHOLDER) {
        return Err(bad());
    }
    for segment in &segments {
        let rest = segment.replace(NAMESPACE_PLACEHOLDER, "");
        let valid = rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-:*".contains(&b));
        if !valid || (segment.contains("**") && *segment != "**") {
            return Err(bad());
        }
    }
    Ok(())
}

/// Whether `image` (`registry/repository`, as [`ImageReference::name`]
/// spells it) is one `pattern` declares for `namespace`.
pub fn image_matches(pattern: &str, namespace: &str, image: &str) -> bool {
    if check_image_pattern(pattern).is_err() {
        return false;
    }
    let pattern = pattern.replace(NAMESPACE_PLACEHOLDER, namespace);
    let want: Vec<&str> = pattern.split('/').collect();
    let have: Vec<&str> = image.split('/').collect();
    segments_match(&want, &have)
}

fn segments_match(want: &[&str], have: &[&str]) -> bool {
    match want.split_first() {
        None => have.is_empty(),
        Some((&"**", rest)) => (0..=have.len()).any(|skip| segments_match(rest, &have[skip..])),
        Some((first, rest)) => have
            .split_first()
            .is_some_and(|(h, more)| glob(first, h) && segments_match(rest, more)),
    }
}

/// `*` matches any run of characters within one segment.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether a pipeline declaring `images` builds `image` for `namespace`:
/// one pattern matches; none declared means every image for a namespace's
/// own pipeline and no image for a `shared` one.
pub fn declares(images: &[String], shared: bool, namespace: &str, image: &str) -> bool {
    if images.is_empty() {
        return !shared;
    }
    images.iter().any(|p| image_matches(p, namespace, image))
}

/// A Rebuild record as the executor re-checks it before each run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// The namespace the record lives in.
    pub namespace: &'a str,
    /// `RefreshPolicy/<namespace>/<name>` or `ClusterRefreshPolicy/<name>`.
    pub policy: &'a str,
    /// The namespace of the workload that asked (`spec.requestedBy`).
    pub asking: &'a str,
    /// The image's name (`registry/repository`).
    pub image: &'a str,
    /// The pipeline's name, for messages.
    pub pipeline: &'a str,
    /// The images the pipeline declares.
    pub images: &'a [String],
}

/// Whether a Rebuild is one its pipeline's policy could have asked for:
/// it lives where the policy's rebuilds live (a RefreshPolicy's namespace;
/// for a ClusterRefreshPolicy's shared pipeline, `shared_home`: the
/// pipeline's namespace or freshen's own), a RefreshPolicy's was asked by a
/// workload of its namespace, and the pipeline declares the image for the
/// asking namespace. A Rebuild is freshen's own record, but the executor
/// does not take its word for what to build; the error says why not.
pub fn fits(record: &Record<'_>, shared_home: &str) -> Result<(), String> {
    let (home, shared) = match record.policy.split('/').collect::<Vec<_>>().as_slice() {
        ["RefreshPolicy", namespace, _] => (*namespace, false),
        _ => (shared_home, true),
    };
    let refuse = |why: String| {
        Err(format!(
            "not run: {why}; only freshen records Rebuilds, so delete this one"
        ))
    };
    if record.namespace != home {
        return refuse(format!(
            "{} keeps its rebuilds in namespace {home}, not {}",
            record.policy, record.namespace
        ));
    }
    if !shared && record.asking != home {
        return refuse(format!(
            "spec.requestedBy is in namespace {}, not in {}'s",
            record.asking, record.policy
        ));
    }
    if !declares(record.images, shared, record.asking, record.image) {
        return refuse(format!(
            "pipeline {} declares no image {} for namespace {}",
            record.pipeline, record.image, record.asking
        ));
    }
    Ok(())
}

/// Who is asking for a rebuild, through which pipeline, and what the
/// pipeline and the workload's state allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asker<'a> {
    /// The namespace of the workload asking.
    pub namespace: &'a str,
    /// The pipeline's name, for messages.
    pub pipeline: &'a str,
    /// The pipeline is a ClusterRefreshPolicy's, shared by every namespace
    /// the policy governs.
    pub shared: bool,
    /// The images the pipeline declares it builds (`{namespace}` is the
    /// asking namespace); none: every image for a namespace's own
    /// pipeline, no image for a shared one.
    pub images: &'a [String],
    /// The pipeline accepts a base named by a workload's annotation.
    pub allow_annotated_base: bool,
    /// Refreshes of the workload are suspended.
    pub suspended: bool,
    /// The workload's `freshen.dev/snooze-until`, if set.
    pub snooze_until: Option<DateTime<Utc>>,
}

/// Why a needed rebuild is not asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Refreshes of the workload are suspended (a rebuild leads to one).
    #[error("refreshes of the workload are suspended, so no rebuild is asked for")]
    Suspended,
    /// The workload is snoozed.
    #[error("the workload is snoozed until {0}, so no rebuild is asked for")]
    Snoozed(DateTime<Utc>),
    /// The pipeline does not declare the image for the asking namespace.
    #[error(
        "pipeline {pipeline} builds only the images its spec.pipelines[].images declare for \
         namespace {namespace} ({declared}); {image} is not one of them"
    )]
    NotDeclared {
        /// The pipeline.
        pipeline: String,
        /// The asking namespace.
        namespace: String,
        /// The image.
        image: String,
        /// The declared patterns, as written (or "none").
        declared: String,
    },
    /// The moved base was named by the workload's annotation, which the
    /// pipeline does not accept.
    #[error(
        "the base {base} comes from the freshen.dev/base-image annotation, not from the image; \
         pipeline {pipeline} builds only on the base an image records (its allowAnnotatedBase \
         is false), since a base image runs code at build time"
    )]
    AnnotatedBase {
        /// The pipeline.
        pipeline: String,
        /// The annotated base.
        base: String,
    },
    /// A shared pipeline rebuilds too-old images only for the cluster
    /// policy's (or the operator's) own limit, not a tenant's.
    #[error(
        "the image is past a maxImageAge set by {set_by}; shared pipeline {pipeline} rebuilds \
         too-old images only for the ClusterRefreshPolicy's own maxImageAge"
    )]
    TenantLimit {
        /// The pipeline.
        pipeline: String,
        /// Who set the limit.
        set_by: Source,
    },
}

impl Refusal {
    /// A hold the workload's own settings chose (suspend, snooze): not
    /// worth a Warning, unlike a refusal someone must act on.
    pub fn is_hold(&self) -> bool {
        matches!(self, Self::Suspended | Self::Snoozed(_))
    }
}

/// Whether `need` may be asked of the pipeline `asker` describes, at `now`:
/// the one gate every rebuild request passes, and which the rebuild
/// controller applies again before each run.
pub fn admit(need: &Need, asker: &Asker<'_>, now: DateTime<Utc>) -> Result<(), Refusal> {
    if asker.suspended {
        return Err(Refusal::Suspended);
    }
    if let Some(until) = asker.snooze_until.filter(|u| *u > now) {
        return Err(Refusal::Snoozed(until));
    }
    let image = need.image.name();
    if !declares(asker.images, asker.shared, asker.namespace, &image) {
        return Err(Refusal::NotDeclared {
            pipeline: asker.pipeline.to_owned(),
            namespace: asker.namespace.to_owned(),
            image,
            declared: if asker.images.is_empty() {
                "none".to_owned()
            } else {
                asker.images.join(", ")
            },
        });
    }
    if need.reason == Reason::BaseMoved && need.base_annotated && !asker.allow_annotated_base {
        return Err(Refusal::AnnotatedBase {
            pipeline: asker.pipeline.to_owned(),
            base: need
                .base
                .as_ref()
                .map(|b| b.name.clone())
                .unwrap_or_default(),
        });
    }
    if asker.shared && need.reason == Reason::ImageTooOld {
        match &need.limit_source {
            Some(Source::ClusterPolicy { .. } | Source::Default) | None => {}
            Some(source) => {
                return Err(Refusal::TenantLimit {
                    pipeline: asker.pipeline.to_owned(),
                    set_by: source.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Where a rebuild is.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, strum::IntoStaticStr,
)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum RebuildPhase {
    /// Recorded; the first run starts at the next step.
    #[default]
    Pending,
    /// A run is under way, or finished and the tag is awaited.
    Running,
    /// The last run failed; the next starts after the backoff.
    BackingOff,
    /// The tag names the rebuilt digest.
    Succeeded,
    /// A newer rebuild of the image replaced it.
    Superseded,
}

impl RebuildPhase {
    /// Nothing more happens.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Superseded)
    }

    /// The phase as the CRD spells it.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl fmt::Display for RebuildPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rebuild has done so far; stored in its status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RebuildProgress {
    /// Where the rebuild is: Pending, Running (a run is under way, or its
    /// digest awaited), BackingOff, Succeeded or Superseded.
    #[serde(default)]
    pub phase: RebuildPhase,
    /// Runs started so far (the current one included).
    #[serde(default)]
    pub attempts: u32,
    /// When the current (or last) run was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the current run's pipeline reported success (the tag is then
    /// awaited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_finished_at: Option<DateTime<Utc>>,
    /// When the rebuild ended, or its last run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// While backing off: when the next run starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The rebuilt digest the tag names, once succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// What happened last, in one sentence.
    #[serde(default)]
    pub message: String,
}

/// How a run of the pipeline is doing, as its kind reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// No run of the current attempt exists (not created yet, or deleted).
    Missing,
    /// It runs.
    Running,
    /// It finished successfully.
    Succeeded,
    /// It failed; why, in a phrase.
    Failed(String),
}

/// What a rebuild step observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildObserved {
    /// The current attempt's run.
    pub run: RunState,
    /// The digest the image's tag names now, read past the cache.
    pub tag_digest: Option<Digest>,
    /// When that digest was built, when it says (reproducible builds do
    /// not).
    pub tag_built: Option<DateTime<Utc>>,
    /// The base digest that digest records being built on, if it does.
    pub tag_base: Option<Digest>,
    /// A newer rebuild of the same image and pipeline exists.
    pub superseded: bool,
}

/// The fixed facts of a rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildTarget {
    /// The digest being replaced: the tag named it when the rebuild was
    /// asked for.
    pub from_digest: Digest,
    /// A run (and the wait for its digest) longer than this fails.
    pub timeout: Duration,
    /// The first backoff after a failure; it doubles per failure, up to
    /// [`MAX_BACKOFF`].
    pub backoff: Duration,
    /// For a moved base: the base digest the rebuilt image must be built
    /// on (when it records one).
    pub new_base: Option<Digest>,
}

/// When a rebuild was recorded (the second its object was created, when
/// known) and its name: what decides which of two rebuilds is newer.
pub type Seniority = (Option<DateTime<Utc>>, String);

/// Whether the rebuild `mine` is superseded by one of `others` (the
/// rebuilds of the same image by the same pipeline): one recorded later,
/// or in the same second with a name that sorts later, so that exactly one
/// of any set is not superseded.
pub fn superseded(mine: &Seniority, others: &[Seniority]) -> bool {
    others.iter().any(|other| other.1 != mine.1 && other > mine)
}

/// The longest backoff between two runs of one rebuild.
pub const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// The backoff after `failures` failed runs (at least one): `base`
/// doubled per earlier failure, at most [`MAX_BACKOFF`].
pub fn backoff(base: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    base.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// A change to make; each is safe to repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebuildChange {
    /// Start run `attempt` (creating what exists already is no second run).
    Trigger {
        /// Which run: 1 for the first.
        attempt: u32,
    },
    /// Stop the current run, where the kind can.
    Cancel,
}

/// How a run ended, for `freshen_rebuilds_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
pub enum RebuildOutcome {
    /// The tag names the rebuilt digest.
    Succeeded,
    /// The pipeline reported failure.
    Failed,
    /// The run, or the wait for its digest, took longer than the timeout.
    TimedOut,
    /// A newer rebuild replaced it.
    Superseded,
}

/// What a step decided.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildStep {
    /// The progress to store before acting.
    pub progress: RebuildProgress,
    /// The changes to make once it is stored.
    pub changes: Vec<RebuildChange>,
    /// The Event announcing what changed, if anything did.
    pub event: Option<(EventKind, EventReason)>,
    /// How a run ended, if one did now.
    pub outcome: Option<RebuildOutcome>,
    /// When to look again (a watch event may come sooner).
    pub requeue: Option<Duration>,
}

/// How much earlier than the run's start a rebuilt digest's build time
/// may be (the builder's clock and the cluster's disagree).
const BUILD_CLOCK_SKEW: Duration = Duration::from_secs(600);

/// How often a finished run's tag is read again while its digest is
/// awaited.
const TAG_RECHECK: Duration = Duration::from_secs(5);

/// One step of a rebuild: a pure function of its target, stored progress,
/// what was observed and `now`. Level-triggered: a crash between storing
/// and acting repeats the changes, which are idempotent.
pub fn step(
    target: &RebuildTarget,
    progress: &RebuildProgress,
    observed: &RebuildObserved,
    now: DateTime<Utc>,
) -> RebuildStep {
    let mut next = progress.clone();
    let mut out = RebuildStep {
        progress: progress.clone(),
        changes: Vec::new(),
        event: None,
        outcome: None,
        requeue: None,
    };
    if progress.phase.is_terminal() {
        return out;
    }
    if observed.superseded {
        next.phase = RebuildPhase::Superseded;
        next.finished_at = Some(now);
        next.message = "a newer rebuild of the image replaced this one".into();
        out.changes.push(RebuildChange::Cancel);
        out.event = Some((EventKind::Normal, EventReason::RebuildSuperseded));
        out.outcome = Some(RebuildOutcome::Superseded);
        out.progress = next;
        return out;
    }
    match progress.phase {
        RebuildPhase::Pending => start(&mut next, &mut out, now),
        RebuildPhase::BackingOff => match progress.next_attempt_at {
            Some(at) if at > now => out.requeue = Some(until(at, now)),
            _ => start(&mut next, &mut out, now),
        },
        RebuildPhase::Running => running(target, &mut next, &mut out, observed, now),
        RebuildPhase::Succeeded | RebuildPhase::Superseded => {}
    }
    out.progress = next;
    out
}

/// Starts the next run.
fn start(next: &mut RebuildProgress, out: &mut RebuildStep, now: DateTime<Utc>) {
    next.phase = RebuildPhase::Running;
    next.attempts = next.attempts.saturating_add(1);
    next.started_at = Some(now);
    next.run_finished_at = None;
    next.next_attempt_at = None;
    next.message = format!("run {} started", next.attempts);
    out.changes.push(RebuildChange::Trigger {
        attempt: next.attempts,
    });
    out.event = Some((EventKind::Normal, EventReason::RebuildStarted));
}

fn running(
    target: &RebuildTarget,
    next: &mut RebuildProgress,
    out: &mut RebuildStep,
    observed: &RebuildObserved,
    now: DateTime<Utc>,
) {
    let started = next.started_at.unwrap_or(now);
    let deadline = later(started, target.timeout);
    // A digest built well before the run started is someone else's push,
    // not this rebuild's (a build time that is unknown is not held against
    // it; ten minutes allow for clocks that disagree).
    // A rebuild for a moved base must be on the new base, when the image
    // says what it was built on.
    let ours = observed
        .tag_built
        .is_none_or(|built| later(built, BUILD_CLOCK_SKEW) >= started)
        && match (&target.new_base, &observed.tag_base) {
            (Some(wanted), Some(built_on)) => wanted == built_on,
            _ => true,
        };
    let moved = observed
        .tag_digest
        .as_ref()
        .filter(|d| **d != target.from_digest && ours);
    if let (Some(digest), Some(_)) = (moved, next.run_finished_at) {
        next.phase = RebuildPhase::Succeeded;
        next.digest = Some(digest.to_string());
        next.finished_at = Some(now);
        next.message = format!("the tag names the rebuilt digest {digest}");
        out.event = Some((EventKind::Normal, EventReason::RebuildSucceeded));
        out.outcome = Some(RebuildOutcome::Succeeded);
        return;
    }
    if now >= deadline {
        let what = if next.run_finished_at.is_some() {
            "the run finished but the tag still names the old digest"
        } else {
            "the run did not finish"
        };
        fail(
            target,
            next,
            out,
            now,
            format!("{what} within {}", crate::HumanDuration(target.timeout)),
            RebuildOutcome::TimedOut,
        );
        out.changes.push(RebuildChange::Cancel);
        return;
    }
    match &observed.run {
        RunState::Missing => {
            // Stored as started but not created (a crash in between), or
            // deleted: creating it again is idempotent by name.
            out.changes.push(RebuildChange::Trigger {
                attempt: next.attempts,
            });
            out.requeue = Some(until(deadline, now));
        }
        RunState::Running => out.requeue = Some(until(deadline, now)),
        RunState::Succeeded => {
            if next.run_finished_at.is_none() {
                next.run_finished_at = Some(now);
                next.message = format!(
                    "run {} finished; waiting for the tag to name the rebuilt digest",
                    next.attempts
                );
            }
            out.requeue = Some(TAG_RECHECK.min(until(deadline, now)));
        }
        RunState::Failed(why) => {
            let why = format!("run {} failed: {why}", next.attempts);
            fail(target, next, out, now, why, RebuildOutcome::Failed);
        }
    }
}

fn fail(
    target: &RebuildTarget,
    next: &mut RebuildProgress,
    out: &mut RebuildStep,
    now: DateTime<Utc>,
    why: String,
    outcome: RebuildOutcome,
) {
    let wait = backoff(target.backoff, next.attempts);
    let at = later(now, wait);
    next.phase = RebuildPhase::BackingOff;
    next.finished_at = Some(now);
    next.next_attempt_at = Some(at);
    next.message = format!(
        "{why}; run {} starts in {} (at {})",
        next.attempts.saturating_add(1),
        crate::HumanDuration(wait),
        at.to_rfc3339()
    );
    out.event = Some((EventKind::Warning, EventReason::RebuildFailed));
    out.outcome = Some(outcome);
    out.requeue = Some(wait);
}

fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    elapsed(now, at).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_runs_only_where_and_for_whom_its_policy_could_ask() {
        let images = vec!["reg.corp/{namespace}/**".to_owned()];
        let ok = Record {
            namespace: "freshen-system",
            policy: "ClusterRefreshPolicy/platform",
            asking: "shop",
            image: "reg.corp/shop/app",
            pipeline: "build",
            images: &images,
        };
        assert_eq!(fits(&ok, "freshen-system"), Ok(()));
        // Moved into a tenant's namespace.
        let moved = Record {
            namespace: "shop",
            ..ok.clone()
        };
        let why = fits(&moved, "freshen-system").err().unwrap_or_default();
        assert!(
            why.contains("keeps its rebuilds in namespace freshen-system"),
            "{why}"
        );
        // Another team's image.
        let other = Record {
            image: "reg.corp/payments/api",
            ..ok.clone()
        };
        let why = fits(&other, "freshen-system").err().unwrap_or_default();
        assert!(
            why.contains("declares no image reg.corp/payments/api for namespace shop"),
            "{why}"
        );
        // A RefreshPolicy's pipeline, asked for by another namespace.
        let own = Record {
            namespace: "shop",
            policy: "RefreshPolicy/shop/team",
            asking: "payments",
            images: &[],
            ..ok.clone()
        };
        let why = fits(&own, "freshen-system").err().unwrap_or_default();
        assert!(
            why.contains("spec.requestedBy is in namespace payments"),
            "{why}"
        );
        assert_eq!(
            fits(
                &Record {
                    asking: "shop",
                    ..own
                },
                "freshen-system"
            ),
            Ok(())
        );
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap_or_default()
    }

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse::<Digest>()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn need(reason: Reason, base_digest: char) -> Need {
        Need {
            image: ImageReference::parse("reg.io/shop/app:1").unwrap_or_else(|e| panic!("{e}")),
            digest: digest('a'),
            reason,
            base: (reason == Reason::BaseMoved).then(|| BaseMove {
                name: "docker.io/library/debian:12".into(),
                old_digest: Some(digest('0').to_string()),
                new_digest: digest(base_digest).to_string(),
            }),
            base_annotated: false,
            limit_source: None,
        }
    }

    fn asker<'a>(shared: bool, images: &'a [String]) -> Asker<'a> {
        Asker {
            namespace: "shop",
            pipeline: "build",
            shared,
            images,
            allow_annotated_base: false,
            suspended: false,
            snooze_until: None,
        }
    }

    #[test]
    fn image_patterns_declare_images_per_namespace() {
        let p = "reg.io/{namespace}/**";
        assert!(image_matches(p, "shop", "reg.io/shop/app"));
        assert!(image_matches(p, "shop", "reg.io/shop/team/app"));
        assert!(!image_matches(p, "shop", "reg.io/payments/api"));
        // `**` is any number of segments, none included.
        assert!(image_matches(p, "shop", "reg.io/shop"));
        assert!(!image_matches(p, "shop", "reg.io/shopping/app"));
        assert!(!image_matches(p, "shop", "other.io/shop/app"));
        assert!(image_matches(
            "reg.io/team-{namespace}/*",
            "shop",
            "reg.io/team-shop/app"
        ));
        assert!(!image_matches(
            "reg.io/team-{namespace}/*",
            "shop",
            "reg.io/team-shop/a/b"
        ));
        assert!(image_matches(
            "reg.io/base/*-build",
            "x",
            "reg.io/base/go-build"
        ));
        assert!(!image_matches(
            "reg.io/base/*-build",
            "x",
            "reg.io/base/go-builder"
        ));
        assert!(image_matches(
            "localhost:5000/**",
            "x",
            "localhost:5000/a/b"
        ));
        for bad in [
            "",
            "reg.io",
            "*/x",
            "{namespace}.io/x",
            "reg.io//x",
            "reg.io/a**",
            "reg.io/A",
        ] {
            assert!(check_image_pattern(bad).is_err(), "{bad:?}");
            assert!(!image_matches(bad, "x", "reg.io/x"), "{bad:?}");
        }
        assert_eq!(
            check_image_pattern(&"a/".repeat(300)),
            Err(PatternError::TooLong)
        );
    }

    #[test]
    fn a_shared_pipeline_builds_only_declared_images_on_recorded_bases() {
        let now = Utc::now();
        let mine = vec!["reg.io/{namespace}/**".to_owned()];
        let none: Vec<String> = Vec::new();
        let need = need(Reason::BaseMoved, 'b');
        assert_eq!(admit(&need, &asker(true, &mine), now), Ok(()));
        // A shared pipeline that declares nothing builds nothing; a
        // namespace's own pipeline builds its own images.
        assert!(matches!(
            admit(&need, &asker(true, &none), now),
            Err(Refusal::NotDeclared { .. })
        ));
        assert_eq!(admit(&need, &asker(false, &none), now), Ok(()));
        // Another team's image.
        let theirs = Need {
            image: ImageReference::parse("reg.io/payments/api:prod")
                .unwrap_or_else(|e| panic!("{e}")),
            ..need.clone()
        };
        let refused = admit(&theirs, &asker(true, &mine), now);
        assert!(
            matches!(&refused, Err(Refusal::NotDeclared { image, .. }) if image == "reg.io/payments/api"),
            "{refused:?}"
        );
        // A base the workload names, not the image.
        let annotated = Need {
            base_annotated: true,
            ..need.clone()
        };
        let e = admit(&annotated, &asker(true, &mine), now);
        assert!(matches!(e, Err(Refusal::AnnotatedBase { .. })), "{e:?}");
        assert!(e.is_err_and(|e| e.to_string().contains("runs code at build time")));
        let mut allowing = asker(true, &mine);
        allowing.allow_annotated_base = true;
        assert_eq!(admit(&annotated, &allowing, now), Ok(()));
        // A namespace's own pipeline takes the same rule about bases.
        assert!(admit(&annotated, &asker(false, &none), now).is_err());
    }

    #[test]
    fn a_shared_pipeline_rebuilds_too_old_images_for_the_cluster_limit_only() {
        let now = Utc::now();
        let mine = vec!["reg.io/{namespace}/**".to_owned()];
        let with = |source: Source| Need {
            limit_source: Some(source),
            ..need(Reason::ImageTooOld, 'b')
        };
        let cluster = Source::ClusterPolicy { name: "all".into() };
        assert_eq!(admit(&with(cluster), &asker(true, &mine), now), Ok(()));
        assert_eq!(
            admit(&with(Source::Default), &asker(true, &mine), now),
            Ok(())
        );
        let e = admit(&with(Source::Annotation), &asker(true, &mine), now);
        assert!(matches!(e, Err(Refusal::TenantLimit { .. })), "{e:?}");
        let policy = Source::Policy {
            namespace: "shop".into(),
            name: "p".into(),
        };
        assert!(admit(&with(policy.clone()), &asker(true, &mine), now).is_err());
        // A namespace's own pipeline: its own limits.
        assert_eq!(admit(&with(policy), &asker(false, &mine), now), Ok(()));
    }

    #[test]
    fn no_rebuild_is_asked_for_while_suspended_or_snoozed() {
        let now = Utc::now();
        let none: Vec<String> = Vec::new();
        let need = need(Reason::BaseMoved, 'b');
        let mut a = asker(false, &none);
        a.suspended = true;
        assert_eq!(admit(&need, &a, now), Err(Refusal::Suspended));
        a.suspended = false;
        let until = now + chrono::TimeDelta::hours(1);
        a.snooze_until = Some(until);
        assert_eq!(admit(&need, &a, now), Err(Refusal::Snoozed(until)));
        a.snooze_until = Some(now - chrono::TimeDelta::hours(1));
        assert_eq!(admit(&need, &a, now), Ok(()));
    }

    fn target() -> RebuildTarget {
        RebuildTarget {
            from_digest: digest('a'),
            timeout: Duration::from_secs(600),
            backoff: Duration::from_secs(60),
            new_base: Some(digest('b')),
        }
    }

    fn observed(run: RunState, tag: char) -> RebuildObserved {
        RebuildObserved {
            run,
            tag_digest: Some(digest(tag)),
            tag_built: None,
            tag_base: None,
            superseded: false,
        }
    }

    #[test]
    fn templates_name_known_variables_only() {
        let values = need(Reason::BaseMoved, 'b').values();
        assert_eq!(
            render(
                "build $(image.repository):$(image.tag) on $(base.newDigest)",
                &values
            ),
            Ok(format!("build reg.io/shop/app:1 on {}", digest('b')))
        );
        assert_eq!(
            render("cost $5 and $$(literal)", &values),
            Ok("cost $5 and $(literal)".into())
        );
        assert_eq!(
            check("$(image.repo)"),
            Err(TemplateError::Unknown("image.repo".into()))
        );
        assert!(matches!(check("$(image"), Err(TemplateError::Unclosed(_))));
        assert_eq!(check("$(reason) $(rebuild.id)"), Ok(()));
        // A known variable without a value renders empty.
        let too_old = need(Reason::ImageTooOld, 'b').values();
        assert_eq!(render("[$(base.name)]", &too_old), Ok("[]".into()));
    }

    #[test]
    fn every_dependant_of_an_image_computes_one_rebuild_name() {
        let one = need(Reason::BaseMoved, 'b');
        // Another workload runs an older digest of the same tag on the same
        // old base: the same base move, the same rebuild.
        let other = Need {
            digest: digest('9'),
            ..one.clone()
        };
        let name = one.rebuild_name("RefreshPolicy/shop/p/job");
        assert_eq!(name, other.rebuild_name("RefreshPolicy/shop/p/job"));
        assert!(name.starts_with("rebuild-") && name.len() == 28, "{name}");
        // A newer base move, another pipeline, or age: another rebuild.
        assert_ne!(
            name,
            need(Reason::BaseMoved, 'c').rebuild_name("RefreshPolicy/shop/p/job")
        );
        assert_ne!(name, one.rebuild_name("ClusterRefreshPolicy/all/job"));
        let old = need(Reason::ImageTooOld, 'b');
        assert_ne!(name, old.rebuild_name("RefreshPolicy/shop/p/job"));
        // Image too old: per digest, so the rebuilt one can age again later.
        assert_ne!(
            old.rebuild_name("p"),
            Need {
                digest: digest('9'),
                ..old.clone()
            }
            .rebuild_name("p")
        );
    }

    #[test]
    fn a_run_succeeds_when_its_pipeline_finished_and_the_tag_moved() {
        let t = target();
        let first = step(
            &t,
            &RebuildProgress::default(),
            &observed(RunState::Missing, 'a'),
            at(0),
        );
        assert_eq!(first.changes, [RebuildChange::Trigger { attempt: 1 }]);
        assert_eq!(first.progress.phase, RebuildPhase::Running);
        assert_eq!(
            first.event,
            Some((EventKind::Normal, EventReason::RebuildStarted))
        );
        // Not created yet when looked at again (a crash): created again,
        // same attempt, so the same run name.
        let again = step(
            &t,
            &first.progress,
            &observed(RunState::Missing, 'a'),
            at(5),
        );
        assert_eq!(again.changes, [RebuildChange::Trigger { attempt: 1 }]);
        assert_eq!(again.event, None);
        let running = step(
            &t,
            &first.progress,
            &observed(RunState::Running, 'a'),
            at(10),
        );
        assert!(running.changes.is_empty() && running.event.is_none());
        // A tag moved by someone else before the run finished is not ours.
        let early = step(
            &t,
            &first.progress,
            &observed(RunState::Running, 'b'),
            at(20),
        );
        assert_eq!(early.progress.phase, RebuildPhase::Running);
        let done = step(
            &t,
            &first.progress,
            &observed(RunState::Succeeded, 'a'),
            at(30),
        );
        assert_eq!(done.progress.phase, RebuildPhase::Running);
        assert_eq!(done.progress.run_finished_at, Some(at(30)));
        assert_eq!(done.requeue, Some(Duration::from_secs(5)));
        // A digest built long before the run is someone else's push.
        let stale_push = RebuildObserved {
            tag_built: Some(at(-3600)),
            ..observed(RunState::Succeeded, 'b')
        };
        let early_build = step(&t, &done.progress, &stale_push, at(33));
        assert_eq!(early_build.progress.phase, RebuildPhase::Running);
        // Built on the old base: not the rebuild asked for; on the new: it is.
        let on = |base: char| RebuildObserved {
            tag_built: Some(at(31)),
            tag_base: Some(digest(base)),
            ..observed(RunState::Succeeded, 'b')
        };
        let old_base = step(&t, &done.progress, &on('0'), at(34));
        assert_eq!(old_base.progress.phase, RebuildPhase::Running);
        let new_base = step(&t, &done.progress, &on('b'), at(34));
        assert_eq!(new_base.progress.phase, RebuildPhase::Succeeded);
        let moved = step(
            &t,
            &done.progress,
            &observed(RunState::Succeeded, 'b'),
            at(35),
        );
        assert_eq!(moved.progress.phase, RebuildPhase::Succeeded);
        assert_eq!(moved.progress.digest, Some(digest('b').to_string()));
        assert_eq!(moved.outcome, Some(RebuildOutcome::Succeeded));
        // Terminal: nothing more, whatever is observed.
        let after = step(
            &t,
            &moved.progress,
            &observed(RunState::Failed("x".into()), 'c'),
            at(99),
        );
        assert_eq!(after.progress, moved.progress);
        assert!(after.changes.is_empty() && after.event.is_none());
    }

    #[test]
    fn failures_back_off_exponentially_and_a_timeout_cancels() {
        let t = target();
        let mut progress = step(
            &t,
            &RebuildProgress::default(),
            &observed(RunState::Missing, 'a'),
            at(0),
        )
        .progress;
        let mut now = 0;
        for (failure, wait) in [(1, 60), (2, 120), (3, 240)] {
            let failed = step(
                &t,
                &progress,
                &observed(RunState::Failed("exit 1".into()), 'a'),
                at(now + 10),
            );
            assert_eq!(failed.progress.phase, RebuildPhase::BackingOff);
            assert_eq!(failed.outcome, Some(RebuildOutcome::Failed));
            assert_eq!(
                failed.event,
                Some((EventKind::Warning, EventReason::RebuildFailed))
            );
            assert_eq!(
                failed.progress.next_attempt_at,
                Some(at(now + 10 + wait)),
                "failure {failure}"
            );
            assert!(
                failed.progress.message.contains("run")
                    && failed.progress.message.contains("exit 1")
            );
            // No run starts before the backoff ends, however often it is looked at.
            let early = step(
                &t,
                &failed.progress,
                &observed(RunState::Missing, 'a'),
                at(now + 10 + wait - 1),
            );
            assert!(early.changes.is_empty(), "{early:?}");
            now += 10 + wait;
            let retried = step(
                &t,
                &failed.progress,
                &observed(RunState::Missing, 'a'),
                at(now),
            );
            assert_eq!(
                retried.changes,
                [RebuildChange::Trigger {
                    attempt: failure + 1
                }]
            );
            progress = retried.progress;
        }
        // The run hangs past the timeout: cancelled, backing off.
        let hung = step(
            &t,
            &progress,
            &observed(RunState::Running, 'a'),
            at(now + 600),
        );
        assert_eq!(hung.changes, [RebuildChange::Cancel]);
        assert_eq!(hung.outcome, Some(RebuildOutcome::TimedOut));
        assert!(
            hung.progress.message.contains("did not finish within 10m"),
            "{}",
            hung.progress.message
        );
        assert_eq!(backoff(Duration::from_secs(60), 40), MAX_BACKOFF);
    }

    #[test]
    fn exactly_one_of_a_set_of_rebuilds_is_the_newest() {
        let named = |t: i64, name: &str| (Some(at(t)), name.to_owned());
        let set = [
            named(0, "rebuild-b"),
            named(5, "rebuild-a"),
            named(5, "rebuild-c"),
        ];
        let current: Vec<bool> = set.iter().map(|r| !superseded(r, &set)).collect();
        assert_eq!(
            current,
            [false, false, true],
            "same second: the later name wins"
        );
        // Alone (itself in the list), nothing supersedes it.
        assert!(!superseded(&set[0], &set[..1]));
        // An unknown creation time sorts first.
        assert!(superseded(&(None, "rebuild-z".into()), &set));
    }

    #[test]
    fn a_newer_rebuild_supersedes_and_cancels() {
        let t = target();
        let running = step(
            &t,
            &RebuildProgress::default(),
            &observed(RunState::Missing, 'a'),
            at(0),
        )
        .progress;
        let newer = RebuildObserved {
            superseded: true,
            ..observed(RunState::Running, 'a')
        };
        let s = step(&t, &running, &newer, at(5));
        assert_eq!(s.progress.phase, RebuildPhase::Superseded);
        assert_eq!(s.changes, [RebuildChange::Cancel]);
        assert_eq!(s.outcome, Some(RebuildOutcome::Superseded));
    }
}
