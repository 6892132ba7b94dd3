//! Promotion through git (`gitops: Commit`, `gitops: PullRequest`): after
//! the canary, the proven image is committed to the workload's source (or
//! proposed there in a pull request a reviewer merges) and the reconciler
//! (Flux, Argo CD) applies it; a failure after promotion is a commit (or a
//! pull request) that puts the old image back.
//!
//! Everything a tenant can write is input here. The source comes from the
//! reconciler's own objects (a Flux Kustomization whose inventory lists the
//! workload, so a label alone points nowhere) or from the workload's
//! annotations; either way the URL must be one the governing policy's
//! `spec.git.repositories` allows for the workload's namespace, and the
//! policy's Secret is sent to no other. The edit changes only the image of
//! the workload's own container ([`freshen_core::gitops`]).

pub mod forge;
pub mod writer;

use std::collections::BTreeMap;

use chrono::Utc;
use freshen_api::{GitStatus, PullRequestStatus, Refresh};
use freshen_core::gitops::Field;
use freshen_core::gitops::forge::{self as forge_api, PullState};
use freshen_core::gitops::source::{self, FluxFacts, Source};
use freshen_core::image::ImageReference;
use freshen_core::plan::GitOpsAction;
use freshen_core::plan::{GitOps, gitops_manager};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::ObjectRef;

use crate::error::Error;
use crate::runtime::cached::CachedWorkload;
use crate::runtime::context::Context;
use crate::workload::assess::{Configuration, GitPlan, configure};
use writer::{Commit, Credentials, Delivery, Edit, Review, Target};

/// Flux's labels on what a Kustomization applied.
const FLUX_NAME: &str = "kustomize.toolkit.fluxcd.io/name";
const FLUX_NAMESPACE: &str = "kustomize.toolkit.fluxcd.io/namespace";
/// Flux's labels on what a HelmRelease installed.
const HELM_NAME: &str = "helm.toolkit.fluxcd.io/name";
const HELM_NAMESPACE: &str = "helm.toolkit.fluxcd.io/namespace";
/// Argo CD's tracking annotation and instance label.
const ARGO_TRACKING: &str = "argocd.argoproj.io/tracking-id";
const ARGO_INSTANCE: &str = "argocd.argoproj.io/instance";
/// The default first line of a commit.
const DEFAULT_MESSAGE: &str = "freshen: {namespace}/{workload} {container} -> {image}";
/// The default author.
const DEFAULT_AUTHOR: (&str, &str) = ("freshen", "freshen@users.noreply.freshen.dev");

