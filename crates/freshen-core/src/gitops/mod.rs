//! Promotion through git: where a workload's image is written in its
//! repository, and the edit that writes a proven digest there (or puts the
//! old image back).
//!
//! Three places are known, each edited in place by [`yaml`]:
//! - a plain manifest: the container's `image` in the document whose `kind`
//!   and `metadata.name` are the workload's;
//! - a kustomization's `images:` entry whose rendered name (`newName`, else
//!   `name`) is the image's: `newTag` and `digest` are written as separate
//!   fields, as kustomize renders them `name:tag@digest`;
//! - Helm values at a dotted path: a mapping with `repository` and `tag`
//!   (and `digest`, when the chart has one), or a single image string;
//! - the same values inline in a Flux HelmRelease's `spec.values`, in the
//!   document whose `kind` is `HelmRelease` and whose name is the release's.
//!
//! The reference written is always `repository:tag@sha256:...`.

pub mod forge;
pub mod source;
pub mod yaml;

use std::fmt;

use crate::image::ImageReference;
use yaml::{Node, Splice, YamlError};

/// Where in a file the image is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// A manifest's container `image`.
    Manifest,
    /// A kustomization's `images:` entry.
    Kustomize,
    /// Helm values at this path of keys.
    Helm(Vec<String>),
    /// A Flux HelmRelease's inline values (`spec.values`) at this path of
    /// keys, in the document of the HelmRelease named so.
    HelmRelease {
        /// The HelmRelease's name.
        name: String,
        /// Its namespace (a document naming another is not it).
        namespace: String,
        /// The path under `spec.values`.
        path: Vec<String>,
    },
}

impl Field {
    /// The field a file of this name most likely holds, without a path.
    pub fn for_file(path: &str) -> Self {
        let base = path.rsplit('/').next().unwrap_or(path);
        if matches!(
            base,
            "kustomization.yaml" | "kustomization.yml" | "Kustomization"
        ) {
            Self::Kustomize
        } else {
            Self::Manifest
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Manifest => f.write_str("the container's image"),
            Self::Kustomize => f.write_str("the kustomization's images entry"),
            Self::Helm(path) => write!(f, "the Helm values at {}", path.join(".")),
            Self::HelmRelease { name, path, .. } => {
                write!(f, "HelmRelease {name}'s spec.values.{}", path.join("."))
            }
        }
    }
}

/// The workload and container whose image is edited.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The workload's kind, e.g. `Deployment`.
    pub kind: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its namespace: a manifest that names another is not it.
    pub namespace: &'a str,
    /// The container.
    pub container: &'a str,
    /// The image the workload runs now (the repository to find).
    pub running: &'a ImageReference,
}

/// Why a file was not edited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    /// The file does not write this workload's image there: another file
    /// may.
    NotHere(String),
    /// It does, in a form freshen will not rewrite.
    Yaml(YamlError),
}

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotHere(why) => f.write_str(why),
            Self::Yaml(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for EditError {}

impl From<YamlError> for EditError {
    fn from(e: YamlError) -> Self {
        Self::Yaml(e)
    }
}

/// Whether a workload of `kind` can be promoted through git: only where its
/// canary runs beside it (a Deployment's, a CronJob's Job). A StatefulSet's
/// or DaemonSet's canary runs inside the workload, where the reconciler's
/// self-heal would undo it; an Argo Rollout canaries only after the change,
/// so an unproven digest would reach git.
pub fn promotable(kind: crate::kind::Kind) -> Result<(), String> {
    use crate::kind::Kind;
    if matches!(kind, Kind::Deployment | Kind::CronJob) {
        return Ok(());
    }
    Err(format!(
        "a {kind}'s canary runs inside it (an Argo Rollout's after the change), where the \
         reconciler would undo it or an unproven digest would reach git; gitops: Commit \
         promotes Deployments and CronJobs (use gitops: Patch for this one)"
    ))
}

/// Whether freshen may commit what a Refresh proved, under its policy as it
/// is now (`policy`, the canary strategy it asks for `asked`) and as the
/// Refresh ran (`ran`, whether a canary started). A Refresh is input:
/// whoever may write one for their workload could otherwise have freshen
/// push, with the policy's credentials, an image no canary ran. A revert
/// needs no such check: it puts back what was there.
pub fn admit(
    policy: Option<crate::plan::GitOpsAction>,
    asked: crate::rollout::Strategy,
    ran: crate::rollout::Strategy,
    canary_ran: bool,
) -> Result<(), String> {
    use crate::rollout::Strategy;
    if !policy.is_some_and(crate::plan::GitOpsAction::through_git) {
        return Err(
            "its policy no longer says gitops: Commit or PullRequest; nothing is committed".into(),
        );
    }
    if asked == Strategy::Canary && (ran != Strategy::Canary || !canary_ran) {
        return Err(format!(
            "its policy asks for a canary and this Refresh ({ran:?}) ran none; freshen commits \
             only what a canary proved"
        ));
    }
    Ok(())
}

/// The result of an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edited {
    /// The new text.
    Changed(String),
    /// The file already says so.
    Unchanged,
}

