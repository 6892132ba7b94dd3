//! Rebuild pipelines as policies declare them, and the `Rebuild` record
//! freshen keeps of each rebuild.
//!
//! A policy names its pipelines (`spec.pipelines`) and which one rebuilds
//! its workloads' images, on what, with what timeout and backoff
//! (`spec.rebuild`). A workload may pick another of the governing policy's
//! pipelines with `freshen.dev/pipeline`. Everything a template may say is
//! checked when the policy is read: a bad pipeline makes the policy
//! `Ready=False` naming the field, never a failure at trigger time.

use std::time::Duration;

use freshen_core::rebuild::{self, BaseMove, RebuildProgress};
use freshen_core::rollout::Reason;
use k8s_openapi::api::batch::v1::JobSpec;
use kube::{CustomResource, KubeSchema};
use schemars::Schema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::validation::{DURATION_MESSAGE, DURATION_RULE, SpecError, spec_duration};

/// A DNS label: what pipeline names must be.
const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A rebuild pipeline: how freshen asks for an image to be rebuilt.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.job) ? 1 : 0) + (has(self.tekton) ? 1 : 0) + (has(self.webhook) ? 1 : 0) == 1"
).message("set exactly one of job, tekton or webhook"))]
pub struct Pipeline {
    /// The pipeline's name, unique in the policy: `spec.rebuild.pipeline`
    /// and the `freshen.dev/pipeline` annotation name it. A DNS label of at
    /// most 63 characters.
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// A Kubernetes Job freshen creates for each run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobPipeline>,
    /// A Tekton PipelineRun freshen creates for each run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tekton: Option<TektonPipeline>,
    /// A signed HTTP POST to a CI system for each run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookPipeline>,
    /// The images this pipeline builds, as `registry/repository` patterns
    /// (at most 32): a segment may be `**` (any number of segments),
    /// contain `*` (any characters within it) or `{namespace}` (the
    /// namespace of the workload asking), e.g.
    /// `registry.corp/{namespace}/**`. An image no pattern matches for the
    /// asking namespace is not rebuilt (a `RebuildRefused` Event says so).
    /// Required in a ClusterRefreshPolicy, whose pipelines every governed
    /// namespace shares; default in a RefreshPolicy: any image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub images: Vec<String>,
    /// Whether a base named by a workload's `freshen.dev/base-image`
    /// annotation may feed `$(base.*)` and trigger a rebuild (default
    /// false: only the base the image itself records does). A base image
    /// runs code at build time: allow this only where whoever writes the
    /// workload's annotations may choose what the image is built on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_annotated_base: Option<bool>,
}

impl Pipeline {
    /// Which kind of pipeline it is.
    pub fn kind(&self) -> PipelineKind {
        if self.webhook.is_some() {
            PipelineKind::Webhook
        } else if self.tekton.is_some() {
            PipelineKind::Tekton
        } else {
            PipelineKind::Job
        }
    }

    /// The namespace a ClusterRefreshPolicy's pipeline runs in, when it
    /// names one.
    pub fn namespace(&self) -> Option<&str> {
        self.job
            .as_ref()
            .and_then(|j| j.namespace.as_deref())
            .or_else(|| self.tekton.as_ref().and_then(|t| t.namespace.as_deref()))
    }
}

/// The kinds of pipeline.
#[derive(
    schemars::JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[strum(ascii_case_insensitive)]
pub enum PipelineKind {
    /// A `batch/v1` Job.
    #[default]
    Job,
    /// A `tekton.dev/v1` PipelineRun.
    Tekton,
    /// A signed webhook.
    Webhook,
}

impl PipelineKind {
    /// The metric label: `job` or `webhook`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Job => "job",
            Self::Tekton => "tekton",
            Self::Webhook => "webhook",
        }
    }
}