/// Commits `image` for the Refresh's container to the workload's git
/// source (a revert when `revert`), and returns what the status records.
pub async fn write(
    ctx: &Context,
    refresh: &Refresh,
    workload: &CachedWorkload,
    image: &str,
    revert: bool,
) -> Result<GitStatus, Error> {
    let namespace = workload.namespace().unwrap_or_default();
    let config = configuration(ctx, workload);
    if !revert {
        admit(refresh, &config).map_err(Error::Git)?;
        verified(ctx, refresh, workload, &config).await?;
    }
    let (found, plan) = resolve(ctx, workload, &config).await.map_err(Error::Git)?;
    let (credentials, identity, token) = credentials(ctx, plan).await?;
    let promoted_by = refresh
        .status
        .as_ref()
        .and_then(|s| s.git.as_ref())
        .and_then(|g| g.pull_request.as_ref())
        .map(|p| p.provider);
    let policy = plan
        .spec
        .pull_request
        .as_ref()
        .filter(|_| config.refresh.gitops == Some(GitOpsAction::PullRequest))
        .map(|p| p.provider);
    let delivery = match forge_api::proposed_through(revert, promoted_by, policy) {
        Some(provider) => Delivery::PullRequest { provider, revert },
        None => Delivery::Push,
    };
    let review = Review {
        token,
        labels: plan
            .spec
            .pull_request
            .as_ref()
            .map(|p| p.labels.clone())
            .unwrap_or_default(),
    };
    let running = ImageReference::parse(&refresh.spec.from_image)
        .map_err(|e| Error::Git(format!("spec.fromImage: {e}")))?;
    let title = plan
        .spec
        .message
        .as_deref()
        .unwrap_or(DEFAULT_MESSAGE)
        .replace("{namespace}", &namespace)
        .replace("{workload}", &workload.name_any())
        .replace("{container}", &refresh.spec.container)
        .replace("{image}", image)
        .replace("{refresh}", &refresh.name_any());
    let line = if revert {
        format!(
            "freshen: revert {namespace}/{} {} to {image} ({} failed after promotion)",
            workload.name_any(),
            refresh.spec.container,
            refresh.spec.to_image
        )
    } else {
        title
    };
    let (name, email) = plan.spec.author.as_ref().map_or(
        (DEFAULT_AUTHOR.0.to_owned(), DEFAULT_AUTHOR.1.to_owned()),
        |a| (a.name.clone(), a.email.clone()),
    );
    let target = Target {
        url: found.url.clone(),
        branch: found.branch.clone(),
        identity,
        delivery,
    };
    let progress = refresh.progress();
    let rows: Vec<forge_api::Row<'_>> = progress
        .analysis
        .iter()
        .filter(|c| c.stage == freshen_core::rollout::Stage::Canary)
        .map(|c| forge_api::Row {
            time: c.time,
            ready: c.ready,
            desired: c.desired,
            restarts: c.restarts,
            metric: c.metric,
            verdict: c.verdict.as_str(),
            message: &c.message,
        })
        .collect();
    let section = forge_api::describe(&forge_api::Section {
        workload: &format!(
            "{} {namespace}/{}",
            workload.kind.as_str(),
            workload.name_any()
        ),
        container: &refresh.spec.container,
        from: &refresh.spec.from_image,
        to: &refresh.spec.to_image,
        reason: refresh.spec.reason.as_str(),
        refresh: &refresh.name_any(),
        checks: &rows,
    });
    let intro = revert.then(|| {
        let promoted = refresh
            .status
            .as_ref()
            .and_then(|s| s.git.as_ref())
            .and_then(|g| g.pull_request.as_ref())
            .map_or_else(
                || format!("{} (committed by freshen)", refresh.spec.to_image),
                |p| format!("#{} ({})", p.number, refresh.spec.to_image),
            );
        forge_api::revert_intro(&promoted, &progress.cause)
    });
    let edit = Edit {
        path: found.path.clone(),
        field: found.field.clone(),
        kind: workload.kind.as_str().to_owned(),
        name: workload.name_any(),
        namespace: namespace.clone(),
        container: refresh.spec.container.clone(),
        running,
        image: image.to_owned(),
        line,
        section,
        intro,
    };
    let host = source::host(&found.url).to_owned();
    let result = ctx
        .git
        .write(target, credentials, review, Commit { name, email }, edit)
        .await;
    ctx.metrics
        .git_write(&host, revert, result.as_ref().map(|p| p.written));
    let pushed = result.map_err(|e| Error::Git(e.to_string()))?;
    let proposal = match (&pushed.proposal, delivery) {
        (Some((pr, branch)), Delivery::PullRequest { provider, .. }) => {
            ctx.metrics.pull_request(&host, revert, PullState::Open);
            Some(PullRequestStatus {
                provider,
                number: pr.number,
                url: pr.url.clone(),
                branch: branch.clone(),
                state: pr.state,
                merged_at: forge_api::seen_merged_at(pr.merged_at, Utc::now()),
            })
        }
        _ => None,
    };
    let mut status = refresh
        .status
        .as_ref()
        .and_then(|s| s.git.clone())
        .unwrap_or_default();
    status.repository = found.url;
    status.branch = found.branch;
    status.file = pushed.file;
    if revert {
        status.revert_commit = Some(pushed.commit);
        status.revert_pull_request = proposal;
    } else {
        status.commit = Some(pushed.commit);
        status.pushed_at = Some(Utc::now());
        status.retries = Some(pushed.retries);
        status.pull_request = proposal;
    }
    Ok(status)
}

