//! Where a GitOps-managed workload is written: the repository, branch and
//! path, found from its reconciler's objects or from its annotations, and
//! the checks that keep a tenant's input from steering freshen's git writes
//! (and its credentials) anywhere the policy did not allow.

use std::fmt;

use super::Field;

/// Longest repository URL, path or branch accepted from an object.
pub const MAX_LEN: usize = 512;

/// Where the workload's image is written in git.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The repository's URL (`https://...`, `http://...` or `ssh://...`).
    pub url: String,
    /// The branch the reconciler follows, and freshen pushes to.
    pub branch: String,
    /// A directory of the repository to search, or the file to edit.
    pub path: String,
    /// The field, when a file is named; `None`: search `path`.
    pub field: Option<Field>,
    /// Who said so, for Events: `Kustomization apps/web`, an annotation.
    pub origin: String,
}

/// Why a source could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError(pub String);

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceError {}

fn err<T>(s: impl Into<String>) -> Result<T, SourceError> {
    Err(SourceError(s.into()))
}

/// Checks a repository URL: a scheme freshen pushes over, a host, no
/// credentials in it, bounded.
pub fn check_url(url: &str) -> Result<(), SourceError> {
    if url.len() > MAX_LEN {
        return err(format!(
            "the repository URL is longer than {MAX_LEN} characters"
        ));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return err(format!(
            "repository URL {url:?} is not https://, http:// or ssh://host/path"
        ));
    };
    if !matches!(scheme, "https" | "http" | "ssh") {
        return err(format!(
            "repository URL {url:?}: scheme {scheme} is not https, http or ssh"
        ));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || rest.len() <= authority.len() + 1 {
        return err(format!("repository URL {url:?} has no host or no path"));
    }
    if scheme != "ssh" && authority.contains('@') {
        return err(format!(
            "repository URL {url:?} carries credentials; name a Secret in the policy instead"
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return err(format!("repository URL {url:?} contains blanks"));
    }
    Ok(())
}

/// Checks an entry of a policy's `spec.git.repositories`: a URL prefix with
/// a scheme and a host, and optionally a path (`{namespace}` already
/// replaced).
pub fn check_prefix(prefix: &str) -> Result<(), SourceError> {
    let probe = prefix.trim_end_matches('/');
    match probe.split_once("://") {
        Some((_, rest)) if !rest.is_empty() && !rest.contains('/') => {
            check_url(&format!("{probe}/repository"))
        }
        _ => check_url(probe),
    }
}

/// The host of a checked URL, without user and port: the `host` label of
/// the git metrics.
pub fn host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or(authority);
    host.split(':').next().unwrap_or(host)
}

/// Checks a branch name as git would accept it for a push.
pub fn check_branch(branch: &str) -> Result<(), SourceError> {
    let bad = branch.is_empty()
        || branch.len() > 255
        || branch.starts_with(['-', '/', '.'])
        || branch.ends_with(['/', '.'])
        || branch.ends_with(".lock")
        || branch.contains("..")
        || branch.contains("//")
        || branch.contains("@{")
        || branch
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad {
        return err(format!("{branch:?} is not a branch name git accepts"));
    }
    Ok(())
}

/// A repository path made relative and checked: no `..`, no absolute path,
/// bounded. `./apps/web/` and `apps/web` are the same; the root is `""`.
pub fn clean_path(path: &str) -> Result<String, SourceError> {
    if path.len() > MAX_LEN {
        return err(format!("path is longer than {MAX_LEN} characters"));
    }
    if path.starts_with('/') {
        return err(format!(
            "path {path:?} must be relative to the repository's root"
        ));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return err(format!("path {path:?} must not contain ..")),
            p if p.chars().any(char::is_control) => {
                return err(format!("path {path:?} contains a control character"));
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Parses `freshen.dev/git-source`: `<url>[#<branch>]`.
pub fn parse_git_source(
    value: &str,
    default_branch: &str,
) -> Result<(String, String), SourceError> {
    let (url, branch) = match value.trim().split_once('#') {
        Some((url, branch)) => (url, branch),
        None => (value.trim(), default_branch),
    };
    check_url(url).map_err(|e| {
        SourceError(format!(
            "freshen.dev/git-source: {e}; expected <url>[#<branch>]"
        ))
    })?;
    check_branch(branch).map_err(|e| SourceError(format!("freshen.dev/git-source: {e}")))?;
    Ok((url.to_owned(), branch.to_owned()))
}

/// Parses `freshen.dev/image-path`: `<file>[#<dotted.path>]`, the file
/// relative to the repository's root; a dotted path names Helm values.
pub fn parse_image_path(value: &str) -> Result<(String, Field), SourceError> {
    let expected = "expected <file>[#<dotted.values.path>], e.g. apps/web/values.yaml#image \
                    (or #<dotted.values.path> alone: the path in a HelmRelease's spec.values)";
    let (file, path) = match value.trim().split_once('#') {
        Some((f, p)) => (f, Some(p)),
        None => (value.trim(), None),
    };
    let file = clean_path(file)
        .map_err(|e| SourceError(format!("freshen.dev/image-path: {e}; {expected}")))?;
    if file.is_empty() && path.is_none() {
        return err(format!("freshen.dev/image-path names no file; {expected}"));
    }
    let field = match path {
        None => Field::for_file(&file),
        Some(p) => {
            let keys: Vec<String> = p.split('.').map(str::to_owned).collect();
            if keys.iter().any(String::is_empty) || keys.len() > 16 {
                return err(format!(
                    "freshen.dev/image-path: {p:?} is not a dotted path of keys; {expected}"
                ));
            }
            Field::Helm(keys)
        }
    };
    Ok((file, field))
}

/// What a Flux Kustomization and its GitRepository say, read from their
/// specs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FluxFacts {
    /// `namespace/name` of the Kustomization, for messages.
    pub kustomization: String,
    /// Its `spec.path`.
    pub path: Option<String>,
    /// Its `spec.sourceRef.kind`.
    pub source_kind: String,
    /// The GitRepository's `spec.url`, when it was found.
    pub url: Option<String>,
    /// Its `spec.ref.branch`.
    pub branch: Option<String>,
    /// Whether its `spec.ref` pins a tag, semver range, name or commit
    /// instead: a push there would not be followed.
    pub pinned: Option<String>,
    /// Whether the Kustomization's inventory lists the workload: only then
    /// did Flux apply it from there (a label alone can be written by
    /// anyone who can write the workload).
    pub lists_workload: bool,
}

/// The source a Flux Kustomization gives.
pub fn from_flux(f: &FluxFacts) -> Result<Source, SourceError> {
    let k = &f.kustomization;
    if !f.lists_workload {
        return err(format!(
            "Kustomization {k}'s inventory does not list this workload; its labels alone do not say where it comes from"
        ));
    }
    if f.source_kind != "GitRepository" {
        return err(format!(
            "Kustomization {k} applies from a {}, not a GitRepository; set freshen.dev/git-source",
            f.source_kind
        ));
    }
    if let Some(pin) = &f.pinned {
        return err(format!(
            "Kustomization {k}'s GitRepository follows {pin}, not a branch: a commit would not be applied"
        ));
    }
    let Some(url) = &f.url else {
        return err(format!("Kustomization {k}'s GitRepository was not found"));
    };
    check_url(url)?;
    // Flux's default when a GitRepository names no ref.
    let branch = f.branch.clone().unwrap_or_else(|| "master".into());
    check_branch(&branch)?;
    Ok(Source {
        url: url.clone(),
        branch,
        path: clean_path(f.path.as_deref().unwrap_or(""))?,
        field: None,
        origin: format!("Kustomization {k}"),
    })
}

/// What a Flux HelmRelease that installed the workload says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HelmFacts {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Whether its `status.inventory` lists the workload (helm-controller
    /// v1.5 and later record one): only then did it install the workload.
    pub lists_workload: bool,
    /// The Kustomization that applied the HelmRelease itself (its labels
    /// name it), and whether that one's inventory lists the HelmRelease:
    /// the HelmRelease's manifest, and its inline values, are there.
    pub applied_by: Option<FluxFacts>,
}

/// The values path written when `freshen.dev/image-path` names none.
pub const DEFAULT_VALUES_PATH: &str = "image";

/// The source a Flux HelmRelease gives: its inline values
/// (`spec.values.image`, or `values_path`) in the manifest the
/// Kustomization that applied it reads.
pub fn from_helm_release(h: &HelmFacts, values_path: &[String]) -> Result<Source, SourceError> {
    let r = format!("{}/{}", h.namespace, h.name);
    if !h.lists_workload {
        return err(format!(
            "HelmRelease {r}'s status.inventory does not list this workload (helm-controller v1.5 \
             and later record one); its labels alone do not say where it comes from"
        ));
    }
    let Some(k) = &h.applied_by else {
        return err(format!(
            "HelmRelease {r} was not applied by a Flux Kustomization, so its values are not in a \
             repository freshen can find; set freshen.dev/git-source and freshen.dev/image-path"
        ));
    };
    let mut found = from_flux(k)?;
    found.field = Some(Field::HelmRelease {
        name: h.name.clone(),
        namespace: h.namespace.clone(),
        path: if values_path.is_empty() {
            vec![DEFAULT_VALUES_PATH.to_owned()]
        } else {
            values_path.to_vec()
        },
    });
    found.origin = format!("HelmRelease {r}, applied by {}", found.origin);
    Ok(found)
}

/// One source of an Argo CD Application (`spec.source`, or an entry of
/// `spec.sources`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgoSource {
    /// `repoURL`.
    pub repo_url: String,
    /// `targetRevision` (empty: the repository's default branch).
    pub target_revision: String,
    /// `path`, for a source in git.
    pub path: Option<String>,
    /// `chart`, for a source in a Helm repository.
    pub chart: Option<String>,
    /// `ref`, the name `$<ref>/...` value files use.
    pub ref_name: Option<String>,
    /// `helm.valueFiles`.
    pub value_files: Vec<String>,
}

/// What an Argo CD Application says, read from its spec and status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgoFacts {
    /// `namespace/name` of the Application, for messages.
    pub application: String,
    /// Its sources.
    pub sources: Vec<ArgoSource>,
    /// Whether its `status.resources` lists the workload: only then did
    /// Argo CD apply it (a tracking annotation alone can be written by
    /// anyone who can write the workload).
    pub lists_workload: bool,
}

/// The Application a tracking annotation
/// (`<app>:<group>/<kind>:<namespace>/<name>`) or instance label (`<app>`)
/// names: `(namespace, name)`, the namespace when the app is written
/// `<namespace>_<name>` (Applications outside Argo CD's own namespace).
pub fn argo_application(tracking: &str) -> Option<(Option<&str>, &str)> {
    let app = tracking.split(':').next()?.trim();
    if app.is_empty() || app.len() > 253 {
        return None;
    }
    Some(match app.split_once('_') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, app),
    })
}