/// Writes the image `to` (as a pod spec carries it, e.g.
/// `registry.example.com/app:v2@sha256:...`) for `subject` into `text` at
/// `field`. A manifest or a Helm image string gets `to` exactly; a
/// kustomization or Helm mapping gets its tag and digest.
pub fn set_image(
    text: &str,
    field: &Field,
    subject: &Subject<'_>,
    to: &str,
) -> Result<Edited, EditError> {
    let to = &Image::parse(to)?;
    let docs = yaml::documents(text)?;
    let splices = match field {
        Field::Manifest => manifest(&docs, subject, to)?,
        Field::Kustomize => kustomize(&docs, subject, to)?,
        Field::Helm(path) => helm(&docs, path, subject, to)?,
        Field::HelmRelease {
            name,
            namespace,
            path,
        } => helm_release(&docs, name, namespace, path, subject, to)?,
    };
    if splices.is_empty() {
        return Ok(Edited::Unchanged);
    }
    let out = yaml::apply(text, splices)?;
    // Read back: the same field must now render `to`.
    let again = yaml::documents(&out)?;
    let rendered = match field {
        Field::Manifest => manifest(&again, subject, to)?,
        Field::Kustomize => kustomize(&again, subject, to)?,
        Field::Helm(path) => helm(&again, path, subject, to)?,
        Field::HelmRelease {
            name,
            namespace,
            path,
        } => helm_release(&again, name, namespace, path, subject, to)?,
    };
    if !rendered.is_empty() {
        return Err(YamlError::Verify(format!("{field} does not read back as {}", to.text)).into());
    }
    Ok(Edited::Changed(out))
}

/// An image to write: its text as the pod spec will carry it, and its parts.
struct Image {
    text: String,
    tag: Option<String>,
    digest: Option<crate::image::Digest>,
}

impl Image {
    fn parse(text: &str) -> Result<Self, EditError> {
        let r = ImageReference::parse(text).map_err(|e| {
            EditError::Yaml(YamlError::Unsupported(format!(
                "{text:?} is not an image reference: {e}"
            )))
        })?;
        Ok(Self {
            text: text.trim().to_owned(),
            tag: r.tag,
            digest: r.digest,
        })
    }

    /// Whether `written` names this image.
    fn is(&self, written: &str) -> bool {
        written == self.text
            || ImageReference::parse(written)
                .is_ok_and(|w| ImageReference::parse(&self.text).is_ok_and(|t| t == w))
    }
}

/// Whether `written` names the same repository as `running`.
fn same_repository(written: &str, running: &ImageReference) -> bool {
    ImageReference::parse(written).is_ok_and(|w| w.name() == running.name())
}