/// A pipeline run as a Tekton `tekton.dev/v1` PipelineRun of an existing
/// Pipeline, one per run, named after the rebuild and the run, owned by the
/// Rebuild. Finished on its `Succeeded` condition; cancelled by setting
/// `spec.status: Cancelled`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TektonPipeline {
    /// The namespace the PipelineRuns and their Rebuild records live in.
    /// Only a ClusterRefreshPolicy may set it (default: freshen's own
    /// namespace); a RefreshPolicy's run in the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub namespace: Option<String>,
    /// The Tekton Pipeline to run (`spec.pipelineRef.name`).
    #[schemars(length(min = 1, max = 253))]
    pub pipeline_ref: String,
    /// Its parameters; values may name `$(variables)` (at most 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub params: Vec<TektonParam>,
    /// The ServiceAccount its TaskRuns run as
    /// (`spec.taskRunTemplate.serviceAccountName`; default Tekton's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
}

/// One parameter the PipelineRun passes to the Pipeline.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TektonParam {
    /// The parameter's name in the Pipeline.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its value; may name `$(variables)`.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A key of a Secret in the Rebuild's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKey {
    /// The name of the Secret, in the Rebuild's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in the Secret's data that holds the value.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A request header whose value comes from a Secret, e.g. `Authorization:
/// Bearer <token>` for GitHub's API.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretHeader {
    /// The header's name, e.g. `Authorization`. Not one freshen sets
    /// (`Content-Type`, `webhook-*`, `X-Hub-Signature-256`).
    #[schemars(length(min = 1, max = 64))]
    pub name: String,
    /// Written before the Secret's value, e.g. `Bearer ` (with its space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub prefix: Option<String>,
    /// Where the value is.
    pub secret: SecretKey,
}

/// A pipeline run as a signed `POST` of a JSON body to a CI system (a
/// GitHub `repository_dispatch` or `workflow_dispatch`, a GitLab pipeline
/// trigger, ...), signed per Standard Webhooks: headers `webhook-id` (the
/// run's name: a receiver deduplicates on it), `webhook-timestamp` and
/// `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`. The
/// run counts as finished once delivered (a 2xx answer); the rebuild
/// succeeds when the image's tag names a new digest built after it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPipeline {
    /// The receiver: `https://...` (TLS verified against the system's CAs
    /// and `--registry-ca-file`), or `http://` to a host:port listed in
    /// `--plain-http-registry`. Reached only where `--registry-allow` /
    /// `--registry-deny` allow. At most 2048 characters.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// The JSON body; its strings may name `$(variables)` (default: an
    /// object of every variable, keyed by its name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub body: Option<Value>,
    /// The signing secret: `whsec_` and base64 (Standard Webhooks), or any
    /// other text, used as it is.
    pub secret: SecretKey,
    /// Also send GitHub's `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of
    /// the body>`, with the same secret (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_signature: Option<bool>,
    /// More headers, their values from Secrets (at most 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub headers: Vec<SecretHeader>,
}

/// Headers freshen sets on a webhook itself.
const OWN_HEADERS: [&str; 6] = [
    "content-type",
    "content-length",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-hub-signature-256",
];

/// Headers that steer where a request goes or how it is framed: a
/// tenant's pipeline must not set them (a proxy or ingress in front of the
/// receiver would route or trust on them).
fn routing_header(lower: &str) -> bool {
    const NAMED: [&str; 12] = [
        "host",
        "forwarded",
        "via",
        "x-real-ip",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-encoding",
    ];
    NAMED.contains(&lower) || lower.starts_with("x-forwarded-") || lower.starts_with("proxy-")
}