/// Whether a `targetRevision` names a branch freshen can push to: not a
/// commit, not what reads as a version tag (`v1.2.3`, `1.2`), not a range.
fn argo_branch(revision: &str, default_branch: &str) -> Result<String, SourceError> {
    let r = revision.trim();
    if r.is_empty() || r == "HEAD" {
        return Ok(default_branch.to_owned());
    }
    let commit = r.len() >= 7 && r.len() <= 40 && r.chars().all(|c| c.is_ascii_hexdigit());
    let version = r.trim_start_matches('v').split('.').count() >= 2
        && r.trim_start_matches('v')
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit());
    let range = r.contains(['*', '^', '~', '>', '<', ' ']);
    if commit || version || range {
        return err(format!(
            "targetRevision {r} is a commit, a version tag or a range, not a branch: a commit would not be applied"
        ));
    }
    check_branch(r)?;
    Ok(r.to_owned())
}

/// The source an Argo CD Application gives: the git file its Helm value
/// files name (a `$<ref>/<file>` of another source, or a file beside a
/// chart in git), which needs `freshen.dev/image-path` for the values'
/// path (`has_image_path`); else the first git source's `path`, searched.
pub fn from_argo(
    a: &ArgoFacts,
    default_branch: &str,
    has_image_path: bool,
) -> Result<Source, SourceError> {
    let app = &a.application;
    if !a.lists_workload {
        return err(format!(
            "Application {app}'s status.resources does not list this workload; its tracking annotation alone does not say where it comes from"
        ));
    }
    let origin = format!("Application {app}");
    for s in &a.sources {
        for file in &s.value_files {
            let (repo, path) = match file.strip_prefix('$').and_then(|f| f.split_once('/')) {
                Some((name, rest)) => {
                    let Some(r) = a
                        .sources
                        .iter()
                        .find(|r| r.ref_name.as_deref() == Some(name))
                    else {
                        return err(format!(
                            "Application {app}: value file {file} names no source with ref {name}"
                        ));
                    };
                    (r, clean_path(rest)?)
                }
                None if s.chart.is_none() => (
                    s,
                    clean_path(&format!("{}/{file}", s.path.as_deref().unwrap_or("")))?,
                ),
                None => continue,
            };
            if !has_image_path {
                return err(format!(
                    "Application {app} renders Helm values from {path}; set freshen.dev/image-path to {path}#<values.path> (e.g. #image)"
                ));
            }
            check_url(&repo.repo_url)?;
            return Ok(Source {
                url: repo.repo_url.clone(),
                branch: argo_branch(&repo.target_revision, default_branch)?,
                path,
                field: None,
                origin,
            });
        }
    }
    let Some(s) = a
        .sources
        .iter()
        .find(|s| s.chart.is_none() && s.path.is_some())
    else {
        return err(format!(
            "Application {app} has no source in git with a path"
        ));
    };
    check_url(&s.repo_url)?;
    Ok(Source {
        url: s.repo_url.clone(),
        branch: argo_branch(&s.target_revision, default_branch)?,
        path: clean_path(s.path.as_deref().unwrap_or(""))?,
        field: None,
        origin,
    })
}