fn manifest(docs: &[Node], subject: &Subject<'_>, to: &Image) -> Result<Vec<Splice>, EditError> {
    let mut found = Vec::new();
    for doc in docs {
        let named = doc.get("kind").and_then(Node::as_str) == Some(subject.kind)
            && doc
                .at(&["metadata".into(), "name".into()])
                .and_then(Node::as_str)
                == Some(subject.name);
        let namespace = doc
            .at(&["metadata".into(), "namespace".into()])
            .and_then(Node::as_str);
        if named && namespace.is_none_or(|n| n == subject.namespace) {
            containers(doc, subject.container, &mut found);
        }
    }
    let Some(image) = found.first() else {
        return Err(EditError::NotHere(format!(
            "no {} {} with a container {} here",
            subject.kind, subject.name, subject.container
        )));
    };
    let written = image.as_str().unwrap_or_default();
    if to.is(written) {
        return Ok(Vec::new());
    }
    if !same_repository(written, subject.running) {
        return Err(EditError::NotHere(format!(
            "container {} here runs {written}, not {}",
            subject.container,
            subject.running.name()
        )));
    }
    Ok(vec![Splice::set(image, &to.text)?])
}

/// Every `image` of a container named `name` in `containers` or
/// `initContainers` lists anywhere under `node`.
fn containers<'a>(node: &'a Node, name: &str, out: &mut Vec<&'a Node>) {
    match node {
        Node::Map { entries, .. } => {
            for (k, v) in entries {
                if let (Some("containers" | "initContainers"), Node::Seq { items }) =
                    (k.as_str(), v)
                {
                    for c in items {
                        if c.get("name").and_then(Node::as_str) == Some(name)
                            && let Some(image) = c.get("image")
                        {
                            out.push(image);
                        }
                    }
                } else {
                    containers(v, name, out);
                }
            }
        }
        Node::Seq { items } => items.iter().for_each(|i| containers(i, name, out)),
        _ => {}
    }
}

fn kustomize(docs: &[Node], subject: &Subject<'_>, to: &Image) -> Result<Vec<Splice>, EditError> {
    let entry = docs
        .iter()
        .filter_map(|d| match d.get("images") {
            Some(Node::Seq { items }) => Some(items),
            _ => None,
        })
        .flatten()
        .find(|e| {
            e.get("newName")
                .or_else(|| e.get("name"))
                .and_then(Node::as_str)
                .is_some_and(|n| same_repository(n, subject.running))
        })
        .ok_or_else(|| {
            EditError::NotHere(format!(
                "no images entry for {} here",
                subject.running.name()
            ))
        })?;
    let mut splices = Vec::new();
    let mut add = Vec::new();
    match (&to.tag, entry.get("newTag")) {
        (Some(tag), Some(node)) if node.as_str() != Some(tag) => {
            splices.push(Splice::set(node, tag)?);
        }
        (Some(tag), None) => add.push(("newTag", tag.clone())),
        (None, Some(node)) => splices.push(remove(node)),
        _ => {}
    }
    match (&to.digest, entry.get("digest")) {
        (Some(d), Some(node)) if node.as_str() != Some(d.as_str()) => {
            splices.push(Splice::set(node, d.as_str())?);
        }
        (Some(d), None) => add.push(("digest", d.to_string())),
        (None, Some(node)) => splices.push(remove(node)),
        _ => {}
    }
    if !add.is_empty() {
        let (after, col) = yaml::append_point(entry).ok_or_else(|| {
            YamlError::Unsupported(format!(
                "the images entry for {} is written in flow style ({{...}}); write it as indented lines",
                subject.running.name()
            ))
        })?;
        for (key, value) in add {
            splices.push(Splice::Insert {
                after,
                col,
                key: key.into(),
                value,
            });
        }
    }
    Ok(splices)
}

/// Removes the line of the entry whose value is `node`.
fn remove(node: &Node) -> Splice {
    match node {
        Node::Scalar { start, .. } => Splice::RemoveLine { at: *start },
        _ => Splice::RemoveLine { at: 0 },
    }
}

fn helm(
    docs: &[Node],
    path: &[String],
    subject: &Subject<'_>,
    to: &Image,
) -> Result<Vec<Splice>, EditError> {
    let at = docs
        .iter()
        .find_map(|d| d.at(path))
        .ok_or_else(|| EditError::NotHere(format!("no value at {} here", path.join("."))))?;
    helm_at(at, path, subject, to)
}