/// Asks the forge for the state of the Refresh's open pull requests (the
/// promotion's and the revert's), and returns the status with what it
/// answered when that changed; `None` when nothing is open or nothing
/// changed. The token is the governing policy's, as when it was opened.
pub async fn follow(
    ctx: &Context,
    refresh: &Refresh,
    workload: &CachedWorkload,
) -> Result<Option<GitStatus>, Error> {
    let Some((git, token)) = open_pull_requests(ctx, refresh, workload).await? else {
        return Ok(None);
    };
    let host = source::host(&git.repository).to_owned();
    let mut next = git.clone();
    for (slot, revert) in [
        (&mut next.pull_request, false),
        (&mut next.revert_pull_request, true),
    ] {
        let Some(pr) = slot.as_mut().filter(|p| p.state == PullState::Open) else {
            continue;
        };
        let repo = forge_api::locate(pr.provider, &git.repository).map_err(|e| Error::Git(e.0))?;
        let now = ctx
            .git
            .forge()
            .get(&repo, &token, pr.number)
            .await
            .map_err(|e| {
                Error::Git(format!(
                    "reading {} #{}: {e}",
                    pr.provider.noun(),
                    pr.number
                ))
            })?;
        if now.state != pr.state {
            ctx.metrics.pull_request(&host, revert, now.state);
            pr.state = now.state;
            pr.merged_at = forge_api::seen_merged_at(now.merged_at, Utc::now());
        }
    }
    Ok((next != git).then_some(next))
}

/// The Refresh's git status when one of its pull requests is open, and the
/// API token of the governing policy's Secret (as when it was opened).
async fn open_pull_requests(
    ctx: &Context,
    refresh: &Refresh,
    workload: &CachedWorkload,
) -> Result<Option<(GitStatus, String)>, Error> {
    let Some(git) = refresh.status.as_ref().and_then(|s| s.git.clone()) else {
        return Ok(None);
    };
    let open =
        |p: &Option<PullRequestStatus>| p.as_ref().is_some_and(|p| p.state == PullState::Open);
    if !open(&git.pull_request) && !open(&git.revert_pull_request) {
        return Ok(None);
    }
    let config = configuration(ctx, workload);
    let Some(plan) = config.git.as_ref() else {
        return Err(Error::Git(format!(
            "its pull request on {} is open, but its policy no longer has spec.git, whose \
             secretRef's token reads and closes it",
            git.repository
        )));
    };
    let (_, _, token) = credentials(ctx, plan).await?;
    Ok(Some((git, token)))
}

/// Closes the Refresh's pull requests that are still open once it ended
/// without them (the workload changed under it, or it was applied another
/// way): a reviewer should not merge what freshen no longer follows.
/// Returns the status with them closed, `None` when none was open.
pub async fn withdraw(
    ctx: &Context,
    refresh: &Refresh,
    workload: &CachedWorkload,
) -> Result<Option<GitStatus>, Error> {
    let Some((git, token)) = open_pull_requests(ctx, refresh, workload).await? else {
        return Ok(None);
    };
    let mut next = git.clone();
    for slot in [&mut next.pull_request, &mut next.revert_pull_request] {
        let Some(pr) = slot.as_mut().filter(|p| p.state == PullState::Open) else {
            continue;
        };
        let repo = forge_api::locate(pr.provider, &git.repository).map_err(|e| Error::Git(e.0))?;
        ctx.git
            .forge()
            .close(&repo, &token, pr.number)
            .await
            .map_err(|e| {
                Error::Git(format!(
                    "closing {} #{}: {e}",
                    pr.provider.noun(),
                    pr.number
                ))
            })?;
        pr.state = PullState::Closed;
    }
    Ok(Some(next))
}