/// One pipeline can run (`namespaced`: a RefreshPolicy's); else the path
/// of its first bad field (after `spec.pipelines[i]`) and why.
fn check_pipeline(p: &Pipeline, namespaced: bool) -> Result<(), (String, String)> {
    let at = |path: &str, message: String| Err((path.to_owned(), message));
    let kinds = usize::from(p.job.is_some())
        + usize::from(p.tekton.is_some())
        + usize::from(p.webhook.is_some());
    if let Some(hook) = &p.webhook {
        check_webhook(hook).map_err(|(path, message)| (format!(".webhook{path}"), message))?;
    }
    if let Some(tekton) = &p.tekton {
        if namespaced && tekton.namespace.is_some() {
            return at(
                ".tekton.namespace",
                "a RefreshPolicy's PipelineRuns run in its own namespace; only a \
                 ClusterRefreshPolicy may name one"
                    .into(),
            );
        }
        for (j, param) in tekton.params.iter().enumerate() {
            rebuild::check(&param.value)
                .map_err(|e| (format!(".tekton.params[{j}].value"), e.to_string()))?;
        }
    }
    if p.images.is_empty() && !namespaced {
        return at(
            ".images",
            "a ClusterRefreshPolicy's pipeline is shared by every namespace it governs: \
             declare the images it builds for each, e.g. [\"registry.corp/{namespace}/**\"]"
                .into(),
        );
    }
    for (j, pattern) in p.images.iter().enumerate() {
        rebuild::check_image_pattern(pattern)
            .map_err(|e| (format!(".images[{j}]"), e.to_string()))?;
    }
    if kinds != 1 {
        return at("", "set exactly one of job, tekton or webhook".into());
    }
    let Some(job) = &p.job else {
        return Ok(());
    };
    if namespaced && job.namespace.is_some() {
        return at(
            ".job.namespace",
            "a RefreshPolicy's Jobs run in its own namespace; only a ClusterRefreshPolicy may \
             name one"
                .into(),
        );
    }
    check_job_template(&job.template)
        .map_err(|(path, message)| (format!(".job.template{path}"), message))
}