/// The values inline in the HelmRelease `name` (of `namespace`, when the
/// document names one), at `path` under `spec.values`.
fn helm_release(
    docs: &[Node],
    name: &str,
    namespace: &str,
    path: &[String],
    subject: &Subject<'_>,
    to: &Image,
) -> Result<Vec<Splice>, EditError> {
    let release = docs
        .iter()
        .find(|d| {
            d.get("kind").and_then(Node::as_str) == Some("HelmRelease")
                && d.at(&["metadata".into(), "name".into()])
                    .and_then(Node::as_str)
                    == Some(name)
                && d.at(&["metadata".into(), "namespace".into()])
                    .and_then(Node::as_str)
                    .is_none_or(|n| n == namespace)
        })
        .ok_or_else(|| EditError::NotHere(format!("no HelmRelease {name} here")))?;
    let mut full = vec!["spec".to_owned(), "values".to_owned()];
    full.extend(path.iter().cloned());
    let at = release.at(&full).ok_or_else(|| {
        EditError::NotHere(format!(
            "HelmRelease {name} has no spec.values.{}",
            path.join(".")
        ))
    })?;
    helm_at(at, &full, subject, to)
}

/// The Helm edit of the value `at` (found at `path`): a single image
/// string, or a mapping with `repository`, `tag` and maybe `digest`.
fn helm_at(
    at: &Node,
    path: &[String],
    subject: &Subject<'_>,
    to: &Image,
) -> Result<Vec<Splice>, EditError> {
    if let Some(written) = at.as_str() {
        if to.is(written) {
            return Ok(Vec::new());
        }
        if !same_repository(written, subject.running) {
            return Err(EditError::NotHere(format!(
                "{} here is {written}, not an image of {}",
                path.join("."),
                subject.running.name()
            )));
        }
        return Ok(vec![Splice::set(at, &to.text)?]);
    }
    let repository = at
        .get("repository")
        .or_else(|| at.get("repo"))
        .and_then(Node::as_str)
        .ok_or_else(|| {
            EditError::NotHere(format!(
                "{} here has no repository (expected repository, tag and optionally digest)",
                path.join(".")
            ))
        })?;
    let full = match at.get("registry").and_then(Node::as_str) {
        Some(registry) if !registry.is_empty() => format!("{registry}/{repository}"),
        _ => repository.to_owned(),
    };
    if !same_repository(&full, subject.running) {
        return Err(EditError::NotHere(format!(
            "{} here is {full}, not {}",
            path.join("."),
            subject.running.name()
        )));
    }
    let tag_node = at
        .get("tag")
        .ok_or_else(|| EditError::NotHere(format!("{} here has no tag", path.join("."))))?;
    let mut splices = Vec::new();
    match at.get("digest") {
        Some(digest_node) => {
            let tag = to.tag.clone().unwrap_or_default();
            if tag_node.as_str() != Some(tag.as_str()) && !tag.is_empty() {
                splices.push(Splice::set(tag_node, &tag)?);
            }
            let digest = to
                .digest
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            if digest_node.as_str() != Some(digest.as_str()) {
                if digest.is_empty() {
                    splices.push(remove(digest_node));
                } else {
                    splices.push(Splice::set(digest_node, &digest)?);
                }
            }
        }
        None => {
            // The chart renders `repository:tag`: the digest rides in the tag.
            let mut tag = to.tag.clone().unwrap_or_default();
            if let Some(d) = &to.digest {
                if tag.is_empty() {
                    return Err(EditError::Yaml(YamlError::Unsupported(format!(
                        "{} has no digest field and {} no tag to carry the digest",
                        path.join("."),
                        to.text
                    ))));
                }
                tag = format!("{tag}@{d}");
            }
            if tag_node.as_str() != Some(tag.as_str()) {
                splices.push(Splice::set(tag_node, &tag)?);
            }
        }
    }
    Ok(splices)
}

#[cfg(test)]
mod tests;