/// The verification gate (`spec.verify`) judged again for the digest about
/// to be committed, under the policy as it is now: a policy or key that
/// changed while the canary ran is not bypassed by the time it took. An
/// unverified digest is not committed; the Refresh says why and tries again.
async fn verified(
    ctx: &Context,
    refresh: &Refresh,
    workload: &CachedWorkload,
    config: &Configuration,
) -> Result<(), Error> {
    let Some(requirement) = config.verify.as_ref() else {
        return Ok(());
    };
    let key = crate::runtime::records::WorkloadKey {
        namespace: workload.namespace().unwrap_or_default(),
        name: workload.name_any(),
        kind: workload.kind,
    };
    let unusable = |what: &str, e: String| Error::Git(format!("{what}: {e}"));
    let image = ImageReference::parse(&refresh.spec.to_image)
        .map_err(|e| unusable("spec.toImage", e.to_string()))?;
    let digest: freshen_core::Digest = refresh
        .spec
        .digest
        .parse()
        .map_err(|e| unusable("spec.digest", format!("{e}")))?;
    let gathered = crate::workload::gather(ctx, workload, &key).await;
    let lookup = crate::workload::assess::Lookup {
        registry: &ctx.registry,
        keychain: &gathered.keychain,
        platform: gathered.platform.as_ref(),
        now: Utc::now(),
        tags: &ctx.tags,
        origin: crate::workload::tags::Origin {
            namespace: &key.namespace,
            workload: &key.name,
        },
    };
    let judged = ctx
        .verdicts
        .judge(
            &lookup,
            &image,
            &digest,
            requirement,
            crate::workload::verification::RECHECK,
        )
        .await;
    let running = ctx
        .records
        .get(&key)
        .into_iter()
        .flat_map(|r| r.containers)
        .filter(|c| c.container == refresh.spec.container)
        .filter_map(|c| Some((c.container.clone(), c.verification?.findings?)))
        .collect();
    let gate = freshen_core::plan::Verification {
        mode: requirement.mode,
        vulnerabilities: requirement.vulnerabilities,
        verdicts: vec![(refresh.spec.container.clone(), digest.clone(), judged)],
        running,
    };
    let proposal = freshen_core::plan::Proposal {
        reason: refresh.spec.reason,
        container: refresh.spec.container.clone(),
        from_image: refresh.spec.from_image.clone(),
        to_image: refresh.spec.to_image.clone(),
        digest,
    };
    match gate.refuses(&proposal) {
        Some(why) => Err(Error::Git(format!(
            "not committed: the verification gate of its policy refuses {} now ({why})",
            refresh.spec.to_image
        ))),
        None => Ok(()),
    }
}

/// [`freshen_core::gitops::admit`] for `refresh` under the policy as it is
/// now.
fn admit(refresh: &Refresh, config: &Configuration) -> Result<(), String> {
    freshen_core::gitops::admit(
        config.refresh.gitops,
        config.refresh.settings_for(refresh.spec.reason).strategy,
        refresh.spec.rollout.strategy,
        refresh.progress().canary_started_at.is_some(),
    )
}

/// Why a refresh of `workload` could not be promoted through git now, if
/// so: no `spec.git` in its policy, no source found, or a source the policy
/// does not allow. The planner holds the refresh with that reason.
pub async fn check_source(
    ctx: &Context,
    workload: &CachedWorkload,
    config: &Configuration,
) -> Result<(), String> {
    resolve(ctx, workload, config).await.map(|_| ())
}

/// Where `workload` is written, and the policy's `spec.git` that allows
/// freshen to write there; why not, when it cannot.
async fn resolve<'a>(
    ctx: &Context,
    workload: &CachedWorkload,
    config: &'a Configuration,
) -> Result<(Source, &'a GitPlan), String> {
    freshen_core::gitops::promotable(workload.kind)?;
    let Some(plan) = config.git.as_ref() else {
        return Err("its policy has no spec.git (the repositories freshen may push to)".into());
    };
    if config.refresh.gitops == Some(GitOpsAction::PullRequest) && plan.spec.pull_request.is_none()
    {
        return Err(format!(
            "its policy says gitops: PullRequest, and {}'s spec.git has no pullRequest (set \
             spec.git.pullRequest.provider to GitHub, GitLab or Gitea)",
            plan.policy
        ));
    }
    let found = find_source(ctx, workload, config, plan)
        .await
        .map_err(|e| e.to_string())?;
    let namespace = workload.namespace().unwrap_or_default();
    if !source::allowed(&found.url, &namespace, &plan.spec.repositories) {
        return Err(format!(
            "{} ({}) is not among {}'s spec.git.repositories for namespace {namespace}",
            found.url, found.origin, plan.policy
        ));
    }
    Ok((found, plan))
}

