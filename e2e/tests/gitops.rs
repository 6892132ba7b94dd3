//! Promotion through git, end to end: a Deployment applied by the real Flux
//! (source-controller and kustomize-controller v1.9, built from the Go
//! module proxy) from a repository on the harness's git server
//! (`git http-backend`). freshen canaries the new digest in the cluster,
//! commits it to the repository, and waits for Flux to apply it; a digest
//! that fails after promotion is reverted in git, and Flux applies the
//! revert. Under `gitops: PullRequest` the repository lives on the
//! harness's Gitea (v1.26, built from the Go module proxy): freshen opens
//! the pull request through Gitea's API, and the tests merge or close it
//! there as a reviewer would.

use std::time::Duration;

use freshen_api::refresh::{AnalysisSpec, GitOpsMode, RolloutSpec};
use freshen_api::{
    GitAuthor, GitSpec, LocalSecretRef, PolicyRefresh, PullRequestSpec, PullRequestStatus, Refresh,
    RefreshPolicy, RefreshPolicySpec,
};
use freshen_core::gitops::forge::{Provider, PullState};
use freshen_core::rollout::{Failure, Phase};
use freshen_e2e::fleet::{Fleet, git};
use freshen_e2e::operator::Operator;
use freshen_e2e::scene::{Scene, image};
use freshen_e2e::{wait_for, wait_ready_pods};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::PostParams;
use kube::{Api, ResourceExt};

/// The fleet's Deployment `web`, as a person writes it: comments, quotes,
/// a blank line. `template_annotations` are kwok's crash markers.
fn manifest(image: &str, template_annotations: &str) -> String {
    named("web", 2, image, template_annotations)
}

/// [`manifest`] for Deployment `name` of `replicas`.
fn named(name: &str, replicas: u32, image: &str, template_annotations: &str) -> String {
    format!(
        r#"# The web tier. Its image is bumped by freshen after a canary.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels:
    app: {name}
    tier: web
spec:
  replicas: {replicas}

  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
      annotations: {{{template_annotations}}}
    spec:
      containers:
        - name: app
          image: "{image}"   # pinned by freshen
          ports:
            - containerPort: 8080
"#
    )
}

/// A policy for `tier=web`: follow the tag, a 50 % canary of 2 checks 1s
/// apart, and `gitops: Commit` to the harness's git server.
async fn policy(s: &Scene) -> anyhow::Result<()> {
    let git = GitSpec {
        repositories: vec![format!("{}/", s.harness.git_url)],
        author: Some(GitAuthor {
            name: "freshen-e2e".into(),
            email: "freshen@e2e.example".into(),
        }),
        ..GitSpec::default()
    };
    policy_with(s, GitOpsMode::Commit, git, "60s").await
}

/// [`policy`] with another mode, `spec.git` and readiness timeout.
async fn policy_with(
    s: &Scene,
    mode: GitOpsMode,
    git: GitSpec,
    readiness_timeout: &str,
) -> anyhow::Result<()> {
    let refresh = PolicyRefresh {
        follow_tag: Some(true),
        gitops: Some(mode),
        git: Some(git),
        rollout: Some(RolloutSpec {
            strategy: None,
            canary_weight: Some(50),
            analysis: Some(AnalysisSpec {
                interval: Some("1s".into()),
                iterations: Some(2),
                readiness_timeout: Some(readiness_timeout.into()),
                ..AnalysisSpec::default()
            }),
        }),
        ..PolicyRefresh::default()
    };
    let policy = RefreshPolicy::new(
        "web",
        RefreshPolicySpec {
            pipelines: Default::default(),
            selector: LabelSelector {
                match_labels: Some([("tier".to_owned(), "web".to_owned())].into()),
                ..LabelSelector::default()
            },
            limits: Default::default(),
            refresh,
        },
    );
    Api::<RefreshPolicy>::namespaced(s.client.clone(), &s.ns.name)
        .create(&PostParams::default(), &policy)
        .await?;
    Ok(())
}

/// The fleet with `web` on `image`, applied by Flux, its pods Ready.
async fn fleet(s: &Scene, image: &str, annotations: &str) -> anyhow::Result<Fleet> {
    let fleet = Fleet::new(
        &s.harness,
        &s.client,
        &s.ns.name,
        &[("web.yaml", manifest(image, annotations))],
    )
    .await?;
    fleet.await_applied("the fleet").await?;
    wait_ready_pods(&s.client, &s.ns.name, "web", 2, Duration::from_secs(60)).await?;
    Ok(fleet)
}

async fn template_image(s: &Scene) -> anyhow::Result<String> {
    let d = Api::<Deployment>::namespaced(s.client.clone(), &s.ns.name)
        .get("web")
        .await?;
    Ok(d.spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.into_iter().next())
        .and_then(|c| c.image)
        .unwrap_or_default())
}

/// The test's image at tag `v1`, pinned to `digest`.
fn pinned(s: &Scene, digest: &str) -> String {
    format!("{}/{}:v1@{digest}", s.harness.registry, s.repo)
}