/// A webhook's URL, body and headers can be used; else the path of the
/// first bad part and why.
fn check_webhook(hook: &WebhookPipeline) -> Result<(), (String, String)> {
    let url = url::Url::parse(&hook.url).map_err(|e| {
        (
            ".url".to_owned(),
            format!("{e}; expected https://host/path"),
        )
    })?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err((
            ".url".into(),
            "expected https://host/path (or http:// to a plain-HTTP host)".into(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err((
            ".url".into(),
            "credentials belong in a header from a Secret, not in the URL".into(),
        ));
    }
    rebuild::check(&hook.url).map_err(|e| (".url".to_owned(), e.to_string()))?;
    if let Some(body) = &hook.body {
        each_string(body, ".body", &mut |path, text| {
            rebuild::check(text).map_err(|e| (path.to_owned(), e.to_string()))
        })?;
    }
    for (i, h) in hook.headers.iter().enumerate() {
        let valid = !h.name.is_empty()
            && h.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        let lower = h.name.to_ascii_lowercase();
        if !valid || OWN_HEADERS.contains(&lower.as_str()) || routing_header(&lower) {
            return Err((
                format!(".headers[{i}].name"),
                format!(
                    "{:?} is not a header freshen may set from a Secret (letters, digits, '-', \
                     not one of {}, nor one that routes or frames the request: Host, \
                     Forwarded, X-Forwarded-*, X-Real-IP, Via, hop-by-hop headers)",
                    h.name,
                    OWN_HEADERS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Any JSON value, kept as written.
fn any_value(_: &mut schemars::SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A pipeline run as a `batch/v1` Job, one per run, named after the
/// rebuild and the run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobPipeline {
    /// The namespace the Jobs and their Rebuild records live in. Only a
    /// ClusterRefreshPolicy may set it (default: freshen's own namespace);
    /// a RefreshPolicy's Jobs run in the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub namespace: Option<String>,
    /// The Job's spec (`batch/v1` JobSpec). Any string in it may name
    /// `$(variables)`: image, image.repository, image.tag, image.digest,
    /// base.name, base.oldDigest, base.newDigest, reason, workload,
    /// namespace, rebuild.name, rebuild.id (`$$(` is a literal `$(`).
    /// freshen sets `ttlSecondsAfterFinished` to one hour when unset.
    #[schemars(schema_with = "any_object")]
    pub template: Value,
}

/// What asks for a rebuild.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebuildOn {
    /// The base image the running image was built on moved to a new digest.
    BaseMoved,
    /// The running image is past its `maxImageAge`.
    ImageTooOld,
}

impl RebuildOn {
    /// The refresh reason a rebuild of this kind leads to.
    pub fn reason(self) -> Reason {
        match self {
            Self::BaseMoved => Reason::BaseMoved,
            Self::ImageTooOld => Reason::ImageTooOld,
        }
    }
}

/// When and how the policy's workloads' images are rebuilt.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RebuildSettings {
    /// The pipeline (of `spec.pipelines`) that rebuilds; a workload's
    /// `freshen.dev/pipeline` annotation may pick another of `selectable`.
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub pipeline: String,
    /// The pipelines a workload may pick with `freshen.dev/pipeline`
    /// (at most 16). Default: every pipeline of a RefreshPolicy; none of a
    /// ClusterRefreshPolicy (its workloads use `pipeline`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub selectable: Option<Vec<String>>,
    /// What asks for a rebuild: BaseMoved, ImageTooOld (default both).
    /// (Not `on`: YAML 1.1 parsers, kubectl's among them, read that key as
    /// `true`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2))]
    pub triggers: Option<Vec<RebuildOn>>,
    /// How long a run, and the wait for its rebuilt digest, may take
    /// (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub timeout: Option<String>,
    /// The wait after a failed run before the next (default 5m); it doubles
    /// per failure, up to a day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub backoff: Option<String>,
}

/// The pipelines of a policy and which one rebuilds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPipelines {
    /// Named rebuild pipelines (at most 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub pipelines: Vec<Pipeline>,
    /// When and with which pipeline the images of the policy's workloads
    /// are rebuilt (default: never; `RebuildRequired` Events say why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildSettings>,
}

/// A policy's rebuild settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebuilds {
    /// The pipeline that rebuilds by default.
    pub pipeline: String,
    /// The pipelines a workload may pick by annotation; `None`: any.
    pub selectable: Option<Vec<String>>,
    /// What asks for a rebuild.
    pub on: Vec<Reason>,
    /// How long a run may take.
    pub timeout: Duration,
    /// The first backoff after a failure.
    pub backoff: Duration,
}

/// Default `spec.rebuild.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `spec.rebuild.backoff`.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(300);

impl PolicyPipelines {
    /// The rebuild settings, when the policy has them, after checking every
    /// pipeline; the first bad field is an error naming it. `namespaced`:
    /// the policy is a RefreshPolicy (its Jobs run in its own namespace).
    pub fn parse(&self, namespaced: bool) -> Result<Option<Rebuilds>, SpecError> {
        for (i, p) in self.pipelines.iter().enumerate() {
            if self.pipelines[..i].iter().any(|q| q.name == p.name) {
                return Err(SpecError::Pipeline {
                    field: format!("spec.pipelines[{i}].name"),
                    message: format!("{:?} names two pipelines; names must be unique", p.name),
                });
            }
            check_pipeline(p, namespaced).map_err(|(rest, message)| SpecError::Pipeline {
                field: format!("spec.pipelines[{i}]{rest}"),
                message,
            })?;
        }
        match &self.rebuild {
            Some(spec) => self.rebuilds(spec, namespaced).map(Some),
            None => Ok(None),
        }
    }

    /// `spec.rebuild` read, its pipeline names checked against
    /// `spec.pipelines`.
    fn rebuilds(&self, spec: &RebuildSettings, namespaced: bool) -> Result<Rebuilds, SpecError> {
        if !self.pipelines.iter().any(|p| p.name == spec.pipeline) {
            return Err(SpecError::Pipeline {
                field: "spec.rebuild.pipeline".into(),
                message: format!("names no pipeline of spec.pipelines: {:?}", spec.pipeline),
            });
        }
        for (j, name) in spec.selectable.iter().flatten().enumerate() {
            if !self.pipelines.iter().any(|p| &p.name == name) {
                return Err(SpecError::Pipeline {
                    field: format!("spec.rebuild.selectable[{j}]"),
                    message: format!("names no pipeline of spec.pipelines: {name:?}"),
                });
            }
        }
        let selectable = match (&spec.selectable, namespaced) {
            (Some(names), _) => Some(names.clone()),
            (None, true) => None,
            (None, false) => Some(Vec::new()),
        };
        let on = spec
            .triggers
            .clone()
            .unwrap_or_else(|| vec![RebuildOn::BaseMoved, RebuildOn::ImageTooOld]);
        Ok(Rebuilds {
            pipeline: spec.pipeline.clone(),
            selectable,
            on: on.into_iter().map(RebuildOn::reason).collect(),
            timeout: spec_duration("rebuild.timeout", spec.timeout.as_deref())?
                .unwrap_or(DEFAULT_TIMEOUT),
            backoff: spec_duration("rebuild.backoff", spec.backoff.as_deref())?
                .unwrap_or(DEFAULT_BACKOFF),
        })
    }

    /// The Secrets its webhook pipelines read, each with its field.
    pub fn secrets(&self) -> Vec<(String, &SecretKey)> {
        let mut out = Vec::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            let Some(hook) = &p.webhook else { continue };
            out.push((format!("spec.pipelines[{i}].webhook.secret"), &hook.secret));
            for (j, h) in hook.headers.iter().enumerate() {
                out.push((
                    format!("spec.pipelines[{i}].webhook.headers[{j}].secret"),
                    &h.secret,
                ));
            }
        }
        out
    }

    /// The pipeline named `name`.
    pub fn get(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| p.name == name)
    }
}

/// A Job template is a `batch/v1` JobSpec whose strings name only known
/// variables; else the path of the first bad part and why.
fn check_job_template(template: &Value) -> Result<(), (String, String)> {
    if let Err(e) = serde_json::from_value::<JobSpec>(template.clone()) {
        return Err((String::new(), format!("is not a batch/v1 JobSpec: {e}")));
    }
    if template.pointer("/template/spec/containers").is_none() {
        return Err((
            ".template.spec.containers".into(),
            "a Job needs at least one container".into(),
        ));
    }
    each_string(template, "", &mut |path, text| {
        rebuild::check(text).map_err(|e| (path.to_owned(), e.to_string()))
    })
}

/// Calls `f` on every string of `value` (keys too) with its path.
fn each_string(
    value: &Value,
    path: &str,
    f: &mut impl FnMut(&str, &str) -> Result<(), (String, String)>,
) -> Result<(), (String, String)> {
    match value {
        Value::String(s) => f(path, s),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| each_string(v, &format!("{path}[{i}]"), f)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            let here = format!("{path}.{k}");
            f(&here, k)?;
            each_string(v, &here, f)
        }),
        _ => Ok(()),
    }
}