/// The entry id Flux's inventory gives an object:
/// `<namespace>_<name>_<group>_<kind>`.
pub fn flux_inventory_id(namespace: &str, name: &str, group: &str, kind: &str) -> String {
    format!("{namespace}_{name}_{group}_{kind}")
}

/// Whether the policy lets freshen write to `url` for a workload in
/// `namespace`: the URL starts with one of `allowed` (after `{namespace}`
/// in an entry is replaced by the workload's namespace), at a `/` boundary.
/// The credentials the policy names are sent to no other URL.
pub fn allowed(url: &str, namespace: &str, allowed: &[String]) -> bool {
    let url = url.trim_end_matches('/');
    allowed.iter().any(|prefix| {
        let prefix = prefix.replace("{namespace}", namespace);
        let prefix = prefix.trim_end_matches('/');
        !prefix.is_empty()
            && url.starts_with(prefix)
            && matches!(url[prefix.len()..].chars().next(), None | Some('/'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_branches_are_checked() {
        assert!(check_url("https://git.example.com/org/repo.git").is_ok());
        assert!(check_url("ssh://git@git.example.com/org/repo.git").is_ok());
        for bad in [
            "git.example.com/org/repo",
            "file:///etc",
            "https://user:token@git.example.com/x",
            "https://git.example.com",
            "https://git.example.com/a b",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert_eq!(host("ssh://git@git.example.com:2222/x"), "git.example.com");
        assert!(check_prefix("http://127.0.0.1:15080/").is_ok());
        assert!(check_prefix("https://git.example.com/team-a/").is_ok());
        assert!(check_prefix("https://").is_err());
        assert!(check_prefix("https://u:p@git.example.com/").is_err());
        assert!(check_branch("release/1.2").is_ok());
        for bad in ["", "-x", "a..b", "a b", "x.lock", "a:b", "@{u}"] {
            assert!(check_branch(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_are_relative_and_stay_inside() {
        assert_eq!(clean_path("./apps//web/").ok().as_deref(), Some("apps/web"));
        assert_eq!(clean_path("./").ok().as_deref(), Some(""));
        assert!(clean_path("../x").is_err());
        assert!(clean_path("a/../../x").is_err());
        assert!(clean_path("/etc/passwd").is_err());
    }

    #[test]
    fn annotations_parse_or_say_the_expected_form() {
        assert_eq!(
            parse_git_source("https://g.example/o/r.git#prod", "main").ok(),
            Some(("https://g.example/o/r.git".into(), "prod".into()))
        );
        assert_eq!(
            parse_git_source("https://g.example/o/r.git", "main")
                .ok()
                .map(|s| s.1),
            Some("main".into())
        );
        let e = parse_git_source("g.example/o/r", "main")
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        assert!(e.contains("expected <url>[#<branch>]"), "{e}");
        assert_eq!(
            parse_image_path("apps/web/values.yaml#web.image").ok(),
            Some((
                "apps/web/values.yaml".into(),
                Field::Helm(vec!["web".into(), "image".into()])
            ))
        );
        assert_eq!(
            parse_image_path("./base/kustomization.yaml").ok(),
            Some(("base/kustomization.yaml".into(), Field::Kustomize))
        );
        assert_eq!(
            parse_image_path("deploy/web.yaml").ok().map(|p| p.1),
            Some(Field::Manifest)
        );
        for bad in ["", "../x.yaml", "x.yaml#a..b", "/x.yaml"] {
            assert!(parse_image_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_helm_release_gives_its_inline_values_in_the_kustomizations_source() {
        let applied_by = FluxFacts {
            kustomization: "flux-system/apps".into(),
            path: Some("./apps".into()),
            source_kind: "GitRepository".into(),
            url: Some("http://git.local/fleet.git".into()),
            branch: Some("main".into()),
            pinned: None,
            lists_workload: true,
        };
        let facts = HelmFacts {
            name: "podinfo".into(),
            namespace: "apps".into(),
            lists_workload: true,
            applied_by: Some(applied_by.clone()),
        };
        let s = from_helm_release(&facts, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (s.url.as_str(), s.path.as_str()),
            ("http://git.local/fleet.git", "apps")
        );
        assert_eq!(
            s.field,
            Some(Field::HelmRelease {
                name: "podinfo".into(),
                namespace: "apps".into(),
                path: vec!["image".into()],
            })
        );
        assert!(
            s.origin
                .starts_with("HelmRelease apps/podinfo, applied by Kustomization")
        );
        let custom = from_helm_release(&facts, &["app".into(), "image".into()]);
        assert!(matches!(
            custom.map(|s| s.field),
            Ok(Some(Field::HelmRelease { path, .. })) if path == ["app", "image"]
        ));
        // The workload must be in the release's inventory, and the release
        // in the Kustomization's; a release applied by hand has no source.
        let unlisted = HelmFacts {
            lists_workload: false,
            ..facts.clone()
        };
        assert!(from_helm_release(&unlisted, &[]).is_err_and(|e| e.0.contains("status.inventory")));
        let hidden = HelmFacts {
            applied_by: Some(FluxFacts {
                lists_workload: false,
                ..applied_by
            }),
            ..facts.clone()
        };
        assert!(from_helm_release(&hidden, &[]).is_err_and(|e| e.0.contains("inventory")));
        let by_hand = HelmFacts {
            applied_by: None,
            ..facts
        };
        assert!(from_helm_release(&by_hand, &[]).is_err_and(|e| e.0.contains("not applied by")));
        // A values path alone is a well-formed annotation.
        assert_eq!(
            parse_image_path("#app.image").ok(),
            Some((
                String::new(),
                Field::Helm(vec!["app".into(), "image".into()])
            ))
        );
        assert!(parse_image_path("").is_err());
    }

    #[test]
    fn flux_gives_a_source_only_for_what_it_applied_from_a_branch() {
        let facts = FluxFacts {
            kustomization: "flux-system/apps".into(),
            path: Some("./apps/web".into()),
            source_kind: "GitRepository".into(),
            url: Some("http://git.local/fleet.git".into()),
            branch: Some("main".into()),
            pinned: None,
            lists_workload: true,
        };
        let s = from_flux(&facts).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (s.url.as_str(), s.branch.as_str(), s.path.as_str()),
            ("http://git.local/fleet.git", "main", "apps/web")
        );
        let unlisted = FluxFacts {
            lists_workload: false,
            ..facts.clone()
        };
        assert!(from_flux(&unlisted).is_err_and(|e| e.0.contains("inventory")));
        let tag = FluxFacts {
            pinned: Some("tag v1".into()),
            ..facts.clone()
        };
        assert!(from_flux(&tag).is_err_and(|e| e.0.contains("not a branch")));
        let oci = FluxFacts {
            source_kind: "OCIRepository".into(),
            ..facts.clone()
        };
        assert!(from_flux(&oci).is_err_and(|e| e.0.contains("freshen.dev/git-source")));
        let default = FluxFacts {
            branch: None,
            ..facts
        };
        assert_eq!(
            from_flux(&default).ok().map(|s| s.branch),
            Some("master".into())
        );
        assert_eq!(
            flux_inventory_id("apps", "web", "apps", "Deployment"),
            "apps_web_apps_Deployment"
        );
    }

    fn git_source(url: &str, rev: &str, path: Option<&str>) -> ArgoSource {
        ArgoSource {
            repo_url: url.into(),
            target_revision: rev.into(),
            path: path.map(str::to_owned),
            ..ArgoSource::default()
        }
    }

    #[test]
    fn argo_gives_the_git_path_of_a_single_source() {
        let app = ArgoFacts {
            application: "argocd/web".into(),
            sources: vec![git_source(
                "https://git.example.com/fleet.git",
                "HEAD",
                Some("apps/web"),
            )],
            lists_workload: true,
        };
        let s = from_argo(&app, "main", false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (s.url.as_str(), s.branch.as_str(), s.path.as_str()),
            ("https://git.example.com/fleet.git", "main", "apps/web")
        );
        assert_eq!(s.origin, "Application argocd/web");
        let unlisted = ArgoFacts {
            lists_workload: false,
            ..app.clone()
        };
        assert!(
            from_argo(&unlisted, "main", false).is_err_and(|e| e.0.contains("status.resources"))
        );
        for pinned in [
            "v1.2.3",
            "1.4",
            "0123456789abcdef0123456789abcdef01234567",
            ">=1.0",
        ] {
            let mut a = app.clone();
            a.sources[0].target_revision = pinned.into();
            assert!(
                from_argo(&a, "main", false).is_err_and(|e| e.0.contains("not a branch")),
                "{pinned}"
            );
        }
        let mut release = app;
        release.sources[0].target_revision = "release".into();
        assert_eq!(
            from_argo(&release, "main", false).ok().map(|s| s.branch),
            Some("release".into())
        );
    }

    #[test]
    fn argo_multi_source_values_come_from_the_ref_source() {
        let app = ArgoFacts {
            application: "argocd/web".into(),
            sources: vec![
                ArgoSource {
                    repo_url: "https://charts.example.com".into(),
                    chart: Some("web".into()),
                    value_files: vec!["$values/apps/web/values.yaml".into()],
                    ..ArgoSource::default()
                },
                ArgoSource {
                    ref_name: Some("values".into()),
                    ..git_source("https://git.example.com/values.git", "prod", None)
                },
            ],
            lists_workload: true,
        };
        let e = from_argo(&app, "main", false)
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        assert!(
            e.contains("set freshen.dev/image-path to apps/web/values.yaml#"),
            "{e}"
        );
        let s = from_argo(&app, "main", true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (s.url.as_str(), s.branch.as_str(), s.path.as_str()),
            (
                "https://git.example.com/values.git",
                "prod",
                "apps/web/values.yaml"
            )
        );
        let mut broken = app;
        broken.sources[0].value_files = vec!["$nope/values.yaml".into()];
        assert!(
            from_argo(&broken, "main", true)
                .is_err_and(|e| e.0.contains("no source with ref nope"))
        );
    }

    #[test]
    fn argo_tracking_names_the_application() {
        assert_eq!(
            argo_application("web:apps/Deployment:shop/web"),
            Some((None, "web"))
        );
        assert_eq!(
            argo_application("team-a_web:apps/Deployment:shop/web"),
            Some((Some("team-a"), "web"))
        );
        assert_eq!(argo_application(""), None);
    }

    #[test]
    fn credentials_go_only_to_the_allowed_repositories() {
        let list = vec![
            "https://git.example.com/{namespace}/".to_owned(),
            "http://git.local/fleet.git".to_owned(),
        ];
        assert!(allowed(
            "https://git.example.com/team-a/app.git",
            "team-a",
            &list
        ));
        assert!(!allowed(
            "https://git.example.com/team-b/app.git",
            "team-a",
            &list
        ));
        assert!(!allowed(
            "https://git.example.com/team-a-evil/app.git",
            "team-a",
            &list
        ));
        assert!(allowed("http://git.local/fleet.git", "x", &list));
        assert!(!allowed("http://git.local/fleet.git.evil", "x", &list));
        assert!(!allowed("https://evil.example/x", "x", &list));
    }
}