/// The workload's configuration, as its planner sees it.
fn configuration(ctx: &Context, workload: &CachedWorkload) -> Configuration {
    let namespace = workload.namespace().unwrap_or_default();
    let labels = ctx
        .namespaces
        .get(&ObjectRef::new(&namespace))
        .map(|ns| ns.labels().clone())
        .unwrap_or_default();
    configure(
        workload,
        &labels,
        &ctx.policies.state(),
        &ctx.cluster_policies.state(),
        &ctx.config.defaults,
    )
}

/// Where the workload is written: its annotations first (a file named
/// there narrows any source), else its Flux Kustomization.
pub async fn find_source(
    ctx: &Context,
    workload: &CachedWorkload,
    config: &Configuration,
    plan: &GitPlan,
) -> Result<Source, source::SourceError> {
    let settings = &config.settings;
    let default_branch = plan.spec.branch.as_deref().unwrap_or("main");
    let image_path = settings
        .image_path
        .as_deref()
        .map(source::parse_image_path)
        .transpose()?;
    let mut found = match settings.git_source.as_deref() {
        Some(annotated) => {
            let (url, branch) = source::parse_git_source(annotated, default_branch)?;
            Source {
                url,
                branch,
                path: String::new(),
                field: None,
                origin: "annotation freshen.dev/git-source".into(),
            }
        }
        None => match gitops_manager(workload.labels(), workload.annotations()) {
            Some(GitOps::ArgoCd) => {
                argo_source(ctx, workload, default_branch, settings.image_path.is_some()).await?
            }
            _ => flux_source(ctx, workload, image_path.as_ref()).await?,
        },
    };
    match (image_path, &found.field) {
        // A HelmRelease's values path alone: taken by from_helm_release.
        (Some((file, _)), Some(Field::HelmRelease { .. })) if file.is_empty() => {}
        (Some((file, _)), _) if file.is_empty() => {
            return Err(source::SourceError(format!(
                "freshen.dev/image-path names only a values path, which only a Flux \
                 HelmRelease's inline values take, and the workload's source is {}; name the \
                 file too",
                found.origin
            )));
        }
        (Some((file, field)), _) => {
            found.path = file;
            found.field = Some(field);
        }
        (None, _) => {}
    }
    Ok(found)
}

/// The source of the Argo CD Application that applied the workload (its
/// tracking annotation, else its instance label, names it).
async fn argo_source(
    ctx: &Context,
    workload: &CachedWorkload,
    default_branch: &str,
    has_image_path: bool,
) -> Result<Source, source::SourceError> {
    let tracking = workload
        .annotations()
        .get(ARGO_TRACKING)
        .or_else(|| workload.labels().get(ARGO_INSTANCE))
        .and_then(|t| source::argo_application(t))
        .ok_or_else(|| {
            source::SourceError("its Argo CD tracking annotation names no Application".into())
        })?;
    let namespace = tracking
        .0
        .unwrap_or(&ctx.config.argocd_namespace)
        .to_owned();
    let name = tracking.1;
    let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Application");
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &namespace, &ApiResource::from_gvk(&gvk));
    let app = match api.get_opt(name).await {
        Ok(Some(a)) => a,
        Ok(None) | Err(kube::Error::Api(_)) => {
            return Err(source::SourceError(format!(
                "Application {namespace}/{name} was not found"
            )));
        }
        Err(e) => {
            return Err(source::SourceError(format!(
                "reading Application {namespace}/{name}: {e}"
            )));
        }
    };
    let spec = &app.data["spec"];
    let read = |s: &serde_json::Value| source::ArgoSource {
        repo_url: s["repoURL"].as_str().unwrap_or_default().to_owned(),
        target_revision: s["targetRevision"].as_str().unwrap_or_default().to_owned(),
        path: s["path"].as_str().map(str::to_owned),
        chart: s["chart"].as_str().map(str::to_owned),
        ref_name: s["ref"].as_str().map(str::to_owned),
        value_files: s["helm"]["valueFiles"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|f| f.as_str().map(str::to_owned))
                    .take(32)
                    .collect()
            })
            .unwrap_or_default(),
    };
    let sources = match spec["sources"].as_array() {
        Some(list) => list.iter().take(32).map(read).collect(),
        None => vec![read(&spec["source"])],
    };
    let (group, kind) = (workload.kind.group(), workload.kind.as_str());
    let (wl_namespace, wl_name) = (
        workload.namespace().unwrap_or_default(),
        workload.name_any(),
    );
    let lists_workload = app.data["status"]["resources"]
        .as_array()
        .is_some_and(|rs| {
            rs.iter().any(|r| {
                r["group"].as_str().unwrap_or_default() == group
                    && r["kind"].as_str() == Some(kind)
                    && r["namespace"].as_str() == Some(wl_namespace.as_str())
                    && r["name"].as_str() == Some(wl_name.as_str())
            })
        });
    let facts = source::ArgoFacts {
        application: format!("{namespace}/{name}"),
        sources,
        lists_workload,
    };
    source::from_argo(&facts, default_branch, has_image_path)
}