/// `value` with every `$(variable)` in its strings replaced (keys too).
pub fn render_template(
    value: &Value,
    values: &std::collections::BTreeMap<&'static str, String>,
) -> Result<Value, rebuild::TemplateError> {
    Ok(match value {
        Value::String(s) => Value::String(rebuild::render(s, values)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_template(v, values))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((rebuild::render(k, values)?, render_template(v, values)?)))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

/// An object whose fields the API server keeps as written (a JobSpec is
/// checked by freshen when the policy is read, not by the CRD schema).
fn any_object(_: &mut schemars::SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// One rebuild of one image by one pipeline, shared by every workload that
/// runs the image: freshen creates it (named by
/// [`freshen_core::rebuild::Need::rebuild_name`]) when a workload's image
/// needs rebuilding, runs the pipeline, retries with backoff, and records
/// the rebuilt digest its dependants then refresh to.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "freshen.dev",
    version = "v1alpha1",
    kind = "Rebuild",
    doc = "One rebuild of an image by a pipeline, shared by every workload that runs the image.",
    namespaced,
    status = "RebuildStatus",
    shortname = "rb",
    category = "freshen",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".spec.reason"}"#,
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.kind"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Runs","type":"integer","jsonPath":".status.attempts"}"#,
    printcolumn = r#"{"name":"Run","type":"string","jsonPath":".status.run"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self == oldSelf").message(
    "a Rebuild's spec is frozen at creation; delete it and let freshen record another"
))]
#[serde(rename_all = "camelCase")]
pub struct RebuildSpec {
    /// The image rebuilt, as its dependants name it: repository and tag.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// The digest being replaced: what the tag named when the rebuild was
    /// asked for.
    #[schemars(length(min = 1, max = 256))]
    pub from_digest: String,
    /// Why: BaseMoved or ImageTooOld.
    pub reason: freshen_core::rollout::Reason,
    /// The base that moved, for BaseMoved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseMove>,
    /// The policy declaring the pipeline: `RefreshPolicy/<namespace>/<name>`
    /// or `ClusterRefreshPolicy/<name>`.
    #[schemars(length(min = 1, max = 512))]
    pub policy: String,
    /// The pipeline's name in that policy.
    #[schemars(length(min = 1, max = 63))]
    pub pipeline: String,
    /// The pipeline's kind when the rebuild was recorded.
    #[serde(default)]
    pub kind: PipelineKind,
    /// The workload whose measurement asked first, as `namespace/name`
    /// (its pull secrets read the tag).
    #[schemars(length(min = 1, max = 512))]
    pub requested_by: String,
    /// The kind of that workload, as the API spells it (`StatefulSet`);
    /// a Deployment when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub requested_by_kind: Option<String>,
    /// How long a run may take, in seconds (from the policy, frozen here).
    #[schemars(range(min = 1, max = 31_536_000))]
    pub timeout_seconds: u64,
    /// The first backoff after a failed run, in seconds.
    #[schemars(range(min = 1, max = 86_400))]
    pub backoff_seconds: u64,
}