fn git_status(r: &Refresh) -> freshen_api::GitStatus {
    r.status
        .as_ref()
        .and_then(|s| s.git.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_proven_digest_is_committed_and_flux_applies_it() -> anyhow::Result<()> {
    let s = Scene::new("gitops-commit").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let from = pinned(&s, &v1.digest);
    let fleet = fleet(&s, &from, "").await?;
    let seeded = fleet.head()?;
    policy(&s).await?;
    let op = s.operator().await?;
    let new = s.push("v1", &image("two", 1)).await?;
    let to = pinned(&s, &new.digest);

    let done = s
        .await_refresh("web", "Succeeded", |r| {
            r.progress().phase == Phase::Succeeded
        })
        .await?;
    assert!(
        done.spec.rollout.through_git,
        "the Refresh promotes through git"
    );
    let status = git_status(&done);
    let head = fleet.head()?;
    assert_eq!(status.commit.as_deref(), Some(head.as_str()));
    assert_eq!(status.file, format!("{}/web.yaml", fleet.path));
    assert_eq!(status.branch, "main");
    // The diff is the value, nothing else: the comment, the quotes, the
    // indentation and the blank line are as the human wrote them.
    assert_eq!(
        fleet.changed_lines(&head)?,
        [
            format!("-          image: \"{from}\"   # pinned by freshen"),
            format!("+          image: \"{to}\"   # pinned by freshen"),
        ]
    );
    assert_eq!(fleet.show(&status.file)?, manifest(&to, ""));
    assert_eq!(
        fleet.log("%an %P")?,
        [format!("freshen-e2e {seeded}"), "A Human ".to_owned()]
    );
    // Flux applied it (freshen never patched the image itself).
    fleet.await_applied("freshen's commit").await?;
    assert_eq!(template_image(&s).await?, to);
    let promoted = done.progress().promoted_at.unwrap_or_default();
    let applied = done.progress().patched_at.unwrap_or_default();
    eprintln!(
        "canary success -> commit pushed {:?} after the promotion; commit -> applied by Flux {:.1}s",
        status.pushed_at.map(|p| p - promoted),
        (applied - promoted).as_seconds_f64()
    );
    op.await_metric(
        r#"freshen_git_commits_total{change="promote",host="127.0.0.1",result="pushed"}"#,
        1.0,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_digest_failing_in_the_canary_writes_nothing_to_git() -> anyhow::Result<()> {
    let s = Scene::new("gitops-canary-fails").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let bad_spec = image("bad", 1);
    // The same image pushed first elsewhere: its digest, for kwok's marker.
    let bad = s.push("staging", &bad_spec).await?;
    let from = pinned(&s, &v1.digest);
    let fleet = fleet(
        &s,
        &from,
        &format!(r#""e2e.freshen.dev/crash-on": "{}""#, bad.digest),
    )
    .await?;
    let seeded = fleet.head()?;
    policy(&s).await?;
    let _op = s.operator().await?;
    s.push("v1", &bad_spec).await?;

    let done = s
        .await_refresh("web", "RolledBack", |r| {
            r.progress().phase == Phase::RolledBack
        })
        .await?;
    assert_eq!(done.progress().failure, Some(Failure::PodFailure));
    assert_eq!(git_status(&done).commit, None);
    assert_eq!(fleet.head()?, seeded, "nothing was committed");
    assert_eq!(template_image(&s).await?, from);
    Ok(())
}

#[tokio::test]
async fn a_digest_failing_after_promotion_is_reverted_in_git_and_not_proposed_again()
-> anyhow::Result<()> {
    let s = Scene::new("gitops-revert").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let bad_spec = image("bad-in-rollout", 1);
    let bad = s.push("staging", &bad_spec).await?;
    let from = pinned(&s, &v1.digest);
    // The canary's pods run; the workload's own new pods crash.
    let annotations = format!(r#""e2e.freshen.dev/crash-on-rollout": "{}""#, bad.digest);
    let fleet = fleet(&s, &from, &annotations).await?;
    let seeded_text = fleet.show(&format!("{}/web.yaml", fleet.path))?;
    policy(&s).await?;
    let op = s.operator().await?;
    s.push("v1", &bad_spec).await?;

    let done = s
        .await_refresh("web", "RolledBack", |r| {
            r.progress().phase == Phase::RolledBack
        })
        .await?;
    assert_eq!(done.progress().failure, Some(Failure::PodFailure));
    let status = git_status(&done);
    let (Some(promoted), Some(reverted)) = (status.commit.clone(), status.revert_commit.clone())
    else {
        panic!("a promotion and a revert commit: {status:?}");
    };
    let log = fleet.log("%H %s")?;
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(
        log[0].starts_with(&reverted) && log[0].contains("revert"),
        "{log:?}"
    );
    assert!(log[1].starts_with(&promoted), "{log:?}");
    // The revert puts the file back byte for byte.
    assert_eq!(fleet.show(&status.file)?, seeded_text);
    fleet.await_applied("the revert").await?;
    assert_eq!(template_image(&s).await?, from);

    // Flux reconciles every 2s: after several more of its applies and of
    // freshen's looks, the digest is still rejected and not proposed again.
    for _ in 0..3 {
        fleet.await_applied("the branch again").await?;
        s.await_reconciles(&op, "deployment", 2).await?;
    }
    let refreshes = s.refreshes_of("web").await?;
    assert_eq!(refreshes.len(), 1, "never proposed again");
    assert_eq!(fleet.log("%H")?.len(), 3);
    Ok(())
}

#[tokio::test]
async fn a_human_commit_that_lands_first_is_kept_and_freshens_is_rebased_on_it()
-> anyhow::Result<()> {
    let s = Scene::new("gitops-race").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let from = pinned(&s, &v1.digest);
    let fleet = fleet(&s, &from, "").await?;
    // A human's commit (a ConfigMap beside the app) waits on a side branch;
    // a pre-receive hook moves main to it while freshen's push is in
    // flight, once: the race a busy fleet repository has, made certain.
    std::fs::write(
        fleet.work.join(&fleet.path).join("config.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  color: blue\n",
    )?;
    git(&fleet.work, &["add", "."])?;
    git(&fleet.work, &["commit", "-q", "-m", "a human's config"])?;
    git(&fleet.work, &["push", "-q", "origin", "main:human"])?;
    let human = git(&fleet.work, &["rev-parse", "HEAD"])?.trim().to_owned();
    let hook = fleet.bare.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\n# Once: main moves to the human's commit while a push is in flight.\n\
         unset GIT_QUARANTINE_PATH GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES\n\
         cat >/dev/null\n\
         if [ -f race ]; then rm -f race; git update-ref refs/heads/main refs/heads/human; fi\n\
         exit 0\n",
    )?;
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::write(fleet.bare.join("race"), "")?;
    policy(&s).await?;
    let _op = s.operator().await?;
    let new = s.push("v1", &image("two", 1)).await?;

    let done = s
        .await_refresh("web", "Succeeded", |r| {
            r.progress().phase == Phase::Succeeded
        })
        .await?;
    let status = git_status(&done);
    assert_eq!(
        status.retries,
        Some(1),
        "one push was refused, the next went through"
    );
    let log = fleet.log("%H %P %an")?;
    assert_eq!(log.len(), 3, "{log:?}");
    let commit = status.commit.unwrap_or_default();
    assert_eq!(
        log[0],
        format!("{commit} {human} freshen-e2e"),
        "freshen's commit is on the human's"
    );
    assert!(
        fleet
            .show(&format!("{}/config.yaml", fleet.path))?
            .contains("color: blue")
    );
    assert!(fleet.show(&status.file)?.contains(&new.digest));
    // Flux applied both.
    fleet.await_applied("both commits").await?;
    wait_for(
        "the human's ConfigMap applied",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
                Api::namespaced(s.client.clone(), &s.ns.name);
            Ok(cms.get_opt("web-config").await?.map(|c| c.name_any()))
        },
    )
    .await?;
    Ok(())
}

/// An Argo CD Application (the stand-in CRD) in Argo CD's namespace with
/// `spec`, whose `status.resources` lists Deployment `web` of `namespace`,
/// as Argo CD's controller writes it.
async fn application(
    s: &Scene,
    spec: serde_json::Value,
) -> anyhow::Result<freshen_e2e::DeleteOnDrop> {
    use kube::api::{Patch, PatchParams};
    let apps = freshen_e2e::peers::custom(
        &s.client,
        "argocd",
        "argoproj.io",
        "v1alpha1",
        "Application",
    );
    let name = s.ns.name.clone();
    let app: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
        "metadata": {"name": name, "namespace": "argocd"},
        "spec": spec,
    }))?;
    apps.create(&PostParams::default(), &app).await?;
    let status = serde_json::json!({"status": {"resources": [
        {"group": "apps", "version": "v1", "kind": "Deployment", "namespace": s.ns.name, "name": "web", "status": "Synced"}
    ]}});
    apps.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(s.harness
        .delete_on_drop_in(Some("argocd"), "applications.argoproj.io", &name))
}

/// Deployment `web` as Argo CD applied it: tracked by Application
/// `<namespace>` (in Argo CD's namespace), running `image`.
async fn argo_deployment(s: &Scene, image: &str) -> anyhow::Result<()> {
    let tracking = format!("{}:apps/Deployment:{}/web", s.ns.name, s.ns.name);
    let deployment = freshen_e2e::deployment_with(
        "web",
        image,
        2,
        serde_json::json!({"metadata": {
            "labels": {"tier": "web"},
            "annotations": {"argocd.argoproj.io/tracking-id": tracking},
        }}),
    )?;
    Api::<Deployment>::namespaced(s.client.clone(), &s.ns.name)
        .create(&PostParams::default(), &deployment)
        .await?;
    wait_ready_pods(&s.client, &s.ns.name, "web", 2, Duration::from_secs(60)).await?;
    Ok(())
}

/// What Argo CD's sync would do with the commit: apply the workload's
/// new image.
async fn sync_image(s: &Scene, image: &str) -> anyhow::Result<()> {
    use kube::api::{Patch, PatchParams};
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
    Api::<Deployment>::namespaced(s.client.clone(), &s.ns.name)
        .patch(
            "web",
            &PatchParams::apply("argocd-controller").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                "spec": patch["spec"],
            })),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn an_argo_cd_application_single_source_is_found_and_committed_to() -> anyhow::Result<()> {
    let s = Scene::new("gitops-argo").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let from = pinned(&s, &v1.digest);
    let fleet = Fleet::repository(
        &s.harness,
        &s.client,
        &s.ns.name,
        &[("web.yaml", manifest(&from, ""))],
    )?;
    argo_deployment(&s, &from).await?;
    let _app = application(
        &s,
        serde_json::json!({"project": "default", "destination": {"namespace": s.ns.name},
            "source": {"repoURL": fleet.url, "targetRevision": "HEAD", "path": fleet.path}}),
    )
    .await?;
    policy(&s).await?;
    let _op = s.operator().await?;
    let new = s.push("v1", &image("two", 1)).await?;
    let to = pinned(&s, &new.digest);

    let pushed = s
        .await_refresh("web", "committed, awaiting Argo CD", |r| {
            git_status(r).commit.is_some()
        })
        .await?;
    assert_eq!(pushed.progress().phase, Phase::Promoting);
    let status = git_status(&pushed);
    assert_eq!(status.file, format!("{}/web.yaml", fleet.path));
    assert_eq!(
        fleet.changed_lines(&fleet.head()?)?,
        [
            format!("-          image: \"{from}\"   # pinned by freshen"),
            format!("+          image: \"{to}\"   # pinned by freshen"),
        ]
    );
    // freshen never patched the workload: it waits for the reconciler.
    assert_eq!(template_image(&s).await?, from);
    sync_image(&s, &to).await?;
    s.await_refresh("web", "Succeeded", |r| {
        r.progress().phase == Phase::Succeeded
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_argo_cd_multi_source_application_gets_its_helm_values_committed() -> anyhow::Result<()>
{
    let s = Scene::new("gitops-argo-multi").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let repository = format!("{}/{}", s.harness.registry, s.repo);
    let from = format!("{repository}:v1@{}", v1.digest);
    let values = format!(
        "# values for the web chart\nreplicaCount: 2\n\nimage:\n  repository: {repository}\n  tag: \"v1@{}\"   # the chart renders repository:tag\n  pullPolicy: IfNotPresent\n",
        v1.digest
    );
    let fleet = Fleet::repository(
        &s.harness,
        &s.client,
        &s.ns.name,
        &[("values.yaml", values.clone())],
    )?;
    argo_deployment(&s, &from).await?;
    let _app = application(
        &s,
        serde_json::json!({"project": "default", "destination": {"namespace": s.ns.name},
        "sources": [
            {"repoURL": "https://charts.example.com", "chart": "web", "targetRevision": "1.2.3",
             "helm": {"valueFiles": [format!("$values/{}/values.yaml", fleet.path)]}},
            {"repoURL": fleet.url, "targetRevision": "main", "ref": "values"},
        ]}),
    )
    .await?;
    policy(&s).await?;
    let _op = s.operator().await?;
    let new = s.push("v1", &image("two", 1)).await?;

    // The values file is found, but not where in it the image is: held,
    // and the Event says what to set.
    let note = freshen_e2e::await_warning(
        &s.client,
        &s.ns.name,
        "Deployment",
        "web",
        "GitSourceNotFound",
    )
    .await?;
    let file = format!("{}/values.yaml", fleet.path);
    assert!(
        note.contains(&format!("set freshen.dev/image-path to {file}#")),
        "{note}"
    );
    assert!(s.refreshes_of("web").await?.is_empty());

    let api = Api::<Deployment>::namespaced(s.client.clone(), &s.ns.name);
    let annotate = serde_json::json!({"metadata": {"annotations": {"freshen.dev/image-path": format!("{file}#image")}}});
    api.patch(
        "web",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(annotate),
    )
    .await?;
    let pushed = s
        .await_refresh("web", "committed, awaiting Argo CD", |r| {
            git_status(r).commit.is_some()
        })
        .await?;
    assert_eq!(git_status(&pushed).file, file);
    assert_eq!(
        fleet.changed_lines(&fleet.head()?)?,
        [
            format!(
                "-  tag: \"v1@{}\"   # the chart renders repository:tag",
                v1.digest
            ),
            format!(
                "+  tag: \"v1@{}\"   # the chart renders repository:tag",
                new.digest
            ),
        ]
    );
    sync_image(&s, &format!("{repository}:v1@{}", new.digest)).await?;
    s.await_refresh("web", "Succeeded", |r| {
        r.progress().phase == Phase::Succeeded
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn forty_workloads_moving_at_once_share_a_few_commits() -> anyhow::Result<()> {
    const N: usize = 40;
    let s = Scene::new("gitops-forty").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let from = pinned(&s, &v1.digest);
    let names: Vec<String> = (0..N).map(|i| format!("web-{i:02}")).collect();
    let files: Vec<(String, String)> = names
        .iter()
        .map(|n| (format!("{n}.yaml"), named(n, 1, &from, "")))
        .collect();
    let files: Vec<(&str, String)> = files.iter().map(|(f, t)| (f.as_str(), t.clone())).collect();
    let fleet = Fleet::new(&s.harness, &s.client, &s.ns.name, &files).await?;
    fleet.await_applied("the fleet").await?;
    freshen_e2e::await_ready_pods(
        &Api::namespaced(s.client.clone(), &s.ns.name),
        N,
        Duration::from_secs(120),
        Duration::from_millis(500),
    )
    .await?;
    let seeded = fleet.log("%H")?.len();
    policy(&s).await?;
    let _op = freshen_e2e::operator::Operator::start(
        &s.harness,
        &[
            "--poll-interval",
            "2s",
            "--namespace",
            &s.ns.name,
            "--max-concurrent-refreshes",
            "100",
            "--max-concurrent-refreshes-per-namespace",
            "100",
        ],
    )
    .await?;
    let base_moved = s.push("v1", &image("two", 1)).await?;

    let done: Vec<Refresh> = wait_for(
        "every workload's Refresh Succeeded",
        Duration::from_secs(240),
        Duration::from_millis(500),
        || async {
            let api: Api<Refresh> = Api::namespaced(s.client.clone(), &s.ns.name);
            let all = api.list(&Default::default()).await?.items;
            let ok = all
                .iter()
                .filter(|r| r.progress().phase == Phase::Succeeded)
                .count();
            if ok == N {
                Ok(Some(all))
            } else {
                anyhow::bail!("{ok} of {N} Succeeded")
            }
        },
    )
    .await?;
    let commits = fleet.log("%an")?;
    let ours = commits.len() - seeded;
    assert!(
        commits[..ours].iter().all(|a| a == "freshen-e2e"),
        "{commits:?}"
    );
    assert!(
        ours < N / 4,
        "{ours} commits for {N} workloads: the window batches them"
    );
    for n in &names {
        assert!(
            fleet
                .show(&format!("{}/{n}.yaml", fleet.path))?
                .contains(&base_moved.digest)
        );
    }
    let mut push: Vec<f64> = Vec::new();
    let mut apply: Vec<f64> = Vec::new();
    for r in &done {
        let (p, g) = (r.progress(), git_status(r));
        let (Some(promoted), Some(pushed), Some(applied)) =
            (p.promoted_at, g.pushed_at, p.patched_at)
        else {
            panic!("timestamps of {}: {:?} {:?}", r.name_any(), p, g);
        };
        push.push((pushed - promoted).as_seconds_f64());
        apply.push((applied - pushed).as_seconds_f64());
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2], v[v.len() - 1])
    };
    eprintln!(
        "{N} workloads: {ours} commit(s); canary success -> pushed min/median/max {:?} s; pushed -> applied {:?} s",
        stats(&mut push),
        stats(&mut apply)
    );
    Ok(())
}

/// Flux reconciling every 10s and freshen polling every 2s, for
/// `FRESHEN_GITOPS_SOAK` (default 60s; `make soak-gitops` runs 10 minutes)
/// after a promotion: neither undoes the other. The Deployment's generation
/// does not move, no Refresh starts, nothing more is committed.
#[tokio::test]
async fn freshen_and_flux_do_not_fight_after_a_promotion() -> anyhow::Result<()> {
    let soak = std::env::var("FRESHEN_GITOPS_SOAK")
        .ok()
        .and_then(|d| freshen_core::parse_duration(&d).ok())
        .unwrap_or(Duration::from_secs(60));
    let s = Scene::new("gitops-soak").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let from = pinned(&s, &v1.digest);
    let fleet = Fleet::reconciled_every(
        &s.harness,
        &s.client,
        &s.ns.name,
        &[("web.yaml", manifest(&from, ""))],
        "10s",
    )
    .await?;
    fleet.await_applied("the fleet").await?;
    wait_ready_pods(&s.client, &s.ns.name, "web", 2, Duration::from_secs(60)).await?;
    policy(&s).await?;
    let op = s.operator().await?;
    s.push("v1", &image("two", 1)).await?;
    s.await_refresh("web", "Succeeded", |r| {
        r.progress().phase == Phase::Succeeded
    })
    .await?;
    let api = Api::<Deployment>::namespaced(s.client.clone(), &s.ns.name);
    let generation = api.get("web").await?.metadata.generation;
    let commits = fleet.log("%H")?;
    let looks = op
        .metric(r#"freshen_reconcile_duration_seconds_count{controller="deployment"}"#)
        .await?;
    let start = std::time::Instant::now();
    let mut samples = 0;
    while start.elapsed() < soak {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = api.get("web").await?.metadata.generation;
        assert_eq!(
            now,
            generation,
            "the Deployment changed after {:?}",
            start.elapsed()
        );
        samples += 1;
    }
    fleet.await_applied("the branch, again").await?;
    assert_eq!(fleet.log("%H")?, commits, "nothing more was committed");
    assert_eq!(s.refreshes_of("web").await?.len(), 1, "no Refresh started");
    let more = op
        .metric(r#"freshen_reconcile_duration_seconds_count{controller="deployment"}"#)
        .await?
        - looks;
    assert!(
        more >= (soak.as_secs_f64() / 4.0),
        "freshen kept looking: {more} reconciles"
    );
    eprintln!(
        "{:?} after the promotion: generation {generation:?} held over {samples} samples, {more} freshen reconciles, Flux every 10s",
        soak
    );
    Ok(())
}

#[tokio::test]
async fn a_refresh_written_to_skip_the_canary_is_not_committed() -> anyhow::Result<()> {
    use freshen_core::rollout::{Reason, Settings, Strategy};
    let s = Scene::new("gitops-hostile").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let from = pinned(&s, &v1.digest);
    let fleet = fleet(&s, &from, "").await?;
    let seeded = fleet.head()?;
    policy(&s).await?;
    let op = s.operator().await?;
    // A digest of the same repository no canary ever ran, pushed under
    // another tag (the followed tag does not move: freshen wants nothing).
    let unproven = s.push("staging", &image("unproven", 1)).await?;
    let deployment = Api::<Deployment>::namespaced(s.client.clone(), &s.ns.name)
        .get("web")
        .await?;
    // A Refresh as whoever may write one for this workload could write it:
    // owned by the workload, pinned, but Rolling (no canary) and marked to
    // promote through git.
    let refresh = Refresh {
        metadata: kube::api::ObjectMeta {
            name: Some("web-by-hand".into()),
            labels: Some([("freshen.dev/workload".to_owned(), "web".to_owned())].into()),
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: "web".into(),
                    uid: deployment.uid().unwrap_or_default(),
                    controller: Some(true),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        },
        spec: freshen_api::RefreshSpec {
            workload: "web".into(),
            workload_kind: None,
            container: "app".into(),
            reason: Reason::NewDigest,
            from_image: from.clone(),
            to_image: pinned(&s, &unproven.digest),
            from_digest: "unknown".into(),
            to_digest: "unproven".into(),
            digest: unproven.digest.clone(),
            rollout: Settings {
                strategy: Strategy::Rolling,
                through_git: true,
                ..Settings::default()
            },
            template_fingerprint: None,
            verification: None,
        },
        status: None,
    };
    Api::<Refresh>::namespaced(s.client.clone(), &s.ns.name)
        .create(&PostParams::default(), &refresh)
        .await?;
    let note = freshen_e2e::await_warning(
        &s.client,
        &s.ns.name,
        "Refresh",
        "web-by-hand",
        "RefreshGit",
    )
    .await?;
    assert!(note.contains("ran none"), "{note}");
    assert_eq!(fleet.head()?, seeded, "nothing was committed");
    assert_eq!(template_image(&s).await?, from);
    // It never finishes (nothing may be committed): with the operator
    // stopped, let the namespace go.
    drop(op);
    let release = serde_json::json!({"metadata": {"finalizers": null}});
    Api::<Refresh>::namespaced(s.client.clone(), &s.ns.name)
        .patch(
            "web-by-hand",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(release),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_statefulset_under_commit_is_held_with_the_reason() -> anyhow::Result<()> {
    let s = Scene::new("gitops-sts").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let from = pinned(&s, &v1.digest);
    // A StatefulSet Flux's labels mark as managed (its canary would run
    // inside it, where self-heal undoes it).
    let sts: k8s_openapi::api::apps::v1::StatefulSet = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "labels": {"app": "db", "tier": "web",
            "kustomize.toolkit.fluxcd.io/name": "apps", "kustomize.toolkit.fluxcd.io/namespace": s.ns.name}},
        "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "app", "image": from}]}}},
    }))?;
    Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(s.client.clone(), &s.ns.name)
        .create(&PostParams::default(), &sts)
        .await?;
    wait_ready_pods(&s.client, &s.ns.name, "db", 1, Duration::from_secs(60)).await?;
    policy(&s).await?;
    let _op = s.operator().await?;
    s.push("v1", &image("two", 1)).await?;
    let note = freshen_e2e::await_warning(
        &s.client,
        &s.ns.name,
        "StatefulSet",
        "db",
        "GitSourceNotFound",
    )
    .await?;
    assert!(
        note.contains("a StatefulSet's canary runs inside it"),
        "{note}"
    );
    assert!(s.refreshes_of("db").await?.is_empty());
    Ok(())
}

/// The pull-request scene: `web` on `from` in a repository on the harness's
/// Gitea applied by Flux, a policy saying `gitops: PullRequest` (provider
/// Gitea, label `freshen`, a 10s readiness timeout) with the Gitea user's
/// token in a Secret of the test's namespace, and an operator that may
/// speak plain HTTP to Gitea.
async fn pull_request_scene(
    s: &Scene,
    from: &str,
    annotations: &str,
) -> anyhow::Result<(Fleet, freshen_e2e::operator::Operator)> {
    let fleet = Fleet::on_gitea(
        &s.harness,
        &s.client,
        &s.ns.name,
        &[("web.yaml", manifest(from, annotations))],
    )
    .await?;
    fleet.await_applied("the fleet").await?;
    wait_ready_pods(&s.client, &s.ns.name, "web", 2, Duration::from_secs(60)).await?;
    let gitea = &s.harness.gitea;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "gitea"},
        "stringData": {"username": gitea.user, "password": gitea.token()?},
    }))?;
    Api::<Secret>::namespaced(s.client.clone(), &s.ns.name)
        .create(&PostParams::default(), &secret)
        .await?;
    let git = GitSpec {
        repositories: vec![format!("{}/{}/", gitea.url, gitea.user)],
        secret_ref: Some(LocalSecretRef {
            name: "gitea".into(),
        }),
        pull_request: Some(PullRequestSpec {
            provider: Provider::Gitea,
            labels: vec!["freshen".into()],
        }),
        ..GitSpec::default()
    };
    policy_with(s, GitOpsMode::PullRequest, git, "10s").await?;
    let gitea_host = gitea.url.trim_start_matches("http://");
    let op = Operator::start(
        &s.harness,
        &[
            "--poll-interval",
            "2s",
            "--namespace",
            &s.ns.name,
            "--leader-elect-lease-duration",
            "3s",
            "--plain-http-registry",
            gitea_host,
        ],
    )
    .await?;
    Ok((fleet, op))
}

/// The Refresh of `web` once its pull request is open.
async fn await_pull_request(s: &Scene) -> anyhow::Result<(Refresh, PullRequestStatus)> {
    let r = s
        .await_refresh("web", "a pull request opened", |r| {
            git_status(r).pull_request.is_some()
        })
        .await?;
    let pr = git_status(&r)
        .pull_request
        .unwrap_or_else(|| unreachable!());
    Ok((r, pr))
}

#[tokio::test]
async fn a_proven_digest_is_proposed_in_a_pull_request_and_followed_when_merged_late()
-> anyhow::Result<()> {
    let s = Scene::new("gitops-pr").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let from = pinned(&s, &v1.digest);
    let (fleet, op) = pull_request_scene(&s, &from, "").await?;
    let seeded = fleet.head()?;
    let new = s.push("v1", &image("two", 1)).await?;
    let to = pinned(&s, &new.digest);

    let (refresh, pr) = await_pull_request(&s).await?;
    assert_eq!(pr.provider, Provider::Gitea);
    assert_eq!(pr.state, PullState::Open);
    assert!(pr.branch.starts_with("freshen/"), "{pr:?}");
    // On Gitea: the pull request, its title, its labels, and the canary's
    // analysis in its body; the branch Flux follows is untouched.
    let repo = s.ns.name.as_str();
    let open = s.harness.gitea.pulls(repo, "open").await?;
    assert_eq!(open.len(), 1, "{open:?}");
    let on_gitea = &open[0];
    assert_eq!(on_gitea["number"].as_u64(), Some(pr.number));
    assert_eq!(on_gitea["html_url"].as_str(), Some(pr.url.as_str()));
    assert_eq!(
        on_gitea["title"].as_str().unwrap_or_default(),
        format!("freshen: {repo}/web app -> {to}")
    );
    assert_eq!(on_gitea["base"]["ref"], "main");
    assert_eq!(on_gitea["head"]["ref"].as_str(), Some(pr.branch.as_str()));
    assert_eq!(on_gitea["labels"][0]["name"], "freshen");
    let body = on_gitea["body"].as_str().unwrap_or_default();
    assert!(
        body.starts_with("freshen proved this image in a canary"),
        "{body}"
    );
    assert!(
        body.contains(&format!("### Deployment {repo}/web `app`")),
        "{body}"
    );
    assert!(body.contains(&format!("- to `{to}`")), "{body}");
    assert!(
        body.contains("| 2 |") && body.contains("| Pass |"),
        "{body}"
    );
    assert_eq!(fleet.head()?, seeded, "nothing is pushed to main");

    // Waiting for a reviewer has no deadline: well past the 10s readiness
    // timeout the Refresh still waits, the workload untouched. (What is
    // asserted is that nothing happens for a while, so the test waits.)
    tokio::time::sleep(Duration::from_secs(14)).await;
    let waiting = s.refreshes_of("web").await?;
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].progress().phase, Phase::Promoting);
    assert!(
        waiting[0]
            .progress()
            .message
            .contains("waiting for a reviewer"),
        "{}",
        waiting[0].progress().message
    );
    assert_eq!(template_image(&s).await?, from);

    // The reviewer merges; Flux applies main; freshen follows it through.
    let merged_at = chrono::Utc::now();
    s.harness.gitea.merge(repo, pr.number).await?;
    let done = s
        .await_refresh("web", "Succeeded", |r| {
            r.progress().phase == Phase::Succeeded
        })
        .await?;
    let status = git_status(&done);
    let merged = status
        .pull_request
        .clone()
        .unwrap_or_else(|| unreachable!());
    assert_eq!(merged.state, PullState::Merged);
    assert!(merged.merged_at.is_some());
    fleet.await_applied("the merge").await?;
    assert_eq!(template_image(&s).await?, to);
    // freshen's commit is the value, nothing else.
    let commit = status.commit.clone().unwrap_or_default();
    assert_eq!(
        fleet.changed_lines(&commit)?,
        [
            format!("-          image: \"{from}\"   # pinned by freshen"),
            format!("+          image: \"{to}\"   # pinned by freshen"),
        ]
    );
    assert_eq!(fleet.show(&status.file)?, manifest(&to, ""));
    let promoted = refresh.progress().promoted_at.unwrap_or_default();
    let applied = done.progress().patched_at.unwrap_or_default();
    eprintln!(
        "canary success -> pull request opened {:.1}s; merge -> applied by Flux {:.1}s",
        status
            .pushed_at
            .map_or(f64::NAN, |p| (p - promoted).as_seconds_f64()),
        (applied - merged_at).as_seconds_f64()
    );
    for event in ["opened", "merged"] {
        op.await_metric(
            &format!(
                r#"freshen_git_pull_requests_total{{change="promote",event="{event}",host="127.0.0.1"}}"#
            ),
            1.0,
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_pull_request_closed_unmerged_rejects_the_digest_and_changes_nothing()
-> anyhow::Result<()> {
    let s = Scene::new("gitops-pr-closed").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let from = pinned(&s, &v1.digest);
    let (fleet, op) = pull_request_scene(&s, &from, "").await?;
    let seeded = fleet.head()?;
    let new = s.push("v1", &image("two", 1)).await?;

    let (_, pr) = await_pull_request(&s).await?;
    s.harness.gitea.close(&s.ns.name, pr.number).await?;
    let done = s
        .await_refresh("web", "RolledBack", |r| {
            r.progress().phase == Phase::RolledBack
        })
        .await?;
    assert_eq!(done.progress().failure, Some(Failure::Declined));
    assert!(
        done.progress()
            .message
            .contains("closed without being merged"),
        "{}",
        done.progress().message
    );
    assert_eq!(
        git_status(&done).pull_request.map(|p| p.state),
        Some(PullState::Closed)
    );
    // Nothing reached main or the workload; the digest is rejected, and
    // after more of freshen's looks it is not proposed again.
    assert_eq!(fleet.head()?, seeded);
    assert_eq!(template_image(&s).await?, from);
    s.await_reconciles(&op, "deployment", 4).await?;
    assert_eq!(
        s.refreshes_of("web").await?.len(),
        1,
        "never proposed again"
    );
    let d = Api::<Deployment>::namespaced(s.client.clone(), &s.ns.name)
        .get("web")
        .await?;
    let rejected = d
        .annotations()
        .get(freshen_api::refresh::REJECTED_DIGESTS)
        .cloned()
        .unwrap_or_default();
    assert!(rejected.contains(&new.digest), "{rejected}");
    assert_eq!(s.harness.gitea.pulls(&s.ns.name, "open").await?.len(), 0);
    op.await_metric(
        r#"freshen_git_pull_requests_total{change="promote",event="closed",host="127.0.0.1"}"#,
        1.0,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_merged_digest_failing_in_its_rollout_is_reverted_through_a_pull_request()
-> anyhow::Result<()> {
    let s = Scene::new("gitops-pr-revert").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let bad_spec = image("bad-in-rollout", 1);
    let bad = s.push("staging", &bad_spec).await?;
    let from = pinned(&s, &v1.digest);
    // The canary's pods run; the workload's own new pods crash.
    let annotations = format!(r#""e2e.freshen.dev/crash-on-rollout": "{}""#, bad.digest);
    let (fleet, _op) = pull_request_scene(&s, &from, &annotations).await?;
    let file = format!("{}/web.yaml", fleet.path);
    let seeded_text = fleet.show(&file)?;
    s.push("v1", &bad_spec).await?;

    let (_, pr) = await_pull_request(&s).await?;
    s.harness.gitea.merge(&s.ns.name, pr.number).await?;
    // Flux applies the merge, the new pods crash: freshen proposes the
    // revert in a pull request of its own, and waits for it.
    let reverting = s
        .await_refresh("web", "a revert pull request", |r| {
            git_status(r).revert_pull_request.is_some()
        })
        .await?;
    assert_eq!(reverting.progress().phase, Phase::RollingBack);
    assert_eq!(reverting.progress().failure, Some(Failure::PodFailure));
    let revert = git_status(&reverting)
        .revert_pull_request
        .unwrap_or_else(|| unreachable!());
    assert!(revert.branch.starts_with("freshen/revert-"), "{revert:?}");
    let open = s.harness.gitea.pulls(&s.ns.name, "open").await?;
    assert_eq!(open.len(), 1, "{open:?}");
    let body = open[0]["body"].as_str().unwrap_or_default();
    assert!(
        body.starts_with(&format!("#{} (", pr.number)) && body.contains("its rollout failed"),
        "{body}"
    );
    assert!(
        open[0]["title"]
            .as_str()
            .unwrap_or_default()
            .starts_with("freshen: revert"),
        "{}",
        open[0]
    );

    s.harness.gitea.merge(&s.ns.name, revert.number).await?;
    let done = s
        .await_refresh("web", "RolledBack", |r| {
            r.progress().phase == Phase::RolledBack
        })
        .await?;
    // main carries the file as it was, Flux applied it, and the digest is
    // rejected.
    assert_eq!(fleet.show(&file)?, seeded_text);
    fleet.await_applied("the revert").await?;
    assert_eq!(template_image(&s).await?, from);
    assert_eq!(
        git_status(&done).revert_pull_request.map(|p| p.state),
        Some(PullState::Merged)
    );
    Ok(())
}

/// A chart in the fleet repository whose Deployment `web` renders
/// `image.repository:image.tag`, and the HelmRelease that installs it with
/// inline values, applied by Flux's kustomize-controller.
fn helm_fleet(s: &Scene, from_tag: &str) -> Vec<(&'static str, String)> {
    let chart = r#"apiVersion: v2
name: web
version: 0.1.0
"#;
    let template = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
    tier: web
spec:
  replicas: {{ .Values.replicaCount }}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: app
          image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
"#;
    let release = format!(
        r#"# The web tier, installed by Flux's helm-controller from the chart in
# this repository. freshen bumps the image tag after a canary.
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata:
  name: web
spec:
  interval: 2s
  chart:
    spec:
      chart: ./charts/web
      reconcileStrategy: Revision
      sourceRef:
        kind: GitRepository
        name: fleet
  values:
    replicaCount: 2
    image:
      repository: {}/{}
      tag: "{from_tag}"   # bumped by freshen
"#,
        s.harness.registry, s.repo
    );
    vec![
        ("release.yaml", release),
        ("../../charts/web/Chart.yaml", chart.to_owned()),
        (
            "../../charts/web/templates/deployment.yaml",
            template.to_owned(),
        ),
    ]
}

#[tokio::test]
async fn a_helm_releases_inline_values_are_committed_and_flux_installs_them() -> anyhow::Result<()>
{
    let s = Scene::new("gitops-helm").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let from_tag = format!("v1@{}", v1.digest);
    let files = helm_fleet(&s, &from_tag);
    let fleet = Fleet::new(&s.harness, &s.client, &s.ns.name, &files).await?;
    fleet.await_applied("the fleet").await?;
    // helm-controller installs the chart: the Deployment carries its
    // origin labels and the HelmRelease's inventory lists it.
    wait_ready_pods(&s.client, &s.ns.name, "web", 2, Duration::from_secs(120)).await?;
    let d = Api::<Deployment>::namespaced(s.client.clone(), &s.ns.name)
        .get("web")
        .await?;
    assert_eq!(
        d.labels()
            .get("helm.toolkit.fluxcd.io/name")
            .map(String::as_str),
        Some("web")
    );
    policy(&s).await?;
    let _op = s.operator().await?;
    let new = s.push("v1", &image("two", 1)).await?;
    let to_tag = format!("v1@{}", new.digest);

    let done = s
        .await_refresh("web", "Succeeded", |r| {
            r.progress().phase == Phase::Succeeded
        })
        .await?;
    let status = git_status(&done);
    assert_eq!(status.file, format!("{}/release.yaml", fleet.path));
    let commit = status.commit.clone().unwrap_or_default();
    // The tag line of the HelmRelease's values, nothing else.
    assert_eq!(
        fleet.changed_lines(&commit)?,
        [
            format!("-      tag: \"{from_tag}\"   # bumped by freshen"),
            format!("+      tag: \"{to_tag}\"   # bumped by freshen"),
        ]
    );
    // Flux applied the HelmRelease, helm-controller upgraded the release.
    assert_eq!(
        template_image(&s).await?,
        format!("{}/{}:{to_tag}", s.harness.registry, s.repo)
    );
    Ok(())
}

#[tokio::test]
async fn a_pull_request_left_behind_by_a_human_change_is_closed_by_freshen() -> anyhow::Result<()> {
    let s = Scene::new("gitops-pr-moved").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let from = pinned(&s, &v1.digest);
    let (fleet, _op) = pull_request_scene(&s, &from, "").await?;
    let new = s.push("v1", &image("two", 1)).await?;
    let (_, pr) = await_pull_request(&s).await?;
    // Meanwhile a human pins another image on main, and Flux applies it:
    // the workload moved on under the Refresh.
    let theirs = s.push("hotfix", &image("hotfix", 0)).await?;
    let hotfix = format!("{}/{}:hotfix@{}", s.harness.registry, s.repo, theirs.digest);
    std::fs::write(
        fleet.work.join(&fleet.path).join("web.yaml"),
        manifest(&hotfix, ""),
    )?;
    git(&fleet.work, &["commit", "-q", "-am", "a hotfix"])?;
    git(
        &fleet.work,
        &["push", "-q", &s.harness.gitea.push_url(&s.ns.name)?, "main"],
    )?;
    fleet.await_applied("the human's commit").await?;

    let done = s
        .await_refresh("web", "Failed", |r| r.progress().phase == Phase::Failed)
        .await?;
    assert_eq!(done.progress().failure, Some(Failure::Conflict));
    // freshen closed its pull request: nobody merges what it no longer
    // follows, and the human's image stays.
    let closed = wait_for(
        "freshen to close its pull request",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let all = s.harness.gitea.pulls(&s.ns.name, "closed").await?;
            Ok(all
                .into_iter()
                .find(|p| p["number"].as_u64() == Some(pr.number)))
        },
    )
    .await?;
    assert_eq!(closed["merged"], false);
    assert_eq!(template_image(&s).await?, hotfix);
    assert!(
        !fleet
            .show(&format!("{}/web.yaml", fleet.path))?
            .contains(&new.digest)
    );
    Ok(())
}

#[tokio::test]
async fn a_proven_digest_is_pushed_over_ssh_with_the_host_key_checked() -> anyhow::Result<()> {
    let s = Scene::new("gitops-ssh").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let from = pinned(&s, &v1.digest);
    let gitea = &s.harness.gitea;
    let ssh_url = gitea.ssh_url(&s.ns.name);
    // Flux reads over HTTP; freshen is told to write over SSH.
    let annotated = manifest(&from, "").replacen(
        "  labels:\n    app: web\n    tier: web\n",
        &format!(
            "  labels:\n    app: web\n    tier: web\n  annotations:\n    \
             freshen.dev/git-source: \"{ssh_url}#main\"\n    \
             freshen.dev/image-path: apps/{}/web.yaml\n",
            s.ns.name
        ),
        1,
    );
    let fleet = Fleet::on_gitea(
        &s.harness,
        &s.client,
        &s.ns.name,
        &[("web.yaml", annotated)],
    )
    .await?;
    fleet.await_applied("the fleet").await?;
    wait_ready_pods(&s.client, &s.ns.name, "web", 2, Duration::from_secs(60)).await?;
    // A key of the Gitea user's, and the server's host keys as
    // ssh-keyscan reads them.
    let dir = std::env::temp_dir().join(format!("freshen-e2e-ssh-{}", s.ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("id_ed25519");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "freshen-e2e", "-f"])
        .arg(&key)
        .status()?;
    anyhow::ensure!(status.success(), "ssh-keygen failed");
    gitea
        .add_key(
            &s.ns.name,
            &std::fs::read_to_string(dir.join("id_ed25519.pub"))?,
        )
        .await?;
    let (host, port) = gitea.ssh_addr.split_once(':').unwrap_or_default();
    let scan = std::process::Command::new("ssh-keyscan")
        .args(["-p", port, host])
        .output()?;
    let known_hosts = String::from_utf8(scan.stdout)?;
    anyhow::ensure!(
        !known_hosts.trim().is_empty(),
        "ssh-keyscan found no host key"
    );
    // First the Secret trusts another host key for the server (its own
    // client key stands in): freshen refuses to push there.
    let wrong = format!(
        "[{host}]:{port} {}",
        std::fs::read_to_string(dir.join("id_ed25519.pub"))?.trim()
    );
    let secret = |known: &str| -> anyhow::Result<Secret> {
        Ok(serde_json::from_value(serde_json::json!({
            "metadata": {"name": "fleet-ssh"},
            "stringData": {
                "identity": std::fs::read_to_string(&key)?,
                "known_hosts": known,
            },
        }))?)
    };
    let secrets = Api::<Secret>::namespaced(s.client.clone(), &s.ns.name);
    secrets
        .create(&PostParams::default(), &secret(&wrong)?)
        .await?;
    let git = GitSpec {
        repositories: vec![format!("ssh://git@{}/{}/", gitea.ssh_addr, gitea.user)],
        secret_ref: Some(LocalSecretRef {
            name: "fleet-ssh".into(),
        }),
        ..GitSpec::default()
    };
    policy_with(&s, GitOpsMode::Commit, git, "60s").await?;
    let _op = s.operator().await?;
    let seeded = fleet.head()?;
    let new = s.push("v1", &image("two", 1)).await?;
    let to = pinned(&s, &new.digest);
    let refresh = s
        .await_refresh("web", "promoting", |r| {
            r.progress().phase == Phase::Promoting
        })
        .await?;
    let note = freshen_e2e::await_warning(
        &s.client,
        &s.ns.name,
        "Refresh",
        &refresh.name_any(),
        "RefreshGit",
    )
    .await?;
    assert!(
        note.contains("is not in the Secret's known_hosts"),
        "{note}"
    );
    assert_eq!(fleet.head()?, seeded, "nothing pushed to an unknown host");
    // The right host keys: the same Refresh goes on.
    secrets
        .replace("fleet-ssh", &PostParams::default(), &{
            let mut s = secret(&known_hosts)?;
            s.metadata.resource_version = secrets.get("fleet-ssh").await?.resource_version();
            s
        })
        .await?;

    let done = s
        .await_refresh("web", "Succeeded", |r| {
            r.progress().phase == Phase::Succeeded
        })
        .await?;
    let status = git_status(&done);
    assert_eq!(status.repository, ssh_url);
    let head = fleet.head()?;
    assert_eq!(status.commit.as_deref(), Some(head.as_str()));
    assert_eq!(
        fleet.changed_lines(&head)?,
        [
            format!("-          image: \"{from}\"   # pinned by freshen"),
            format!("+          image: \"{to}\"   # pinned by freshen"),
        ]
    );
    fleet.await_applied("freshen's commit").await?;
    assert_eq!(template_image(&s).await?, to);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn a_digest_whose_signer_is_no_longer_trusted_at_the_commit_is_not_committed()
-> anyhow::Result<()> {
    use freshen_api::refresh::{KeyAuthoritySpec, KeySpec, VerifyMode, VerifySpec};
    use freshen_e2e::cosign;
    let s = Scene::new("gitops-verify").await?;
    let v1 = s.push("v1", &image("one", 3)).await?;
    let from = pinned(&s, &v1.digest);
    let fleet = fleet(&s, &from, "").await?;
    let seeded = fleet.head()?;
    let dir = freshen_e2e::repo_root()
        .join("target/e2e-cosign")
        .join(format!("{:08x}", freshen_e2e::rand_suffix()));
    std::fs::create_dir_all(&dir)?;
    let trusted = cosign::generate_key_pair(&s.harness, &dir, "trusted")?;
    let other = cosign::generate_key_pair(&s.harness, &dir, "other")?;
    let only = |keys: &cosign::KeyPair| VerifySpec {
        mode: Some(VerifyMode::Enforce),
        authorities: vec![KeyAuthoritySpec {
            name: "release".into(),
            key: Some(KeySpec::inline(keys.public_pem.clone())),
            keyless: None,
        }],
        ..VerifySpec::default()
    };
    // gitops: Commit behind a gate that trusts `trusted`, and a canary of
    // three checks 3s apart: time for the policy to change under it.
    let refresh = PolicyRefresh {
        follow_tag: Some(true),
        gitops: Some(GitOpsMode::Commit),
        git: Some(GitSpec {
            repositories: vec![format!("{}/", s.harness.git_url)],
            ..GitSpec::default()
        }),
        verify: Some(only(&trusted)),
        rollout: Some(RolloutSpec {
            strategy: None,
            canary_weight: Some(50),
            analysis: Some(AnalysisSpec {
                interval: Some("3s".into()),
                iterations: Some(3),
                readiness_timeout: Some("60s".into()),
                ..AnalysisSpec::default()
            }),
        }),
        ..PolicyRefresh::default()
    };
    let policies = Api::<RefreshPolicy>::namespaced(s.client.clone(), &s.ns.name);
    policies
        .create(
            &PostParams::default(),
            &RefreshPolicy::new(
                "web",
                RefreshPolicySpec {
                    pipelines: Default::default(),
                    selector: LabelSelector {
                        match_labels: Some([("tier".to_owned(), "web".to_owned())].into()),
                        ..LabelSelector::default()
                    },
                    limits: Default::default(),
                    refresh,
                },
            ),
        )
        .await?;
    let new = s.push("v1", &image("two", 1)).await?;
    let to = pinned(&s, &new.digest);
    cosign::sign(&s.harness, &dir, &trusted, &to, false)?;
    let op = s.operator().await?;

    // Signed by the trusted key: the Refresh is made and its canary runs.
    let running = s
        .await_refresh("web", "in its canary", |r| {
            r.progress().phase == Phase::Canary
        })
        .await?;
    // Meanwhile the platform team rotates the key: `trusted` is no more.
    let mut policy = policies.get("web").await?;
    policy.spec.refresh.verify = Some(only(&other));
    policies
        .replace("web", &PostParams::default(), &policy)
        .await?;
    let note = freshen_e2e::await_warning(
        &s.client,
        &s.ns.name,
        "Refresh",
        &running.name_any(),
        "RefreshGit",
    )
    .await?;
    assert!(
        note.contains("the verification gate of its policy refuses"),
        "{note}"
    );
    assert_eq!(fleet.head()?, seeded, "nothing was committed");
    assert_eq!(template_image(&s).await?, from);
    // It waits for the gate to admit the digest again: with the operator
    // stopped, let the namespace go.
    drop(op);
    let release = serde_json::json!({"metadata": {"finalizers": null}});
    Api::<Refresh>::namespaced(s.client.clone(), &s.ns.name)
        .patch(
            &running.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(release),
        )
        .await?;
    Ok(())
}