/// The source of the Flux Kustomization that applied the workload, or of
/// the HelmRelease that installed it (its inline values, in the manifest
/// the Kustomization that applied the HelmRelease reads).
async fn flux_source(
    ctx: &Context,
    workload: &CachedWorkload,
    image_path: Option<&(String, Field)>,
) -> Result<Source, source::SourceError> {
    let labels = workload.labels();
    let (group, kind) = (workload.kind.group(), workload.kind.as_str());
    let id = source::flux_inventory_id(
        &workload.namespace().unwrap_or_default(),
        &workload.name_any(),
        group,
        kind,
    );
    if let (Some(name), Some(namespace)) = (labels.get(HELM_NAME), labels.get(HELM_NAMESPACE)) {
        let release = get_version(
            ctx,
            "helm.toolkit.fluxcd.io",
            "v2",
            "HelmRelease",
            namespace,
            name,
        )
        .await?
        .ok_or_else(|| {
            source::SourceError(format!("HelmRelease {namespace}/{name} was not found"))
        })?;
        let release_id =
            source::flux_inventory_id(namespace, name, "helm.toolkit.fluxcd.io", "HelmRelease");
        let applied_by = match (
            release.labels().get(FLUX_NAME),
            release.labels().get(FLUX_NAMESPACE),
        ) {
            (Some(k), Some(k_ns)) => Some(kustomization_facts(ctx, k_ns, k, &release_id).await?),
            _ => None,
        };
        let facts = source::HelmFacts {
            name: name.clone(),
            namespace: namespace.clone(),
            lists_workload: lists(&release, &id),
            applied_by,
        };
        let values_path = match image_path {
            Some((file, Field::Helm(path))) if file.is_empty() => path.clone(),
            _ => Vec::new(),
        };
        return source::from_helm_release(&facts, &values_path);
    }
    let (Some(name), Some(namespace)) = (labels.get(FLUX_NAME), labels.get(FLUX_NAMESPACE)) else {
        return Err(source::SourceError(
            "no Flux Kustomization or HelmRelease labels, no Argo CD tracking annotation and no \
             freshen.dev/git-source annotation say where the workload is written"
                .into(),
        ));
    };
    source::from_flux(&kustomization_facts(ctx, namespace, name, &id).await?)
}

/// Whether a Flux object's `status.inventory` lists the object `id`.
fn lists(object: &DynamicObject, id: &str) -> bool {
    object.data["status"]["inventory"]["entries"]
        .as_array()
        .is_some_and(|entries| entries.iter().any(|e| e["id"].as_str() == Some(id)))
}