/// What freshen reports on a rebuild.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RebuildStatus {
    /// Where the rebuild is, its runs, and the rebuilt digest.
    #[serde(flatten)]
    pub progress: RebuildProgress,
    /// The current (or last) run: the Job's name, or the webhook
    /// delivery's `webhook-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// A webhook pipeline: the last run delivered (answered 2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<String>,
    /// A webhook pipeline: the last run whose delivery failed, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undelivered: Option<Undelivered>,
}

/// A webhook delivery that failed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Undelivered {
    /// The run (`webhook-id`) that was not delivered.
    pub run: String,
    /// Why: the receiver's status, or the connection's error.
    pub message: String,
}

impl Rebuild {
    /// The stored progress (the default before the first step).
    pub fn progress(&self) -> RebuildProgress {
        self.status
            .as_ref()
            .map(|s| s.progress.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(template: Value) -> Pipeline {
        Pipeline {
            name: "build".into(),
            job: Some(JobPipeline {
                namespace: None,
                template,
            }),
            tekton: None,
            webhook: None,
            images: Vec::new(),
            allow_annotated_base: None,
        }
    }

    fn valid() -> Value {
        json!({"template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "b", "image": "builder:1", "args": ["$(image)", "$(base.newDigest)"]}]}}})
    }

    fn with(pipelines: Vec<Pipeline>, rebuild: Option<&str>) -> PolicyPipelines {
        PolicyPipelines {
            pipelines,
            rebuild: rebuild.map(|p| RebuildSettings {
                pipeline: p.into(),
                selectable: None,
                triggers: None,
                timeout: None,
                backoff: None,
            }),
        }
    }

    fn error(p: &PolicyPipelines, namespaced: bool) -> String {
        p.parse(namespaced)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_valid_pipeline_gives_the_defaults() {
        let p = with(vec![job(valid())], Some("build"));
        let rebuilds = p.parse(true).ok().flatten();
        assert_eq!(
            rebuilds,
            Some(Rebuilds {
                pipeline: "build".into(),
                selectable: None,
                on: vec![Reason::BaseMoved, Reason::ImageTooOld],
                timeout: DEFAULT_TIMEOUT,
                backoff: DEFAULT_BACKOFF,
            })
        );
        assert_eq!(with(vec![job(valid())], None).parse(true), Ok(None));
    }

    #[test]
    fn a_bad_pipeline_is_an_error_naming_the_field() {
        let unknown = json!({"template": {"spec": {"containers": [
            {"name": "b", "image": "builder:1", "args": ["$(image.sha)"]}]}}});
        let e = error(&with(vec![job(unknown)], None), true);
        assert!(
            e.starts_with("spec.pipelines[0].job.template.template.spec.containers[0].args[0]: unknown variable $(image.sha)"),
            "{e}"
        );
        let not_a_job = json!({"template": {"spec": {"containers": "builder"}}});
        let e = error(&with(vec![job(not_a_job)], None), true);
        assert!(
            e.starts_with("spec.pipelines[0].job.template: is not a batch/v1 JobSpec"),
            "{e}"
        );
        let no_container = json!({"backoffLimit": 1});
        let e = error(&with(vec![job(no_container)], None), true);
        assert!(e.contains("needs at least one container"), "{e}");
        let e = error(&with(vec![job(valid()), job(valid())], None), true);
        assert!(e.starts_with("spec.pipelines[1].name"), "{e}");
        let e = error(&with(vec![job(valid())], Some("deploy")), true);
        assert!(
            e.starts_with("spec.rebuild.pipeline: names no pipeline"),
            "{e}"
        );
        // Only a ClusterRefreshPolicy chooses where its Jobs run.
        let mut elsewhere = job(valid());
        if let Some(j) = elsewhere.job.as_mut() {
            j.namespace = Some("kube-system".into());
        }
        let e = error(&with(vec![elsewhere.clone()], None), true);
        assert!(e.starts_with("spec.pipelines[0].job.namespace"), "{e}");
        // A ClusterRefreshPolicy's pipeline declares what it builds.
        let e = error(&with(vec![elsewhere.clone()], None), false);
        assert!(
            e.starts_with("spec.pipelines[0].images: a ClusterRefreshPolicy"),
            "{e}"
        );
        elsewhere.images = vec!["reg.corp/{namespace}/**".into()];
        assert_eq!(with(vec![elsewhere.clone()], None).parse(false), Ok(None));
        elsewhere.images.push("*/x".into());
        let e = error(&with(vec![elsewhere.clone()], None), false);
        assert!(
            e.starts_with("spec.pipelines[0].images[1]: \"*/x\" is not an image pattern"),
            "{e}"
        );
        elsewhere.images.pop();
        // Which pipelines a workload may pick is the policy's decision.
        let mut cluster = with(vec![elsewhere.clone()], Some("build"));
        let picked = cluster.parse(false).ok().flatten().map(|r| r.selectable);
        assert_eq!(
            picked,
            Some(Some(Vec::new())),
            "a cluster policy: none by default"
        );
        if let Some(r) = cluster.rebuild.as_mut() {
            r.selectable = Some(vec!["deploy".into()]);
        }
        let e = error(&cluster, false);
        assert!(
            e.starts_with("spec.rebuild.selectable[0]: names no pipeline"),
            "{e}"
        );
        let own = with(vec![job(valid())], Some("build"));
        let picked = own.parse(true).ok().flatten().map(|r| r.selectable);
        assert_eq!(
            picked,
            Some(None),
            "a namespace's own policy: any by default"
        );
    }

    #[test]
    fn tekton_and_webhook_pipelines_are_checked_too() {
        let tekton = |value: &str, namespace: Option<&str>| Pipeline {
            name: "tekton".into(),
            job: None,
            tekton: Some(TektonPipeline {
                namespace: namespace.map(str::to_owned),
                pipeline_ref: "build".into(),
                params: vec![TektonParam {
                    name: "image".into(),
                    value: value.into(),
                }],
                service_account_name: None,
            }),
            webhook: None,
            images: Vec::new(),
            allow_annotated_base: None,
        };
        assert_eq!(
            with(vec![tekton("$(image)", None)], None).parse(true),
            Ok(None)
        );
        let e = error(&with(vec![tekton("$(imag)", None)], None), true);
        assert!(
            e.starts_with("spec.pipelines[0].tekton.params[0].value: unknown variable"),
            "{e}"
        );
        let e = error(&with(vec![tekton("x", Some("ci"))], None), true);
        assert!(e.starts_with("spec.pipelines[0].tekton.namespace"), "{e}");
        let mut both = tekton("x", None);
        both.job = job(valid()).job;
        let e = error(&with(vec![both], None), true);
        assert!(
            e.contains("set exactly one of job, tekton or webhook"),
            "{e}"
        );
        let hook = |url: &str| Pipeline {
            name: "hook".into(),
            job: None,
            tekton: None,
            webhook: Some(WebhookPipeline {
                url: url.into(),
                body: Some(json!({"image": "$(image)"})),
                secret: SecretKey {
                    name: "s".into(),
                    key: "k".into(),
                },
                hub_signature: None,
                headers: vec![SecretHeader {
                    name: "Authorization".into(),
                    prefix: Some("Bearer ".into()),
                    secret: SecretKey {
                        name: "t".into(),
                        key: "k".into(),
                    },
                }],
            }),
            images: Vec::new(),
            allow_annotated_base: None,
        };
        assert_eq!(
            with(vec![hook("https://ci.example/hook")], None).parse(true),
            Ok(None)
        );
        let e = error(&with(vec![hook("ftp://ci.example/hook")], None), true);
        assert!(e.starts_with("spec.pipelines[0].webhook.url"), "{e}");
        let e = error(&with(vec![hook("https://user:pw@ci.example/")], None), true);
        assert!(e.contains("credentials belong in a header"), "{e}");
        let mut own = hook("https://ci.example/");
        if let Some(h) = own.webhook.as_mut() {
            h.headers[0].name = "webhook-signature".into();
        }
        let e = error(&with(vec![own], None), true);
        assert!(
            e.starts_with("spec.pipelines[0].webhook.headers[0].name"),
            "{e}"
        );
        for routing in [
            "Host",
            "X-Forwarded-For",
            "x-forwarded-host",
            "Forwarded",
            "Connection",
            "Transfer-Encoding",
            "Proxy-Authorization",
            "X-Real-IP",
        ] {
            let mut steering = hook("https://ci.example/");
            if let Some(h) = steering.webhook.as_mut() {
                h.headers[0].name = routing.into();
            }
            let e = error(&with(vec![steering], None), true);
            assert!(e.contains("routes or frames the request"), "{routing}: {e}");
        }
        assert_eq!(
            with(vec![hook("https://ci.example/")], None)
                .secrets()
                .len(),
            2,
            "the signing Secret and the header's"
        );
    }

    #[test]
    fn templates_render_every_string_and_key() {
        let values = std::collections::BTreeMap::from([("image", "reg/app:1".to_owned())]);
        let rendered = render_template(&json!({"args": ["$(image)"], "$(image)": 1}), &values);
        assert_eq!(
            rendered.ok(),
            Some(json!({"args": ["reg/app:1"], "reg/app:1": 1}))
        );
    }
}