/// What the Kustomization `namespace/name` and its GitRepository say, and
/// whether its inventory lists the object `id`.
async fn kustomization_facts(
    ctx: &Context,
    namespace: &str,
    name: &str,
    id: &str,
) -> Result<FluxFacts, source::SourceError> {
    let kustomization = get(
        ctx,
        "kustomize.toolkit.fluxcd.io",
        "Kustomization",
        namespace,
        name,
    )
    .await?
    .ok_or_else(|| {
        source::SourceError(format!("Kustomization {namespace}/{name} was not found"))
    })?;
    let spec = &kustomization.data["spec"];
    let source_ref = &spec["sourceRef"];
    let source_kind = source_ref["kind"].as_str().unwrap_or_default().to_owned();
    let source_name = source_ref["name"].as_str().unwrap_or_default();
    let source_namespace = source_ref["namespace"].as_str().unwrap_or(namespace);
    let lists_workload = lists(&kustomization, id);
    let mut facts = FluxFacts {
        kustomization: format!("{namespace}/{name}"),
        path: spec["path"].as_str().map(str::to_owned),
        source_kind: source_kind.clone(),
        lists_workload,
        ..FluxFacts::default()
    };
    if source_kind == "GitRepository"
        && !source_name.is_empty()
        && let Some(repo) = get(
            ctx,
            "source.toolkit.fluxcd.io",
            "GitRepository",
            source_namespace,
            source_name,
        )
        .await?
    {
        let spec = &repo.data["spec"];
        facts.url = spec["url"].as_str().map(str::to_owned);
        let reference = &spec["ref"];
        facts.branch = reference["branch"].as_str().map(str::to_owned);
        facts.pinned = ["tag", "semver", "name", "commit"]
            .iter()
            .find_map(|k| reference[*k].as_str().map(|v| format!("{k} {v}")));
    }
    Ok(facts)
}

/// A Flux object of API version v1, `None` when it is absent (or its CRD
/// is).
async fn get(
    ctx: &Context,
    group: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<DynamicObject>, source::SourceError> {
    get_version(ctx, group, "v1", kind, namespace, name).await
}

/// [`get`] of another API version.
async fn get_version(
    ctx: &Context,
    group: &str,
    version: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<DynamicObject>, source::SourceError> {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let resource = ApiResource::from_gvk(&gvk);
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, &resource);
    match api.get_opt(name).await {
        Ok(o) => Ok(o),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(source::SourceError(format!(
            "reading {kind} {namespace}/{name}: {e}"
        ))),
    }
}

/// The credentials in the policy's Secret, which Secret (the batch key:
/// edits pushed with different credentials never share a commit), and the
/// forge API token (its `token`, else its `password`).
async fn credentials(
    ctx: &Context,
    plan: &GitPlan,
) -> Result<(Credentials, String, String), Error> {
    let Some(secret_ref) = &plan.spec.secret_ref else {
        return Ok((Credentials::Anonymous, String::new(), String::new()));
    };
    let namespace = plan
        .secret_namespace
        .clone()
        .unwrap_or_else(|| ctx.config.rebuild_namespace.clone());
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret = api
        .get_opt(&secret_ref.name)
        .await
        .map_err(|e| {
            Error::Git(format!(
                "reading Secret {namespace}/{}: {e}",
                secret_ref.name
            ))
        })?
        .ok_or_else(|| {
            Error::Git(format!(
                "Secret {namespace}/{} ({}'s spec.git.secretRef) was not found",
                secret_ref.name, plan.policy
            ))
        })?;
    let data: BTreeMap<String, String> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| Some((k, String::from_utf8(v.0).ok()?)))
        .collect();
    let identity = format!("{namespace}/{}", secret_ref.name);
    let token = data
        .get("token")
        .or_else(|| data.get("password"))
        .cloned()
        .unwrap_or_default();
    let credentials = match (
        data.get("username"),
        data.get("password"),
        data.get("identity"),
        data.get("known_hosts"),
    ) {
        (Some(u), Some(p), _, _) => Credentials::Basic {
            username: u.clone(),
            password: p.clone(),
        },
        (_, _, Some(key), Some(hosts)) => Credentials::Ssh {
            identity: key.clone(),
            known_hosts: hosts.clone(),
        },
        _ => {
            return Err(Error::Git(format!(
                "Secret {identity} has neither username and password (HTTPS) nor identity and \
                 known_hosts (SSH)"
            )));
        }
    };
    Ok((credentials, identity, token))
}

/// Whether `refresh` promotes through git.
pub fn through_git(refresh: &Refresh) -> bool {
    refresh.spec.rollout.through_git
}
